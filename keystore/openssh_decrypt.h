// Passphrase-protected OpenSSH private keys (kdf "bcrypt") for `tpmkey import` and `tpmkey wrap`,
// decrypted by OpenSSH's own ssh-keygen, since neither OpenSSL nor tpmkey has bcrypt_pbkdf
// (docs/keys.md, "Passphrase-protected OpenSSH keys"; docs/architecture.md). A copy of the file is
// written (0600) into a private directory (mkdtemp, 0700, under $TMPDIR or /tmp), and
// `ssh-keygen -p -m PKCS8 -f COPY` rewrites the copy as encrypted PKCS#8 under a fresh random
// passphrase; the caller decrypts that in memory with OpenSSL. The cleartext key is never on disk,
// and no passphrase is in an argument vector or an environment: ssh-keygen runs in a new session
// (no controlling terminal) with askpass disabled, so it reads its three answers (the passphrase,
// the new one twice) from its standard input, a socket this process writes them into. The copy is
// overwritten and removed, and the directory removed, on every path. No TPM command here.
#pragma once

#include <string_view>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

struct SshKeygenPkcs8 {
  SecretBytes pem;         // "-----BEGIN ENCRYPTED PRIVATE KEY-----" ...: the key, encrypted under `passphrase`
  SecretBytes passphrase;  // 64 hex digits of 32 random bytes
};

// `text` is the whole OpenSSH key file; `passphrase` its passphrase. A wrong passphrase is
// Reason::kAuthFailed; ssh-keygen not installed is Reason::kUnsupported with what to install and
// how to convert a copy by hand (`path` names the file there). Errors carry no "read(PATH)" context.
Result<SshKeygenPkcs8> decrypt_with_ssh_keygen(const Crypto& c, std::string_view text, const SecretBytes& passphrase,
                                               const std::string& path);

}  // namespace tpmkey
