// The TSS2 PRIVATE KEY file (draft-bottomley-tpm2-keys): parse and format, PEM and DER.
#pragma once

#include <cstdint>
#include <string>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

inline constexpr const char* kTss2PemLabel = "TSS2 PRIVATE KEY";
// Parent 0x40000001: the standard ECC P-256 storage primary under the owner hierarchy.
inline constexpr uint32_t kOwnerParent = TPM2_RH_OWNER;

struct KeyFile {
  bool empty_auth = true;  // false: the key needs a password
  uint32_t parent = kOwnerParent;
  std::string description;
  TPM2B_PUBLIC pub{};
  TPM2B_PRIVATE priv{};
  // A persistent handle (0x81xxxxxx) where the key also lives, or 0. Not part of the TSS2 file:
  // tpm2:handle= keys (no blob, priv empty) and keystore entries made with --persistent.
  uint32_t persistent = 0;
};

// Accepts PEM ("-----BEGIN TSS2 PRIVATE KEY-----") or DER.
Result<KeyFile> parse_keyfile(const uint8_t* data, size_t size);
// Whether DER `data` begins like a TPM 2.0 key file: a SEQUENCE whose first element is an OID
// under 2.23.133.10.1. Looks at the first bytes only, so a truncated file still answers yes.
bool looks_like_tss2_der(const uint8_t* data, size_t size);
Bytes keyfile_der(const KeyFile& kf);
std::string keyfile_pem(const KeyFile& kf);

}  // namespace tpmkey
