// Internal software crypto, always fetched from OpenSSL's default provider by explicit property
// ("provider=default"), so nothing tpmkey computes itself can recurse into tpmkey (docs/architecture.md).
// It lives in the process's global library context when tpmkey itself was loaded there and the
// default provider is available in it: the algorithm tables OpenSSL builds on first fetch are then
// built once per process instead of twice (docs/performance.md, one-shot processes). Otherwise
// (tpmkey loaded into an application's own library context, a FIPS-only global context, the CLI)
// it lives in a private library context that loads only the default provider.
#pragma once

#include <memory>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

class Crypto {
 public:
  enum class Where { kPrivate, kGlobalIfDefault };
  static Result<std::unique_ptr<Crypto>> create(Where where = Where::kPrivate);
  // The library context to fetch from (with "provider=default"); nullptr is the global one.
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
