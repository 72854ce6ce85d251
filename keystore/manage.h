// Keystore management: what the CLI's commands do (create, import, import-file, passwd, delete, init), as
// plain functions returning Result/Status. Nothing here prompts, asks for confirmation or prints:
// the caller obtains passwords (from a terminal or a file) and passes them in (a source file's
// passphrase as a callback, asked only when the file is encrypted), and reports what was done from
// the returned description. Errors carry the operation as their outer context ("create(tpm2:NAME)",
// "import(tpm2:NAME)", "import-file(tpm2:NAME)", "passwd(tpm2:NAME)", "delete(tpm2:NAME)", "init(DIR)").
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "keystore/algorithm.h"
#include "keystore/context.h"
#include "keystore/error.h"
#include "keystore/key.h"
#include "keystore/keyfile.h"
#include "keystore/keystore.h"
#include "keystore/ossl.h"
#include "keystore/private_key.h"
#include "keystore/tpm/tpm.h"

namespace tpmkey {

// ---- create ----

struct CreateRequest {
  std::string name;
  const AlgorithmSpec* spec = nullptr;   // nullptr: ec-p256
  unsigned usage = kUsageSign;           // kUsage* bits (algorithm.h): the sign and decrypt attributes
  std::optional<SecretBytes> password;   // nullopt: no password (the key gets noDA); empty is refused
  std::string description;               // stored in the key file
  uint32_t persistent = 0;               // also make it persistent here (0x81000000-0x81ffffff); 0: no
};

struct CreatedKey {
  std::string path;                      // the keystore entry written
  const AlgorithmSpec* spec = nullptr;
  unsigned usage = kUsageSign;
  bool password = false;
  uint32_t persistent = 0;               // 0: not persistent
};

// Whether a key named `name` can be created: a valid name that is not in the keystore yet.
// create_key checks it again; a caller checks first so that nobody types a password in vain.
Status check_create(const Context& ctx, const std::string& name);
// Generates the key in the TPM under the owner SRK, optionally makes it persistent (after checking
// that the handle is free), and writes the keystore entry. When the entry cannot be written, a key
// made persistent is evicted again, so no orphan is left in the TPM.
Result<CreatedKey> create_key(Context& ctx, const CreateRequest& req);

// ---- import-file ----

// A key file read for import, before the TPM is asked anything: the caller learns from it whether
// the check needs a password.
struct KeyFileImport {
  std::string name;          // the keystore name it gets
  std::string path;          // where it was read
  KeyFile file;              // as read from `path`
  std::shared_ptr<Key> key;  // the same key, labelled with `path`, for the self-test
  bool needs_password() const { return !file.empty_auth; }
};

// Checks the name (valid, not taken), reads the file (PEM or DER) and checks that it is a signing
// key tpmkey can use. No TPM command.
Result<KeyFileImport> open_import(Context& ctx, const std::string& name, const std::string& path);

struct ImportOptions {
  // The key's password, for the self-test only (never stored). Used only when the file says the key
  // has one; without it such a key fails the self-test ("needs a password and none was given").
  std::optional<SecretBytes> password;
  std::optional<std::string> description;  // replaces the file's own
};

struct ImportedKey {
  std::string path;                      // the keystore entry written
  const AlgorithmSpec* spec = nullptr;
  uint32_t parent = kOwnerParent;        // the parent the TPM loaded it under
  bool password = false;                 // the stored copy says the key has a password
  // The file said the key has a password, but the TPM accepted an empty one: the copy is stored
  // as a key without a password (tpm2-tools 5.4's tpm2_encodeobject writes emptyAuth inverted).
  bool empty_auth_corrected = false;
};

// Runs the self-test (below) and, only when it passes, adds the key file to the keystore (0600,
// atomic, never overwriting). A key from another TPM or parent, or under a persistent parent that
// is not there, is refused with an explanation.
Result<ImportedKey> import_key_file(Context& ctx, KeyFileImport import, ImportOptions opts);

// The check that a key works on this TPM: the TPM loads it under the parent its file names
// (TPM2_Load), signs a fixed self-test digest (TPM2_Sign), and the signature must verify in
// software with the public key from the file, or with `verify_with` when given (an imported key's
// original).
Status self_test(Key& key, const Crypto& crypto, EVP_PKEY* verify_with = nullptr);

// ---- import (software private keys) ----

// A new key's password is its authValue, which the TPM takes only up to the digest size of the
// key's name algorithm (SHA-256 for every key tpmkey creates or imports): create_key and
// import_private_key refuse a longer one before the TPM is asked anything.
inline constexpr size_t kMaxPasswordBytes = 32;

// A software private key read for import and found importable, before the TPM is asked anything.
struct PrivateKeyImport {
  std::string name;  // the keystore name it gets
  std::string path;  // where it was read (and is left as it was)
  SoftwareKey key;   // as decoded
  const AlgorithmSpec* spec = nullptr;
};

// Whether a key named `name` can be imported: a valid name that is not in the keystore yet (the
// caller checks first, so that nobody types a passphrase in vain).
Status check_import(const Context& ctx, const std::string& name);
// Checks the name, reads PATH with OpenSSL's decoders (`passphrase` is called only when the file is
// encrypted) and checks that tpmkey can import the key (algorithm, size, curve). No TPM command.
Result<PrivateKeyImport> open_private_key(Context& ctx, const std::string& name, const std::string& path,
                                          const PassphraseSource& passphrase);

struct PrivateKeyOptions {
  // The new key's password: nullopt, no password (the key gets noDA); empty, or longer than
  // kMaxPasswordBytes, is refused before the TPM is asked anything.
  std::optional<SecretBytes> password;
  std::string description;  // stored in the key file
};

struct ImportedPrivateKey {
  std::string path;                     // the keystore entry written
  const AlgorithmSpec* spec = nullptr;
  std::string format;                   // what was read: "PKCS#8 PEM", "encrypted PKCS#8 PEM", "DER", ...
  bool encrypted = false;               // the source file was encrypted (a passphrase was used)
  bool password = false;                // the new key has a password
};

// Asks the TPM whether it has the algorithm (TPM2_TestParms), wraps the key in software for the
// SRK, brings it in (TPM2_Import in the salted session), loads it and signs the self-test digest
// (TPM2_Load, TPM2_Sign), verifying the signature with the ORIGINAL key's public half; only then
// writes the keystore entry (0600, atomic, never overwriting). Leaves no object in the TPM. The key
// is neither fixedTPM nor fixedParent (TPM2_Import refuses those) and has sensitiveDataOrigin
// clear; with an empty authPolicy, TPM2_Duplicate can never be authorized for it.
Result<ImportedPrivateKey> import_private_key(Context& ctx, PrivateKeyImport import, PrivateKeyOptions opts);

// ---- passwd ----

// A keystore entry whose password is to be changed, read before any question is asked (the
// caller learns whether to ask for the current password).
struct PasswordTarget {
  std::string name;
  KeyFile file;
  bool has_password() const { return !file.empty_auth; }
};

// Reads NAME (or tpm2:NAME) from the keystore. Refused with the reason: a persistent key (made
// with --persistent: NAME.handle) or a tpm2:handle= URI, since TPM2_ObjectChangeAuth makes a new
// blob and the persistent object would keep the old password. No TPM command.
Result<PasswordTarget> open_passwd(Context& ctx, const std::string& name);

struct PasswordChange {
  std::optional<SecretBytes> old_password;  // the current password; needed when the key has one
  // nullopt: remove the password. Empty, or longer than kMaxPasswordBytes, is refused before the
  // TPM is asked anything.
  std::optional<SecretBytes> new_password;
};

struct ChangedPassword {
  std::string path;           // the keystore entry replaced
  bool had_password = false;
  bool password = false;      // the key has a password now
  bool no_da = false;         // noDA (made without a password): the TPM does not limit guesses
};

// TPM2_ObjectChangeAuth (Tpm::change_auth), then the entry replaced atomically with the new blob
// and emptyAuth. A wrong current password costs one dictionary-attack strike and writes nothing.
// The old blob (any copy of the old file) still works with the old password.
Result<ChangedPassword> change_password(Context& ctx, const PasswordTarget& target, const PasswordChange& change);

// ---- delete ----

enum class Eviction {
  kNotPersistent,  // the key was not made persistent
  kEvicted,        // its persistent handle held this key and was evicted
  kAlreadyGone,    // its persistent handle was empty already
};

struct DeletedKey {
  uint32_t persistent = 0;  // the key's persistent handle, 0 if none
  Eviction eviction = Eviction::kNotPersistent;
};

// Whether `name` is a key in the keystore (checked before asking for confirmation).
Status check_delete(const Context& ctx, const std::string& name);
// Evicts a persistent key if its handle still holds this very key (a handle holding another key is
// an error, and nothing is deleted), then removes the keystore entry.
Result<DeletedKey> delete_key(Context& ctx, const std::string& name);

// ---- init ----

struct InitOptions {
  bool persistent = true;  // make the SRK persistent at kSrkHandle (false: --transient)
  bool repin = false;      // replace a pin that names another SRK
};

enum class PinOutcome {
  kAlreadyPinned,  // the keystore already had exactly this pin: nothing written
  kPinned,         // there was no pin: written
  kReplaced,       // there was another pin (another handle, or with repin another SRK): replaced
};

struct InitResult {
  Tpm::Provisioned srk = Tpm::Provisioned::kTransient;  // what was done with the SRK
  SrkPin pin;
  PinOutcome pin_outcome = PinOutcome::kPinned;
  std::string pin_path;
};

// Provisions the SRK (Tpm::provision_srk), compares its name with the keystore's pin, and writes
// the pin when it is new. A pin naming another SRK is an error unless `repin`.
Result<InitResult> init_keystore(Context& ctx, const InitOptions& opts);

}  // namespace tpmkey
