// Store: opens tpm2: URIs. "tpm2:" lists the keystore (one name per key); "tpm2:NAME",
// "tpm2:file=..." give the key (or, with type=public, only its public key).
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/store.h>

#include "keystore/files.h"
#include "keystore/public_key.h"
#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

struct StoreCtx {
  ProviderCtx* prov = nullptr;
  TpmUri uri;
  int expect = 0;  // OSSL_STORE_INFO_* or 0
  bool listed = false;
  std::vector<std::string> names;
  size_t next = 0;
  bool done = false;
  // A load that failed: eof() stays false until the next load, so that OSSL_STORE_load records
  // the error (it does not when the store is already at its end) and `openssl storeutl` fails.
  bool failed = false;
};

void* open(void* provctx, const char* uri) noexcept {
  auto* prov = provider_ctx(provctx);
  StoreCtx* ctx = nullptr;
  guard(prov, "store_open", [&]() -> Status {
    auto parsed = parse_uri(uri ? uri : "");
    if (!parsed) return parsed.take_error().context("open");
    ctx = new StoreCtx;
    ctx->prov = prov;
    ctx->uri = std::move(*parsed);
    return Status::Ok();
  });
  return ctx;
}

// What OSSL_STORE_expect asks for: OSSL_STORE_INFO_PKEY or _PUBKEY (others find nothing here).
Status set_expect(StoreCtx& ctx, const OSSL_PARAM& p) {
  if (!OSSL_PARAM_get_int(&p, &ctx.expect)) return make_error(Reason::kInvalidArgument, "expect must be a number");
  return Status::Ok();
}

// The store's parameters (OpenSSL also passes "properties", which the table ignores).
constexpr auto kStoreParams = settable<StoreCtx>({
    {OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, nullptr), set_expect},
});

int set_ctx_params(void* vctx, const OSSL_PARAM params[]) noexcept {
  auto* ctx = static_cast<StoreCtx*>(vctx);
  return guard(ctx->prov, "store_set_ctx_params", [&] { return apply_params(kStoreParams, *ctx, params); });
}

const OSSL_PARAM* settable_ctx_params(void*) noexcept { return kStoreParams.list(); }

// One keystore entry as an OSSL_STORE NAME, with its algorithm as the description.
int emit_name(StoreCtx& ctx, const std::string& name, OSSL_CALLBACK* cb, void* cbarg) {
  std::string uri = "tpm2:" + name;
  std::string desc;
  if (auto kf = ctx.prov->core->keystore().read(name)) {
    auto spec = spec_of(kf->pub.publicArea);
    desc = spec ? (*spec)->name : "unsupported algorithm";
    if (!kf->empty_auth) desc += ", needs a password";
  } else {
    desc = "unreadable: " + kf.error().text();
  }
  int type = OSSL_OBJECT_NAME;
  OSSL_PARAM params[] = {OSSL_PARAM_int(OSSL_OBJECT_PARAM_TYPE, &type),
                         OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DATA, uri.data(), 0),
                         OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DESC, desc.data(), 0), OSSL_PARAM_END};
  return cb(params, cbarg);
}

Status emit_key(StoreCtx& ctx, OSSL_CALLBACK* cb, void* cbarg, OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_arg) {
  bool want_public = ctx.uri.type == ObjectType::kPublic || ctx.expect == OSSL_STORE_INFO_PUBKEY;
  bool want_private = !want_public;
  if (ctx.expect != 0 && ctx.expect != OSSL_STORE_INFO_PKEY && ctx.expect != OSSL_STORE_INFO_PUBKEY)
    return Status::Ok();  // we hold no certificates, CRLs or parameters
  if (ctx.uri.type == ObjectType::kPrivate && ctx.expect == OSSL_STORE_INFO_PUBKEY) return Status::Ok();

  auto key = Key::open(*ctx.prov->core, ctx.uri);
  if (!key) return key.take_error();
  int type = OSSL_OBJECT_PKEY;
  const char* dtype = data_type((*key)->spec().kind);
  if (want_private) {
    TPMKEY_TRY(ask_password(**key, pw_cb, pw_arg));
    auto* kd = new KeyData{ctx.prov, (*key)->spec().kind, std::move(*key)};
    OSSL_PARAM params[] = {OSSL_PARAM_int(OSSL_OBJECT_PARAM_TYPE, &type),
                           OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, const_cast<char*>(dtype), 0),
                           OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &kd, sizeof kd), OSSL_PARAM_END};
    int ok = cb(params, cbarg);
    delete kd;  // still ours if keymgmt load did not take it
    if (!ok) return make_error(Reason::kInternal, "OpenSSL did not accept the key").context("load(" + display_uri(ctx.uri) + ")");
    return Status::Ok();
  }
  auto spki = spki_der((*key)->public_pkey());
  if (!spki) return spki.take_error();
  char structure[] = "SubjectPublicKeyInfo";
  OSSL_PARAM params[] = {OSSL_PARAM_int(OSSL_OBJECT_PARAM_TYPE, &type),
                         OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, const_cast<char*>(dtype), 0),
                         OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE, structure, 0),
                         OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_DATA, spki->data(), spki->size()), OSSL_PARAM_END};
  if (!cb(params, cbarg))
    return make_error(Reason::kInvalidArgument,
                      "the URI names only the public key (type=public); a private key was needed")
        .context("load(" + display_uri(ctx.uri) + ")");
  return Status::Ok();
}

int load(void* vctx, OSSL_CALLBACK* cb, void* cbarg, OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_arg) noexcept {
  auto* ctx = static_cast<StoreCtx*>(vctx);
  return guard(ctx->prov, "store_load", [&]() -> Status {
    if (ctx->failed) ctx->done = true;
    if (ctx->done) return Status::Ok();
    if (Status st = ctx->prov->core->settings_status(); !st) {  // the keystore may not be the one meant
      ctx->failed = true;
      return st;
    }
    if (!ctx->uri.names_keystore()) {
      Status st = emit_key(*ctx, cb, cbarg, pw_cb, pw_arg);
      ctx->failed = !st;
      ctx->done = !ctx->failed;
      return st;
    }
    if (!ctx->listed && (ctx->expect == OSSL_STORE_INFO_PKEY || ctx->expect == OSSL_STORE_INFO_PUBKEY)) {
      // A program asked for a key (`-inkey tpm2:`) and gets names, which it skips: this says
      // why when it reports that it found no key. The names are still listed, so that
      // `openssl storeutl -r -keys tpm2:` follows them to the keys.
      ctx->prov->raise(make_error(Reason::kInvalidArgument,
                                  "tpm2: names the whole keystore, not a key: give a key name, tpm2:NAME (`tpmkey "
                                  "list` or `openssl storeutl tpm2:` lists them)")
                           .context("open(tpm2:)"),
                       "store_load");
    }
    if (!ctx->listed) {
      auto names = ctx->prov->core->keystore().list();
      if (!names) {
        ctx->failed = true;
        return names.take_error().context("list(tpm2:)");
      }
      ctx->names = std::move(*names);
      ctx->listed = true;
    }
    if (ctx->next >= ctx->names.size()) {
      ctx->done = true;
      return Status::Ok();
    }
    if (!emit_name(*ctx, ctx->names[ctx->next++], cb, cbarg))
      return make_error(Reason::kInternal, "OpenSSL did not accept a name").context("list(tpm2:)");
    if (ctx->next >= ctx->names.size()) ctx->done = true;
    return Status::Ok();
  });
}

int eof(void* vctx) noexcept { return static_cast<StoreCtx*>(vctx)->done; }
int close(void* vctx) noexcept {
  delete static_cast<StoreCtx*>(vctx);
  return 1;
}

}  // namespace

const OSSL_DISPATCH kStore[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_STORE_OPEN, store_open, open),
    TPMKEY_DISPATCH(OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, store_settable_ctx_params, settable_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_STORE_SET_CTX_PARAMS, store_set_ctx_params, set_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_STORE_LOAD, store_load, load),
    TPMKEY_DISPATCH(OSSL_FUNC_STORE_EOF, store_eof, eof),
    TPMKEY_DISPATCH(OSSL_FUNC_STORE_CLOSE, store_close, close),
    {0, nullptr}};

}  // namespace tpmkey::provider
