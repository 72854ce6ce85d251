// The public half of a TPM key as OpenSSL and OpenSSH see it.
#pragma once

#include <string>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

// A public-only EVP_PKEY (in `libctx`, normally Crypto's) for a TPM public area.
Result<EvpPkeyPtr> public_pkey(const TPMT_PUBLIC& pub, OSSL_LIB_CTX* libctx);
// The uncompressed EC point 04||x||y, padded to the field size.
Bytes ec_point(const TPMT_PUBLIC& pub);
// The RSA public exponent (the TPM writes 0 for 65537).
uint32_t rsa_exponent(const TPMT_PUBLIC& pub);
// SubjectPublicKeyInfo, DER and PEM.
Result<Bytes> spki_der(EVP_PKEY* pkey);
Result<std::string> spki_pem(EVP_PKEY* pkey);
// The OpenSSH public key blob: string "ecdsa-sha2-nistpN", string curve, string Q; or string
// "ssh-rsa", mpint e, mpint n.
Result<Bytes> openssh_blob(const TPMT_PUBLIC& pub);
// One authorized_keys line: "ecdsa-sha2-nistp256 AAAA... comment".
Result<std::string> openssh_public(const TPMT_PUBLIC& pub, const std::string& comment);

}  // namespace tpmkey
