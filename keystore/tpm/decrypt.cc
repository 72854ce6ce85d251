// Decryption and key agreement: TPM2_RSA_Decrypt and TPM2_ECDH_ZGen, done like signing (sign.cc):
// the key loaded once, the command authorized in the salted session (a password key by the
// session HMAC, never in clear), and the secret that comes back (the message, the shared point)
// encrypted by the session on the bus (response parameter encryption).
#include <cstring>

#include "keystore/tpm/driver.h"

namespace tpmkey {
namespace {

// Copies `b` into a TPM2B buffer of `cap` bytes; false if it does not fit.
template <typename T>
bool put_2b(T& out, const Bytes& b) {
  if (b.size() > sizeof out.buffer) return false;
  out.size = uint16_t(b.size());
  if (!b.empty()) std::memcpy(out.buffer, b.data(), b.size());
  return true;
}

// Wipes the response parameters that tss2-sys keeps in its context (there in clear once the
// session decrypted them) after they were copied out.
TSS2_RC wipe_response(TSS2_SYS_CONTEXT* sys, TSS2_RC rc) {
  size_t n = 0;
  const uint8_t* p = nullptr;
  if (Tss2_Sys_GetRpBuffer(sys, &n, &p) == TSS2_RC_SUCCESS && p && n) OPENSSL_cleanse(const_cast<uint8_t*>(p), n);
  return rc;
}

}  // namespace

Result<SecretBytes> Tpm::rsa_decrypt(ObjectId id, const KeyFile& kf, const SecretBytes& auth,
                                     const RsaDecryptRequest& req) {
  TPM2B_PUBLIC_KEY_RSA cipher{};
  TPM2B_DATA label{};
  if (!put_2b(cipher, req.ciphertext)) return make_error(Reason::kInvalidArgument, "the ciphertext is too long");
  if (!put_2b(label, req.label)) return make_error(Reason::kInvalidArgument, "the OAEP label is too long for the TPM");
  TPMT_RSA_DECRYPT scheme{};
  scheme.scheme = req.scheme;
  if (req.scheme == TPM2_ALG_OAEP) scheme.details.oaep.hashAlg = req.hash;
  return operation<Result<SecretBytes>>([&]() -> Result<SecretBytes> {
    SecretBytes out;
    Status st = with_key(id, kf, "TPM2_RSA_Decrypt", [&](const Object& key, Session* s) {
      TPM2B_PUBLIC_KEY_RSA message{};
      TSS2_RC rc = run_.run(
          s, TPM2_CC_RSA_Decrypt, {&key.name}, auth, {.encrypt_command = true, .decrypt_response = true},
          [&] { return Tss2_Sys_RSA_Decrypt_Prepare(run_.sys(), key.tpm_handle(), &cipher, &scheme, &label); },
          [&] { return wipe_response(run_.sys(), Tss2_Sys_RSA_Decrypt_Complete(run_.sys(), &message)); });
      if (rc == TSS2_RC_SUCCESS) out = SecretBytes(message.buffer, message.size);
      OPENSSL_cleanse(&message, sizeof message);
      return rc;
    });
    if (!st) return st.take_error();
    return out;
  });
}

Result<SecretBytes> Tpm::ecdh_zgen(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const Bytes& x,
                                   const Bytes& y) {
  TPM2B_ECC_POINT in{};
  if (!put_2b(in.point.x, x) || !put_2b(in.point.y, y))
    return make_error(Reason::kInvalidArgument, "the peer point's coordinates are too long");
  in.size = uint16_t(2 + x.size() + 2 + y.size());
  return operation<Result<SecretBytes>>([&]() -> Result<SecretBytes> {
    SecretBytes out;
    Status st = with_key(id, kf, "TPM2_ECDH_ZGen", [&](const Object& key, Session* s) {
      TPM2B_ECC_POINT shared{};
      // The peer point is public: only the response (the shared point) is secret.
      TSS2_RC rc = run_.run(
          s, TPM2_CC_ECDH_ZGen, {&key.name}, auth, {.decrypt_response = true},
          [&] { return Tss2_Sys_ECDH_ZGen_Prepare(run_.sys(), key.tpm_handle(), &in); },
          [&] { return wipe_response(run_.sys(), Tss2_Sys_ECDH_ZGen_Complete(run_.sys(), &shared)); });
      if (rc == TSS2_RC_SUCCESS) out = SecretBytes(shared.point.x.buffer, shared.point.x.size);
      OPENSSL_cleanse(&shared, sizeof shared);
      return rc;
    });
    if (!st) return st.take_error();
    return out;
  });
}

}  // namespace tpmkey
