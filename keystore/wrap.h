// Wrapping a key for another machine's TPM (docs/keys.md, "Wrapping a key for another machine"):
// the SRK public key file that `tpmkey srk` writes and `tpmkey wrap` reads, the importable key
// file that `tpmkey wrap` makes in software without any TPM (type importableKey: the duplication
// blob of duplicate.h and its encrypted seed), and `tpmkey import` of such a file on the TPM it
// was made for. Like manage.h: no prompts, no printing, passwords passed in.
#pragma once

#include <optional>
#include <string>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/algorithm.h"
#include "keystore/context.h"
#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/keyfile.h"
#include "keystore/manage.h"
#include "keystore/ossl.h"
#include "keystore/private_key.h"

namespace tpmkey {

// The line of the SRK file (and of a wrapped key file) that names the SRK, before the PEM block.
inline constexpr const char* kSrkNameField = "SRK-Name: ";

// An SRK public key: the standard ECC P-256 storage template (algorithm.h, srk_template) with its
// point, and the name computed from that public area.
struct SrkFile {
  TPMT_PUBLIC pub{};
  Bytes name;
};

// `tpmkey srk`: this TPM's SRK, the one the keystore's pin names (an SRK of another name is
// refused, as before any other use). Asks the TPM.
Result<SrkFile> read_tpm_srk(Context& ctx);
// The SRK file: a few lines of explanation, "SRK-Name: HEX", then the SubjectPublicKeyInfo PEM
// block ("openssl pkey -pubin -in FILE" reads it as it is).
Result<std::string> srk_file_text(const Crypto& c, const SrkFile& srk);
// Reads an SRK file: an EC P-256 SubjectPublicKeyInfo and its SRK-Name line. The storage template
// with that point must have that name, or the file is refused (it was edited, or is not an SRK
// made with the standard template). No TPM.
Result<SrkFile> read_srk_file(const Crypto& c, const std::string& path);

struct WrapRequest {
  std::string parent_path;               // the SRK file
  std::string key_path;                  // the software private key (read as `tpmkey import` does)
  PassphraseSource passphrase;           // key_path's passphrase, asked only when it is encrypted
  std::optional<SecretBytes> password;   // the wrapped key's password; nullopt: none (noDA)
  std::string description;               // stored in the wrapped file
  std::string out_path;                  // written 0600, atomically, never overwritten
};

struct WrappedKey {
  const AlgorithmSpec* spec = nullptr;
  std::string format;      // what was read: "PKCS#8 PEM", ...
  bool encrypted = false;  // key_path was encrypted
  bool password = false;   // the wrapped key has a password
  Bytes srk_name;          // the SRK it was wrapped for
};

// `tpmkey wrap`: reads the SRK file and the private key, wraps the key for that SRK (the blob that
// only its TPM opens) and writes the importable key file. Needs no TPM and sends nothing.
Result<WrappedKey> wrap_key(const Crypto& c, const WrapRequest& req);

// An importable key file read for `tpmkey import`, before the TPM is asked anything.
struct WrappedImport {
  std::string name;                  // the keystore name it gets
  std::string path;
  ImportableKeyFile file;
  std::optional<Bytes> wrapped_for;  // the SRK name its SRK-Name line gives, if it has one
  const AlgorithmSpec* spec = nullptr;
  bool needs_password() const { return !file.key.empty_auth; }
};

// Whether `path` is an importable key file (PEM or DER). False when it cannot be read.
bool is_wrapped_key_file(const std::string& path);
// Checks the name (valid, not taken), reads the file and checks that tpmkey can use the key (owner
// parent, a key algorithm tpmkey has). No TPM command.
Result<WrappedImport> open_wrapped(Context& ctx, const std::string& name, const std::string& path);
// Compares the SRK the file was wrapped for with the keystore's pin (refused without sending
// anything when they differ), then TPM2_Import under the SRK (refused before TPM2_Import when the
// TPM's SRK has another name), TPM2_Load and the self-test signature verified with the file's
// public key; only then writes an ordinary (loadable) keystore entry. Leaves no object in the TPM.
Result<ImportedKey> import_wrapped_key(Context& ctx, WrappedImport import, ImportOptions opts);

}  // namespace tpmkey
