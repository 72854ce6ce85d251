// Where tpmkey finds its TPM and its keystore: the one place configuration is resolved.
#pragma once

#include <string>

namespace tpmkey {

inline constexpr const char* kEnvTcti = "TPMKEY_TCTI";
inline constexpr const char* kEnvKeystore = "TPMKEY_KEYSTORE";
inline constexpr const char* kEnvAuthorization = "TPMKEY_AUTHORIZATION";

struct Settings {
  std::string tcti;      // a tpm2-tss TCTI string; empty = the tctildr default
  std::string keystore;  // a directory
  // How commands are authorized: "session" (salted, encrypted HMAC session; the default) or
  // "password" (the cleartext TPM_RS_PW opt-out). docs/sessions.md.
  std::string authorization = "session";
};

// Explicit values (openssl.cnf keys or --tcti/--keystore) win, then TPMKEY_TCTI / TPMKEY_KEYSTORE,
// then the tctildr default and $XDG_DATA_HOME/tpmkey (or ~/.local/share/tpmkey); the same for
// `authorization` (TPMKEY_AUTHORIZATION, default "session"). nullptr or "" means "not given".
Settings resolve_settings(const char* tcti, const char* keystore, const char* authorization = nullptr);

}  // namespace tpmkey
