#include "keystore/session.h"

#include <cstring>
#include <initializer_list>

#include <openssl/core_names.h>
#include <tss2/tss2_mu.h>

#include "keystore/algorithm.h"
#include "keystore/public_key.h"

namespace tpmkey {
namespace {

using Parts = std::initializer_list<std::span<const uint8_t>>;

void put_be32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}

std::span<const uint8_t> label_span(const char* label) {  // with its terminating zero
  return {reinterpret_cast<const uint8_t*>(label), std::strlen(label) + 1};
}

std::span<const uint8_t> span_of(const SecretBytes& s) { return {s.data(), s.size()}; }

// H(parts...) with a digest fetched once; false if OpenSSL failed.
bool digest(const EVP_MD* md, Parts parts, uint8_t* out) {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex2(ctx.get(), md, nullptr) != 1) return false;
  for (auto p : parts)
    if (!p.empty() && EVP_DigestUpdate(ctx.get(), p.data(), p.size()) != 1) return false;
  return EVP_DigestFinal_ex(ctx.get(), out, nullptr) == 1;
}

// HMAC (RFC 2104) over parts..., built on the prefetched digest: no fetch per call.
bool hmac(const EVP_MD* md, std::span<const uint8_t> key, Parts parts, uint8_t* out) {
  const size_t block = size_t(EVP_MD_get_block_size(md));
  const size_t len = size_t(EVP_MD_get_size(md));
  uint8_t k[EVP_MAX_MD_SIZE * 2] = {};  // block sizes of SHA-1/2 are at most 128 = 2 * 64
  if (block > sizeof k) return false;
  bool ok = true;
  if (key.size() > block) ok = digest(md, {key}, k);
  else if (!key.empty()) std::memcpy(k, key.data(), key.size());
  uint8_t ipad[sizeof k], opad[sizeof k], inner[EVP_MAX_MD_SIZE];
  for (size_t i = 0; i < block; ++i) {
    ipad[i] = k[i] ^ 0x36;
    opad[i] = k[i] ^ 0x5c;
  }
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  ok = ok && ctx && EVP_DigestInit_ex2(ctx.get(), md, nullptr) == 1 &&
       EVP_DigestUpdate(ctx.get(), ipad, block) == 1;
  for (auto p : parts)
    ok = ok && (p.empty() || EVP_DigestUpdate(ctx.get(), p.data(), p.size()) == 1);
  ok = ok && EVP_DigestFinal_ex(ctx.get(), inner, nullptr) == 1 &&
       digest(md, {{opad, block}, {inner, len}}, out);
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(ipad, sizeof ipad);
  OPENSSL_cleanse(opad, sizeof opad);
  OPENSSL_cleanse(inner, sizeof inner);
  return ok;
}

// Both KDFs: counter-mode blocks until `bits` are produced (whole bytes; TPM uses are multiples of 8).
template <typename Block>
SecretBytes counter_kdf(const EVP_MD* md, size_t bits, Block&& block) {
  const size_t want = (bits + 7) / 8, len = size_t(EVP_MD_get_size(md));
  SecretBytes out;
  uint8_t buf[EVP_MAX_MD_SIZE];
  for (uint32_t i = 1; out.size() < want; ++i) {
    uint8_t counter[4];
    put_be32(counter, i);
    if (!block(counter, buf)) {
      out.wipe();
      break;
    }
    out.append(buf, std::min(len, want - out.size()));
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return out;
}

Bytes be_bytes(const uint8_t* p, size_t n) { return Bytes(p, p + n); }

}  // namespace

Result<Bytes> object_name(const Crypto& c, const TPMT_PUBLIC& pub) {
  const EVP_MD* md = c.md(pub.nameAlg);
  if (!md) return make_error(Reason::kUnsupported, "object name algorithm is not SHA-1/256/384/512");
  uint8_t buf[sizeof(TPMT_PUBLIC)];
  size_t off = 0;
  TSS2_RC rc = Tss2_MU_TPMT_PUBLIC_Marshal(&pub, buf, sizeof buf, &off);
  if (rc != TSS2_RC_SUCCESS) return tss_error("marshal public area", rc);
  Bytes name(2 + size_t(EVP_MD_get_size(md)));
  name[0] = uint8_t(pub.nameAlg >> 8);
  name[1] = uint8_t(pub.nameAlg);
  if (!digest(md, {{buf, off}}, name.data() + 2)) return make_error(Reason::kInternal, "hashing a public area failed");
  return name;
}

Bytes handle_name(TPM2_HANDLE h) {
  Bytes b(4);
  put_be32(b.data(), h);
  return b;
}

SecretBytes kdfa(const Crypto& c, TPM2_ALG_ID hash, const SecretBytes& key, const char* label,
                 std::span<const uint8_t> u, std::span<const uint8_t> v, size_t bits) {
  const EVP_MD* md = c.md(hash);
  if (!md) return {};
  uint8_t len[4];
  put_be32(len, uint32_t(bits));
  return counter_kdf(md, bits, [&](const uint8_t* counter, uint8_t* out) {
    return hmac(md, span_of(key), {{counter, 4}, label_span(label), u, v, {len, 4}}, out);
  });
}

SecretBytes kdfe(const Crypto& c, TPM2_ALG_ID hash, const SecretBytes& z, const char* label,
                 std::span<const uint8_t> u, std::span<const uint8_t> v, size_t bits) {
  const EVP_MD* md = c.md(hash);
  if (!md) return {};
  return counter_kdf(md, bits, [&](const uint8_t* counter, uint8_t* out) {
    return digest(md, {{counter, 4}, span_of(z), label_span(label), u, v}, out);
  });
}

Result<Salt> make_salt(const Crypto& c, const TPMT_PUBLIC& key) {
  const std::string what = "salt a session to the storage root key";
  const AlgorithmSpec* curve = key.type == TPM2_ALG_ECC ? find_ec_curve(key.parameters.eccDetail.curveID) : nullptr;
  const size_t seed_bits = hash_size(key.nameAlg) * 8;
  if (!curve || !seed_bits) return make_error(Reason::kUnsupported, "the salt key is not a supported ECC key").context(what);
  auto peer = public_pkey(key, c.libctx());
  if (!peer) return peer.take_error().context(what);
  // The ephemeral key takes its group from the peer rather than from the curve's name.
  EvpPkeyCtxPtr gctx(EVP_PKEY_CTX_new_from_pkey(c.libctx(), peer->get(), "provider=default"));
  EVP_PKEY* generated = nullptr;
  if (!gctx || EVP_PKEY_keygen_init(gctx.get()) != 1 || EVP_PKEY_keygen(gctx.get(), &generated) != 1)
    return make_error(Reason::kInternal, "cannot generate an ephemeral ECDH key").context(what);
  EvpPkeyPtr eph(generated);
  EvpPkeyCtxPtr dctx(EVP_PKEY_CTX_new_from_pkey(c.libctx(), eph.get(), "provider=default"));
  size_t zlen = 0;
  // No second check of the peer (0): decoding its point already checked that it is on the curve,
  // which for the TPM's curves (all of cofactor 1) is the whole public-key check but for the
  // multiplication by the group order that EVP_PKEY_derive_set_peer would add.
  if (!dctx || EVP_PKEY_derive_init(dctx.get()) != 1 || EVP_PKEY_derive_set_peer_ex(dctx.get(), peer->get(), 0) != 1 ||
      EVP_PKEY_derive(dctx.get(), nullptr, &zlen) != 1)
    return make_error(Reason::kInternal, "ECDH with the storage root key failed").context(what);
  Bytes zbuf(zlen);
  if (EVP_PKEY_derive(dctx.get(), zbuf.data(), &zlen) != 1)
    return make_error(Reason::kInternal, "ECDH with the storage root key failed").context(what);
  SecretBytes z(zbuf.data(), zlen);
  OPENSSL_cleanse(zbuf.data(), zbuf.size());

  uint8_t point[1 + 2 * 66];
  size_t plen = 0;
  if (EVP_PKEY_get_octet_string_param(eph.get(), OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof point, &plen) != 1 ||
      plen < 3 || point[0] != 0x04)
    return make_error(Reason::kInternal, "cannot read the ephemeral ECDH key").context(what);
  const size_t field = (plen - 1) / 2;
  TPMS_ECC_POINT q{};
  q.x.size = q.y.size = uint16_t(field);
  std::memcpy(q.x.buffer, point + 1, field);
  std::memcpy(q.y.buffer, point + 1 + field, field);

  Salt s;
  s.value = kdfe(c, key.nameAlg, z, "SECRET", {q.x.buffer, q.x.size},
                 {key.unique.ecc.x.buffer, key.unique.ecc.x.size}, seed_bits);
  if (s.value.empty()) return make_error(Reason::kInternal, "KDFe failed").context(what);
  size_t off = 0;
  TSS2_RC rc = Tss2_MU_TPMS_ECC_POINT_Marshal(&q, s.encrypted.secret, sizeof s.encrypted.secret, &off);
  if (rc != TSS2_RC_SUCCESS) return tss_error(what, rc);
  s.encrypted.size = uint16_t(off);
  return s;
}

Status Session::new_start_nonce(const Crypto& c, TPM2B_NONCE* out) {
  nonce_caller_.assign(kNonceSize, 0);
  if (!c.random(nonce_caller_.data(), kNonceSize)) return make_error(Reason::kInternal, "the random generator failed");
  out->size = kNonceSize;
  std::memcpy(out->buffer, nonce_caller_.data(), kNonceSize);
  return Status::Ok();
}

void Session::begin(const Crypto& c, TPMI_SH_AUTH_SESSION handle, const SecretBytes& salt,
                    const TPM2B_NONCE& nonce_tpm) {
  handle_ = handle;
  nonce_tpm_ = be_bytes(nonce_tpm.buffer, nonce_tpm.size);
  // Part 1 §19.6.8: no bind and no salt gives an empty session key.
  key_ = salt.empty() ? SecretBytes()
                      : kdfa(c, kHash, salt, "ATH", nonce_tpm_, nonce_caller_, hash_size(kHash) * 8);
}

void Session::end() {
  handle_ = 0;
  key_.wipe();
  nonce_tpm_.clear();
  nonce_caller_.clear();
}

SecretBytes Session::value(const SecretBytes& auth) const {
  SecretBytes v = key_;
  size_t n = auth.size();
  while (n > 0 && auth.data()[n - 1] == 0) --n;  // Part 1 §19.6.5: trailing zeros are not part of it
  v.append(auth.data(), n);
  return v;
}

Status Session::cfb(const Crypto& c, const SecretBytes& auth, const Bytes& newer, const Bytes& older, bool encrypt,
                    uint8_t* data, size_t len) const {
  constexpr size_t kKey = 16, kIv = 16;
  SecretBytes kv = kdfa(c, kHash, value(auth), "CFB", newer, older, (kKey + kIv) * 8);
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int outl = 0;
  if (kv.size() != kKey + kIv || !ctx ||
      EVP_CipherInit_ex2(ctx.get(), c.aes128_cfb(), kv.data(), kv.data() + kKey, encrypt ? 1 : 0, nullptr) != 1 ||
      EVP_CipherUpdate(ctx.get(), data, &outl, data, int(len)) != 1 || size_t(outl) != len)
    return make_error(Reason::kInternal, "parameter encryption failed");
  return Status::Ok();
}

TSS2_RC Session::authorize(const Crypto& c, TSS2_SYS_CONTEXT* sys, TPM2_CC cc, std::span<const Bytes* const> names,
                           const SecretBytes& auth, CommandProtection prot) {
  nonce_caller_.assign(kNonceSize, 0);
  if (!c.random(nonce_caller_.data(), kNonceSize)) return TSS2_ESYS_RC_GENERAL_FAILURE;
  attrs_ = TPMA_SESSION_CONTINUESESSION;
  if (prot.encrypt_command) {
    size_t n = 0;
    const uint8_t* p = nullptr;
    TSS2_RC rc = Tss2_Sys_GetDecryptParam(sys, &n, &p);
    if (rc == TSS2_RC_SUCCESS) {
      SecretBytes param(p, n);
      if (n && !cfb(c, auth, nonce_caller_, nonce_tpm_, true, param.data(), n))
        return TSS2_ESYS_RC_GENERAL_FAILURE;
      if ((rc = Tss2_Sys_SetDecryptParam(sys, n, param.data())) != TSS2_RC_SUCCESS) return rc;
      attrs_ |= TPMA_SESSION_DECRYPT;
    } else if (rc != TSS2_SYS_RC_NO_DECRYPT_PARAM) {
      return rc;
    }
  }
  if (prot.decrypt_response) attrs_ |= TPMA_SESSION_ENCRYPT;

  const uint8_t* cp = nullptr;
  size_t cp_len = 0;
  if (TSS2_RC rc = Tss2_Sys_GetCpBuffer(sys, &cp_len, &cp); rc != TSS2_RC_SUCCESS) return rc;
  uint8_t cc_be[4], cp_hash[EVP_MAX_MD_SIZE];
  put_be32(cc_be, cc);
  const EVP_MD* md = c.md(kHash);
  EvpMdCtxPtr h(EVP_MD_CTX_new());
  bool ok = h && EVP_DigestInit_ex2(h.get(), md, nullptr) == 1 && EVP_DigestUpdate(h.get(), cc_be, 4) == 1;
  for (const Bytes* name : names) ok = ok && EVP_DigestUpdate(h.get(), name->data(), name->size()) == 1;
  ok = ok && EVP_DigestUpdate(h.get(), cp, cp_len) == 1 && EVP_DigestFinal_ex(h.get(), cp_hash, nullptr) == 1;

  TSS2L_SYS_AUTH_COMMAND cmd{};
  cmd.count = 1;
  TPMS_AUTH_COMMAND& a = cmd.auths[0];
  a.sessionHandle = handle_;
  a.nonce.size = kNonceSize;
  std::memcpy(a.nonce.buffer, nonce_caller_.data(), kNonceSize);
  a.sessionAttributes = attrs_;
  a.hmac.size = uint16_t(EVP_MD_get_size(md));
  ok = ok && hmac(md, span_of(value(auth)),
                  {{cp_hash, a.hmac.size}, nonce_caller_, nonce_tpm_, {&a.sessionAttributes, 1}}, a.hmac.buffer);
  if (!ok) return TSS2_ESYS_RC_GENERAL_FAILURE;
  TSS2_RC rc = Tss2_Sys_SetCmdAuths(sys, &cmd);
  OPENSSL_cleanse(&cmd, sizeof cmd);
  return rc;
}

TSS2_RC Session::check_response(const Crypto& c, TSS2_SYS_CONTEXT* sys, TPM2_CC cc, const SecretBytes& auth) {
  TSS2L_SYS_AUTH_RESPONSE rsp{};
  if (TSS2_RC rc = Tss2_Sys_GetRspAuths(sys, &rsp); rc != TSS2_RC_SUCCESS) return rc;
  if (rsp.count != 1) return TSS2_ESYS_RC_RSP_AUTH_FAILED;
  const TPMS_AUTH_RESPONSE& r = rsp.auths[0];
  const uint8_t* rp = nullptr;
  size_t rp_len = 0;
  if (TSS2_RC rc = Tss2_Sys_GetRpBuffer(sys, &rp_len, &rp); rc != TSS2_RC_SUCCESS) return rc;

  const EVP_MD* md = c.md(kHash);
  const size_t len = size_t(EVP_MD_get_size(md));
  uint8_t head[8] = {};  // responseCode (success) || commandCode
  put_be32(head + 4, cc);
  uint8_t rp_hash[EVP_MAX_MD_SIZE], expect[EVP_MAX_MD_SIZE];
  Bytes nonce_tpm = be_bytes(r.nonce.buffer, r.nonce.size);
  if (!digest(md, {{head, 8}, {rp, rp_len}}, rp_hash) ||
      !hmac(md, span_of(value(auth)), {{rp_hash, len}, nonce_tpm, nonce_caller_, {&r.sessionAttributes, 1}}, expect))
    return TSS2_ESYS_RC_GENERAL_FAILURE;
  if (r.hmac.size != len || CRYPTO_memcmp(expect, r.hmac.buffer, len) != 0) return TSS2_ESYS_RC_RSP_AUTH_FAILED;
  nonce_tpm_ = std::move(nonce_tpm);

  if (attrs_ & TPMA_SESSION_ENCRYPT) {
    size_t n = 0;
    const uint8_t* p = nullptr;
    TSS2_RC rc = Tss2_Sys_GetEncryptParam(sys, &n, &p);
    if (rc == TSS2_SYS_RC_NO_ENCRYPT_PARAM) return TSS2_RC_SUCCESS;
    if (rc != TSS2_RC_SUCCESS) return rc;
    SecretBytes param(p, n);
    if (n && !cfb(c, auth, nonce_tpm_, nonce_caller_, false, param.data(), n))
      return TSS2_ESYS_RC_GENERAL_FAILURE;
    return Tss2_Sys_SetEncryptParam(sys, n, param.data());
  }
  return TSS2_RC_SUCCESS;
}

}  // namespace tpmkey
