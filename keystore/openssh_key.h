// OpenSSH's own private key format ("-----BEGIN OPENSSH PRIVATE KEY-----", what ssh-keygen writes
// by default; OpenSSH's PROTOCOL.key), read in memory for `tpmkey import`: unencrypted keys
// (cipher and kdf "none") of type ecdsa-sha2-nistp256/384/521 and ssh-rsa, checked throughout
// (lengths, the two check ints, the padding, the curve against the key type, the public blob against
// the private section, the key pair itself with OpenSSL) and made into an EVP_PKEY. Encrypted
// keys (kdf "bcrypt") are told by their header (read_openssh_header) and decrypted by ssh-keygen
// (keystore/openssh_decrypt.h); check_openssh_public_key then ties the result to the file.
// Ed25519, DSA and security-key types are refused with what tpmkey imports. Secret buffers are
// wiped. No TPM command here.
#pragma once

#include <string>
#include <string_view>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

inline constexpr std::string_view kOpenSshPemLabel = "OPENSSH PRIVATE KEY";

// In each, `text` starts at the file's "-----BEGIN OPENSSH PRIVATE KEY-----" line. Errors carry
// no context (the caller adds "read(PATH)").

struct OpenSshHeader {
  std::string type;    // "ecdsa-sha2-nistp256", "ssh-rsa", ...: one tpmkey imports
  std::string cipher;  // "none", or "aes256-ctr", ...
  std::string kdf;     // "none", or "bcrypt"
  bool encrypted = false;
  Bytes public_blob;   // the SSH public key blob (in clear in an encrypted file too)
};
// The header and the public key, checked: damaged files, files with more than one key, key types
// tpmkey does not import and kdfs other than bcrypt are refused, before any passphrase is asked.
Result<OpenSshHeader> read_openssh_header(std::string_view text);

// An unencrypted key. The key is made in the Crypto's library context (default provider).
Result<EvpPkeyPtr> read_openssh_private_key(const Crypto& c, std::string_view text);

// Whether `pkey`'s public key is the header's (an encrypted file's public key is in clear).
Status check_openssh_public_key(const OpenSshHeader& header, EVP_PKEY* pkey);

}  // namespace tpmkey
