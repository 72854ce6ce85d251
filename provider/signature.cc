// Signature: ECDSA and RSA (PKCS#1 v1.5, PSS) by the TPM. Hashing happens in software; the TPM
// signs the digest with one TPM2_Sign. Verification, and signing with a software key, are the
// default provider's: this file hands them over whole (the `soft` contexts below).
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "keystore/der.h"
#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

struct SigCtx {
  ProviderCtx* prov = nullptr;
  KeyKind kind = KeyKind::kEc;
  std::shared_ptr<Key> key;
  TPM2_ALG_ID hash = TPM2_ALG_NULL;  // NULL: not set (EVP_PKEY_sign infers it from the length)
  int padding = RSA_PKCS1_PADDING;
  int saltlen = RSA_PSS_SALTLEN_DIGEST;
  TPM2_ALG_ID mgf1 = TPM2_ALG_NULL;  // NULL: same as the digest
  // An RSA-PSS TPM key: the hash its RSAPSS scheme names (PSS only, with that digest). NULL: none.
  TPM2_ALG_ID pss_bound = TPM2_ALG_NULL;
  bool allow_sha1 = false;
  EvpMdCtxPtr md_ctx;                // DigestSign only
  bool buffer_message = false;       // DigestSign with a restricted key: the TPM hashes the message
  Bytes message;
  // Verification (any key) and signing with a software key: the default provider's context,
  // which gets every parameter and call as is.
  EvpPkeyCtxPtr soft;     // sign, verify, verify_recover
  EvpMdCtxPtr soft_md;    // DigestSign, DigestVerify
  // The EVP_PKEY_CTX that takes parameters while a software operation is set up.
  EVP_PKEY_CTX* soft_params() const {
    return soft ? soft.get() : soft_md ? EVP_MD_CTX_get_pkey_ctx(soft_md.get()) : nullptr;
  }
};

// A restricted key's message is kept whole for the TPM to hash; this bounds the memory it takes.
constexpr size_t kMaxRestrictedMessage = 16 * 1024 * 1024;

// --- AlgorithmIdentifier DER, built from OIDs (the TPM's PSS salt length is the digest length) ---

struct HashOids {
  TPM2_ALG_ID hash;
  Bytes hash_oid, ecdsa_oid, rsa_oid;
};
const HashOids kOids[] = {
    {TPM2_ALG_SHA1, {0x2B, 0x0E, 0x03, 0x02, 0x1A}, {0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01},
     {0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05}},
    {TPM2_ALG_SHA256, {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01},
     {0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02}, {0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B}},
    {TPM2_ALG_SHA384, {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02},
     {0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03}, {0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C}},
    {TPM2_ALG_SHA512, {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03},
     {0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04}, {0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D}},
};
const Bytes kOidRsaPss = {0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A};
const Bytes kOidMgf1 = {0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x08};

const HashOids* oids_for(TPM2_ALG_ID h) {
  for (const auto& o : kOids)
    if (o.hash == h) return &o;
  return nullptr;
}

Bytes algorithm_id(const SigCtx& c) {
  const HashOids* o = oids_for(c.hash);
  if (!o) return {};
  der::Writer body;
  if (c.kind == KeyKind::kEc) {
    body.tlv(der::kOid, o->ecdsa_oid);
  } else if (c.padding == RSA_PKCS1_PADDING) {
    body.tlv(der::kOid, o->rsa_oid);
    body.tlv(0x05, nullptr, 0);  // NULL parameters
  } else {
    der::Writer hash_alg;
    hash_alg.tlv(der::kOid, o->hash_oid);
    der::Writer hash_seq;
    hash_seq.tlv(der::kSequence, hash_alg.bytes());
    der::Writer mgf;
    mgf.tlv(der::kOid, kOidMgf1);
    mgf.tlv(der::kSequence, hash_alg.bytes());
    der::Writer mgf_seq;
    mgf_seq.tlv(der::kSequence, mgf.bytes());
    der::Writer salt;
    salt.u32(uint32_t(hash_size(c.hash)));
    der::Writer params;
    params.tlv(der::context_tag(0), hash_seq.bytes());
    params.tlv(der::context_tag(1), mgf_seq.bytes());
    params.tlv(der::context_tag(2), salt.bytes());
    body.tlv(der::kOid, kOidRsaPss);
    body.tlv(der::kSequence, params.bytes());
  }
  der::Writer out;
  out.tlv(der::kSequence, body.bytes());
  return out.bytes();
}

// --- context lifecycle ---

SigCtx* new_ctx(void* provctx, KeyKind kind) {
  auto* c = new (std::nothrow) SigCtx;
  if (c) {
    c->prov = provider_ctx(provctx);
    c->kind = kind;
  }
  return c;
}
void* ecdsa_newctx(void* provctx, const char*) noexcept { return new_ctx(provctx, KeyKind::kEc); }
void* rsa_newctx(void* provctx, const char*) noexcept { return new_ctx(provctx, KeyKind::kRsa); }
void freectx(void* vc) noexcept { delete static_cast<SigCtx*>(vc); }

void* dupctx(void* vc) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  auto* d = new (std::nothrow) SigCtx;
  if (!d) return nullptr;
  d->prov = c->prov;
  d->kind = c->kind;
  d->key = c->key;
  d->hash = c->hash;
  d->padding = c->padding;
  d->saltlen = c->saltlen;
  d->mgf1 = c->mgf1;
  d->pss_bound = c->pss_bound;
  d->allow_sha1 = c->allow_sha1;
  d->buffer_message = c->buffer_message;
  try {
    d->message = c->message;
  } catch (...) {
    delete d;
    return nullptr;
  }
  auto copy_md = [](const EvpMdCtxPtr& from, EvpMdCtxPtr& to) {
    if (!from) return true;
    to.reset(EVP_MD_CTX_new());
    return to && EVP_MD_CTX_copy_ex(to.get(), from.get()) == 1;
  };
  if (c->soft) d->soft.reset(EVP_PKEY_CTX_dup(c->soft.get()));
  if (!copy_md(c->md_ctx, d->md_ctx) || !copy_md(c->soft_md, d->soft_md) || (c->soft && !d->soft)) {
    delete d;
    return nullptr;
  }
  return d;
}

// --- parameters: each one's handler, then the tables of which algorithm takes which ---

Error unsupported_digest(const char* name) {
  return make_error(Reason::kUnsupported, std::string("digest ") + name + " (the TPM signs SHA-256, SHA-384 and SHA-512 digests)");
}

Status set_allow_sha1(SigCtx& c, const OSSL_PARAM& p) {
  int v = 0;
  if (!OSSL_PARAM_get_int(&p, &v)) return make_error(Reason::kInvalidArgument, std::string(kParamAllowSha1) + " must be 0 or 1");
  c.allow_sha1 = v != 0;
  return Status::Ok();
}

// An RSA-PSS key's scheme in the TPM names one hash: the TPM signs no other digest with it.
Status check_pss_digest(const SigCtx& c, TPM2_ALG_ID h, const char* name) {
  if (c.pss_bound == TPM2_ALG_NULL || h == c.pss_bound) return Status::Ok();
  return make_error(Reason::kUnsupported, std::string("digest ") + name + ": the RSA-PSS key is bound to " +
                                              hash_name(c.pss_bound) + " in the TPM and signs only " +
                                              hash_name(c.pss_bound) + " digests");
}

Status set_digest(SigCtx& c, const OSSL_PARAM& p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, "digest must be a name");
  TPM2_ALG_ID h = hash_from_name(name);
  if (h == TPM2_ALG_ERROR) return unsupported_digest(name);
  TPMKEY_TRY(check_pss_digest(c, h, name));
  if (c.md_ctx && h != c.hash) return make_error(Reason::kInvalidArgument, "cannot change the digest during DigestSign");
  c.hash = h;
  return Status::Ok();
}

// Accepted and not used: tpmkey's digests always come from the default provider.
Status set_properties(SigCtx&, const OSSL_PARAM&) { return Status::Ok(); }

Status set_pad_mode(SigCtx& c, const OSSL_PARAM& p) {
  int mode = 0;
  const char* name = nullptr;
  if (p.data_type == OSSL_PARAM_UTF8_STRING && OSSL_PARAM_get_utf8_string_ptr(&p, &name)) {
    std::string n = name;
    mode = n == OSSL_PKEY_RSA_PAD_MODE_PKCSV15 ? RSA_PKCS1_PADDING : n == OSSL_PKEY_RSA_PAD_MODE_PSS ? RSA_PKCS1_PSS_PADDING : -1;
  } else if (!OSSL_PARAM_get_int(&p, &mode)) {
    return make_error(Reason::kInvalidArgument, "bad RSA padding mode");
  }
  if (mode != RSA_PKCS1_PADDING && mode != RSA_PKCS1_PSS_PADDING)
    return make_error(Reason::kUnsupported, "RSA padding mode (the TPM signs with PKCS#1 v1.5 or PSS)");
  if (c.pss_bound != TPM2_ALG_NULL && mode != RSA_PKCS1_PSS_PADDING)
    return make_error(Reason::kUnsupported,
                      "the key is an RSA-PSS key (its TPM public area binds it to RSASSA-PSS): it signs only with PSS, "
                      "not PKCS#1 v1.5");
  c.padding = mode;
  return Status::Ok();
}

Status set_pss_saltlen(SigCtx& c, const OSSL_PARAM& p) {
  int len = 0;
  const char* name = nullptr;
  if (p.data_type == OSSL_PARAM_UTF8_STRING && OSSL_PARAM_get_utf8_string_ptr(&p, &name)) {
    std::string n = name;
    if (n == OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) len = RSA_PSS_SALTLEN_DIGEST;
    else if (n == OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) len = RSA_PSS_SALTLEN_AUTO;
    else if (n == OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) len = RSA_PSS_SALTLEN_MAX;
    else len = std::atoi(name);
  } else if (!OSSL_PARAM_get_int(&p, &len)) {
    return make_error(Reason::kInvalidArgument, "bad PSS salt length");
  }
  c.saltlen = len;
  return Status::Ok();
}

Status set_mgf1_digest(SigCtx& c, const OSSL_PARAM& p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, "mgf1 digest must be a name");
  c.mgf1 = hash_from_name(name);
  if (c.mgf1 == TPM2_ALG_ERROR) return make_error(Reason::kUnsupported, std::string("MGF1 digest ") + name);
  return Status::Ok();
}

bool get_algorithm_id(const SigCtx& c, OSSL_PARAM& p) {
  Bytes id = algorithm_id(c);
  return !id.empty() && OSSL_PARAM_set_octet_string(&p, id.data(), id.size());
}

// Not answered before a digest is known (EVP_PKEY_sign infers it from the input length).
bool get_digest(const SigCtx& c, OSSL_PARAM& p) {
  return c.hash == TPM2_ALG_NULL || OSSL_PARAM_set_utf8_string(&p, hash_name(c.hash));
}

bool get_pad_mode(const SigCtx& c, OSSL_PARAM& p) {
  if (p.data_type == OSSL_PARAM_INTEGER) return OSSL_PARAM_set_int(&p, c.padding);
  return OSSL_PARAM_set_utf8_string(&p, c.padding == RSA_PKCS1_PSS_PADDING ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                                                         : OSSL_PKEY_RSA_PAD_MODE_PKCSV15);
}

bool get_pss_saltlen(const SigCtx& c, OSSL_PARAM& p) {
  if (p.data_type == OSSL_PARAM_INTEGER) return OSSL_PARAM_set_int(&p, c.saltlen);
  return OSSL_PARAM_set_utf8_string(&p, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST);
}

// MGF1 uses the signature digest unless another was asked for (which signing then refuses).
bool get_mgf1_digest(const SigCtx& c, OSSL_PARAM& p) {
  TPM2_ALG_ID m = c.mgf1 != TPM2_ALG_NULL ? c.mgf1 : c.hash;
  return m == TPM2_ALG_NULL || OSSL_PARAM_set_utf8_string(&p, hash_name(m));
}

constexpr auto kEcdsaSettable = settable<SigCtx>({
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0), set_digest},
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, nullptr, 0), set_properties},
    {OSSL_PARAM_int(kParamAllowSha1, nullptr), set_allow_sha1},
});
constexpr auto kRsaSettable = settable<SigCtx>({
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0), set_digest},
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, nullptr, 0), set_properties},
    {OSSL_PARAM_int(kParamAllowSha1, nullptr), set_allow_sha1},
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, nullptr, 0), set_pad_mode},  // or an int
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, nullptr, 0), set_pss_saltlen},  // or an int
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, nullptr, 0), set_mgf1_digest},
});
constexpr auto kEcdsaGettable = gettable<SigCtx>({
    {OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, nullptr, 0), get_algorithm_id},
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0), get_digest},
});
constexpr auto kRsaGettable = gettable<SigCtx>({
    {OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, nullptr, 0), get_algorithm_id},
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0), get_digest},
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, nullptr, 0), get_pad_mode},  // or an int
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, nullptr, 0), get_pss_saltlen},  // or an int
    {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, nullptr, 0), get_mgf1_digest},
});

Status set_params(SigCtx& c, const OSSL_PARAM params[]) {
  return c.kind == KeyKind::kEc ? apply_params(kEcdsaSettable, c, params) : apply_params(kRsaSettable, c, params);
}

int set_ctx_params(void* vc, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  if (EVP_PKEY_CTX* soft = c->soft_params()) return !params || !params->key || EVP_PKEY_CTX_set_params(soft, params) == 1;
  return guard(c->prov, "signature_set_ctx_params", [&] { return set_params(*c, params); });
}

int get_ctx_params(void* vc, OSSL_PARAM params[]) noexcept {
  const auto* c = static_cast<const SigCtx*>(vc);
  if (EVP_PKEY_CTX* soft = c->soft_params()) return EVP_PKEY_CTX_get_params(soft, params) == 1;
  return c->kind == KeyKind::kEc ? answer_params(kEcdsaGettable, *c, params) : answer_params(kRsaGettable, *c, params);
}

const OSSL_PARAM* ecdsa_gettable(void*, void*) noexcept { return kEcdsaGettable.list(); }
const OSSL_PARAM* ecdsa_settable(void*, void*) noexcept { return kEcdsaSettable.list(); }
const OSSL_PARAM* rsa_gettable(void*, void*) noexcept { return kRsaGettable.list(); }
const OSSL_PARAM* rsa_settable(void*, void*) noexcept { return kRsaSettable.list(); }

// --- signing ---

// What an operation is, for the software contexts.
enum class Op { kSign, kVerify, kVerifyRecover };

// A TPM key signs in the TPM; everything else goes to the default provider: a software key's
// signing, and verification with any key (a TPM key's public half). Only `key` reaches the TPM.
Status init(SigCtx& c, void* vkd, const OSSL_PARAM params[], Op op, const char* mdname = nullptr, bool digest = false) {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd || !kd->pkey() || (kd->kind != c.kind && !(is_rsa(kd->kind) && is_rsa(c.kind))))
    return make_error(Reason::kInvalidArgument, "no key");
  c.key.reset();
  c.md_ctx.reset();
  c.soft.reset();
  c.soft_md.reset();
  c.buffer_message = false;
  c.message.clear();
  if (c.pss_bound != TPM2_ALG_NULL) {  // the last key's PSS binding no longer applies
    c.padding = RSA_PKCS1_PADDING;
    c.hash = TPM2_ALG_NULL;
  }
  c.pss_bound = TPM2_ALG_NULL;
  if (op == Op::kSign && kd->key) {
    c.key = kd->key;
    if (kd->kind == KeyKind::kRsaPss) {
      // As OpenSSL's default provider does for a restricted RSA-PSS key: PSS with the key's digest.
      auto bound = bound_scheme(kd->key->file().pub.publicArea);
      if (!bound) return bound.take_error();
      if (!*bound || (*bound)->alg != SigAlg::kRsaPss) return make_error(Reason::kInternal, "the RSA-PSS key has no PSS scheme");
      c.pss_bound = (*bound)->hash;
      c.padding = RSA_PKCS1_PSS_PADDING;
      c.hash = c.pss_bound;
    }
    return set_params(c, params);
  }
  if (op == Op::kSign && !software_has(*kd, OSSL_KEYMGMT_SELECT_PRIVATE_KEY)) return make_error(Reason::kInvalidArgument, "not a private key");
  auto lib = software_libctx(c.prov);
  if (!lib) return lib.take_error();
  int ok = 0;
  if (digest) {
    c.soft_md.reset(EVP_MD_CTX_new());
    if (c.soft_md)
      ok = op == Op::kSign ? EVP_DigestSignInit_ex(c.soft_md.get(), nullptr, mdname, *lib, kSoftwareProps, kd->pkey(), params)
                           : EVP_DigestVerifyInit_ex(c.soft_md.get(), nullptr, mdname, *lib, kSoftwareProps, kd->pkey(), params);
  } else {
    c.soft.reset(EVP_PKEY_CTX_new_from_pkey(*lib, kd->pkey(), kSoftwareProps));
    if (c.soft)
      ok = op == Op::kSign     ? EVP_PKEY_sign_init_ex(c.soft.get(), params)
           : op == Op::kVerify ? EVP_PKEY_verify_init_ex(c.soft.get(), params)
                               : EVP_PKEY_verify_recover_init_ex(c.soft.get(), params);
  }
  if (ok != 1) return make_error(Reason::kInvalidArgument, "the default provider refused the operation for this key");
  return Status::Ok();
}

int sign_init(void* vc, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return guard(c->prov, "sign_init", [&] { return init(*c, vkd, params, Op::kSign); });
}
int verify_init(void* vc, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return guard(c->prov, "verify_init", [&] { return init(*c, vkd, params, Op::kVerify); });
}
int verify_recover_init(void* vc, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return guard(c->prov, "verify_recover_init", [&] { return init(*c, vkd, params, Op::kVerifyRecover); });
}
int verify(void* vc, const unsigned char* sig, size_t siglen, const unsigned char* tbs, size_t tbslen) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return c->soft && EVP_PKEY_verify(c->soft.get(), sig, siglen, tbs, tbslen) == 1;
}
int verify_recover(void* vc, unsigned char* rout, size_t* routlen, size_t routsize, const unsigned char* sig,
                   size_t siglen) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  if (!c->soft) return 0;
  *routlen = routsize;
  return EVP_PKEY_verify_recover(c->soft.get(), rout, routlen, sig, siglen) == 1;
}

// `tbs` is a digest, or with `message` set the whole message for the TPM to hash.
Status tpm_sign(SigCtx& c, unsigned char* sig, size_t* siglen, size_t sigsize, const unsigned char* tbs,
                size_t tbslen, bool message = false) {
  const std::string what = "sign(" + c.key->label() + ")";
  TPM2_ALG_ID hash = c.hash != TPM2_ALG_NULL ? c.hash : hash_for_digest_size(tbslen);
  if (!message && (hash == TPM2_ALG_ERROR || hash_size(hash) != tbslen))
    return make_error(Reason::kInvalidArgument, "input is " + std::to_string(tbslen) +
                                                    " bytes, not a SHA-1/256/384/512 digest" +
                                                    (c.hash != TPM2_ALG_NULL ? std::string(" of ") + hash_name(c.hash) : ""))
        .context(what);
  if (hash == TPM2_ALG_SHA1 && !c.allow_sha1)
    return make_error(Reason::kUnsupported,
                      "SHA-1 signatures are refused: SHA-1 collisions make them forgeable; use SHA-256, SHA-384 or "
                      "SHA-512 (tpmkey-allow-sha1 signs SHA-1 for peers that know nothing else)")
        .context(what);
  // Without a digest, OpenSSL's RSA PKCS#1 v1.5 signs the input itself, with no DigestInfo around
  // it; a TPM signing key always adds one, so the signature would not be what was asked for.
  if (!message && is_rsa(c.kind) && c.padding == RSA_PKCS1_PADDING && c.hash == TPM2_ALG_NULL &&
      !c.key->restricted())
    return make_error(Reason::kUnsupported,
                      "RSA PKCS#1 v1.5 without a digest signs the input as it is, which a TPM signing key cannot do "
                      "(it signs a digest in a DigestInfo); name the digest (openssl pkeyutl -digest sha256, or "
                      "-pkeyopt digest:sha256)")
        .context(what);
  SignScheme scheme{default_scheme(c.kind, hash)};
  if (is_rsa(c.kind) && c.padding == RSA_PKCS1_PSS_PADDING) {
    scheme.alg = SigAlg::kRsaPss;
    int hlen = int(hash_size(hash));
    if (c.saltlen != RSA_PSS_SALTLEN_DIGEST && c.saltlen != RSA_PSS_SALTLEN_AUTO && c.saltlen != hlen)
      return make_error(Reason::kUnsupported,
                        "the TPM signs PSS with a salt as long as the digest (" + std::to_string(hlen) + " bytes)")
          .context(what);
    if (c.mgf1 != TPM2_ALG_NULL && c.mgf1 != hash)
      return make_error(Reason::kUnsupported, "the TPM uses the signature digest for MGF1").context(what);
  }
  auto out = message ? c.key->sign_message(scheme, Bytes(tbs, tbs + tbslen)) : c.key->sign(scheme, tbs, tbslen);
  if (!out) return out.take_error();
  if (out->size() > sigsize)
    return make_error(Reason::kInvalidArgument, "signature buffer too small").context(what);
  std::memcpy(sig, out->data(), out->size());
  *siglen = out->size();
  return Status::Ok();
}

int sign(void* vc, unsigned char* sig, size_t* siglen, size_t sigsize, const unsigned char* tbs,
         size_t tbslen) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  if (c->soft) {
    if (sig) *siglen = sigsize;
    return EVP_PKEY_sign(c->soft.get(), sig, siglen, tbs, tbslen) == 1;
  }
  return guard(c->prov, "sign", [&]() -> Status {
    if (!c->key) return make_error(Reason::kInvalidArgument, "sign without sign_init");
    if (!sig) {
      *siglen = c->key->max_signature_size();
      return Status::Ok();
    }
    return tpm_sign(*c, sig, siglen, sigsize, tbs, tbslen);
  });
}

int digest_sign_init(void* vc, const char* mdname, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return guard(c->prov, "digest_sign_init", [&]() -> Status {
    auto* kd = static_cast<KeyData*>(vkd);
    if (kd && !kd->key) return init(*c, vkd, params, Op::kSign, mdname, true);
    TPMKEY_TRY(init(*c, vkd, params, Op::kSign));
    if (mdname && *mdname) {
      const TPM2_ALG_ID h = hash_from_name(mdname);
      if (h == TPM2_ALG_ERROR) return unsupported_digest(mdname);
      TPMKEY_TRY(check_pss_digest(*c, h, mdname));
      c->hash = h;
    } else if (c->hash == TPM2_ALG_NULL) {
      c->hash = TPM2_ALG_SHA256;
    }
    auto crypto = c->prov->core->crypto();
    if (!crypto) return crypto.take_error();
    const EVP_MD* md = (*crypto)->md(c->hash);
    if (!md) return make_error(Reason::kUnsupported, std::string("digest ") + hash_name(c->hash));
    c->md_ctx.reset(EVP_MD_CTX_new());
    if (!c->md_ctx || !EVP_DigestInit_ex(c->md_ctx.get(), md, nullptr))
      return make_error(Reason::kInternal, "cannot start the digest");
    c->buffer_message = c->key->restricted();
    return Status::Ok();
  });
}

int digest_sign_update(void* vc, const unsigned char* data, size_t len) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  if (c->soft_md) return EVP_DigestSignUpdate(c->soft_md.get(), data, len) == 1;
  if (c->buffer_message) {
    return guard(c->prov, "digest_sign_update", [&]() -> Status {
      if (c->message.size() + len > kMaxRestrictedMessage)
        return make_error(Reason::kInvalidArgument, "a restricted key signs messages of at most 16 MiB");
      c->message.insert(c->message.end(), data, data + len);
      return Status::Ok();
    });
  }
  return c->md_ctx && EVP_DigestUpdate(c->md_ctx.get(), data, len) == 1;
}

int digest_sign_final(void* vc, unsigned char* sig, size_t* siglen, size_t sigsize) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  if (c->soft_md) {
    if (sig) *siglen = sigsize;
    return EVP_DigestSignFinal(c->soft_md.get(), sig, siglen) == 1;
  }
  return guard(c->prov, "digest_sign_final", [&]() -> Status {
    if (!c->key || !c->md_ctx) return make_error(Reason::kInvalidArgument, "digest_sign_final without init");
    if (!sig) {
      *siglen = c->key->max_signature_size();
      return Status::Ok();
    }
    if (c->buffer_message) return tpm_sign(*c, sig, siglen, sigsize, c->message.data(), c->message.size(), true);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (!EVP_DigestFinal_ex(c->md_ctx.get(), digest, &dlen)) return make_error(Reason::kInternal, "digest failed");
    return tpm_sign(*c, sig, siglen, sigsize, digest, dlen);
  });
}

int digest_verify_init(void* vc, const char* mdname, void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return guard(c->prov, "digest_verify_init", [&] { return init(*c, vkd, params, Op::kVerify, mdname, true); });
}
int digest_verify_update(void* vc, const unsigned char* data, size_t len) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return c->soft_md && EVP_DigestVerifyUpdate(c->soft_md.get(), data, len) == 1;
}
int digest_verify_final(void* vc, const unsigned char* sig, size_t siglen) noexcept {
  auto* c = static_cast<SigCtx*>(vc);
  return c->soft_md && EVP_DigestVerifyFinal(c->soft_md.get(), sig, siglen) == 1;
}

}  // namespace

#define TPMKEY_SIGNATURE_COMMON                                                                     \
  TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_FREECTX, signature_freectx, freectx),                         \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_DUPCTX, signature_dupctx, dupctx),                        \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_SIGN_INIT, signature_sign_init, sign_init),               \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_SIGN, signature_sign, sign),                              \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, signature_digest_sign_init, digest_sign_init), \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, signature_digest_sign_update, digest_sign_update), \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, signature_digest_sign_final, digest_sign_final), \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_VERIFY_INIT, signature_verify_init, verify_init),         \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_VERIFY, signature_verify, verify),                        \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, signature_digest_verify_init, digest_verify_init), \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, signature_digest_verify_update, digest_verify_update), \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, signature_digest_verify_final, digest_verify_final), \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, signature_get_ctx_params, get_ctx_params), \
      TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, signature_set_ctx_params, set_ctx_params)

const OSSL_DISPATCH kEcdsaSignature[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_NEWCTX, signature_newctx, ecdsa_newctx),
    TPMKEY_SIGNATURE_COMMON,
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, signature_gettable_ctx_params, ecdsa_gettable),
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, signature_settable_ctx_params, ecdsa_settable),
    {0, nullptr}};

const OSSL_DISPATCH kRsaSignature[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_NEWCTX, signature_newctx, rsa_newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_VERIFY_RECOVER_INIT, signature_verify_recover_init, verify_recover_init),
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_VERIFY_RECOVER, signature_verify_recover, verify_recover),
    TPMKEY_SIGNATURE_COMMON,
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, signature_gettable_ctx_params, rsa_gettable),
    TPMKEY_DISPATCH(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, signature_settable_ctx_params, rsa_settable),
    {0, nullptr}};

}  // namespace tpmkey::provider
