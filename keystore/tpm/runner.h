// Runner: sends one TPM command through the connection, authorized in tpmkey's session (or, with
// the documented opt-out, with a cleartext password), and releases handles. The only code that
// calls Tss2_Sys_Execute or flushes.
//
//   prepare (Tss2_Sys_X_Prepare) -> authorize (session HMAC, parameter 1 encrypted)
//     -> execute -> check the response HMAC, decrypt parameter 1 -> complete (Tss2_Sys_X_Complete)
//
// TPM_RC_RETRY, YIELDED and TESTING ask for the same command again (ESYS does this itself;
// tss2-sys does not): each attempt is prepared and authorized afresh. A response whose
// authorization area does not check out leaves the session out of step with the TPM (which did
// run the command and moved its nonce), so the runner flushes the session then and there.
#pragma once

#include <unistd.h>

#include <cstring>
#include <initializer_list>
#include <span>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/tpm/connection.h"
#include "keystore/tpm/handles.h"
#include "keystore/tpm/session.h"

namespace tpmkey {

class Runner {
 public:
  Runner(Connection& conn, const Crypto& crypto) : conn_(conn), crypto_(crypto) {}

  // One command authorizing `names[0]`'s entity with `auth` in `session`; without a session
  // (nullptr), a TPM_RS_PW authorization. `names` are the names of all the command's handles.
  template <typename Prepare, typename Complete>
  TSS2_RC run(Session* session, TPM2_CC cc, std::initializer_list<const Bytes*> names, const SecretBytes& auth,
              CommandProtection prot, Prepare&& prepare, Complete&& complete) {
    return resend([&] { return run_once(session, cc, names, auth, prot, prepare, complete); });
  }
  // A command that authorizes nothing and needs no session (ReadPublic, GetCapability, ...).
  template <typename Fn>
  TSS2_RC plain(Fn&& fn) {
    return resend([&] { return conn_.call(fn); });
  }

  // Flushes a transient object or a session of tpmkey's (TPM2_FlushContext).
  void flush(TransientHandle&& h) {
    const TPM2_HANDLE n = h.take();
    if (n) conn_.call([&] { return Tss2_Sys_FlushContext(conn_.sys(), n); });
  }
  void flush(Session& s) {
    const TPM2_HANDLE n = s.handle();
    s.end();
    if (n) conn_.call([&] { return Tss2_Sys_FlushContext(conn_.sys(), n); });
  }

  TSS2_SYS_CONTEXT* sys() const { return conn_.sys(); }
  const Crypto& crypto() const { return crypto_; }

 private:
  template <typename Fn>
  static TSS2_RC resend(Fn&& fn) {
    TSS2_RC rc = TSS2_RC_SUCCESS;
    for (int attempt = 0; attempt < 50; ++attempt) {
      rc = fn();
      const uint32_t c = tpm_base_code(rc);
      if (c != TPM2_RC_RETRY && c != TPM2_RC_YIELDED && c != TPM2_RC_TESTING) break;
      if (attempt) usleep(1000 * unsigned(attempt));
    }
    return rc;
  }

  template <typename Prepare, typename Complete>
  TSS2_RC run_once(Session* session, TPM2_CC cc, std::initializer_list<const Bytes*> names, const SecretBytes& auth,
                   CommandProtection prot, Prepare& prepare, Complete& complete) {
    if (!conn_.sys()) return TSS2_TCTI_RC_IO_ERROR;
    TSS2_RC rc = prepare();
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (session) {
      rc = session->authorize(crypto_, conn_.sys(), cc, std::span<const Bytes* const>(names.begin(), names.size()),
                              auth, prot);
    } else {  // the documented opt-out: the password travels in clear
      TSS2L_SYS_AUTH_COMMAND cmd{};
      cmd.count = 1;
      cmd.auths[0].sessionHandle = TPM2_RS_PW;
      if (auth.size() > sizeof cmd.auths[0].hmac.buffer) return TSS2_SYS_RC_BAD_SIZE;
      cmd.auths[0].hmac.size = uint16_t(auth.size());
      if (!auth.empty()) std::memcpy(cmd.auths[0].hmac.buffer, auth.data(), auth.size());
      rc = Tss2_Sys_SetCmdAuths(conn_.sys(), &cmd);
      OPENSSL_cleanse(&cmd, sizeof cmd);
    }
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = conn_.call([&] { return Tss2_Sys_Execute(conn_.sys()); });
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (session && (rc = session->check_response(crypto_, conn_.sys(), cc, auth)) != TSS2_RC_SUCCESS) {
      flush(*session);  // nothing from this response is used, and the session is out of step
      return rc;
    }
    rc = complete();
    // The response passed its HMAC check but does not parse: the TPM (or whatever answers in its
    // place) sent malformed data.
    if (rc != TSS2_RC_SUCCESS && (rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return TSS2_SYS_RC_MALFORMED_RESPONSE;
    return rc;
  }

  Connection& conn_;
  const Crypto& crypto_;
};

}  // namespace tpmkey
