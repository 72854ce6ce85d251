// Shared by the provider's operation files: the provider context, key data, and the noexcept
// guard that turns a failed Status into an OpenSSL error + 0.
#pragma once

#include <memory>
#include <string>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>

#include "keystore/context.h"
#include "keystore/key.h"
#include "provider/module.h"
#include "provider/param_table.h"
#include "provider/params.h"

namespace tpmkey::provider {

inline constexpr const char* kProviderName = "tpmkey";
inline constexpr const char* kProperties = "provider=tpmkey";

struct ProviderCtx {
  void* self = this;  // first: what provider_ctx() follows (module.h)
  const OSSL_CORE_HANDLE* handle = nullptr;
  OSSL_FUNC_core_new_error_fn* new_error = nullptr;
  OSSL_FUNC_core_set_error_debug_fn* set_error_debug = nullptr;
  OSSL_FUNC_core_vset_error_fn* vset_error = nullptr;
  OSSL_FUNC_BIO_read_ex_fn* bio_read = nullptr;
  OSSL_FUNC_BIO_write_ex_fn* bio_write = nullptr;
  std::unique_ptr<Context> core;

  ProviderCtx() = default;
  ProviderCtx(const ProviderCtx&) = delete;
  ProviderCtx& operator=(const ProviderCtx&) = delete;

  // Puts `e` on the OpenSSL error queue: reason code + "where: reason: detail".
  void raise(const Error& e, const char* func) const;
};
// The ProviderCtx behind the pointer OpenSSL passes to a provider function (module.h).
inline ProviderCtx* provider_ctx(void* provctx) { return static_cast<ProviderCtx*>(provider_context_of(provctx)); }

// keymgmt key data: a TPM key, or a software key, or neither (right after keymgmt new()).
// A software key is never the TPM's: a peer's public key, domain parameters, an ephemeral TLS key,
// any key an application makes or imports while tpmkey's keymgmt is the one OpenSSL fetched. It is
// held by the default provider and every operation on it is the default provider's
// (docs/architecture.md, "Software keys"); only `key` ever reaches the TPM.
struct KeyData {
  ProviderCtx* prov = nullptr;
  KeyKind kind = KeyKind::kEc;
  std::shared_ptr<Key> key;
  EvpPkeyPtr soft;
  // The key's public half (and for a software key, all of it) as a default-provider key.
  EVP_PKEY* pkey() const { return key ? key->public_pkey() : soft.get(); }
};

// Where tpmkey computes in software: the library context of its Crypto (keystore/crypto.h) and
// the property query that keeps every fetch on the default provider, never on tpmkey itself.
inline constexpr const char* kSoftwareProps = "provider=default";
Result<OSSL_LIB_CTX*> software_libctx(const ProviderCtx* prov);
// Whether `kd` is a software key that holds every part `selection` names (OSSL_KEYMGMT_SELECT_*),
// asked of the default provider (keymgmt.cc).
bool software_has(const KeyData& kd, int selection);

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

// Writes software key `kd` through the default provider's encoders (output "PEM", "DER" or "TEXT";
// `cipher` non-empty: passphrase-protected, the passphrase from `cb`). encoder.cc.
Status encode_software(const ProviderCtx* prov, OSSL_CORE_BIO* out, const KeyData& kd, int selection,
                       const char* output, const char* structure, const std::string& cipher,
                       OSSL_PASSPHRASE_CALLBACK* cb, void* cbarg);

// Operation tables, defined in their own files.
// Two keymgmts per key type, alike but for generation: the first generates software keys (what an
// unqualified fetch gets when tpmkey comes first), the second generates in the TPM (what
// "provider=tpmkey" asks for). See provider.cc, kKeymgmtAlgs.
extern const OSSL_DISPATCH kEcKeymgmt[];
extern const OSSL_DISPATCH kRsaKeymgmt[];
extern const OSSL_DISPATCH kEcTpmKeymgmt[];
extern const OSSL_DISPATCH kRsaTpmKeymgmt[];
extern const OSSL_DISPATCH kRsaPssKeymgmt[];
extern const OSSL_DISPATCH kRsaPssTpmKeymgmt[];
extern const OSSL_DISPATCH kEcdsaSignature[];
extern const OSSL_DISPATCH kRsaSignature[];
extern const OSSL_DISPATCH kRsaAsymCipher[];
extern const OSSL_DISPATCH kEcdhKeyExchange[];
extern const OSSL_DISPATCH kStore[];
extern const OSSL_DISPATCH kTss2PemEncoder[];
extern const OSSL_DISPATCH kTss2DerEncoder[];
extern const OSSL_DISPATCH kPrivateKeyInfoPemEncoder[];
extern const OSSL_DISPATCH kPrivateKeyInfoDerEncoder[];
extern const OSSL_DISPATCH kTextEncoder[];
extern const OSSL_DISPATCH kTss2PemDecoder[];
extern const OSSL_DISPATCH kTss2DerChecker[];
extern const OSSL_DISPATCH kEcTss2Decoder[];
extern const OSSL_DISPATCH kRsaTss2Decoder[];
extern const OSSL_DISPATCH kRsaPssTss2Decoder[];

// keymgmt data type names, as store and decoders pass them in OSSL_OBJECT_PARAM_DATA_TYPE, and the
// algorithm names the default provider knows the key types by.
inline const char* data_type(KeyKind k) {
  return k == KeyKind::kEc ? "EC" : k == KeyKind::kRsaPss ? "RSA-PSS" : "RSA";
}

}  // namespace tpmkey::provider

// A dispatch table entry whose function is checked against OpenSSL's declared type.
#define TPMKEY_DISPATCH(id, type, fn) \
  { id, reinterpret_cast<void (*)()>(static_cast<OSSL_FUNC_##type##_fn*>(fn)) }
