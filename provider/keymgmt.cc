// keymgmt for EC and RSA TPM keys: generate inside the TPM, load store/decoder references,
// answer parameters from the public half, export only public parts (docs/architecture.md, "Export fails for any selection that includes the private key").
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
  KeyOptions opts;
  SecretBytes auth;
};

KeyData* new_keydata(void* provctx, KeyKind kind) noexcept {
  auto* kd = new (std::nothrow) KeyData;
  if (kd) {
    kd->prov = static_cast<ProviderCtx*>(provctx);
    kd->kind = kind;
  }
  return kd;
}
void* ec_new(void* provctx) noexcept { return new_keydata(provctx, KeyKind::kEc); }
void* rsa_new(void* provctx) noexcept { return new_keydata(provctx, KeyKind::kRsa); }
void key_free(void* kd) noexcept { delete static_cast<KeyData*>(kd); }

void* dup(const void* vkd, int selection) noexcept {
  const auto* kd = static_cast<const KeyData*>(vkd);
  if (!kd || !kd->key || !(selection & OSSL_KEYMGMT_SELECT_KEYPAIR)) return nullptr;
  return new (std::nothrow) KeyData(*kd);
}

int has(const void* vkd, int selection) noexcept {
  const auto* kd = static_cast<const KeyData*>(vkd);
  if (!kd) return 0;
  // A loaded TPM key has both halves (the private one inside the TPM) and its parameters.
  return (selection & OSSL_KEYMGMT_SELECT_ALL) == 0 || kd->key != nullptr;
}

int match(const void* va, const void* vb, int) noexcept {
  const auto* a = static_cast<const KeyData*>(va);
  const auto* b = static_cast<const KeyData*>(vb);
  if (!a || !b || !a->key || !b->key || a->kind != b->kind) return 0;
  int eq = EVP_PKEY_eq(a->key->public_pkey(), b->key->public_pkey());
  ERR_clear_error();
  return eq == 1;
}

// Private parts never leave: failing here is what makes OpenSSL sign with this provider.
int export_key(void* vkd, int selection, OSSL_CALLBACK* cb, void* cbarg) noexcept {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd || !kd->key || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)) return 0;
  return EVP_PKEY_export(kd->key->public_pkey(), selection, cb, cbarg) == 1;
}

const OSSL_PARAM kEcExportTypes[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0), OSSL_PARAM_END};
const OSSL_PARAM kRsaExportTypes[] = {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
                                      OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0), OSSL_PARAM_END};
const OSSL_PARAM* ec_export_types(int selection) noexcept {
  return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) ? nullptr : kEcExportTypes;
}
const OSSL_PARAM* rsa_export_types(int selection) noexcept {
  return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) ? nullptr : kRsaExportTypes;
}

// Everything TLS and X.509 ask of a key, answered from its public half by the default provider.
// So the gettable lists below have no handlers of their own: each names what that key answers.
int get_params(void* vkd, OSSL_PARAM params[]) noexcept {
  auto* kd = static_cast<KeyData*>(vkd);
  if (!kd || !kd->key) return 0;
  return EVP_PKEY_get_params(kd->key->public_pkey(), params) == 1;
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
const OSSL_PARAM* ec_gettable(void*) noexcept { return kEcGettable; }
const OSSL_PARAM* rsa_gettable(void*) noexcept { return kRsaGettable; }

const char* ec_operation_name(int op) noexcept { return op == OSSL_OP_SIGNATURE ? "ECDSA" : nullptr; }
const char* rsa_operation_name(int op) noexcept { return op == OSSL_OP_SIGNATURE ? "RSA" : nullptr; }

// A reference from our store or decoder: the address of a KeyData* that we take over.
void* load(const void* reference, size_t size) noexcept {
  if (!reference || size != sizeof(KeyData*)) return nullptr;
  auto** slot = static_cast<KeyData**>(const_cast<void*>(reference));
  KeyData* kd = *slot;
  *slot = nullptr;
  return kd;
}

// --- generation ---

void* gen_init(void* provctx, int selection, const OSSL_PARAM params[], KeyKind kind);
int gen_set_params(void* vgen, const OSSL_PARAM params[]) noexcept;

void* ec_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kEc);
}
void* rsa_gen_init(void* provctx, int selection, const OSSL_PARAM params[]) noexcept {
  return gen_init(provctx, selection, params, KeyKind::kRsa);
}

void* gen_init(void* provctx, int selection, const OSSL_PARAM params[], KeyKind kind) {
  if (!(selection & OSSL_KEYMGMT_SELECT_KEYPAIR)) return nullptr;
  auto* g = new (std::nothrow) GenCtx;
  if (!g) return nullptr;
  g->prov = static_cast<ProviderCtx*>(provctx);
  g->kind = kind;
  g->opts.spec = kind == KeyKind::kEc ? find_algorithm("ec-p256") : find_algorithm("rsa2048");
  if (!gen_set_params(g, params)) {
    delete g;
    return nullptr;
  }
  return g;
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
  const AlgorithmSpec* s = find_rsa_bits(int(bits));
  if (!s) return make_error(Reason::kUnsupported, "RSA key size " + std::to_string(bits) + " (tpmkey offers 2048, 3072, 4096)");
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

// The generation parameters of each key type: its settable list, and what set_params applies.
constexpr auto kEcGenParams = settable<GenCtx>({
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0), set_group},
    {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0), set_ec_encoding},
    {OSSL_PARAM_utf8_string(kParamUserAuth, nullptr, 0), set_user_auth},
    {OSSL_PARAM_utf8_string(kParamNameDigest, nullptr, 0), set_name_digest},
    {OSSL_PARAM_uint32(kParamParent, nullptr), set_parent},
});
constexpr auto kRsaGenParams = settable<GenCtx>({
    {OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, nullptr), set_rsa_bits},
    {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0), set_rsa_e},
    {OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_PRIMES, nullptr), set_rsa_primes},
    {OSSL_PARAM_utf8_string(kParamUserAuth, nullptr, 0), set_user_auth},
    {OSSL_PARAM_utf8_string(kParamNameDigest, nullptr, 0), set_name_digest},
    {OSSL_PARAM_uint32(kParamParent, nullptr), set_parent},
});

int gen_set_params(void* vgen, const OSSL_PARAM params[]) noexcept {
  auto* g = static_cast<GenCtx*>(vgen);
  return guard(g->prov, "keymgmt_gen_set_params", [&]() -> Status {
    return g->kind == KeyKind::kEc ? apply_params(kEcGenParams, *g, params) : apply_params(kRsaGenParams, *g, params);
  });
}

const OSSL_PARAM* ec_gen_settable(void*, void*) noexcept { return kEcGenParams.list(); }
const OSSL_PARAM* rsa_gen_settable(void*, void*) noexcept { return kRsaGenParams.list(); }

void* gen(void* vgen, OSSL_CALLBACK*, void*) noexcept {
  auto* g = static_cast<GenCtx*>(vgen);
  KeyData* out = nullptr;
  guard(g->prov, "keymgmt_gen", [&]() -> Status {
    std::string label = std::string("new ") + g->opts.spec->name + " key";
    auto key = Key::generate(*g->prov->core, g->opts, g->auth, label);
    if (!key) return key.take_error();
    out = new KeyData{g->prov, g->kind, std::move(*key)};
    return Status::Ok();
  });
  return out;
}

void gen_cleanup(void* vgen) noexcept { delete static_cast<GenCtx*>(vgen); }

}  // namespace

const OSSL_DISPATCH kEcKeymgmt[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_NEW, keymgmt_new, ec_new),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_FREE, keymgmt_free, key_free),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_DUP, keymgmt_dup, dup),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_LOAD, keymgmt_load, load),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_HAS, keymgmt_has, has),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_MATCH, keymgmt_match, match),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_EXPORT, keymgmt_export, export_key),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, keymgmt_export_types, ec_export_types),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GET_PARAMS, keymgmt_get_params, get_params),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, keymgmt_gettable_params, ec_gettable),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, keymgmt_query_operation_name, ec_operation_name),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, ec_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, keymgmt_gen_set_params, gen_set_params),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, ec_gen_settable),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN, keymgmt_gen, gen),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_CLEANUP, keymgmt_gen_cleanup, gen_cleanup),
    {0, nullptr}};

const OSSL_DISPATCH kRsaKeymgmt[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_NEW, keymgmt_new, rsa_new),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_FREE, keymgmt_free, key_free),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_DUP, keymgmt_dup, dup),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_LOAD, keymgmt_load, load),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_HAS, keymgmt_has, has),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_MATCH, keymgmt_match, match),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_EXPORT, keymgmt_export, export_key),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, keymgmt_export_types, rsa_export_types),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GET_PARAMS, keymgmt_get_params, get_params),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, keymgmt_gettable_params, rsa_gettable),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, keymgmt_query_operation_name, rsa_operation_name),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_INIT, keymgmt_gen_init, rsa_gen_init),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, keymgmt_gen_set_params, gen_set_params),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, keymgmt_gen_settable_params, rsa_gen_settable),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN, keymgmt_gen, gen),
    TPMKEY_DISPATCH(OSSL_FUNC_KEYMGMT_GEN_CLEANUP, keymgmt_gen_cleanup, gen_cleanup),
    {0, nullptr}};

}  // namespace tpmkey::provider
