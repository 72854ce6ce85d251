// Fuzz target: the software private keys of `tpmkey import` (keystore/private_key.h):
// identify_key_file and read_private_key (OpenSSL's decoders, default provider only, with a fixed
// passphrase for encrypted files; OpenSSH's own format by keystore/openssh_key.cc), then
// import_form of what decodes. Both read a path, so each
// input is written to a file in a private directory. No TPM command is involved. A passphrase-
// protected OpenSSH key is decrypted by running ssh-keygen (keystore/openssh_decrypt.h): here
// PATH finds none, so that path ends in its "not installed" refusal instead of a process per input
// (and a bcrypt round count from the input that could keep ssh-keygen busy for minutes).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keystore/crypto.h"
#include "keystore/private_key.h"
#include "test/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  static const std::unique_ptr<Crypto> crypto = [] {
    auto c = Crypto::create();
    if (!c) std::abort();
    return std::move(*c);
  }();
  static const std::string path = fuzz::scratch_dir() + "/key";
  fuzz::write_input(path, data, size);

  // Refused only as unreadable (empty, or over the size limit); then nothing decodes either.
  auto kind = identify_key_file(path);
  int asked = 0;
  const PassphraseSource passphrase = [&asked]() -> Result<SecretBytes> {
    ++asked;
    static const char kPass[] = "fuzz passphrase";
    return SecretBytes(reinterpret_cast<const uint8_t*>(kPass), sizeof kPass - 1);
  };
  const char* old_path = std::getenv("PATH");
  const std::string saved = old_path ? old_path : "";
  setenv("PATH", "/nonexistent-tpmkey-fuzz", 1);
  auto key = read_private_key(*crypto, path, passphrase);
  if (old_path) setenv("PATH", saved.c_str(), 1);
  else unsetenv("PATH");
  TPMKEY_FUZZ_CHECK(asked <= 1);  // asked at most once
  TPMKEY_FUZZ_CHECK(kind.ok() || !key.ok());
  if (!key) {
    TPMKEY_FUZZ_CHECK(!key.error().text().empty());
    return 0;
  }
  TPMKEY_FUZZ_CHECK(key->pkey && !key->format.empty());
  // TPM key files are refused; OpenSSH's own format is read in memory (keystore/openssh_key.h).
  TPMKEY_FUZZ_CHECK(*kind == KeyFileKind::kOther || *kind == KeyFileKind::kOpenSsh);
  for (bool with_auth : {false, true}) {
    auto form = import_form(key->pkey.get(), with_auth);
    if (form) TPMKEY_FUZZ_CHECK(form->spec != nullptr && form->secret.size() > 0);
  }
  return 0;
}
