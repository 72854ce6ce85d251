// Software private keys for `tpmkey import`: telling what a key file is (a TPM key file, an
// OpenSSH private key, or something for OpenSSL's decoders), reading a private key with OpenSSL's
// decoders (PEM or DER: PKCS#1, SEC1, PKCS#8, encrypted PKCS#8, legacy encrypted PEM; the
// passphrase asked for only when the file is encrypted) or, for OpenSSH's own format, with
// keystore/openssh_key.h (and ssh-keygen for passphrase-protected ones), and the key's TPM form: the public area of
// an imported key and the private value the TPM keeps (docs/keys.md, "Importing existing keys").
// No TPM command here.
#pragma once

#include <functional>
#include <string>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/algorithm.h"
#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

enum class KeyFileKind {
  kTss2,     // a TSS2 PRIVATE KEY file (PEM or DER): the key is in a TPM already (import-file)
  kOpenSsh,  // OpenSSH's own private key format ("BEGIN OPENSSH PRIVATE KEY")
  kOther,    // anything else: read_private_key reads it or says what it is
};
// "tpmkey imports RSA keys of 2048, ...": what refusals of other key types end with.
extern const char* const kWhatImports;

// Looks at the file's PEM labels, or its first DER bytes. Errors name the path.
Result<KeyFileKind> identify_key_file(const std::string& path);

// How the passphrase of an encrypted file is had (a file, a prompt). Called at most once, and only
// when the file turns out to be encrypted.
using PassphraseSource = std::function<Result<SecretBytes>()>;

struct SoftwareKey {
  EvpPkeyPtr pkey;      // the key pair, in the Crypto's library context
  std::string format;   // what was read: "PKCS#8 PEM", "encrypted PKCS#8 PEM", "DER", ...
  bool encrypted = false;
};

// Decodes the private key in `path` with OpenSSL's decoders (default provider only), or an
// unencrypted OpenSSH key with read_openssh_private_key (format "OpenSSH format"), or a
// passphrase-protected one with ssh-keygen's help (keystore/openssh_decrypt.h; format "encrypted
// OpenSSH format, CIPHER with bcrypt, decrypted by ssh-keygen"). A public key, a certificate, a TPM
// key file, a damaged file and a wrong passphrase are refused, each with its own message. The file
// is only read.
Result<SoftwareKey> read_private_key(const Crypto& c, const std::string& path, const PassphraseSource& passphrase);

// The key as TPM2_Import takes it.
struct ImportForm {
  const AlgorithmSpec* spec = nullptr;
  TPM2B_PUBLIC pub{};  // import_template() with unique = the modulus, or the point padded to the field
  SecretBytes secret;  // RSA: the prime p, padded to half the modulus; EC: d, padded to the field
};

// For an RSA key of 2048, 3072 or 4096 bits (two primes, a public exponent below 2^32) or an EC key
// on P-256, P-384 or P-521; anything else (Ed25519, X25519, other curves and sizes, DSA, ...) is
// refused with what tpmkey imports. `with_auth`: the key gets a password (no noDA).
Result<ImportForm> import_form(EVP_PKEY* pkey, bool with_auth);

}  // namespace tpmkey
