#include "keystore/tpm/duplicate.h"

#include <cstring>

#include <tss2/tss2_mu.h>

#include "keystore/algorithm.h"
#include "keystore/tpm/kdf.h"

namespace tpmkey {
namespace {

// Stack buffers that held secrets are wiped however the function ends.
template <typename T>
struct Wiped {
  T value{};
  Wiped() = default;
  Wiped(const Wiped&) = delete;
  Wiped& operator=(const Wiped&) = delete;
  ~Wiped() { OPENSSL_cleanse(&value, sizeof value); }
};

bool is_aes128_cfb_storage_key(const TPMT_PUBLIC& p) {
  const TPMT_SYM_DEF_OBJECT& sym = p.parameters.eccDetail.symmetric;
  return p.type == TPM2_ALG_ECC && (p.objectAttributes & TPMA_OBJECT_RESTRICTED) &&
         (p.objectAttributes & TPMA_OBJECT_DECRYPT) && sym.algorithm == TPM2_ALG_AES && sym.keyBits.aes == 128 &&
         sym.mode.aes == TPM2_ALG_CFB;
}

}  // namespace

Result<Duplicate> make_duplicate(const Crypto& c, const TPMT_PUBLIC& parent, const TPMT_PUBLIC& key,
                                 const SecretBytes& secret, const SecretBytes& auth) {
  const std::string what = "wrap the key for its parent";
  if (!is_aes128_cfb_storage_key(parent))
    return make_error(Reason::kUnsupported, "the parent is not an ECC storage key with AES-128-CFB").context(what);
  const EVP_MD* md = c.md(parent.nameAlg);
  const size_t key_digest = hash_size(key.nameAlg);
  if (!md || !key_digest) return make_error(Reason::kUnsupported, "unsupported name algorithm").context(what);
  const size_t digest = size_t(EVP_MD_get_size(md));
  // Part 2: authValue and seedValue are at most the digest size of the object's nameAlg.
  if (auth.size() > key_digest)
    return make_error(Reason::kInvalidArgument, "the password is longer than " + std::to_string(key_digest) + " bytes")
        .context(what);

  Wiped<TPMT_SENSITIVE> sens;
  TPMT_SENSITIVE& s = sens.value;
  s.sensitiveType = key.type;
  s.authValue.size = uint16_t(auth.size());
  if (!auth.empty()) std::memcpy(s.authValue.buffer, auth.data(), auth.size());
  s.seedValue.size = uint16_t(key_digest);
  if (!c.random(s.seedValue.buffer, key_digest))
    return make_error(Reason::kInternal, "the random generator failed").context(what);
  if (key.type == TPM2_ALG_RSA && secret.size() <= sizeof s.sensitive.rsa.buffer) {
    s.sensitive.rsa.size = uint16_t(secret.size());
    std::memcpy(s.sensitive.rsa.buffer, secret.data(), secret.size());
  } else if (key.type == TPM2_ALG_ECC && secret.size() <= sizeof s.sensitive.ecc.buffer) {
    s.sensitive.ecc.size = uint16_t(secret.size());
    std::memcpy(s.sensitive.ecc.buffer, secret.data(), secret.size());
  } else {
    return make_error(Reason::kInvalidArgument, "the private key does not fit the TPM's sensitive area").context(what);
  }

  // TPM2B_SENSITIVE: a 16-bit size, then the TPMT_SENSITIVE.
  Wiped<uint8_t[sizeof(TPM2B_SENSITIVE)]> plain;
  size_t off = 2;
  if (TSS2_RC rc = Tss2_MU_TPMT_SENSITIVE_Marshal(&s, plain.value, sizeof plain.value, &off); rc != TSS2_RC_SUCCESS)
    return tss_error("marshal the sensitive area", rc).context(what);
  const size_t body = off - 2;
  plain.value[0] = uint8_t(body >> 8);
  plain.value[1] = uint8_t(body);
  const size_t plain_len = off;

  auto name = object_name(c, key);
  if (!name) return name.take_error().context(what);
  auto shared = ecdh_share(c, parent, "DUPLICATE");
  if (!shared) return shared.take_error().context(what);
  const SecretBytes sym_key = kdfa(c, parent.nameAlg, shared->value, "STORAGE", *name, {}, 128);
  const SecretBytes hmac_key = kdfa(c, parent.nameAlg, shared->value, "INTEGRITY", {}, {}, digest * 8);
  if (sym_key.size() != 16 || hmac_key.size() != digest)
    return make_error(Reason::kInternal, "KDFa failed").context(what);

  Duplicate out;
  TPM2B_PRIVATE& dup = out.duplicate;
  const size_t integrity = 2 + digest;
  if (integrity + plain_len > sizeof dup.buffer)
    return make_error(Reason::kInvalidArgument, "the wrapped key would not fit a TPM2B_PRIVATE").context(what);
  uint8_t* enc = dup.buffer + integrity;
  const uint8_t iv[16] = {};
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int outl = 0;
  if (!ctx || EVP_CipherInit_ex2(ctx.get(), c.aes128_cfb(), sym_key.data(), iv, 1, nullptr) != 1 ||
      EVP_CipherUpdate(ctx.get(), enc, &outl, plain.value, int(plain_len)) != 1 || size_t(outl) != plain_len)
    return make_error(Reason::kInternal, "AES-128-CFB failed").context(what);
  dup.buffer[0] = uint8_t(digest >> 8);
  dup.buffer[1] = uint8_t(digest);
  if (!hmac_parts(md, span_of(hmac_key), {{enc, plain_len}, *name}, dup.buffer + 2))
    return make_error(Reason::kInternal, "HMAC failed").context(what);
  dup.size = uint16_t(integrity + plain_len);
  out.sym_seed = shared->encrypted;
  return out;
}

}  // namespace tpmkey
