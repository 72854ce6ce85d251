#include "keystore/tpm/session.h"

#include <cstring>

#include <tss2/tss2_mu.h>

#include "keystore/algorithm.h"
#include "keystore/tpm/kdf.h"

namespace tpmkey {
namespace {

Bytes be_bytes(const uint8_t* p, size_t n) { return Bytes(p, p + n); }

}  // namespace

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
  if (prot.audit) attrs_ |= TPMA_SESSION_AUDIT;
  if (prot.encrypt_command) {
    size_t n = 0;
    const uint8_t* p = nullptr;
    TSS2_RC rc = Tss2_Sys_GetDecryptParam(sys, &n, &p);
    if (rc == TSS2_RC_SUCCESS && n == 0) {
      // An empty first parameter (an empty new password): nothing to encrypt, and tss2-sys takes
      // no empty buffer back.
    } else if (rc == TSS2_RC_SUCCESS) {
      SecretBytes param(p, n);
      if (n && !cfb(c, auth, nonce_caller_, nonce_tpm_, true, param.data(), n)) return TSS2_ESYS_RC_GENERAL_FAILURE;
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
  ok = ok && hmac_parts(md, span_of(value(auth)),
                        {{cp_hash, a.hmac.size}, nonce_caller_, nonce_tpm_, {&a.sessionAttributes, 1}},
                        a.hmac.buffer);
  if (!ok) return TSS2_ESYS_RC_GENERAL_FAILURE;
  TSS2_RC rc = Tss2_Sys_SetCmdAuths(sys, &cmd);
  OPENSSL_cleanse(&cmd, sizeof cmd);
  return rc;
}

TSS2_RC Session::check_response(const Crypto& c, TSS2_SYS_CONTEXT* sys, TPM2_CC cc, const SecretBytes& auth) {
  TSS2L_SYS_AUTH_RESPONSE rsp{};
  if (TSS2_RC rc = Tss2_Sys_GetRspAuths(sys, &rsp); rc != TSS2_RC_SUCCESS) return TSS2_SYS_RC_MALFORMED_RESPONSE;
  if (rsp.count != 1) return TSS2_ESYS_RC_RSP_AUTH_FAILED;
  const TPMS_AUTH_RESPONSE& r = rsp.auths[0];
  const uint8_t* rp = nullptr;
  size_t rp_len = 0;
  if (TSS2_RC rc = Tss2_Sys_GetRpBuffer(sys, &rp_len, &rp); rc != TSS2_RC_SUCCESS)
    return TSS2_SYS_RC_MALFORMED_RESPONSE;
  if (r.nonce.size < 16 || r.nonce.size > sizeof r.nonce.buffer) return TSS2_ESYS_RC_RSP_AUTH_FAILED;

  const EVP_MD* md = c.md(kHash);
  const size_t len = size_t(EVP_MD_get_size(md));
  uint8_t head[8] = {};  // responseCode (success) || commandCode
  put_be32(head + 4, cc);
  uint8_t rp_hash[EVP_MAX_MD_SIZE], expect[EVP_MAX_MD_SIZE];
  Bytes nonce_tpm = be_bytes(r.nonce.buffer, r.nonce.size);
  if (!digest_parts(md, {{head, 8}, {rp, rp_len}}, rp_hash) ||
      !hmac_parts(md, span_of(value(auth)), {{rp_hash, len}, nonce_tpm, nonce_caller_, {&r.sessionAttributes, 1}},
                  expect))
    return TSS2_ESYS_RC_GENERAL_FAILURE;
  if (r.hmac.size != len || CRYPTO_memcmp(expect, r.hmac.buffer, len) != 0) return TSS2_ESYS_RC_RSP_AUTH_FAILED;
  nonce_tpm_ = std::move(nonce_tpm);

  if (attrs_ & TPMA_SESSION_ENCRYPT) {
    size_t n = 0;
    const uint8_t* p = nullptr;
    TSS2_RC rc = Tss2_Sys_GetEncryptParam(sys, &n, &p);
    if (rc == TSS2_SYS_RC_NO_ENCRYPT_PARAM) return TSS2_RC_SUCCESS;
    if (rc != TSS2_RC_SUCCESS) return TSS2_SYS_RC_MALFORMED_RESPONSE;
    // The size comes from the response: it must lie inside the response parameters (which the
    // HMAC above covered), after its own 2-byte size field.
    if (!p || p < rp || n > rp_len || size_t(p - rp) > rp_len - n) return TSS2_SYS_RC_MALFORMED_RESPONSE;
    SecretBytes param(p, n);
    if (n && !cfb(c, auth, nonce_tpm_, nonce_caller_, false, param.data(), n)) return TSS2_ESYS_RC_GENERAL_FAILURE;
    return Tss2_Sys_SetEncryptParam(sys, n, param.data());
  }
  return TSS2_RC_SUCCESS;
}

}  // namespace tpmkey
