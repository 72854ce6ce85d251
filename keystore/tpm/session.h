// Session: the client side of one TPM 2.0 HMAC authorization session, computed by tpmkey itself
// (tpm2-tss 3.2.1's ESYS session crypto costs several times the TPM's own signing time;
// docs/sessions.md). References are to TPM 2.0 Library Part 1: §19.6 HMAC sessions and session
// keys, §21 session-based parameter encryption (CFB mode). The TPM's KDFs and the ECDH salt are
// in kdf.h.
//
// The runner (runner.h) drives the commands; this file holds the session's secrets and does the math:
//   salt     an ephemeral ECDH with the storage root key, so only that TPM can derive the key
//   key      sessionKey = KDFa(SHA-256, salt, "ATH", nonceTPM, nonceCaller)
//   command  parameter 1 encrypted with AES-128-CFB, then HMAC(sessionKey || authValue, cpHash ...)
//   response HMAC verified (constant time) before anything in it is used, then parameter 1 decrypted
#pragma once

#include <cstdint>
#include <span>

#include <tss2/tss2_sys.h>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

// Session attribute choices for one command.
struct CommandProtection {
  bool encrypt_command = false;   // TPMA_SESSION_DECRYPT: the first command parameter is secret
  bool decrypt_response = false;  // TPMA_SESSION_ENCRYPT: the first response parameter is secret
  // TPMA_SESSION_AUDIT with no handle to authorize: the session only proves, by its response HMAC,
  // that it is still tpmkey's session in this TPM (a failure is never a dictionary-attack strike).
  bool audit = false;
};

class Session {
 public:
  static constexpr TPM2_ALG_ID kHash = TPM2_ALG_SHA256;
  static constexpr size_t kNonceSize = 32;

  Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { end(); }

  bool active() const { return handle_ != 0; }
  TPMI_SH_AUTH_SESSION handle() const { return handle_; }
  // A fresh caller nonce for TPM2_StartAuthSession (kept for the session key).
  Status new_start_nonce(const Crypto& c, TPM2B_NONCE* out);
  // After TPM2_StartAuthSession succeeded. `salt` is empty for an unsalted session.
  void begin(const Crypto& c, TPMI_SH_AUTH_SESSION handle, const SecretBytes& salt, const TPM2B_NONCE& nonce_tpm);
  // Forgets the session and wipes its key (the caller flushes it from the TPM if it still can).
  void end();

  // Between Tss2_Sys_*_Prepare and Tss2_Sys_Execute: encrypts parameter 1 if asked, computes the
  // command HMAC over the command code, the handles' names and the parameters, and sets the
  // authorization area. `auth` is the authValue of the entity the session authorizes.
  TSS2_RC authorize(const Crypto& c, TSS2_SYS_CONTEXT* sys, TPM2_CC cc, std::span<const Bytes* const> names,
                    const SecretBytes& auth, CommandProtection prot);
  // After a successful Tss2_Sys_Execute: verifies the response HMAC (TSS2_ESYS_RC_RSP_AUTH_FAILED
  // if it does not match, and nothing from the response may be used), takes the new nonceTPM and
  // decrypts response parameter 1 if it was encrypted. Any failure here leaves the session out
  // of step with the TPM (it did run the command and moved its nonce): the caller must flush it.
  TSS2_RC check_response(const Crypto& c, TSS2_SYS_CONTEXT* sys, TPM2_CC cc, const SecretBytes& auth);

 private:
  SecretBytes value(const SecretBytes& auth) const;  // sessionKey || authValue (trailing zeros cut)
  Status cfb(const Crypto& c, const SecretBytes& auth, const Bytes& newer, const Bytes& older, bool encrypt,
             uint8_t* data, size_t len) const;

  TPMI_SH_AUTH_SESSION handle_ = 0;
  SecretBytes key_;
  Bytes nonce_tpm_, nonce_caller_;
  TPMA_SESSION attrs_ = 0;  // of the command in flight
};

}  // namespace tpmkey
