// keymgmt for EC, RSA and RSA-PSS TPM keys: generate inside the TPM, load store/decoder references,
// answer parameters from the public half, export only public parts (docs/architecture.md, "Export fails for any selection that includes the private key").
#include <strings.h>

#include <cstdio>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>

#include "keystore/public_key.h"
#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

struct GenCtx {
  ProviderCtx* prov = nullptr;
  KeyKind kind = KeyKind::kEc;
  // TPM generation: what the key will be.
  KeyOptions opts;
  SecretBytes auth;
  SecretBytes parent_auth;
  // RSA-PSS: what was asked of the salt and MGF1, checked against the hash at gen() (the
  // parameters may come in any order). -1 / NULL: not asked.
  int pss_saltlen = -1;
  TPM2_ALG_ID pss_mgf1 = TPM2_ALG_NULL;
  // Software generation: the default provider's generation context.
  EvpPkeyCtxPtr soft;
  int selection = 0;
};

KeyData* new_keydata(void* provctx, KeyKind kind) noexcept {
  auto* kd = new (std::nothrow) KeyData;
  if (kd) {
    kd->prov = provider_ctx(provctx);
    kd->kind = kind;
  }
  return kd;
}
void* ec_new(void* provctx) noexcept { return new_keydata(provctx, KeyKind::kEc); }
void* rsa_new(void* provctx) noexcept { return new_keydata(provctx, KeyKind::kRsa); }
void* rsa_pss_new(void* provctx) noexcept { return new_keydata(provctx, KeyKind::kRsaPss); }
void key_free(void* kd) noexcept { delete static_cast<KeyData*>(kd); }

// A TPM key is shared (the TPM object stays one); a software key is copied. A TPM key's domain
// parameters alone (EVP_PKEY_copy_parameters: CMS makes a peer key this way) are a software key.
void* dup(const void* vkd, int selection) noexcept {
  const auto* kd = static_cast<const KeyData*>(vkd);
  if (!kd || !kd->pkey()) return nullptr;
  auto* d = new (std::nothrow) KeyData;
  if (!d) return nullptr;
  d->prov = kd->prov;
  d->kind = kd->kind;
  if (kd->key && (selection & OSSL_KEYMGMT_SELECT_KEYPAIR)) {
    d->key = kd->key;
  } else if (kd->key) {
    OSSL_PARAM* params = nullptr;
    EVP_PKEY* soft = nullptr;
    auto lib = software_libctx(kd->prov);
    EvpPkeyCtxPtr ctx(lib ? EVP_PKEY_CTX_new_from_name(*lib, data_type(kd->kind), kSoftwareProps) : nullptr);
    if (ctx && EVP_PKEY_todata(kd->pkey(), EVP_PKEY_KEY_PARAMETERS, &params) == 1 && EVP_PKEY_fromdata_init(ctx.get()) == 1)
      EVP_PKEY_fromdata(ctx.get(), &soft, EVP_PKEY_KEY_PARAMETERS, params);
    OSSL_PARAM_free(params);
    d->soft.reset(soft);
  } else {
    d->soft.reset(EVP_PKEY_dup(kd->soft.get()));
  }
  if (!d->key && !d->soft) {
    delete d;
    return nullptr;
  }
  return d;
}

int has(const void* vkd, int selection) noexcept {
  const auto* kd = static_cast<const KeyData*>(vkd);
  if (!kd) return 0;
  if ((selection & OSSL_KEYMGMT_SELECT_ALL) == 0) return 1;
  // A loaded TPM key has both halves (the private one inside the TPM) and its parameters.
  if (kd->key) return 1;
  return software_has(*kd, selection);
}

// Compared by their public halves (or domain parameters), whichever form each key has.
int match(const void* va, const void* vb, int selection) noexcept {
  const auto* a = static_cast<const KeyData*>(va);
  const auto* b = static_cast<const KeyData*>(vb);
  if (!a || !b || !a->pkey() || !b->pkey() || a->kind != b->kind) return 0;
  int eq = (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) ? EVP_PKEY_eq(a->pkey(), b->pkey())
                                                      : EVP_PKEY_parameters_eq(a->pkey(), b->pkey());
  ERR_clear_error();
  return eq == 1;
}

// Key material from outside (a peer's public key, a key OpenSSL moves between providers) becomes
// a software key: the default provider's, never sent to the TPM.
int import_key(void* vkd, int selection, const OSSL_PARAM params[]) noexcept {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd) return 0;
  return guard(kd->prov, "keymgmt_import", [&]() -> Status {
    if (kd->key) return make_error(Reason::kInvalidArgument, "a TPM key cannot be replaced by imported key material");
    auto lib = software_libctx(kd->prov);
    if (!lib) return lib.take_error();
    EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(*lib, data_type(kd->kind), kSoftwareProps));
    EVP_PKEY* pkey = nullptr;
    if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
        EVP_PKEY_fromdata(ctx.get(), &pkey, selection, const_cast<OSSL_PARAM*>(params)) != 1)
      return make_error(Reason::kInvalidArgument, std::string("the default provider refused the ") + data_type(kd->kind) +
                                                      " key material");
    kd->soft.reset(pkey);
    return Status::Ok();
  });
}

// A TPM key's private part never leaves the TPM: failing here is what makes OpenSSL sign with this
// provider. A software key exports whole.
int export_key(void* vkd, int selection, OSSL_CALLBACK* cb, void* cbarg) noexcept {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd || !kd->pkey()) return 0;
  if (kd->key && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)) return 0;
  return EVP_PKEY_export(kd->pkey(), selection, cb, cbarg) == 1;
}

// What import takes and export gives (named curves and two-prime RSA: what the default provider
// exports for such keys).
const OSSL_PARAM kEcKeyTypes[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_USE_COFACTOR_ECDH, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_EC_INCLUDE_PUBLIC, nullptr),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_PRIV_KEY, nullptr, 0),
    OSSL_PARAM_END};
const OSSL_PARAM kRsaKeyTypes[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_D, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR1, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR2, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT1, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT2, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_COEFFICIENT1, nullptr, 0),
    OSSL_PARAM_END};
// RSA-PSS: the same, and the key's PSS restrictions (hash, MGF1, its hash, the salt length).
const OSSL_PARAM kRsaPssKeyTypes[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_D, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR1, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR2, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT1, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT2, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_COEFFICIENT1, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MASKGENFUNC, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MGF1_DIGEST, nullptr, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_RSA_PSS_SALTLEN, nullptr),
    OSSL_PARAM_END};
const OSSL_PARAM* ec_key_types(int) noexcept { return kEcKeyTypes; }
const OSSL_PARAM* rsa_key_types(int) noexcept { return kRsaKeyTypes; }
const OSSL_PARAM* rsa_pss_key_types(int) noexcept { return kRsaPssKeyTypes; }

// Everything TLS and X.509 ask of a key, answered by the default provider from the key's public
// half (a TPM key) or the key itself (a software key). So the gettable lists below have no
// handlers of their own: each names what such a key answers.
int get_params(void* vkd, OSSL_PARAM params[]) noexcept {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd || !kd->pkey()) return 0;
  return EVP_PKEY_get_params(kd->pkey(), params) == 1;
}

const OSSL_PARAM kEcGettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_END};
const OSSL_PARAM kRsaGettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_END};
// RSA-PSS: also the digest a restricted key's signatures must use (X.509 signing asks).
const OSSL_PARAM kRsaPssGettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_MANDATORY_DIGEST, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_END};
const OSSL_PARAM* ec_gettable(void*) noexcept { return kEcGettable; }
const OSSL_PARAM* rsa_gettable(void*) noexcept { return kRsaGettable; }
const OSSL_PARAM* rsa_pss_gettable(void*) noexcept { return kRsaPssGettable; }

// Only a software key's parameters change: a peer's public point arrives this way.
int set_params(void* vkd, const OSSL_PARAM params[]) noexcept {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd) return 0;
  if (!params || !params->key) return 1;
  return guard(kd->prov, "keymgmt_set_params", [&]() -> Status {
    if (!kd->soft) return make_error(Reason::kInvalidArgument, "a TPM key's parameters cannot be changed");
    if (EVP_PKEY_set_params(kd->soft.get(), const_cast<OSSL_PARAM*>(params)) != 1)
      return make_error(Reason::kInvalidArgument, "the default provider refused the key parameters");
    return Status::Ok();
  });
}
const OSSL_PARAM kEcSettable[] = {
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_EC_INCLUDE_PUBLIC, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_USE_COFACTOR_ECDH, nullptr),
    OSSL_PARAM_END};
const OSSL_PARAM kRsaSettable[] = {OSSL_PARAM_END};
const OSSL_PARAM* ec_settable(void*) noexcept { return kEcSettable; }
const OSSL_PARAM* rsa_settable(void*) noexcept { return kRsaSettable; }
const OSSL_PARAM* rsa_pss_settable(void*) noexcept { return kRsaSettable; }

// A TPM key is valid by construction (the TPM made or imported it, and checked it); a software
// key is checked by the default provider.
int validate(const void* vkd, int selection, int checktype) noexcept {
  const auto* kd = static_cast<const KeyData*>(vkd);
  if (!kd || !kd->pkey()) return 0;
  if (kd->key) return 1;
  auto lib = software_libctx(kd->prov);
  if (!lib) return 0;
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(*lib, kd->soft.get(), kSoftwareProps));
  if (!ctx) return 0;
  int ok = 1;
  if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == OSSL_KEYMGMT_SELECT_KEYPAIR)
    ok = checktype == OSSL_KEYMGMT_VALIDATE_QUICK_CHECK ? EVP_PKEY_pairwise_check(ctx.get()) : EVP_PKEY_check(ctx.get());
  else if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)
    ok = EVP_PKEY_private_check(ctx.get());
  else if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY)
    ok = checktype == OSSL_KEYMGMT_VALIDATE_QUICK_CHECK ? EVP_PKEY_public_check_quick(ctx.get())
                                                       : EVP_PKEY_public_check(ctx.get());
  if (ok == 1 && (selection & OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS) && kd->kind == KeyKind::kEc)
    ok = EVP_PKEY_param_check(ctx.get());
  return ok == 1;
}

const char* ec_operation_name(int op) noexcept {
  return op == OSSL_OP_SIGNATURE ? "ECDSA" : op == OSSL_OP_KEYEXCH ? "ECDH" : nullptr;
}
const char* rsa_operation_name(int op) noexcept {
  return op == OSSL_OP_SIGNATURE || op == OSSL_OP_ASYM_CIPHER ? "RSA" : nullptr;
}
// An RSA-PSS key only signs (its TPM public area has no decrypt attribute).
const char* rsa_pss_operation_name(int op) noexcept { return op == OSSL_OP_SIGNATURE ? "RSA" : nullptr; }

// A reference from our store or decoder: the address of a KeyData* that we take over.
void* load(const void* reference, size_t size) noexcept {
  if (!reference || size != sizeof(KeyData*)) return nullptr;
  auto** slot = static_cast<KeyData**>(const_cast<void*>(reference));
  KeyData* kd = *slot;
  *slot = nullptr;
  return kd;
}

// --- generation ---

// The default provider's generation context for `g`, from scratch or like `templ`.
bool start_software_gen(GenCtx& g, EVP_PKEY* templ) {
  return guard(g.prov, "keymgmt_gen_init", [&]() -> Status {
    auto lib = software_libctx(g.prov);
    if (!lib) return lib.take_error();
    g.soft.reset(templ ? EVP_PKEY_CTX_new_from_pkey(*lib, templ, kSoftwareProps)
                       : EVP_PKEY_CTX_new_from_name(*lib, data_type(g.kind), kSoftwareProps));
    const bool keypair = g.selection & OSSL_KEYMGMT_SELECT_KEYPAIR;
    if (!g.soft || (keypair ? EVP_PKEY_keygen_init(g.soft.get()) : EVP_PKEY_paramgen_init(g.soft.get())) != 1)
      return make_error(Reason::kInternal, std::string("the default provider cannot generate ") + data_type(g.kind) +
                                               (keypair ? " keys" : " parameters"));
    return Status::Ok();
  });
}

int gen_set_params(void* vgen, const OSSL_PARAM params[]) noexcept;

// Software generation (`tpm` false) hands the whole job to the default provider; TPM generation
// keeps the options here until gen().
void* gen_init(void* provctx, int selection, const OSSL_PARAM params[], KeyKind kind, bool tpm) {
  if (tpm && !(selection & OSSL_KEYMGMT_SELECT_KEYPAIR)) return nullptr;
  auto* g = new (std::nothrow) GenCtx;
  if (!g) return nullptr;
  g->prov = provider_ctx(provctx);
  g->kind = kind;
  g->selection = selection;
  g->opts.spec = find_algorithm(kind == KeyKind::kEc ? "ec-p256" : kind == KeyKind::kRsaPss ? "rsa-pss2048" : "rsa2048");
  if (!tpm && !start_software_gen(*g, nullptr)) {
    delete g;
    return nullptr;
  }
  if (!gen_set_params(g, params)) {
    delete g;
    return nullptr;
  }
  return g;
}

void* ec_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kEc, false);
}
void* rsa_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kRsa, false);
}
void* rsa_pss_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kRsaPss, false);
}
void* rsa_pss_tpm_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kRsaPss, true);
}
void* ec_tpm_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kEc, true);
}
void* rsa_tpm_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kRsa, true);
}

// Each generation parameter's handler; the tables below list which key type takes which.

Status set_group(GenCtx& g, const OSSL_PARAM& p) {
  const char* group = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &group)) return make_error(Reason::kInvalidArgument, "group must be a string");
  const AlgorithmSpec* s = find_ec_group(group);
  if (!s) return make_error(Reason::kUnsupported, std::string("EC group \"") + group + "\" (tpmkey offers P-256, P-384, P-521)");
  g.opts.spec = s;
  return Status::Ok();
}

Status set_ec_encoding(GenCtx&, const OSSL_PARAM& p) {
  const char* enc = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &enc) || std::string(enc) != OSSL_PKEY_EC_ENCODING_GROUP)
    return make_error(Reason::kUnsupported, "only named-curve encoding is supported");
  return Status::Ok();
}

Status set_rsa_bits(GenCtx& g, const OSSL_PARAM& p) {
  size_t bits = 0;
  if (!OSSL_PARAM_get_size_t(&p, &bits)) return make_error(Reason::kInvalidArgument, "bits must be a number");
  const AlgorithmSpec* s = g.kind == KeyKind::kRsaPss ? find_rsa_pss_bits(int(bits)) : find_rsa_bits(int(bits));
  if (!s) return make_error(Reason::kUnsupported, "RSA key size " + std::to_string(bits) + " (tpmkey offers 2048, 3072, 4096, and 1024 when asked for by size)");
  g.opts.spec = s;
  return Status::Ok();
}

Status set_rsa_e(GenCtx& g, const OSSL_PARAM& p) {
  BIGNUM* e = nullptr;
  if (!OSSL_PARAM_get_BN(&p, &e)) return make_error(Reason::kInvalidArgument, "e must be a number");
  BignumPtr owned(e);
  BN_ULONG v = BN_get_word(e);
  if (BN_num_bits(e) > 32 || v < 3 || !(v & 1))
    return make_error(Reason::kUnsupported, "RSA public exponent must be odd, at least 3 and at most 32 bits");
  g.opts.rsa_exponent = uint32_t(v);
  return Status::Ok();
}

Status set_rsa_primes(GenCtx&, const OSSL_PARAM& p) {
  size_t primes = 0;
  if (!OSSL_PARAM_get_size_t(&p, &primes) || primes != 2)
    return make_error(Reason::kUnsupported, "TPM RSA keys have exactly 2 primes");
  return Status::Ok();
}

// RSA-PSS: the hash of the key's RSAPSS scheme ("digest", what rsa_pss_keygen_md sets), fixed in the
// TPM; signatures use it, and MGF1 with it.
Status set_pss_digest(GenCtx& g, const OSSL_PARAM& p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, "digest must be a string");
  TPM2_ALG_ID h = hash_from_name(name);
  if (h != TPM2_ALG_SHA256 && h != TPM2_ALG_SHA384 && h != TPM2_ALG_SHA512)
    return make_error(Reason::kUnsupported, std::string("RSA-PSS digest ") + name + " (use sha256, sha384 or sha512)");
  g.opts.pss_hash = h;
  return Status::Ok();
}

Status set_pss_mgf1_digest(GenCtx& g, const OSSL_PARAM& p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, "mgf1-digest must be a string");
  g.pss_mgf1 = hash_from_name(name);
  if (g.pss_mgf1 == TPM2_ALG_ERROR)
    return make_error(Reason::kUnsupported, std::string("MGF1 digest ") + name + " (the TPM uses the key's digest for MGF1)");
  return Status::Ok();
}

Status set_pss_mgf(GenCtx&, const OSSL_PARAM& p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, "mgf must be a string");
  if (strcasecmp(name, "MGF1") != 0) return make_error(Reason::kUnsupported, std::string("mask generation function ") + name + " (RSA-PSS uses MGF1)");
  return Status::Ok();
}

Status set_pss_saltlen(GenCtx& g, const OSSL_PARAM& p) {
  int len = 0;
  if (!OSSL_PARAM_get_int(&p, &len) || len < 0) return make_error(Reason::kInvalidArgument, "saltlen must be a number of bytes");
  g.pss_saltlen = len;
  return Status::Ok();
}

// Accepted and not used: the key's digests are the TPM's.
Status set_pss_digest_props(GenCtx&, const OSSL_PARAM&) { return Status::Ok(); }

// What the TPM cannot honour is refused before any TPM command: MGF1 always uses the key's
// digest, and the salt is as long as the digest.
Status check_pss_request(const GenCtx& g) {
  const TPM2_ALG_ID h = g.opts.pss_hash;
  if (g.pss_mgf1 != TPM2_ALG_NULL && g.pss_mgf1 != h)
    return make_error(Reason::kUnsupported, std::string("RSA-PSS with MGF1 over ") + hash_name(g.pss_mgf1) + " and digest " +
                                                hash_name(h) + ": the TPM uses the key's digest for MGF1");
  if (g.pss_saltlen >= 0 && size_t(g.pss_saltlen) != hash_size(h))
    return make_error(Reason::kUnsupported, "RSA-PSS salt length " + std::to_string(g.pss_saltlen) +
                                                ": the TPM signs with a salt as long as the digest (" +
                                                std::to_string(hash_size(h)) + " bytes for " + hash_name(h) + ")");
  if (g.opts.usage != kUsageSign)
    return make_error(Reason::kUnsupported, "an RSA-PSS key only signs (usage sign): the TPM binds a key with a "
                                            "signature scheme to signing");
  return Status::Ok();
}

Status set_name_digest(GenCtx& g, const OSSL_PARAM& p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, "digest must be a string");
  TPM2_ALG_ID h = hash_from_name(name);
  if (h != TPM2_ALG_SHA256 && h != TPM2_ALG_SHA384 && h != TPM2_ALG_SHA512)
    return make_error(Reason::kUnsupported, std::string("digest ") + name + " (use sha256, sha384 or sha512)");
  g.opts.name_alg = h;
  return Status::Ok();
}

Status set_parent(GenCtx& g, const OSSL_PARAM& p) {
  uint32_t h = 0;
  if (!OSSL_PARAM_get_uint32(&p, &h) || (h != kOwnerParent && (h >> 24) != TPM2_HT_PERSISTENT))
    return make_error(Reason::kInvalidArgument, "parent must be 0x40000001 or a persistent handle 0x81xxxxxx");
  g.opts.parent = h;
  return Status::Ok();
}

Status set_user_auth(GenCtx& g, const OSSL_PARAM& p) {
  const char* pw = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &pw)) return make_error(Reason::kInvalidArgument, "user-auth must be a string");
  g.auth = SecretBytes(reinterpret_cast<const uint8_t*>(pw), std::strlen(pw));
  return Status::Ok();
}

Status set_parent_auth(GenCtx& g, const OSSL_PARAM& p) {
  const char* pw = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &pw)) return make_error(Reason::kInvalidArgument, "parent-auth must be a string");
  if (std::strlen(pw) > sizeof(TPM2B_AUTH::buffer))
    return make_error(Reason::kInvalidArgument, "parent-auth is longer than 64 bytes");
  g.parent_auth = SecretBytes(reinterpret_cast<const uint8_t*>(pw), std::strlen(pw));
  return Status::Ok();
}

Status set_usage(GenCtx& g, const OSSL_PARAM& p) {
  const char* v = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &v)) return make_error(Reason::kInvalidArgument, "usage must be a string");
  unsigned u = parse_usage(v);
  if (!u) return make_error(Reason::kInvalidArgument, std::string("usage \"") + v + "\" (use sign, decrypt or sign,decrypt)");
  g.opts.usage = u;
  return Status::Ok();
}

// The generation parameters of each key type: its settable list, and what set_params applies.
constexpr auto kEcGenParams = settable<GenCtx>({
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0), set_group},
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0), set_ec_encoding},
    {OSSL_PARAM_utf8_string(kParamUserAuth, nullptr, 0), set_user_auth},
    {OSSL_PARAM_utf8_string(kParamNameDigest, nullptr, 0), set_name_digest},
    {OSSL_PARAM_uint32(kParamParent, nullptr), set_parent},
    {OSSL_PARAM_utf8_string(kParamParentAuth, nullptr, 0), set_parent_auth},
    {OSSL_PARAM_utf8_string(kParamUsage, nullptr, 0), set_usage},
});
constexpr auto kRsaGenParams = settable<GenCtx>({
    {OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, nullptr), set_rsa_bits},
    {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0), set_rsa_e},
    {OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_PRIMES, nullptr), set_rsa_primes},
    {OSSL_PARAM_utf8_string(kParamUserAuth, nullptr, 0), set_user_auth},
    {OSSL_PARAM_utf8_string(kParamNameDigest, nullptr, 0), set_name_digest},
    {OSSL_PARAM_uint32(kParamParent, nullptr), set_parent},
    {OSSL_PARAM_utf8_string(kParamParentAuth, nullptr, 0), set_parent_auth},
    {OSSL_PARAM_utf8_string(kParamUsage, nullptr, 0), set_usage},
});

// RSA-PSS: OpenSSL's RSA-PSS generation parameters ("digest" is the PSS hash here, so the key's name
// algorithm stays SHA-256), and tpmkey's own.
constexpr auto kRsaPssGenParams = settable<GenCtx>({
    {OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, nullptr), set_rsa_bits},
    {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0), set_rsa_e},
    {OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_PRIMES, nullptr), set_rsa_primes},
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_DIGEST, nullptr, 0), set_pss_digest},
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_DIGEST_PROPS, nullptr, 0), set_pss_digest_props},
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MASKGENFUNC, nullptr, 0), set_pss_mgf},
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MGF1_DIGEST, nullptr, 0), set_pss_mgf1_digest},
    {OSSL_PARAM_int(OSSL_PKEY_PARAM_RSA_PSS_SALTLEN, nullptr), set_pss_saltlen},
    {OSSL_PARAM_utf8_string(kParamUserAuth, nullptr, 0), set_user_auth},
    {OSSL_PARAM_uint32(kParamParent, nullptr), set_parent},
    {OSSL_PARAM_utf8_string(kParamParentAuth, nullptr, 0), set_parent_auth},
    {OSSL_PARAM_utf8_string(kParamUsage, nullptr, 0), set_usage},
});

int gen_set_params(void* vgen, const OSSL_PARAM params[]) noexcept {
  auto* g = static_cast<GenCtx*>(vgen);
  if (g->soft) return !params || !params->key || EVP_PKEY_CTX_set_params(g->soft.get(), params) == 1;
  return guard(g->prov, "keymgmt_gen_set_params", [&]() -> Status {
    switch (g->kind) {
      case KeyKind::kEc: return apply_params(kEcGenParams, *g, params);
      case KeyKind::kRsaPss: return apply_params(kRsaPssGenParams, *g, params);
      default: return apply_params(kRsaGenParams, *g, params);
    }
  });
}

const OSSL_PARAM* ec_tpm_gen_settable(void*, void*) noexcept { return kEcGenParams.list(); }
const OSSL_PARAM* rsa_tpm_gen_settable(void*, void*) noexcept { return kRsaGenParams.list(); }
const OSSL_PARAM* rsa_pss_tpm_gen_settable(void*, void*) noexcept { return kRsaPssGenParams.list(); }
// What software generation passes on to the default provider (`-pkeyopt` names map to these).
const OSSL_PARAM kEcSoftGenParams[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_USE_COFACTOR_ECDH, nullptr),
    OSSL_PARAM_END};
const OSSL_PARAM kRsaSoftGenParams[] = {
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, nullptr),
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_PRIMES, nullptr),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_END};
const OSSL_PARAM kRsaPssSoftGenParams[] = {
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, nullptr),
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_PRIMES, nullptr),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_DIGEST_PROPS, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MASKGENFUNC, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MGF1_DIGEST, nullptr, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_RSA_PSS_SALTLEN, nullptr),
    OSSL_PARAM_END};
const OSSL_PARAM* ec_gen_settable(void*, void*) noexcept { return kEcSoftGenParams; }
const OSSL_PARAM* rsa_gen_settable(void*, void*) noexcept { return kRsaSoftGenParams; }
const OSSL_PARAM* rsa_pss_gen_settable(void*, void*) noexcept { return kRsaPssSoftGenParams; }

// A template (`openssl genpkey -paramfile`, a TLS peer's parameters) gives the EC group.
int gen_set_template(void* vgen, void* vtempl) noexcept {
  auto* g = static_cast<GenCtx*>(vgen);
  const auto* t = static_cast<const KeyData*>(vtempl);
  if (!t || !t->pkey() || t->kind != g->kind) return 0;
  if (g->soft) return start_software_gen(*g, t->pkey());
  return guard(g->prov, "keymgmt_gen_set_template", [&]() -> Status {
    if (g->kind != KeyKind::kEc) return Status::Ok();
    char group[64];
    if (EVP_PKEY_get_utf8_string_param(t->pkey(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, nullptr) != 1)
      return make_error(Reason::kUnsupported, "the template has no named curve");
    OSSL_PARAM p = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
    return set_group(*g, p);
  });
}

void* gen(void* vgen, OSSL_CALLBACK*, void*) noexcept {
  auto* g = static_cast<GenCtx*>(vgen);
  KeyData* out = nullptr;
  if (g->soft) {
    EVP_PKEY* pkey = nullptr;
    if (EVP_PKEY_generate(g->soft.get(), &pkey) != 1) return nullptr;
    out = new (std::nothrow) KeyData{g->prov, g->kind, nullptr, EvpPkeyPtr(pkey)};
    if (!out) EVP_PKEY_free(pkey);
    return out;
  }
  guard(g->prov, "keymgmt_gen", [&]() -> Status {
    if (g->kind == KeyKind::kRsaPss) TPMKEY_TRY(check_pss_request(*g));
    std::string label = std::string("new ") + g->opts.spec->name + " key";
    if (g->opts.spec->weak) std::fprintf(stderr, "tpmkey: warning: %s\n", kWeakWarning);
    auto key = Key::generate(*g->prov->core, g->opts, g->auth, label, g->parent_auth);
    if (!key) return key.take_error();
    out = new KeyData{g->prov, g->kind, std::move(*key), nullptr};
    return Status::Ok();
  });
  return out;
}

void gen_cleanup(void* vgen) noexcept { delete static_cast<GenCtx*>(vgen); }

}  // namespace

bool software_has(const KeyData& kd, int selection) {
  const EVP_PKEY* pkey = kd.soft.get();
  const KeyKind kind = kd.kind;
  if (!pkey) return false;
  ERR_set_mark();
  bool ok = true;
  if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) {
    BIGNUM* bn = nullptr;
    ok = EVP_PKEY_get_bn_param(pkey, kind == KeyKind::kEc ? OSSL_PKEY_PARAM_PRIV_KEY : OSSL_PKEY_PARAM_RSA_D, &bn) == 1;
    BN_clear_free(bn);
  }
  if (ok && (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY)) {
    if (kind == KeyKind::kEc) {
      size_t len = 0;
      ok = EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0, &len) == 1 && len > 0;
    } else {
      BIGNUM* bn = nullptr;
      ok = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &bn) == 1;
      BN_free(bn);
    }
  }
  if (ok && kind == KeyKind::kEc && (selection & OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS)) {
    char group[64];
    ok = EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, nullptr) == 1;
  }
  ERR_pop_to_mark();
  return ok;
}

// Everything but generation, the same for both keymgmts of a key type.
#define TPMKEY_KEYMGMT_COMMON(type)                                                                        \
  TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_NEW, keymgmt_new, type##_new),                                         \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_FREE, keymgmt_free, key_free),                                     \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_DUP, keymgmt_dup, dup),                                            \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_LOAD, keymgmt_load, load),                                         \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_HAS, keymgmt_has, has),                                            \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_MATCH, keymgmt_match, match),                                      \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_VALIDATE, keymgmt_validate, validate),                             \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_IMPORT, keymgmt_import, import_key),                               \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, keymgmt_import_types, type##_key_types),             \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_EXPORT, keymgmt_export, export_key),                               \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, keymgmt_export_types, type##_key_types),             \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GET_PARAMS, keymgmt_get_params, get_params),                       \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, keymgmt_gettable_params, type##_gettable),        \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_SET_PARAMS, keymgmt_set_params, set_params),                       \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_SETTABLE_PARAMS, keymgmt_settable_params, type##_settable),        \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, keymgmt_query_operation_name, type##_operation_name), \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, keymgmt_gen_set_params, gen_set_params),           \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SET_TEMPLATE, keymgmt_gen_set_template, gen_set_template),     \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN, keymgmt_gen, gen),                                            \
      TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_CLEANUP, keymgmt_gen_cleanup, gen_cleanup)

const OSSL_DISPATCH kEcKeymgmt[] = {
    TPMKEY_KEYMGMT_COMMON(ec),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, ec_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, ec_gen_settable),
    {0, nullptr}};
const OSSL_DISPATCH kRsaKeymgmt[] = {
    TPMKEY_KEYMGMT_COMMON(rsa),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, rsa_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, rsa_gen_settable),
    {0, nullptr}};
const OSSL_DISPATCH kRsaPssKeymgmt[] = {
    TPMKEY_KEYMGMT_COMMON(rsa_pss),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, rsa_pss_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, rsa_pss_gen_settable),
    {0, nullptr}};
const OSSL_DISPATCH kEcTpmKeymgmt[] = {
    TPMKEY_KEYMGMT_COMMON(ec),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, ec_tpm_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, ec_tpm_gen_settable),
    {0, nullptr}};
const OSSL_DISPATCH kRsaTpmKeymgmt[] = {
    TPMKEY_KEYMGMT_COMMON(rsa),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, rsa_tpm_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, rsa_tpm_gen_settable),
    {0, nullptr}};

const OSSL_DISPATCH kRsaPssTpmKeymgmt[] = {
    TPMKEY_KEYMGMT_COMMON(rsa_pss),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, rsa_pss_tpm_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, rsa_pss_tpm_gen_settable),
    {0, nullptr}};

}  // namespace tpmkey::provider
