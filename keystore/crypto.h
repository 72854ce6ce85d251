// Internal software crypto in a private OSSL_LIB_CTX that holds only the default provider,
// so nothing tpmkey computes itself can recurse into tpmkey (design.md §2.5).
#pragma once

#include <memory>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

class Crypto {
 public:
  static Result<std::unique_ptr<Crypto>> create();
  OSSL_LIB_CTX* libctx() const { return libctx_.get(); }
  // Digests are fetched once; nullptr for an algorithm tpmkey does not hash with.
  const EVP_MD* md(TPM2_ALG_ID alg) const;
  // AES-128 in CFB mode (full-block feedback), the TPM's parameter-encryption cipher.
  const EVP_CIPHER* aes128_cfb() const { return aes128_cfb_.get(); }
  // Fills `out` from this context's DRBG; false if the DRBG failed.
  bool random(uint8_t* out, size_t n) const;
  ~Crypto();

 private:
  Crypto() = default;
  LibCtxPtr libctx_;
  OSSL_PROVIDER* default_ = nullptr;
  EvpMdPtr sha1_, sha256_, sha384_, sha512_;
  EvpCipherPtr aes128_cfb_;
};

}  // namespace tpmkey
