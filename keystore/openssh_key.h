// OpenSSH's own private key format ("-----BEGIN OPENSSH PRIVATE KEY-----", what ssh-keygen writes
// by default; OpenSSH's PROTOCOL.key), read in memory for `tpmkey import`: unencrypted keys
// (cipher and kdf "none") of type ecdsa-sha2-nistp256/384/521 and ssh-rsa, checked throughout
// (lengths, the two check ints, the padding, the curve against the key type, the public blob against
// the private section, the key pair itself with OpenSSL) and made into an EVP_PKEY. Encrypted
// keys (kdf "bcrypt") are refused with how to convert a copy; Ed25519, DSA and security-key
// types with what tpmkey imports. Secret buffers are wiped. No TPM command here.
#pragma once

#include <string>
#include <string_view>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

inline constexpr std::string_view kOpenSshPemLabel = "OPENSSH PRIVATE KEY";

// `text` starts at the file's "-----BEGIN OPENSSH PRIVATE KEY-----" line; `path` is only for
// messages. The key is made in the Crypto's library context (default provider). Errors carry no
// context (the caller adds "read(PATH)").
Result<EvpPkeyPtr> read_openssh_private_key(const Crypto& c, std::string_view text, const std::string& path);

}  // namespace tpmkey
