// Shared by the provider's operation files: the provider context, key data, and the noexcept
// guard that turns a failed Status into an OpenSSL error + 0.
#pragma once

#include <memory>
#include <string>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>

#include "keystore/context.h"
#include "keystore/key.h"
#include "provider/param_table.h"
#include "provider/params.h"

namespace tpmkey::provider {

inline constexpr const char* kProviderName = "tpmkey";
inline constexpr const char* kProperties = "provider=tpmkey";

struct ProviderCtx {
  const OSSL_CORE_HANDLE* handle = nullptr;
  OSSL_FUNC_core_new_error_fn* new_error = nullptr;
  OSSL_FUNC_core_set_error_debug_fn* set_error_debug = nullptr;
  OSSL_FUNC_core_vset_error_fn* vset_error = nullptr;
  OSSL_FUNC_BIO_read_ex_fn* bio_read = nullptr;
  OSSL_FUNC_BIO_write_ex_fn* bio_write = nullptr;
  std::unique_ptr<Context> core;

  // Puts `e` on the OpenSSL error queue: reason code + "where: reason: detail".
  void raise(const Error& e, const char* func) const;
};

// keymgmt key data: a shared TPM key (or none, right after keymgmt new()).
struct KeyData {
  ProviderCtx* prov = nullptr;
  KeyKind kind = KeyKind::kEc;
  std::shared_ptr<Key> key;
};

// Runs `body` (returning Status); on failure or exception raises the error and returns 0.
template <typename Fn>
int guard(const ProviderCtx* prov, const char* func, Fn&& body) noexcept {
  try {
    Status st = body();
    if (st) return 1;
    if (prov) prov->raise(st.error(), func);
    return 0;
  } catch (...) {
    if (prov) prov->raise(make_error(Reason::kInternal, "unexpected exception"), func);
    return 0;
  }
}

// Asks for `key`'s password through OpenSSL's callback when it needs one and has none yet.
// No callback: the key is returned without one, and signing says a password is missing.
Status ask_password(Key& key, OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_arg);

// Operation tables, defined in their own files.
extern const OSSL_DISPATCH kEcKeymgmt[];
extern const OSSL_DISPATCH kRsaKeymgmt[];
extern const OSSL_DISPATCH kEcdsaSignature[];
extern const OSSL_DISPATCH kRsaSignature[];
extern const OSSL_DISPATCH kStore[];
extern const OSSL_DISPATCH kTss2PemEncoder[];
extern const OSSL_DISPATCH kTss2DerEncoder[];
extern const OSSL_DISPATCH kTextEncoder[];
extern const OSSL_DISPATCH kTss2PemDecoder[];
extern const OSSL_DISPATCH kTss2DerChecker[];
extern const OSSL_DISPATCH kEcTss2Decoder[];
extern const OSSL_DISPATCH kRsaTss2Decoder[];

// keymgmt data type names, as store and decoders pass them in OSSL_OBJECT_PARAM_DATA_TYPE.
inline const char* data_type(KeyKind k) { return k == KeyKind::kEc ? "EC" : "RSA"; }

}  // namespace tpmkey::provider

// A dispatch table entry whose function is checked against OpenSSL's declared type.
#define TPMKEY_DISPATCH(id, type, fn) \
  { id, reinterpret_cast<void (*)()>(static_cast<OSSL_FUNC_##type##_fn*>(fn)) }
