// tpmkey's own parameter names, the ones OpenSSL's core_names.h does not define. Programs, the
// tests and the benchmarks use them as well as the provider, so this header needs nothing else.
// Which parameters each operation takes, and how, is in its table (provider/param_table.h).
#pragma once

namespace tpmkey {

// Key generation (EC and RSA, EVP_PKEY_CTX_set_params or `-pkeyopt NAME:VALUE`).
// utf8 string: the new key's password; without it the key needs none.
inline constexpr const char* kParamUserAuth = "user-auth";
// uint32: the parent, 0x40000001 (the SRK under the owner hierarchy, the default) or a
// persistent storage key 0x81xxxxxx.
inline constexpr const char* kParamParent = "parent";
// The password of a persistent parent that has one (docs/keys.md#parents-with-a-password).
inline constexpr const char* kParamParentAuth = "parent-auth";
// utf8 string: the key's name algorithm (sha256, the default, sha384 or sha512), as tpm2-openssl
// calls it. Not a signature digest: that is OpenSSL's OSSL_SIGNATURE_PARAM_DIGEST.
inline constexpr const char* kParamNameDigest = "digest";

// Signature (int, 1 to allow): sign a SHA-1 digest, which tpmkey otherwise refuses (SHA-1
// collisions make such signatures forgeable). For peers that know nothing else, such as SSH's
// ssh-rsa; `tpmkey agent --allow-sha1` sets it.
inline constexpr const char* kParamAllowSha1 = "tpmkey-allow-sha1";

// Key generation (utf8 string): what the new TPM key may do, "sign" (the default), "decrypt"
// (RSA decryption, ECDH) or "sign,decrypt", as `tpmkey create --usage` takes it.
inline constexpr const char* kParamUsage = "usage";

// Provider parameter (uint64): TPM commands this provider instance has sent; 0 before it connects.
inline constexpr const char* kParamTpmCommands = "tpmkey-tpm-commands";

}  // namespace tpmkey
