// The key algorithms tpmkey offers, and the TPM templates that create them.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/error.h"

namespace tpmkey {

// The key types, as OpenSSL knows them: EC, RSA, and RSA-PSS (an RSA key whose TPM public area
// binds it to the RSASSA-PSS scheme and one hash: it signs only with PSS, docs/keys.md, "RSA-PSS").
enum class KeyKind { kEc, kRsa, kRsaPss };
// RSA and RSA-PSS: the same RSA key in the TPM.
inline bool is_rsa(KeyKind k) { return k == KeyKind::kRsa || k == KeyKind::kRsaPss; }

struct AlgorithmSpec {
  const char* name;        // "ec-p256", "rsa2048": the CLI spelling
  KeyKind kind;
  int bits;                // RSA modulus bits or EC field bits
  TPM2_ECC_CURVE curve;    // EC only
  const char* group;       // EC only: OpenSSL group name ("P-256")
  bool weak = false;       // made only when asked for by name or size, with a warning (kWeakWarning)
};

// What tpmkey says when it makes a weak key (RSA-1024), on stderr: docs/keys.md, "Algorithms".
inline constexpr const char* kWeakWarning =
    "RSA-1024 is weak (about 80-bit security, below what NIST allows for new signatures since 2013): "
    "use it only where a peer accepts nothing else";

// Every algorithm, the weak ones (rsa1024) last.
std::span<const AlgorithmSpec> all_algorithms();
const AlgorithmSpec* find_algorithm(std::string_view name);
// Accepts "P-256", "prime256v1", "secp384r1", ... (case-insensitive).
const AlgorithmSpec* find_ec_group(std::string_view group);
const AlgorithmSpec* find_rsa_bits(int bits);
// The RSA-PSS spec of that size ("rsa-pss2048", ...).
const AlgorithmSpec* find_rsa_pss_bits(int bits);
const AlgorithmSpec* find_ec_curve(TPM2_ECC_CURVE curve);
// The spec a TPM public area corresponds to, if tpmkey supports it: an RSA key bound to the RSAPSS
// scheme is an RSA-PSS spec.
Result<const AlgorithmSpec*> spec_of(const TPMT_PUBLIC& pub);

// What a key may do, as its public area's object attributes say: sign (TPMA_OBJECT_SIGN_ENCRYPT),
// decrypt (TPMA_OBJECT_DECRYPT: RSA decryption, or ECDH for an EC key), or both. A bit set.
inline constexpr unsigned kUsageSign = 1;
inline constexpr unsigned kUsageDecrypt = 2;
inline constexpr unsigned kUsageSignDecrypt = kUsageSign | kUsageDecrypt;
// The usage of an unrestricted key's public area (0 if it allows neither).
unsigned usage_of(const TPMT_PUBLIC& pub);
// "sign", "decrypt", "sign,decrypt": the CLI's --usage spelling, and how list and pkey -text show it.
std::string usage_text(unsigned usage);
// Parses that spelling ("decrypt,sign" and repeats too); 0 for anything else.
unsigned parse_usage(std::string_view text);

struct KeyOptions {
  const AlgorithmSpec* spec = nullptr;
  unsigned usage = kUsageSign;  // kUsage* bits: the sign and decrypt object attributes
  uint32_t rsa_exponent = 0;  // 0 = 65537
  bool with_auth = false;     // the key needs a password
  TPM2_ALG_ID name_alg = TPM2_ALG_SHA256;  // the key's name algorithm (SHA-256/384/512)
  uint32_t parent = TPM2_RH_OWNER;         // 0x40000001 (the SRK) or a persistent storage key
  TPM2_ALG_ID pss_hash = TPM2_ALG_SHA256;  // RSA-PSS only: the hash the key's RSAPSS scheme names
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
// How an RSA key decrypts, in OpenSSL's terms. kNone: the raw RSA operation (m = c^d mod n);
// kPkcs1: RSAES-PKCS1-v1_5, with implicit rejection unless turned off (docs/keys.md); kOaep:
// RSAES-OAEP with `hash` for both the label digest and MGF1 (the TPM's only choice).
enum class RsaPadding { kNone, kPkcs1, kOaep };
struct DecryptScheme {
  RsaPadding padding = RsaPadding::kPkcs1;
  TPM2_ALG_ID hash = TPM2_ALG_SHA1;  // OAEP only (OpenSSL's default is SHA-1 too)
  std::vector<uint8_t> label;        // OAEP only: the label as OpenSSL takes it (any bytes, no NUL added)
  bool implicit_rejection = true;    // PKCS#1 v1.5 only
};

// The natural scheme for a key of this kind (ECDSA, RSA PKCS#1 v1.5, or PSS for RSA-PSS) with `hash`.
SignScheme default_scheme(KeyKind kind, TPM2_ALG_ID hash = TPM2_ALG_SHA256);
// The scheme a key is bound to in its public area, if it is bound to one (scheme not NULL):
// nullopt for an unbound key, an error for a binding tpmkey cannot sign with.
Result<std::optional<SignScheme>> bound_scheme(const TPMT_PUBLIC& pub);

// Public template for a key: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, and sign
// and/or decrypt as opts.usage says; scheme NULL so that each TPM2_Sign, TPM2_RSA_Decrypt or
// TPM2_ECDH_ZGen picks the scheme (and raw RSA decryption is possible, docs/keys.md). An RSA-PSS
// key is the exception: scheme RSAPSS with opts.pss_hash, sign only.
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
