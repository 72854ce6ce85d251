#include "keystore/crypto.h"

#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

namespace tpmkey {

Result<std::unique_ptr<Crypto>> Crypto::create(Where where) {
  std::unique_ptr<Crypto> c(new Crypto);
  if (where == Where::kGlobalIfDefault) {
    ERR_set_mark();
    EvpMdPtr probe(EVP_MD_fetch(nullptr, "SHA256", "provider=default"));
    ERR_pop_to_mark();
    if (!probe) where = Where::kPrivate;
  }
  if (where == Where::kPrivate) {
    c->libctx_.reset(OSSL_LIB_CTX_new());
    if (c->libctx_) c->default_ = OSSL_PROVIDER_load(c->libctx_.get(), "default");
    if (!c->default_) return make_error(Reason::kInternal, "cannot load OpenSSL's default provider");
  }
  auto fetch = [&](const char* name) {
    return EvpMdPtr(EVP_MD_fetch(c->libctx_.get(), name, "provider=default"));
  };
  c->sha1_ = fetch("SHA1");
  c->sha256_ = fetch("SHA256");
  c->sha384_ = fetch("SHA384");
  c->sha512_ = fetch("SHA512");
  if (!c->sha256_ || !c->sha384_ || !c->sha512_)
    return make_error(Reason::kInternal, "cannot fetch SHA-2 digests from the default provider");
  c->aes128_cfb_.reset(EVP_CIPHER_fetch(c->libctx_.get(), "AES-128-CFB", "provider=default"));
  if (!c->aes128_cfb_) return make_error(Reason::kInternal, "cannot fetch AES-128-CFB from the default provider");
  ERR_clear_error();  // SHA-1 may be absent under a strict policy
  return c;
}

Crypto::~Crypto() {
  sha1_.reset();
  sha256_.reset();
  sha384_.reset();
  sha512_.reset();
  aes128_cfb_.reset();
  if (default_) OSSL_PROVIDER_unload(default_);
}

bool Crypto::random(uint8_t* out, size_t n) const {
  return RAND_bytes_ex(libctx_.get(), out, n, 0) == 1;
}

const EVP_MD* Crypto::md(TPM2_ALG_ID alg) const {
  switch (alg) {
    case TPM2_ALG_SHA1: return sha1_.get();
    case TPM2_ALG_SHA256: return sha256_.get();
    case TPM2_ALG_SHA384: return sha384_.get();
    case TPM2_ALG_SHA512: return sha512_.get();
    default: return nullptr;
  }
}

}  // namespace tpmkey
