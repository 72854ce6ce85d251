// OSSL_provider_init and the provider-wide dispatch: parameters, operations, reason strings.
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <optional>

#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

// Two keymgmts per key type, so that which provider comes first in a configuration does not
// decide where keys are generated (docs/architecture.md, "Either provider order"). Both hold TPM
// keys and software keys alike. The first one listed is what a fetch without a property query
// gets when tpmkey comes first (libssl's ephemeral ECDHE keys, `openssl genpkey` without
// `-propquery`, an application's EVP_PKEY_keygen): it generates software keys, through the default
// provider. The second matches "provider=tpmkey" (the first does not) and generates in the TPM.
constexpr const char* kSoftwareGenProperties = "tpmkey.keygen=software";
constexpr const char* kTpmGenProperties = "provider=tpmkey,tpmkey.keygen=tpm";
const OSSL_ALGORITHM kKeymgmtAlgs[] = {
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", kSoftwareGenProperties, kEcKeymgmt, "EC key: TPM or software, generated in software"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", kSoftwareGenProperties, kRsaKeymgmt, "RSA key: TPM or software, generated in software"},
    {"RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10", kSoftwareGenProperties, kRsaPssKeymgmt, "RSA-PSS key: TPM or software, generated in software"},
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", kTpmGenProperties, kEcTpmKeymgmt, "EC key: TPM or software, generated in the TPM"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", kTpmGenProperties, kRsaTpmKeymgmt, "RSA key: TPM or software, generated in the TPM"},
    {"RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10", kTpmGenProperties, kRsaPssTpmKeymgmt, "RSA-PSS key: TPM or software, generated in the TPM"},
    {nullptr, nullptr, nullptr, nullptr}};
const OSSL_ALGORITHM kSignatureAlgs[] = {
    {"ECDSA", kProperties, kEcdsaSignature, "ECDSA signed by the TPM"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", kProperties, kRsaSignature, "RSA signed by the TPM"},
    {nullptr, nullptr, nullptr, nullptr}};
const OSSL_ALGORITHM kAsymCipherAlgs[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", kProperties, kRsaAsymCipher, "RSA decrypted by the TPM"},
    {nullptr, nullptr, nullptr, nullptr}};
const OSSL_ALGORITHM kKeyExchangeAlgs[] = {
    {"ECDH", kProperties, kEcdhKeyExchange, "ECDH: TPM2_ECDH_ZGen with a TPM key, else the default provider's"},
    {nullptr, nullptr, nullptr, nullptr}};
const OSSL_ALGORITHM kStoreAlgs[] = {
    {"tpm2", kProperties, kStore, "tpm2: URIs (keystore entries and key files)"},
    {nullptr, nullptr, nullptr, nullptr}};
// A TPM private key is written as its TSS2 PRIVATE KEY file (the wrapped blob), both when asked
// for "TSS2" and when asked for "PrivateKeyInfo" (what PEM_write_bio_PrivateKey asks for); a
// software key asked for as PrivateKeyInfo is written by the default provider (encoder.cc).
#define TPMKEY_ENCODERS(type)                                                                          \
  {type, "provider=tpmkey,output=pem,structure=PrivateKeyInfo", kPrivateKeyInfoPemEncoder, "TSS2 PRIVATE KEY"}, \
      {type, "provider=tpmkey,output=der,structure=PrivateKeyInfo", kPrivateKeyInfoDerEncoder, "TSS2 PRIVATE KEY"}, \
      {type, "provider=tpmkey,output=pem,structure=TSS2", kTss2PemEncoder, "TSS2 PRIVATE KEY"},      \
      {type, "provider=tpmkey,output=der,structure=TSS2", kTss2DerEncoder, "TSS2 PRIVATE KEY"}
const OSSL_ALGORITHM kEncoderAlgs[] = {
    TPMKEY_ENCODERS("EC"), TPMKEY_ENCODERS("RSA"), TPMKEY_ENCODERS("RSA-PSS"),
    {"EC", "provider=tpmkey,output=text", kTextEncoder, "TPM key as text (public parts, parent, password)"},
    {"RSA", "provider=tpmkey,output=text", kTextEncoder, "TPM key as text (public parts, parent, password)"},
    {"RSA-PSS", "provider=tpmkey,output=text", kTextEncoder, "TPM key as text (public parts, parent, password)"},
    {nullptr, nullptr, nullptr, nullptr}};
// TSS2 PRIVATE KEY files by plain path: DER to a key reference that keymgmt load takes over.
const OSSL_ALGORITHM kDecoderAlgs[] = {
    {"EC", "provider=tpmkey,input=der,structure=TSS2", kEcTss2Decoder, "TSS2 PRIVATE KEY (EC)"},
    {"RSA", "provider=tpmkey,input=der,structure=TSS2", kRsaTss2Decoder, "TSS2 PRIVATE KEY (RSA)"},
    {"RSA-PSS", "provider=tpmkey,input=der,structure=TSS2", kRsaPssTss2Decoder, "TSS2 PRIVATE KEY (RSA-PSS)"},
    {"DER", "provider=tpmkey,input=pem", kTss2PemDecoder, "TSS2 PRIVATE KEY PEM to DER"},
    {"DER", "provider=tpmkey,input=der", kTss2DerChecker, "TSS2 PRIVATE KEY DER check"},
    {nullptr, nullptr, nullptr, nullptr}};

void teardown(void* vctx) noexcept { delete provider_ctx(vctx); }

// The provider's own parameters (OSSL_PROVIDER_get_params): each one's handler, then the table.
bool get_name(const ProviderCtx&, OSSL_PARAM& p) { return OSSL_PARAM_set_utf8_ptr(&p, "tpmkey TPM 2.0 provider"); }
bool get_version(const ProviderCtx&, OSSL_PARAM& p) { return OSSL_PARAM_set_utf8_ptr(&p, TPMKEY_VERSION); }
bool get_status(const ProviderCtx&, OSSL_PARAM& p) { return OSSL_PARAM_set_int(&p, 1); }
// Never connects: 0 until a key is used.
bool get_tpm_commands(const ProviderCtx& prov, OSSL_PARAM& p) {
  Tpm* tpm = prov.core->tpm_if_connected();
  return OSSL_PARAM_set_uint64(&p, tpm ? tpm->commands() : 0);
}

constexpr auto kProviderParams = gettable<ProviderCtx>({
    {OSSL_PARAM_DEFN(OSSL_PROV_PARAM_NAME, OSSL_PARAM_UTF8_PTR, nullptr, 0), get_name},
    {OSSL_PARAM_DEFN(OSSL_PROV_PARAM_VERSION, OSSL_PARAM_UTF8_PTR, nullptr, 0), get_version},
    {OSSL_PARAM_DEFN(OSSL_PROV_PARAM_BUILDINFO, OSSL_PARAM_UTF8_PTR, nullptr, 0), get_version},  // the same
    {OSSL_PARAM_DEFN(OSSL_PROV_PARAM_STATUS, OSSL_PARAM_INTEGER, nullptr, 0), get_status},
    {OSSL_PARAM_DEFN(kParamTpmCommands, OSSL_PARAM_UNSIGNED_INTEGER, nullptr, 0), get_tpm_commands},
});

const OSSL_PARAM* gettable_params(void*) noexcept { return kProviderParams.list(); }

int get_params(void* vctx, OSSL_PARAM params[]) noexcept {
  return answer_params(kProviderParams, *provider_ctx(vctx), params);
}

// The operations of serves_operation() (module.h), which the front asks this for.
const OSSL_ALGORITHM* query_operation(void*, int operation_id, int* no_cache) noexcept {
  *no_cache = 0;
  switch (operation_id) {
    case OSSL_OP_KEYMGMT: return kKeymgmtAlgs;
    case OSSL_OP_SIGNATURE: return kSignatureAlgs;
    case OSSL_OP_ASYM_CIPHER: return kAsymCipherAlgs;
    case OSSL_OP_KEYEXCH: return kKeyExchangeAlgs;
    case OSSL_OP_STORE: return kStoreAlgs;
    case OSSL_OP_ENCODER: return kEncoderAlgs;
    case OSSL_OP_DECODER: return kDecoderAlgs;
    default: return nullptr;  // no RAND, digests or symmetric ciphers (docs/architecture.md, "No RAND, digests or ciphers")
  }
}

const OSSL_ITEM* get_reason_strings(void*) noexcept { return kReasonStrings.items; }

// TLS groups. libssl keeps a provider's group only if the keymgmt it fetches for the group's
// algorithm comes from that same provider; with tpmkey first that is tpmkey's EC keymgmt, so the
// default provider's EC groups (P-256, P-384, ...) would vanish from every handshake. tpmkey
// therefore passes on the default provider's EC groups as its own: the ephemeral keys are then
// generated by tpmkey's first keymgmt, which makes them in software (docs/architecture.md,
// "Either provider order"). With default first, libssl keeps the default provider's copies.
struct GroupRelay {
  OSSL_CALLBACK* cb;
  void* arg;
};
int relay_ec_group(const OSSL_PARAM params[], void* varg) noexcept {
  auto* relay = static_cast<GroupRelay*>(varg);
  const OSSL_PARAM* alg = OSSL_PARAM_locate_const(params, OSSL_CAPABILITY_TLS_GROUP_ALG);
  const char* name = nullptr;
  if (!alg || !OSSL_PARAM_get_utf8_string_ptr(alg, &name) || std::strcmp(name, "EC") != 0) return 1;
  return relay->cb(params, relay->arg);
}
int find_default(OSSL_PROVIDER* p, void* out) noexcept {
  if (std::strcmp(OSSL_PROVIDER_get0_name(p), "default") != 0) return 1;
  *static_cast<OSSL_PROVIDER**>(out) = p;
  return 0;
}
int get_capabilities(void* vctx, const char* capability, OSSL_CALLBACK* cb, void* arg) noexcept {
  if (std::strcmp(capability, "TLS-GROUP") != 0) return 1;  // nothing else to declare
  auto lib = software_libctx(provider_ctx(vctx));
  if (!lib) return 1;  // no default provider: no groups from it either
  OSSL_PROVIDER* def = nullptr;
  OSSL_PROVIDER_do_all(*lib, find_default, &def);
  if (!def) return 1;
  GroupRelay relay{cb, arg};
  return OSSL_PROVIDER_get_capabilities(def, "TLS-GROUP", relay_ec_group, &relay);
}

const OSSL_DISPATCH kProviderDispatch[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, reinterpret_cast<void (*)()>(teardown)},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, reinterpret_cast<void (*)()>(gettable_params)},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, reinterpret_cast<void (*)()>(get_params)},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, reinterpret_cast<void (*)()>(query_operation)},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, reinterpret_cast<void (*)()>(get_reason_strings)},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, reinterpret_cast<void (*)()>(get_capabilities)},
    {0, nullptr}};

// Reads a string from the provider's openssl.cnf section; nullptr when absent.
const char* config_value(OSSL_FUNC_core_get_params_fn* get, const OSSL_CORE_HANDLE* handle, const char* key) {
  if (!get) return nullptr;
  const char* value = nullptr;
  OSSL_PARAM params[] = {OSSL_PARAM_utf8_ptr(key, const_cast<char**>(&value), 0), OSSL_PARAM_END};
  if (!get(handle, params)) return nullptr;
  return value;
}

}  // namespace

Result<OSSL_LIB_CTX*> software_libctx(const ProviderCtx* prov) {
  auto crypto = prov->core->crypto();
  if (!crypto) return crypto.take_error();
  return (*crypto)->libctx();
}

namespace {

// One answer from OpenSSL's passphrase callback, prompting with `info`; nullopt if none was given.
std::optional<SecretBytes> ask(const std::string& info, OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_arg) {
  char buf[256];
  size_t len = 0;
  std::string text = info;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_PASSPHRASE_PARAM_INFO, text.data(), 0),
                         OSSL_PARAM_construct_end()};
  std::optional<SecretBytes> answer;
  if (pw_cb(buf, sizeof buf, &len, params, pw_arg))
    answer = SecretBytes(reinterpret_cast<uint8_t*>(buf), std::min(len, sizeof buf));
  OPENSSL_cleanse(buf, sizeof buf);
  return answer;
}

}  // namespace

Status ask_password(Key& key, OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_arg) {
  if (!pw_cb) return Status::Ok();
  const bool parent_missing = key.needs_parent_auth() && !key.has_parent_auth();
  const bool key_missing = key.needs_auth() && !key.has_auth();
  if (!parent_missing && !key_missing) return Status::Ok();
  if (key.agent_signs_for_it()) return Status::Ok();  // the passwords are the agent's (ssh-add -s)
  // The parent's first: it is what loading the key needs (docs/keys.md#parents-with-a-password).
  if (parent_missing) {
    char parent[32];
    std::snprintf(parent, sizeof parent, "the parent 0x%08x", key.file().parent);
    auto pw = ask(std::string(parent) + " of " + key.label(), pw_cb, pw_arg);
    if (!pw)
      return make_error(Reason::kAuthFailed, std::string("no password given for ") + parent +
                                                 ", which has one (docs/keys.md#parents-with-a-password)")
          .context("open(" + key.label() + ")");
    key.set_parent_auth(std::move(*pw));
  }
  if (!key_missing) return Status::Ok();
  auto pw = ask(key.label(), pw_cb, pw_arg);
  if (!pw) return make_error(Reason::kAuthFailed, "no password given").context("open(" + key.label() + ")");
  key.set_auth(std::move(*pw));
  return Status::Ok();
}

void ProviderCtx::raise(const Error& e, const char* func) const {
  if (!new_error || !vset_error) return;
  new_error(handle);
  if (set_error_debug) set_error_debug(handle, nullptr, 0, func);
  const std::string text = shorten_text(e.text(), kMaxErrorText);
  auto set = [&](const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vset_error(handle, uint32_t(e.reason), fmt, ap);
    va_end(ap);
  };
  set("%s", text.c_str());
}

}  // namespace tpmkey::provider

using namespace tpmkey::provider;

// Not declared noexcept: openssl/core.h declares it without, and clang refuses the mismatch. The
// body catches everything, so no exception leaves it.
extern "C" __attribute__((visibility("default"))) int OSSL_provider_init(const OSSL_CORE_HANDLE* handle,
                                                                         const OSSL_DISPATCH* in,
                                                                         const OSSL_DISPATCH** out,
                                                                         void** provctx) {
  try {
    auto ctx = std::make_unique<ProviderCtx>();
    ctx->handle = handle;
    OSSL_FUNC_core_get_params_fn* get_params = nullptr;
    OSSL_FUNC_core_get_libctx_fn* get_libctx = nullptr;
    for (; in->function_id != 0; ++in) {
      switch (in->function_id) {
        case OSSL_FUNC_CORE_GET_PARAMS: get_params = OSSL_FUNC_core_get_params(in); break;
        case OSSL_FUNC_CORE_GET_LIBCTX: get_libctx = OSSL_FUNC_core_get_libctx(in); break;
        case OSSL_FUNC_CORE_NEW_ERROR: ctx->new_error = OSSL_FUNC_core_new_error(in); break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG: ctx->set_error_debug = OSSL_FUNC_core_set_error_debug(in); break;
        case OSSL_FUNC_CORE_VSET_ERROR: ctx->vset_error = OSSL_FUNC_core_vset_error(in); break;
        case OSSL_FUNC_BIO_READ_EX: ctx->bio_read = OSSL_FUNC_BIO_read_ex(in); break;
        case OSSL_FUNC_BIO_WRITE_EX: ctx->bio_write = OSSL_FUNC_BIO_write_ex(in); break;
        default: break;
      }
    }
    // Configuration is read here, once; the TPM is not touched until a key is used.
    tpmkey::SettingsInput in;
    in.tcti = config_value(get_params, handle, "tcti");
    in.keystore = config_value(get_params, handle, "keystore");
    in.authorization = config_value(get_params, handle, "authorization");
    in.timeout = config_value(get_params, handle, "timeout");
    in.keygen_timeout = config_value(get_params, handle, "keygen-timeout");
    in.busy_timeout = config_value(get_params, handle, "busy-timeout");
    in.agent = config_value(get_params, handle, "agent");
    in.agent_required = config_value(get_params, handle, "agent-required");
    auto settings = tpmkey::resolve_settings(in);
    // Only compared, never used as a library context (its type is opaque to providers); OpenSSL
    // may also record the global context as nullptr.
    const void* core_ctx = get_libctx ? static_cast<const void*>(get_libctx(handle)) : &kProviderDispatch;
    const bool in_global = core_ctx == nullptr || core_ctx == OSSL_LIB_CTX_get0_global_default();
    ctx->core = std::make_unique<tpmkey::Context>(
        std::move(settings), in_global ? tpmkey::Crypto::Where::kGlobalIfDefault : tpmkey::Crypto::Where::kPrivate);
    *out = kProviderDispatch;
    *provctx = ctx.release();
    return 1;
  } catch (...) {
    return 0;
  }
}
