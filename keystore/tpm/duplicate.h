// The duplication blob that TPM2_Import takes, made in software for a storage parent: how a key
// made outside the TPM is wrapped so that only that TPM can take it in (TPM 2.0 Part 1 "Protected
// Storage" and "Duplication", Part 3 TPM2_Import). There is no inner wrapper (symmetricAlg NULL,
// no encryptionKey): the outer wrapper protects the key, and removing it takes the parent's private
// key, which never leaves the TPM.
//
//   seed       shared with the parent: an ephemeral ECDH with its public key, then
//              KDFe(parent nameAlg, Z, "DUPLICATE", Qe.x, Qp.x) (kdf.h); inSymSeed carries Qe
//   symKey     KDFa(parent nameAlg, seed, "STORAGE", name of the new object, empty, 128)
//   hmacKey    KDFa(parent nameAlg, seed, "INTEGRITY", empty, empty, digest bits)
//   encSens    AES-128-CFB(symKey, zero IV, TPM2B_SENSITIVE: type, authValue, seedValue, p or d)
//   duplicate  TPM2B_DIGEST(HMAC(hmacKey, encSens || name)) || encSens
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

struct Duplicate {
  TPM2B_PRIVATE duplicate{};          // TPM2_Import's `duplicate`
  TPM2B_ENCRYPTED_SECRET sym_seed{};  // TPM2_Import's `inSymSeed`
};

// Wraps the key with public area `key` for `parent`, an ECC storage key with AES-128-CFB (the
// SRK). `secret` is the key's private value as the TPM holds it (RSA: the prime p; ECC: d, padded
// to the field size), `auth` its password (at most the digest size of the key's nameAlg). The
// sensitive area gets a fresh random obfuscation value (seedValue). Nothing secret is left in
// memory that is not wiped.
Result<Duplicate> make_duplicate(const Crypto& c, const TPMT_PUBLIC& parent, const TPMT_PUBLIC& key,
                                 const SecretBytes& secret, const SecretBytes& auth);

}  // namespace tpmkey
