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

// Accepts PEM ("-----BEGIN TSS2 PRIVATE KEY-----") or DER. An importable key (below) is refused
// with a pointer to `tpmkey import`: its private blob is a duplicate, which TPM2_Load cannot take.
Result<KeyFile> parse_keyfile(const uint8_t* data, size_t size);

// An importable key (type importableKey, 2.23.133.10.1.4): a key wrapped in software for a parent
// it has not met yet (`tpmkey wrap`). `key.priv` is the duplication blob (TPM2_Import's
// `duplicate`), `sym_seed` the seed encrypted to the parent (`inSymSeed`), kept in the [2] secret
// field as the TPM2B_ENCRYPTED_SECRET's contents.
struct ImportableKeyFile {
  KeyFile key;
  TPM2B_ENCRYPTED_SECRET sym_seed{};
};
// Whether PEM or DER `data` is an importable key file (its type OID; nothing else is checked).
bool is_importable_keyfile(const uint8_t* data, size_t size);
Result<ImportableKeyFile> parse_importable_keyfile(const uint8_t* data, size_t size);
Bytes importable_keyfile_der(const ImportableKeyFile& kf);  // empty as keyfile_der is
std::string importable_keyfile_pem(const ImportableKeyFile& kf);
// Whether DER `data` begins like a TPM 2.0 key file: a SEQUENCE whose first element is an OID
// under 2.23.133.10.1. Looks at the first bytes only, so a truncated file still answers yes.
bool looks_like_tss2_der(const uint8_t* data, size_t size);
// A key file's DER or PEM; empty if libtss2-mu, which writes its blobs, cannot be loaded
// (tss::load_failure() says why).
Bytes keyfile_der(const KeyFile& kf);
std::string keyfile_pem(const KeyFile& kf);
// The error for an empty one of those.
Error keyfile_unwritable();

}  // namespace tpmkey
