// RSA decryption by the TPM (OSSL_OP_ASYM_CIPHER): padding pkcs1 (implicit rejection on by
// default, as OpenSSL 3.2 does), oaep (the label digest and MGF1 with one hash, the TPM's only
// choice) and none. Encryption needs only the public half: it is done in software, by the default
// provider, never by the TPM (docs/keys.md, "Decryption"). A software key's decryption and
// encryption are the default provider's, handed over whole.
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "provider/provider.h"

// OpenSSL 3.2's name; 3.0 and 3.1 have no implicit rejection of their own.
#ifndef OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION
#define OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION "implicit-rejection"
#endif

namespace tpmkey::provider {
namespace {

struct CipherCtx {
  ProviderCtx* prov = nullptr;
  std::shared_ptr<Key> key;
  bool decrypting = false;
  int padding = RSA_PKCS1_PADDING;
  TPM2_ALG_ID oaep_hash = TPM2_ALG_SHA1;  // OpenSSL's default
  TPM2_ALG_ID mgf1 = TPM2_ALG_NULL;       // NULL: the OAEP digest
  Bytes label;
  bool implicit_rejection = true;
  // A software key (provider.h): the default provider's context, given every call as is.
  EvpPkeyCtxPtr soft;
};

void* newctx(void* provctx) noexcept {
  auto* c = new (std::nothrow) CipherCtx;
  if (c) c->prov = provider_ctx(provctx);
  return c;
}
void freectx(void* vc) noexcept { delete static_cast<CipherCtx*>(vc); }
void* dupctx(void* vc) noexcept {
  const auto* c = static_cast<CipherCtx*>(vc);
  try {
    auto* d = new CipherCtx;
    d->prov = c->prov;
    d->key = c->key;
    d->decrypting = c->decrypting;
    d->padding = c->padding;
    d->oaep_hash = c->oaep_hash;
    d->mgf1 = c->mgf1;
    d->label = c->label;
    d->implicit_rejection = c->implicit_rejection;
    if (c->soft) d->soft.reset(EVP_PKEY_CTX_dup(c->soft.get()));
    if (c->soft && !d->soft) {
      delete d;
      return nullptr;
    }
    return d;
  } catch (...) {
    return nullptr;
  }
}

// --- parameters ---

Status set_pad_mode(CipherCtx& c, const OSSL_PARAM& p) {
  int mode = 0;
  const char* name = nullptr;
  if (p.data_type == OSSL_PARAM_UTF8_STRING && OSSL_PARAM_get_utf8_string_ptr(&p, &name)) {
    const std::string n = name;
    mode = n == OSSL_PKEY_RSA_PAD_MODE_PKCSV15 ? RSA_PKCS1_PADDING
           : n == OSSL_PKEY_RSA_PAD_MODE_OAEP  ? RSA_PKCS1_OAEP_PADDING
           : n == OSSL_PKEY_RSA_PAD_MODE_NONE  ? RSA_NO_PADDING
                                               : -1;
  } else if (!OSSL_PARAM_get_int(&p, &mode)) {
    return make_error(Reason::kInvalidArgument, "bad RSA padding mode");
  }
  if (mode != RSA_PKCS1_PADDING && mode != RSA_PKCS1_OAEP_PADDING && mode != RSA_NO_PADDING)
    return make_error(Reason::kUnsupported, "RSA padding mode (a TPM key decrypts with pkcs1, oaep or none)");
  c.padding = mode;
  return Status::Ok();
}

Status hash_param(const OSSL_PARAM& p, const char* what, TPM2_ALG_ID* out) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, std::string(what) + " must be a name");
  TPM2_ALG_ID h = hash_from_name(name);
  if (h == TPM2_ALG_ERROR)
    return make_error(Reason::kUnsupported, std::string(what) + " " + name + " (use SHA1, SHA256, SHA384 or SHA512)");
  *out = h;
  return Status::Ok();
}
Status set_oaep_digest(CipherCtx& c, const OSSL_PARAM& p) { return hash_param(p, "OAEP digest", &c.oaep_hash); }
Status set_mgf1_digest(CipherCtx& c, const OSSL_PARAM& p) { return hash_param(p, "MGF1 digest", &c.mgf1); }
// Accepted and not used: tpmkey's digests always come from the default provider.
Status set_ignored(CipherCtx&, const OSSL_PARAM&) { return Status::Ok(); }

Status set_label(CipherCtx& c, const OSSL_PARAM& p) {
  const void* v = nullptr;
  size_t n = 0;
  if (p.data_type != OSSL_PARAM_OCTET_STRING || !OSSL_PARAM_get_octet_string_ptr(&p, &v, &n))
    return make_error(Reason::kInvalidArgument, "the OAEP label must be an octet string");
  const auto* b = static_cast<const uint8_t*>(v);
  c.label.assign(b, b + n);
  return Status::Ok();
}

Status set_implicit_rejection(CipherCtx& c, const OSSL_PARAM& p) {
  unsigned v = 0;
  if (!OSSL_PARAM_get_uint(&p, &v)) return make_error(Reason::kInvalidArgument, "implicit-rejection must be 0 or 1");
  c.implicit_rejection = v != 0;
  return Status::Ok();
}

bool get_pad_mode(const CipherCtx& c, OSSL_PARAM& p) {
  if (p.data_type == OSSL_PARAM_INTEGER) return OSSL_PARAM_set_int(&p, c.padding);
  return OSSL_PARAM_set_utf8_string(&p, c.padding == RSA_PKCS1_OAEP_PADDING ? OSSL_PKEY_RSA_PAD_MODE_OAEP
                                        : c.padding == RSA_NO_PADDING      ? OSSL_PKEY_RSA_PAD_MODE_NONE
                                                                           : OSSL_PKEY_RSA_PAD_MODE_PKCSV15);
}
bool get_oaep_digest(const CipherCtx& c, OSSL_PARAM& p) { return OSSL_PARAM_set_utf8_string(&p, hash_name(c.oaep_hash)); }
bool get_mgf1_digest(const CipherCtx& c, OSSL_PARAM& p) {
  return OSSL_PARAM_set_utf8_string(&p, hash_name(c.mgf1 != TPM2_ALG_NULL ? c.mgf1 : c.oaep_hash));
}
bool get_label(const CipherCtx& c, OSSL_PARAM& p) {
  return OSSL_PARAM_set_octet_ptr(&p, c.label.empty() ? nullptr : c.label.data(), c.label.size());
}
bool get_implicit_rejection(const CipherCtx& c, OSSL_PARAM& p) { return OSSL_PARAM_set_uint(&p, c.implicit_rejection); }

constexpr auto kSettable = settable<CipherCtx>({
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, nullptr, 0), set_pad_mode},  // or an int
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, nullptr, 0), set_oaep_digest},
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST_PROPS, nullptr, 0), set_ignored},
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, nullptr, 0), set_mgf1_digest},
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST_PROPS, nullptr, 0), set_ignored},
    {OSSL_PARAM_octet_string(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, nullptr, 0), set_label},
    {OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION, nullptr), set_implicit_rejection},
});
constexpr auto kGettable = gettable<CipherCtx>({
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, nullptr, 0), get_pad_mode},  // or an int
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, nullptr, 0), get_oaep_digest},
    {OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, nullptr, 0), get_mgf1_digest},
    {OSSL_PARAM_octet_ptr(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, nullptr, 0), get_label},
    {OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION, nullptr), get_implicit_rejection},
});

int set_ctx_params(void* vc, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<CipherCtx*>(vc);
  if (c->soft) return !params || !params->key || EVP_PKEY_CTX_set_params(c->soft.get(), params) == 1;
  return guard(c->prov, "asym_cipher_set_ctx_params", [&] { return apply_params(kSettable, *c, params); });
}
int get_ctx_params(void* vc, OSSL_PARAM params[]) noexcept {
  if (auto* c = static_cast<CipherCtx*>(vc); c->soft) return EVP_PKEY_CTX_get_params(c->soft.get(), params) == 1;
  return answer_params(kGettable, *static_cast<const CipherCtx*>(vc), params);
}
const OSSL_PARAM* settable_ctx_params(void*, void*) noexcept { return kSettable.list(); }
const OSSL_PARAM* gettable_ctx_params(void*, void*) noexcept { return kGettable.list(); }

// --- operations ---

Status init(CipherCtx& c, void* vkd, const OSSL_PARAM params[], bool decrypting) {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd || !kd->pkey() || kd->kind != KeyKind::kRsa) return make_error(Reason::kInvalidArgument, "not an RSA key");
  c.key.reset();
  c.soft.reset();
  if (!kd->key) {  // a software key: the default provider does it all
    auto lib = software_libctx(c.prov);
    if (!lib) return lib.take_error();
    c.soft.reset(EVP_PKEY_CTX_new_from_pkey(*lib, kd->soft.get(), kSoftwareProps));
    if (!c.soft || (decrypting ? EVP_PKEY_decrypt_init_ex(c.soft.get(), params) : EVP_PKEY_encrypt_init_ex(c.soft.get(), params)) != 1)
      return make_error(Reason::kInvalidArgument, "the default provider refused the operation for this key");
    return Status::Ok();
  }
  // Refused here, before any TPM command, when the key's public area does not allow decryption.
  if (decrypting && !kd->key->can_decrypt())
    return make_error(Reason::kUnsupported, "the key's usage is " + usage_text(kd->key->usage()) +
                                                ": it cannot decrypt (its public area lacks the decrypt attribute)")
        .context("decrypt(" + kd->key->label() + ")");
  c.key = kd->key;
  c.decrypting = decrypting;
  return apply_params(kSettable, c, params);
}

int decrypt_init(void* vc, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<CipherCtx*>(vc);
  return guard(c->prov, "decrypt_init", [&] { return init(*c, vkd, params, true); });
}
int encrypt_init(void* vc, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<CipherCtx*>(vc);
  return guard(c->prov, "encrypt_init", [&] { return init(*c, vkd, params, false); });
}

int decrypt(void* vc, unsigned char* out, size_t* outlen, size_t outsize, const unsigned char* in,
            size_t inlen) noexcept {
  auto* c = static_cast<CipherCtx*>(vc);
  if (c->soft) {
    if (out) *outlen = outsize;
    return EVP_PKEY_decrypt(c->soft.get(), out, outlen, in, inlen) == 1;
  }
  return guard(c->prov, "decrypt", [&]() -> Status {
    if (!c->key || !c->decrypting) return make_error(Reason::kInvalidArgument, "decrypt without decrypt_init");
    const std::string what = "decrypt(" + c->key->label() + ")";
    const size_t k = c->key->modulus_size();
    if (!out) {
      *outlen = k;
      return Status::Ok();
    }
    // A buffer for the longest result, whatever the padding turns out to be, so that a short one
    // never tells a valid message from a synthetic one.
    if (outsize < k)
      return make_error(Reason::kInvalidArgument, "the output buffer is smaller than the modulus").context(what);
    DecryptScheme scheme;
    scheme.padding = c->padding == RSA_PKCS1_OAEP_PADDING ? RsaPadding::kOaep
                     : c->padding == RSA_NO_PADDING       ? RsaPadding::kNone
                                                          : RsaPadding::kPkcs1;
    scheme.hash = c->oaep_hash;
    scheme.label = c->label;
    scheme.implicit_rejection = c->implicit_rejection;
    if (scheme.padding == RsaPadding::kOaep && c->mgf1 != TPM2_ALG_NULL && c->mgf1 != c->oaep_hash)
      return make_error(Reason::kUnsupported, std::string("the TPM uses the OAEP digest for MGF1 too: MGF1 with ") +
                                                  hash_name(c->mgf1) + " and OAEP with " + hash_name(c->oaep_hash) +
                                                  " cannot be decrypted")
          .context(what);
    auto m = c->key->decrypt(scheme, in, inlen);
    if (!m) return m.take_error();
    if (!m->empty()) std::memcpy(out, m->data(), m->size());  // an empty message has no buffer
    *outlen = m->size();
    return Status::Ok();
  });
}

// Encryption with the public half, by the default provider in tpmkey's own library context (or
// the global one with "provider=default"): tpmkey is never asked again.
int encrypt(void* vc, unsigned char* out, size_t* outlen, size_t outsize, const unsigned char* in,
            size_t inlen) noexcept {
  auto* c = static_cast<CipherCtx*>(vc);
  if (c->soft) {
    if (out) *outlen = outsize;
    return EVP_PKEY_encrypt(c->soft.get(), out, outlen, in, inlen) == 1;
  }
  return guard(c->prov, "encrypt", [&]() -> Status {
    if (!c->key || c->decrypting) return make_error(Reason::kInvalidArgument, "encrypt without encrypt_init");
    const std::string what = "encrypt(" + c->key->label() + ")";
    auto crypto = c->prov->core->crypto();
    if (!crypto) return crypto.take_error();
    EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey((*crypto)->libctx(), c->key->public_pkey(), "provider=default"));
    const char* pad = c->padding == RSA_PKCS1_OAEP_PADDING ? OSSL_PKEY_RSA_PAD_MODE_OAEP
                      : c->padding == RSA_NO_PADDING       ? OSSL_PKEY_RSA_PAD_MODE_NONE
                                                           : OSSL_PKEY_RSA_PAD_MODE_PKCSV15;
    OSSL_PARAM params[5];
    size_t n = 0;
    params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, const_cast<char*>(pad), 0);
    if (c->padding == RSA_PKCS1_OAEP_PADDING) {
      params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST,
                                                     const_cast<char*>(hash_name(c->oaep_hash)), 0);
      params[n++] = OSSL_PARAM_construct_utf8_string(
          OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, const_cast<char*>(hash_name(c->mgf1 != TPM2_ALG_NULL ? c->mgf1 : c->oaep_hash)), 0);
      if (!c->label.empty())
        params[n++] = OSSL_PARAM_construct_octet_string(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, c->label.data(), c->label.size());
    }
    params[n] = OSSL_PARAM_construct_end();
    size_t len = outsize;
    if (!ctx || EVP_PKEY_encrypt_init_ex(ctx.get(), params) <= 0 ||
        EVP_PKEY_encrypt(ctx.get(), out, out ? &len : outlen, in, inlen) <= 0) {
      std::string detail = drain_openssl_errors("; ");
      return make_error(Reason::kInvalidArgument, "encryption failed" + (detail.empty() ? "" : ": " + detail))
          .context(what);
    }
    if (out) *outlen = len;
    return Status::Ok();
  });
}

}  // namespace

const OSSL_DISPATCH kRsaAsymCipher[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_NEWCTX, asym_cipher_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_FREECTX, asym_cipher_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_DUPCTX, asym_cipher_dupctx, dupctx),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT, asym_cipher_decrypt_init, decrypt_init),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_DECRYPT, asym_cipher_decrypt, decrypt),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_ENCRYPT_INIT, asym_cipher_encrypt_init, encrypt_init),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_ENCRYPT, asym_cipher_encrypt, encrypt),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_GET_CTX_PARAMS, asym_cipher_get_ctx_params, get_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_GETTABLE_CTX_PARAMS, asym_cipher_gettable_ctx_params, gettable_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS, asym_cipher_set_ctx_params, set_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS, asym_cipher_settable_ctx_params, settable_ctx_params),
    {0, nullptr}};

}  // namespace tpmkey::provider
