// Fuzz target: OSSL_PARAM arrays into every provider function that takes them (provider/*.cc):
// key generation (EC, RSA), signature, decryption and key agreement contexts on TPM keys, the
// keys' own get/set, the encoder, the store and the provider's get_params. The provider is built
// in (OSSL_PROVIDER_add_builtin, as the agent does) with the keys of the keyfile corpus in a
// private keystore; no TPM is reachable (agent_support.h's environment), so an operation that gets
// as far as the TPM fails at once.
//
// Input: one byte choosing the function, then up to 8 parameters, each
//   u8 key (an index into the names the context advertises, then a few it does not),
//   u8 type (integer, unsigned integer, real, UTF-8 string, octet string, UTF-8 or octet pointer),
//   u8 size, then that many data bytes
// Each parameter's data is a buffer of exactly its size (a string also gets the terminating NUL
// its size leaves out), so a read past the size is a sanitizer report; get functions write into
// those buffers. Invariant: a get never reports writing more than the buffer holds.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <openssl/core_names.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/store.h>

#include "keystore/ossl.h"
#include "test/fuzz/agent_support.h"
#include "test/fuzz/fuzz_support.h"

extern "C" int OSSL_provider_init(const OSSL_CORE_HANDLE* handle, const OSSL_DISPATCH* in, const OSSL_DISPATCH** out,
                                  void** provctx);

namespace tpmkey::fuzz {
namespace {

struct World {
  OSSL_LIB_CTX* lib = nullptr;
  OSSL_PROVIDER* tpmkey = nullptr;
  EVP_PKEY* ec = nullptr;   // TPM keys from the store
  EVP_PKEY* rsa = nullptr;
};

EVP_PKEY* load(OSSL_LIB_CTX* lib, const std::string& uri) {
  OSSL_STORE_CTX* st = OSSL_STORE_open_ex(uri.c_str(), lib, "provider=tpmkey", nullptr, nullptr, nullptr, nullptr,
                                          nullptr);
  EVP_PKEY* pkey = nullptr;
  while (st && !pkey && !OSSL_STORE_eof(st)) {
    OSSL_STORE_INFO* info = OSSL_STORE_load(st);
    if (!info) break;
    if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) pkey = OSSL_STORE_INFO_get1_PKEY(info);
    OSSL_STORE_INFO_free(info);
  }
  OSSL_STORE_close(st);
  return pkey;
}

const World& world() {
  static const World w = [] {
    agent_environment();  // the keystore, and a TCTI that refuses at once
    for (const char* name : {"ec", "rsa", "pwkey"})
      std::filesystem::copy_file(std::string(TPMKEY_FUZZ_KEYS) + "/" + name + ".pem",
                                 agent_keystore() + "/" + name + ".pem",
                                 std::filesystem::copy_options::overwrite_existing);
    World x;
    x.lib = OSSL_LIB_CTX_new();
    if (!x.lib || !OSSL_PROVIDER_add_builtin(x.lib, "tpmkey", OSSL_provider_init)) broken("no library context");
    if (!OSSL_PROVIDER_load(x.lib, "default") || !(x.tpmkey = OSSL_PROVIDER_load(x.lib, "tpmkey")))
      broken("the providers do not load");
    x.ec = load(x.lib, "tpm2:ec");
    x.rsa = load(x.lib, "tpm2:rsa");
    if (!x.ec || !x.rsa) broken("the corpus keys do not load");
    return x;
  }();
  return w;
}

// The input's parameters, with buffers that live as long as the array.
class Params {
 public:
  // `for_get`: the array asks for values, so pointer types (which a provider fills with a pointer
  // to its own data, never through the buffer) become the string types they point to.
  Params(const uint8_t* data, size_t size, const OSSL_PARAM* advertised, bool for_get = false) {
    std::vector<std::string> names;
    for (const OSSL_PARAM* p = advertised; p && p->key; ++p) names.emplace_back(p->key);
    for (const char* extra : {"", "no-such-parameter", OSSL_PKEY_PARAM_GROUP_NAME, OSSL_SIGNATURE_PARAM_DIGEST,
                              OSSL_PKEY_PARAM_RSA_BITS, "properties"})
      names.emplace_back(extra);
    size_t at = 0;
    while (params_.size() < 8 && at + 3 <= size) {
      const std::string& key = names[data[at] % names.size()];
      uint8_t type = data[at + 1] % 7;
      if (for_get && type >= 5) type = uint8_t(type - 2);
      size_t n = std::min<size_t>(data[at + 2], size - at - 3);
      at += 3;
      // A number has at least one byte: OpenSSL 3.0's own getters read before a zero-size one
      // (crypto/params.c, copy_integer), whichever provider takes it.
      if (type < 3 && n == 0) {
        if (at >= size) break;
        n = 1;
      }
      keys_.push_back(std::make_unique<std::string>(key));
      // Exactly n bytes (plus a NUL after a string's n), so nothing can read past them unseen.
      auto buf = std::make_unique<std::vector<uint8_t>>(data + at, data + at + n);
      at += n;
      OSSL_PARAM p{};
      p.key = keys_.back()->c_str();
      p.return_size = OSSL_PARAM_UNMODIFIED;
      static constexpr unsigned kTypes[] = {OSSL_PARAM_INTEGER,     OSSL_PARAM_UNSIGNED_INTEGER, OSSL_PARAM_REAL,
                                            OSSL_PARAM_UTF8_STRING, OSSL_PARAM_OCTET_STRING,     OSSL_PARAM_UTF8_PTR,
                                            OSSL_PARAM_OCTET_PTR};
      p.data_type = kTypes[type];
      if (p.data_type == OSSL_PARAM_UTF8_STRING || p.data_type == OSSL_PARAM_UTF8_PTR) buf->push_back(0);
      if (p.data_type == OSSL_PARAM_UTF8_PTR || p.data_type == OSSL_PARAM_OCTET_PTR) {
        ptrs_.push_back(std::make_unique<void*>(buf->data()));
        p.data = ptrs_.back().get();
      } else {
        p.data = buf->empty() ? nullptr : buf->data();
      }
      p.data_size = n;
      sizes_.push_back(n);
      bufs_.push_back(std::move(buf));
      params_.push_back(p);
    }
    params_.push_back(OSSL_PARAM{});  // OSSL_PARAM_END
  }
  OSSL_PARAM* get() { return params_.data(); }
  // After a get: what each parameter says it wrote fits its buffer.
  void check_written() const {
    for (size_t i = 0; i + 1 < params_.size(); ++i) {
      const OSSL_PARAM& p = params_[i];
      if (p.return_size == OSSL_PARAM_UNMODIFIED) continue;
      const bool ptr = p.data_type == OSSL_PARAM_UTF8_PTR || p.data_type == OSSL_PARAM_OCTET_PTR;
      if (!ptr && p.data && p.return_size > sizes_[i])
        broken("a get wrote past its buffer");
    }
  }

 private:
  std::vector<OSSL_PARAM> params_;
  std::vector<std::unique_ptr<std::string>> keys_;
  std::vector<std::unique_ptr<std::vector<uint8_t>>> bufs_;
  std::vector<std::unique_ptr<void*>> ptrs_;
  std::vector<size_t> sizes_;
};

using PkeyCtx = OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;

}  // namespace
}  // namespace tpmkey::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tpmkey;
  using namespace tpmkey::fuzz;
  const World& w = world();
  if (size < 1) return 0;
  const uint8_t which = data[0] % 12;
  const uint8_t* rest = data + 1;
  const size_t left = size - 1;
  const uint8_t flags = left ? rest[0] : 0;
  const unsigned char digest[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
  unsigned char out[1024];
  size_t out_len = sizeof out;
  switch (which) {
    case 0:
    case 1: {  // key generation: parameters only (generating would ask the TPM)
      PkeyCtx c(EVP_PKEY_CTX_new_from_name(w.lib, which == 0 ? "EC" : "RSA", "provider=tpmkey"));
      if (c && EVP_PKEY_keygen_init(c.get()) > 0) {
        Params p(rest, left, EVP_PKEY_CTX_settable_params(c.get()));
        (void)EVP_PKEY_CTX_set_params(c.get(), p.get());
      }
      break;
    }
    case 2:
    case 3: {  // signature: init with the parameters, then the size and a signature attempt
      EVP_PKEY* key = which == 2 ? w.ec : w.rsa;
      PkeyCtx c(EVP_PKEY_CTX_new_from_pkey(w.lib, key, nullptr));
      if (!c || EVP_PKEY_sign_init(c.get()) <= 0) break;
      Params p(rest, left, EVP_PKEY_CTX_settable_params(c.get()));
      if (EVP_PKEY_CTX_set_params(c.get(), p.get()) > 0) {
        size_t n = 0;
        if (EVP_PKEY_sign(c.get(), nullptr, &n, digest, sizeof digest) > 0)
          TPMKEY_FUZZ_CHECK(n <= size_t(EVP_PKEY_get_size(key)));
        (void)EVP_PKEY_sign(c.get(), out, &out_len, digest, sizeof digest);
      }
      Params g(rest, left, EVP_PKEY_CTX_gettable_params(c.get()), true);
      if (EVP_PKEY_CTX_get_params(c.get(), g.get()) > 0) g.check_written();
      break;
    }
    case 4: {  // decryption with the RSA key
      PkeyCtx c(EVP_PKEY_CTX_new_from_pkey(w.lib, w.rsa, nullptr));
      if (!c || EVP_PKEY_decrypt_init(c.get()) <= 0) break;
      Params p(rest, left, EVP_PKEY_CTX_settable_params(c.get()));
      if (EVP_PKEY_CTX_set_params(c.get(), p.get()) > 0) {
        unsigned char in[256] = {};
        (void)EVP_PKEY_decrypt(c.get(), out, &out_len, in, sizeof in);
      }
      Params g(rest, left, EVP_PKEY_CTX_gettable_params(c.get()), true);
      if (EVP_PKEY_CTX_get_params(c.get(), g.get()) > 0) g.check_written();
      break;
    }
    case 5: {  // key agreement with the EC key
      PkeyCtx c(EVP_PKEY_CTX_new_from_pkey(w.lib, w.ec, nullptr));
      if (!c || EVP_PKEY_derive_init(c.get()) <= 0) break;
      Params p(rest, left, EVP_PKEY_CTX_settable_params(c.get()));
      (void)EVP_PKEY_CTX_set_params(c.get(), p.get());
      Params g(rest, left, EVP_PKEY_CTX_gettable_params(c.get()), true);
      if (EVP_PKEY_CTX_get_params(c.get(), g.get()) > 0) g.check_written();
      break;
    }
    case 6:
    case 7: {  // the key's own parameters: get into the input's buffers, set on a fresh copy
      EVP_PKEY* key = which == 6 ? w.ec : w.rsa;
      Params g(rest, left, EVP_PKEY_gettable_params(key), true);
      if (EVP_PKEY_get_params(key, g.get()) > 0) g.check_written();
      EvpPkeyPtr fresh(load(w.lib, which == 6 ? "tpm2:ec" : "tpm2:rsa"));
      if (fresh) {
        Params s(rest, left, EVP_PKEY_settable_params(fresh.get()));
        (void)EVP_PKEY_set_params(fresh.get(), s.get());
      }
      break;
    }
    case 8: {  // the encoder
      OSSL_ENCODER_CTX* e = OSSL_ENCODER_CTX_new_for_pkey(w.ec, OSSL_KEYMGMT_SELECT_ALL, (flags & 1) ? "PEM" : "DER",
                                                          nullptr, "provider=tpmkey");
      if (e) {
        const OSSL_PARAM names[] = {OSSL_PARAM_utf8_string(OSSL_ENCODER_PARAM_CIPHER, nullptr, 0),
                                    OSSL_PARAM_utf8_string(OSSL_ENCODER_PARAM_PROPERTIES, nullptr, 0), OSSL_PARAM_END};
        Params p(rest, left, names);
        if (OSSL_ENCODER_CTX_set_params(e, p.get())) {
          unsigned char* der = nullptr;
          size_t n = 0;
          if (OSSL_ENCODER_to_data(e, &der, &n)) OPENSSL_free(der);
        }
        OSSL_ENCODER_CTX_free(e);
      }
      break;
    }
    case 9: {  // the store, opened with the parameters
      Params p(rest, left, nullptr);
      OSSL_STORE_CTX* st = OSSL_STORE_open_ex((flags & 1) ? "tpm2:" : "tpm2:pwkey", w.lib, "provider=tpmkey", nullptr,
                                              nullptr, p.get(), nullptr, nullptr);
      for (int i = 0; st && i < 8 && !OSSL_STORE_eof(st); ++i) OSSL_STORE_INFO_free(OSSL_STORE_load(st));
      OSSL_STORE_close(st);
      break;
    }
    case 10: {  // the provider's parameters
      Params g(rest, left, OSSL_PROVIDER_gettable_params(w.tpmkey), true);
      if (OSSL_PROVIDER_get_params(w.tpmkey, g.get())) g.check_written();
      break;
    }
    default: {  // a digest signature, its parameters at init
      Params p(rest, left, nullptr);
      EvpMdCtxPtr md(EVP_MD_CTX_new());
      EVP_PKEY_CTX* pc = nullptr;
      if (md && EVP_DigestSignInit_ex(md.get(), &pc, (flags & 1) ? "SHA384" : "SHA256", w.lib, nullptr,
                                      (flags & 2) ? w.rsa : w.ec, p.get()) > 0) {
        size_t n = sizeof out;
        (void)EVP_DigestSign(md.get(), out, &n, digest, sizeof digest);
      }
      break;
    }
  }
  ERR_clear_error();
  return 0;
}
