// The TPM's own cryptography, computed in software: object names, KDFa and KDFe, HMAC, and the
// ECDH secret sharing that salts a session (TPM 2.0 Part 1: "Names", §11.4.10 KDFa/KDFe, Annex
// C.6.1 ECC secret sharing). Sessions use it now; importing keys (duplication blobs) will too.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

using ByteParts = std::initializer_list<std::span<const uint8_t>>;

// H(parts...) and HMAC(key, parts...) with a digest fetched once; false if OpenSSL failed.
// `out` holds EVP_MD_get_size(md) bytes.
bool digest_parts(const EVP_MD* md, ByteParts parts, uint8_t* out);
bool hmac_parts(const EVP_MD* md, std::span<const uint8_t> key, ByteParts parts, uint8_t* out);

// The name of an object: nameAlg || H_nameAlg(TPMT_PUBLIC as marshalled by the TPM).
Result<Bytes> object_name(const Crypto& c, const TPMT_PUBLIC& pub);
// The name of a permanent or session handle: the handle itself, big-endian.
Bytes handle_name(TPM2_HANDLE h);

// KDFa (SP 800-108 counter mode with HMAC) and KDFe (SP 800-56A concatenation), as the TPM does
// them: `label` includes its terminating zero, `bits` is the output length. Empty on failure.
SecretBytes kdfa(const Crypto& c, TPM2_ALG_ID hash, const SecretBytes& key, const char* label,
                 std::span<const uint8_t> u, std::span<const uint8_t> v, size_t bits);
SecretBytes kdfe(const Crypto& c, TPM2_ALG_ID hash, const SecretBytes& z, const char* label,
                 std::span<const uint8_t> u, std::span<const uint8_t> v, size_t bits);

// A secret shared with an ECC key (the SRK), and its encryption to that key: an ephemeral ECDH on
// its curve, KDFe(nameAlg, Z, label, Qe.x, Qs.x). The TPM recovers `value` from `encrypted`.
struct SharedSecret {
  SecretBytes value;
  TPM2B_ENCRYPTED_SECRET encrypted{};
};
Result<SharedSecret> ecdh_share(const Crypto& c, const TPMT_PUBLIC& key, const char* label);

inline std::span<const uint8_t> span_of(const SecretBytes& s) { return {s.data(), s.size()}; }
void put_be32(uint8_t* p, uint32_t v);

}  // namespace tpmkey
