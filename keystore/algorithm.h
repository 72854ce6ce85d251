// The key algorithms tpmkey offers, and the TPM templates that create them.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/error.h"

namespace tpmkey {

enum class KeyKind { kEc, kRsa };

struct AlgorithmSpec {
  const char* name;        // "ec-p256", "rsa2048": the CLI spelling
  KeyKind kind;
  int bits;                // RSA modulus bits or EC field bits
  TPM2_ECC_CURVE curve;    // EC only
  const char* group;       // EC only: OpenSSL group name ("P-256")
};

std::span<const AlgorithmSpec> all_algorithms();
const AlgorithmSpec* find_algorithm(std::string_view name);
// Accepts "P-256", "prime256v1", "secp384r1", ... (case-insensitive).
const AlgorithmSpec* find_ec_group(std::string_view group);
const AlgorithmSpec* find_rsa_bits(int bits);
const AlgorithmSpec* find_ec_curve(TPM2_ECC_CURVE curve);
// The spec a TPM public area corresponds to, if tpmkey supports it.
Result<const AlgorithmSpec*> spec_of(const TPMT_PUBLIC& pub);

struct KeyOptions {
  const AlgorithmSpec* spec = nullptr;
  uint32_t rsa_exponent = 0;  // 0 = 65537
  bool with_auth = false;     // the key needs a password
  TPM2_ALG_ID name_alg = TPM2_ALG_SHA256;  // the key's name algorithm (SHA-256/384/512)
  uint32_t parent = TPM2_RH_OWNER;         // 0x40000001 (the SRK) or a persistent storage key
};

// How the TPM signs a digest: the scheme and its hash. RSA-PSS always uses a salt as long as the
// digest and MGF1 with the same hash (what the TPM does).
enum class SigAlg { kEcdsa, kRsaPkcs1, kRsaPss };
struct SignScheme {
  SigAlg alg = SigAlg::kEcdsa;
  TPM2_ALG_ID hash = TPM2_ALG_SHA256;
};
// The TPM's spelling of it.
TPMT_SIG_SCHEME tpm_scheme(const SignScheme& s);
// The natural scheme for a key of this kind (ECDSA or RSA PKCS#1 v1.5) with `hash`.
SignScheme default_scheme(KeyKind kind, TPM2_ALG_ID hash = TPM2_ALG_SHA256);
// The scheme a key is bound to in its public area, if it is bound to one (scheme not NULL):
// nullopt for an unbound key, an error for a binding tpmkey cannot sign with.
Result<std::optional<SignScheme>> bound_scheme(const TPMT_PUBLIC& pub);

// Public template for a signing key: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign;
// scheme NULL so that each TPM2_Sign picks the scheme and hash.
TPM2B_PUBLIC key_template(const KeyOptions& opts);
// The public area of a key made outside the TPM and brought in with TPM2_Import (its unique field
// is left for the caller): sign, userWithAuth, noDA without a password, scheme NULL, and fixedTPM,
// fixedParent and sensitiveDataOrigin CLEAR. TPM2_Import refuses fixedTPM and fixedParent, and a
// clear sensitiveDataOrigin says that the TPM did not generate the key.
TPM2B_PUBLIC import_template(const KeyOptions& opts);
// Whether a key's public area says it was made outside the TPM (sensitiveDataOrigin clear). The TPM
// generates every key TPM2_Create makes with the flag set (it refuses an asymmetric key without it).
inline bool is_imported(const TPMT_PUBLIC& pub) { return !(pub.objectAttributes & TPMA_OBJECT_SENSITIVEDATAORIGIN); }
// The standard ECC P-256 storage primary (the parent 0x40000001 stands for).
TPM2B_PUBLIC srk_template();

// Hash algorithm for a digest length (SHA-1/256/384/512), TPM2_ALG_ERROR if none.
TPM2_ALG_ID hash_for_digest_size(size_t len);
TPM2_ALG_ID hash_from_name(std::string_view openssl_name);  // "SHA256", "SHA2-256", "sha384", ...
const char* hash_name(TPM2_ALG_ID alg);                     // "SHA256"
size_t hash_size(TPM2_ALG_ID alg);

}  // namespace tpmkey
