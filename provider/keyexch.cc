// Key exchange: ECDH. With a TPM EC key the TPM computes the shared point (TPM2_ECDH_ZGen,
// Key::derive): the peer's point is checked on the curve first, and the secret returns inside the
// session's encryption (docs/keys.md, "ECDH"). With a software key (provider.h: a TLS handshake's
// ephemeral key when tpmkey comes first) the default provider's ECDH does it all. The peer is
// always a public key: its point is all that reaches the TPM. X9.63 KDF over the TPM's secret
// (CMS key agreement) is computed in software.
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

struct ExchCtx {
  ProviderCtx* prov = nullptr;
  std::shared_ptr<Key> key;  // a TPM key
  EvpPkeyPtr peer;           // its peer (the public half, a default-provider key)
  EvpPkeyCtxPtr soft;        // a software key: the default provider's context
  // X9.63 KDF over the shared secret (CMS's ECDH key agreement asks for it), as OpenSSL's ECDH
  // has it: computed by the default provider's X963KDF from the TPM's secret.
  bool x963 = false;
  std::string kdf_digest = "SHA1";
  size_t kdf_outlen = 0;
  Bytes ukm;
};

void* newctx(void* provctx) noexcept {
  auto* c = new (std::nothrow) ExchCtx;
  if (c) c->prov = provider_ctx(provctx);
  return c;
}
void freectx(void* vc) noexcept { delete static_cast<ExchCtx*>(vc); }
void* dupctx(void* vc) noexcept {
  const auto* c = static_cast<ExchCtx*>(vc);
  auto* d = new (std::nothrow) ExchCtx;
  if (!d) return nullptr;
  d->prov = c->prov;
  d->key = c->key;
  d->x963 = c->x963;
  d->kdf_digest = c->kdf_digest;
  d->kdf_outlen = c->kdf_outlen;
  d->ukm = c->ukm;
  if (c->peer && EVP_PKEY_up_ref(c->peer.get())) d->peer.reset(c->peer.get());
  if (c->soft) d->soft.reset(EVP_PKEY_CTX_dup(c->soft.get()));
  if ((c->soft && !d->soft) || (c->peer && !d->peer)) {
    delete d;
    return nullptr;
  }
  return d;
}

// A TPM key's parameters: the plain shared secret, or X9.63 KDF over it. Cofactor mode is 1 on the
// curves the TPM has, and is accepted as it is.
Status set_tpm_params(ExchCtx& c, const OSSL_PARAM params[]) {
  for (const OSSL_PARAM* p = params; p && p->key; ++p) {
    const char* v = nullptr;
    if (std::strcmp(p->key, OSSL_EXCHANGE_PARAM_KDF_TYPE) == 0) {
      if (!OSSL_PARAM_get_utf8_string_ptr(p, &v)) return make_error(Reason::kInvalidArgument, "kdf-type must be a name");
      if (!v || !*v) {
        c.x963 = false;
      } else if (OPENSSL_strcasecmp(v, OSSL_KDF_NAME_X963KDF) == 0) {
        c.x963 = true;
      } else {
        return make_error(Reason::kUnsupported, std::string("ECDH with a TPM key: KDF ") + v + " (X963KDF or none)");
      }
    } else if (std::strcmp(p->key, OSSL_EXCHANGE_PARAM_KDF_DIGEST) == 0) {
      if (!OSSL_PARAM_get_utf8_string_ptr(p, &v) || !v) return make_error(Reason::kInvalidArgument, "kdf-digest must be a name");
      c.kdf_digest = v;
    } else if (std::strcmp(p->key, OSSL_EXCHANGE_PARAM_KDF_OUTLEN) == 0) {
      if (!OSSL_PARAM_get_size_t(p, &c.kdf_outlen)) return make_error(Reason::kInvalidArgument, "kdf-outlen must be a number");
    } else if (std::strcmp(p->key, OSSL_EXCHANGE_PARAM_KDF_UKM) == 0) {
      const void* data = nullptr;
      size_t len = 0;
      if (!OSSL_PARAM_get_octet_string_ptr(p, &data, &len)) return make_error(Reason::kInvalidArgument, "kdf-ukm must be bytes");
      c.ukm.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + len);
    }
  }
  return Status::Ok();
}

// X9.63 KDF (the default provider's) of `z` into `out`.
Status x963kdf(const ExchCtx& c, const SecretBytes& z, unsigned char* out, size_t outlen) {
  auto lib = software_libctx(c.prov);
  if (!lib) return lib.take_error();
  OsslPtr<EVP_KDF, EVP_KDF_free> kdf(EVP_KDF_fetch(*lib, OSSL_KDF_NAME_X963KDF, kSoftwareProps));
  OsslPtr<EVP_KDF_CTX, EVP_KDF_CTX_free> kctx(kdf ? EVP_KDF_CTX_new(kdf.get()) : nullptr);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(c.kdf_digest.c_str()), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(z.data()), z.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(c.ukm.data()), c.ukm.size()),
      OSSL_PARAM_construct_end()};
  if (!kctx || EVP_KDF_derive(kctx.get(), out, outlen, params) != 1)
    return make_error(Reason::kInvalidArgument, "X9.63 KDF with " + c.kdf_digest + " failed");
  return Status::Ok();
}

int init(void* vc, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<ExchCtx*>(vc);
  return guard(c->prov, "derive_init", [&]() -> Status {
    auto* kd = static_cast<KeyData*>(vkd);
    if (!kd || !kd->pkey() || kd->kind != KeyKind::kEc) return make_error(Reason::kInvalidArgument, "not an EC key");
    c->key.reset();
    c->peer.reset();
    c->soft.reset();
    if (kd->key) {
      if (!kd->key->can_decrypt())
        return make_error(Reason::kUnsupported, "the key's usage is " + usage_text(kd->key->usage()) +
                                                    ": ECDH needs a key made with --usage decrypt or sign,decrypt")
            .context("derive(" + kd->key->label() + ")");
      c->key = kd->key;
      c->x963 = false;
      c->kdf_outlen = 0;
      c->ukm.clear();
      return set_tpm_params(*c, params);
    }
    if (!software_has(*kd, OSSL_KEYMGMT_SELECT_PRIVATE_KEY)) return make_error(Reason::kInvalidArgument, "not a private key");
    auto lib = software_libctx(c->prov);
    if (!lib) return lib.take_error();
    c->soft.reset(EVP_PKEY_CTX_new_from_pkey(*lib, kd->soft.get(), kSoftwareProps));
    if (!c->soft || EVP_PKEY_derive_init_ex(c->soft.get(), params) != 1)
      return make_error(Reason::kInvalidArgument, "the default provider refused ECDH with this key");
    return Status::Ok();
  });
}

int set_peer(void* vc, void* vpeer) noexcept {
  auto* c = static_cast<ExchCtx*>(vc);
  return guard(c->prov, "derive_set_peer", [&]() -> Status {
    auto* peer = static_cast<KeyData*>(vpeer);
    if (!peer || !peer->pkey() || peer->kind != KeyKind::kEc) return make_error(Reason::kInvalidArgument, "the peer is not an EC key");
    if (c->soft) {
      if (EVP_PKEY_derive_set_peer(c->soft.get(), peer->pkey()) != 1)
        return make_error(Reason::kInvalidArgument, "the default provider refused the peer key");
      return Status::Ok();
    }
    if (!EVP_PKEY_up_ref(peer->pkey())) return make_error(Reason::kInternal, "cannot hold the peer key");
    c->peer.reset(peer->pkey());
    return Status::Ok();
  });
}

int derive(void* vc, unsigned char* secret, size_t* secretlen, size_t outlen) noexcept {
  auto* c = static_cast<ExchCtx*>(vc);
  if (c->soft) {
    if (secret) *secretlen = outlen;
    return EVP_PKEY_derive(c->soft.get(), secret, secretlen) == 1;
  }
  return guard(c->prov, "derive", [&]() -> Status {
    if (!c->key) return make_error(Reason::kInvalidArgument, "derive without derive_init");
    const std::string what = "derive(" + c->key->label() + ")";
    const size_t size = c->x963 ? c->kdf_outlen : c->key->shared_secret_size();
    if (c->x963 && !size) return make_error(Reason::kInvalidArgument, "X9.63 KDF without an output length").context(what);
    if (!secret) {
      *secretlen = size;
      return Status::Ok();
    }
    if (!c->peer) return make_error(Reason::kInvalidArgument, "no peer key").context(what);
    if (outlen < size) return make_error(Reason::kInvalidArgument, "the output buffer is too small").context(what);
    auto z = c->key->derive(c->peer.get());
    if (!z) return z.take_error();
    if (c->x963) {
      Status st = x963kdf(*c, *z, secret, size);
      if (!st) return st.take_error().context(what);
      *secretlen = size;
      return Status::Ok();
    }
    std::memcpy(secret, z->data(), z->size());
    *secretlen = z->size();
    return Status::Ok();
  });
}

int set_ctx_params(void* vc, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<ExchCtx*>(vc);
  if (c->soft) return !params || !params->key || EVP_PKEY_CTX_set_params(c->soft.get(), params) == 1;
  return guard(c->prov, "derive_set_ctx_params", [&] { return set_tpm_params(*c, params); });
}
int get_ctx_params(void* vc, OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<ExchCtx*>(vc);
  if (c->soft) return EVP_PKEY_CTX_get_params(c->soft.get(), params) == 1;
  OSSL_PARAM* p = OSSL_PARAM_locate(params, OSSL_EXCHANGE_PARAM_KDF_TYPE);
  if (p && !OSSL_PARAM_set_utf8_string(p, c->x963 ? OSSL_KDF_NAME_X963KDF : "")) return 0;
  p = OSSL_PARAM_locate(params, OSSL_EXCHANGE_PARAM_KDF_DIGEST);
  if (p && !OSSL_PARAM_set_utf8_string(p, c->kdf_digest.c_str())) return 0;
  p = OSSL_PARAM_locate(params, OSSL_EXCHANGE_PARAM_KDF_OUTLEN);
  if (p && !OSSL_PARAM_set_size_t(p, c->kdf_outlen)) return 0;
  return 1;
}
const OSSL_PARAM kSettable[] = {
    OSSL_PARAM_int(OSSL_EXCHANGE_PARAM_EC_ECDH_COFACTOR_MODE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_EXCHANGE_PARAM_KDF_TYPE, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_EXCHANGE_PARAM_KDF_DIGEST, nullptr, 0),
    OSSL_PARAM_size_t(OSSL_EXCHANGE_PARAM_KDF_OUTLEN, nullptr),
    OSSL_PARAM_octet_string(OSSL_EXCHANGE_PARAM_KDF_UKM, nullptr, 0),
    OSSL_PARAM_END};
const OSSL_PARAM kGettable[] = {
    OSSL_PARAM_utf8_string(OSSL_EXCHANGE_PARAM_KDF_TYPE, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_EXCHANGE_PARAM_KDF_DIGEST, nullptr, 0),
    OSSL_PARAM_size_t(OSSL_EXCHANGE_PARAM_KDF_OUTLEN, nullptr),
    OSSL_PARAM_END};
const OSSL_PARAM* settable_ctx_params(void*, void*) noexcept { return kSettable; }
const OSSL_PARAM* gettable_ctx_params(void*, void*) noexcept { return kGettable; }

}  // namespace

const OSSL_DISPATCH kEcdhKeyExchange[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_NEWCTX, keyexch_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_FREECTX, keyexch_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_DUPCTX, keyexch_dupctx, dupctx),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_INIT, keyexch_init, init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_SET_PEER, keyexch_set_peer, set_peer),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_DERIVE, keyexch_derive, derive),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_SET_CTX_PARAMS, keyexch_set_ctx_params, set_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_SETTABLE_CTX_PARAMS, keyexch_settable_ctx_params, settable_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_GET_CTX_PARAMS, keyexch_get_ctx_params, get_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYEXCH_GETTABLE_CTX_PARAMS, keyexch_gettable_ctx_params, gettable_ctx_params),
    {0, nullptr}};

}  // namespace tpmkey::provider
