#include "keystore/rsa_padding.h"

#include <openssl/err.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstring>

#include "keystore/tpm/kdf.h"

namespace tpmkey {
namespace {

// Constant-time helpers: all-ones or all-zero masks, no branches. The barrier keeps the compiler
// from turning a mask back into a branch.
inline uint32_t barrier(uint32_t v) {
  __asm__("" : "+r"(v));
  return v;
}
inline uint32_t ct_msb(uint32_t a) { return 0u - (a >> 31); }
inline uint32_t ct_is_zero(uint32_t a) { return ct_msb(~a & (a - 1)); }
inline uint32_t ct_eq(uint32_t a, uint32_t b) { return ct_is_zero(a ^ b); }
inline uint32_t ct_lt(uint32_t a, uint32_t b) { return ct_msb(a ^ ((a ^ b) | ((a - b) ^ b))); }
inline uint32_t ct_ge(uint32_t a, uint32_t b) { return ~ct_lt(a, b); }
inline uint32_t ct_select(uint32_t mask, uint32_t a, uint32_t b) {
  mask = barrier(mask);
  return (mask & a) | (~mask & b);
}
inline uint8_t ct_select8(uint32_t mask, uint8_t a, uint8_t b) { return uint8_t(ct_select(mask, a, b)); }

constexpr size_t kPkcs1Overhead = 11;  // 00 02, at least 8 padding bytes, 00

// The implicit-rejection PRF: HMAC-SHA256(kdk, be16(i) || label || be16(bits)) for i = 0, 1, ...
bool prf(const EVP_MD* sha256, const uint8_t* kdk, const char* label, uint8_t* out, size_t len) {
  const uint16_t bits = uint16_t(len * 8);
  const uint8_t bits_be[2] = {uint8_t(bits >> 8), uint8_t(bits)};
  uint8_t block[32];
  for (size_t pos = 0, i = 0; pos < len; pos += sizeof block, ++i) {
    const uint8_t i_be[2] = {uint8_t(i >> 8), uint8_t(i)};
    if (!hmac_parts(sha256, {kdk, 32},
                    {{i_be, 2}, {reinterpret_cast<const uint8_t*>(label), std::strlen(label)}, {bits_be, 2}}, block))
      return false;
    std::memcpy(out + pos, block, std::min(sizeof block, len - pos));
  }
  OPENSSL_cleanse(block, sizeof block);
  return true;
}

}  // namespace

Bytes implicit_rejection_probe(const Crypto& c, size_t k) {
  static constexpr char kLabel[] = "tpmkey implicit rejection";
  Bytes out(k, 0);
  uint8_t block[32];
  for (size_t pos = 1, i = 0; pos < k; pos += sizeof block, ++i) {
    uint8_t ctr[4];
    put_be32(ctr, uint32_t(i));
    digest_parts(c.md(TPM2_ALG_SHA256), {{reinterpret_cast<const uint8_t*>(kLabel), sizeof kLabel - 1}, {ctr, 4}},
                 block);
    std::memcpy(out.data() + pos, block, std::min(sizeof block, k - pos));
  }
  return out;
}

Result<SecretBytes> pkcs1_decode_implicit(const Crypto& c, const SecretBytes& em_in, const SecretBytes& secret,
                                          const Bytes& ciphertext) {
  const size_t k = em_in.size();
  if (k < kPkcs1Overhead + 1 || k > 1024 || ciphertext.size() > k || secret.empty())
    return make_error(Reason::kInternal, "bad implicit-rejection input sizes");
  const EVP_MD* sha256 = c.md(TPM2_ALG_SHA256);

  // The key-derivation key, from the key's secret and the ciphertext (not from the padding).
  uint8_t secret_hash[32], kdk[32];
  SecretBytes padded_c(k);
  std::memcpy(padded_c.data() + (k - ciphertext.size()), ciphertext.data(), ciphertext.size());
  bool ok = digest_parts(sha256, {span_of(secret)}, secret_hash) &&
            hmac_parts(sha256, {secret_hash, 32}, {span_of(padded_c)}, kdk);
  OPENSSL_cleanse(secret_hash, sizeof secret_hash);
  SecretBytes synthetic(k), lengths(256);
  ok = ok && prf(sha256, kdk, "message", synthetic.data(), k) && prf(sha256, kdk, "length", lengths.data(), 256);
  OPENSSL_cleanse(kdk, sizeof kdk);
  if (!ok) return make_error(Reason::kInternal, "implicit rejection: HMAC failed");

  const uint32_t max_len = uint32_t(k - 2 - 8);  // the longest message valid padding leaves room for
  uint32_t mask = max_len;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  uint32_t synthetic_len = 0;
  for (size_t i = 0; i < 128; ++i) {
    uint32_t cand = ((uint32_t(lengths.data()[2 * i]) << 8) | lengths.data()[2 * i + 1]) & mask;
    synthetic_len = ct_select(ct_lt(cand, max_len), cand, synthetic_len);
  }

  // The padding check, over every byte.
  SecretBytes em(em_in);
  const uint8_t* e = em.data();
  uint32_t good = ct_is_zero(e[0]) & ct_eq(e[1], 2);
  uint32_t found_zero = 0, zero_index = 0;
  for (size_t i = 2; i < k; ++i) {
    const uint32_t is_zero = ct_is_zero(e[i]);
    zero_index = ct_select(~found_zero & is_zero, uint32_t(i), zero_index);
    found_zero |= is_zero;
  }
  good &= found_zero;
  good &= ct_ge(zero_index, 2 + 8);  // at least 8 padding bytes
  const uint32_t msg_index = zero_index + 1;
  const uint32_t mlen = uint32_t(k) - msg_index;  // meaningless (and masked away) when not good

  // Moves the message to em[kPkcs1Overhead..] by shifts of 1, 2, 4, ... bytes, each applied or not
  // by mask, so that no memory access depends on where the message starts.
  uint8_t* m = em.data();
  const uint32_t shift = uint32_t(k - kPkcs1Overhead) - mlen;
  for (size_t step = 1; step < k - kPkcs1Overhead; step <<= 1) {
    const uint32_t apply = ~ct_is_zero(shift & uint32_t(step));
    for (size_t i = kPkcs1Overhead; i < k - step; ++i) m[i] = ct_select8(apply, m[i + step], m[i]);
  }
  SecretBytes out(k - kPkcs1Overhead);  // the longest valid message; synthetic_len is shorter
  for (size_t i = 0; i < out.size(); ++i)
    out.data()[i] = ct_select8(good, m[kPkcs1Overhead + i], synthetic.data()[i]);
  const size_t len = ct_select(good, mlen, synthetic_len);
  return SecretBytes(out.data(), len);
}

Result<SecretBytes> oaep_decode(const SecretBytes& em, const EVP_MD* md, const uint8_t* label, size_t label_len) {
  SecretBytes out(em.size());
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  // OpenSSL 3 keeps this decoder (constant time) only as a deprecated function; its replacement
  // wants the private key, which is in the TPM.
  const int n = RSA_padding_check_PKCS1_OAEP_mgf1(out.data(), int(out.size()), em.data(), int(em.size()),
                                                  int(em.size()), label, int(label_len), md, md);
#pragma GCC diagnostic pop
  ERR_clear_error();
  if (n < 0) return make_error(Reason::kInvalidArgument, "decryption failed (OAEP decoding)");
  return SecretBytes(out.data(), size_t(n));
}

}  // namespace tpmkey
