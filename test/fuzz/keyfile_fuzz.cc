// Fuzz target: TSS2 PRIVATE KEY files (keystore/keyfile.h), PEM and DER, with the TPM2B_PUBLIC
// and TPM2B_PRIVATE unmarshalled inside; importable key files too. What parses must write out
// (DER and PEM) as a file that parses to the same DER again.
#include <cstddef>
#include <cstdint>
#include <string>

#include "keystore/keyfile.h"
#include "test/fuzz/fuzz_support.h"

namespace {

using namespace tpmkey;

const uint8_t* bytes_of(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

void keyfile_round_trip(const KeyFile& kf) {
  const Bytes der = keyfile_der(kf);
  TPMKEY_FUZZ_CHECK(!der.empty());
  TPMKEY_FUZZ_CHECK(looks_like_tss2_der(der.data(), der.size()));
  auto again = parse_keyfile(der.data(), der.size());
  TPMKEY_FUZZ_CHECK(again.ok());
  TPMKEY_FUZZ_CHECK(again->empty_auth == kf.empty_auth && again->parent == kf.parent &&
                    again->description == kf.description);
  TPMKEY_FUZZ_CHECK(keyfile_der(*again) == der);
  const std::string pem = keyfile_pem(kf);
  auto from_pem = parse_keyfile(bytes_of(pem), pem.size());
  TPMKEY_FUZZ_CHECK(from_pem.ok());
  TPMKEY_FUZZ_CHECK(keyfile_der(*from_pem) == der);
}

void importable_round_trip(const ImportableKeyFile& kf) {
  const Bytes der = importable_keyfile_der(kf);
  TPMKEY_FUZZ_CHECK(is_importable_keyfile(der.data(), der.size()));
  auto again = parse_importable_keyfile(der.data(), der.size());
  TPMKEY_FUZZ_CHECK(again.ok());
  TPMKEY_FUZZ_CHECK(importable_keyfile_der(*again) == der);
  const std::string pem = importable_keyfile_pem(kf);
  auto from_pem = parse_importable_keyfile(bytes_of(pem), pem.size());
  TPMKEY_FUZZ_CHECK(from_pem.ok());
  TPMKEY_FUZZ_CHECK(importable_keyfile_der(*from_pem) == der);
  // An importable key is never taken for a loadable one.
  TPMKEY_FUZZ_CHECK(!parse_keyfile(der.data(), der.size()).ok());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)looks_like_tss2_der(data, size);
  if (auto kf = parse_keyfile(data, size)) {
    keyfile_round_trip(*kf);
  } else {
    TPMKEY_FUZZ_CHECK(!kf.error().text().empty());
  }
  const bool importable = is_importable_keyfile(data, size);
  if (auto ik = parse_importable_keyfile(data, size)) {
    TPMKEY_FUZZ_CHECK(importable);
    importable_round_trip(*ik);
  }
  return 0;
}
