// The RSA asymmetric cipher (OSSL_OP_ASYM_CIPHER) for TPM keys, defined in asym_cipher.cc.
#pragma once

#include <openssl/core_dispatch.h>

namespace tpmkey::provider {

extern const OSSL_DISPATCH kRsaAsymCipher[];

}  // namespace tpmkey::provider
