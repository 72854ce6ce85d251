// Decoders: TSS2 PRIVATE KEY files (draft-bottomley-tpm2-keys) by plain path, so that
// `-inkey key.pem`, PEM_read_bio_PrivateKey and OSSL_STORE "file:" give a TPM key.
//
// OpenSSL chains decoders. PEM becomes DER first; the default provider's PEM decoder does not
// pass this label on in a form the key decoders take, so decode_pem does it for this one label
// and marks the result as data structure "TSS2". Then the DER decoders of every key type are
// tried: decode<EC|RSA> parses the file into a Key, asks for its password if it has one, and
// hands a KeyData over by reference (OSSL_OBJECT_PARAM_REFERENCE), which keymgmt `load` takes
// over. Nothing is sent to the TPM.
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/pem.h>

#include <cctype>
#include <cstring>
#include <optional>

#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

// Key files are a few KiB; anything larger is not one, and is left to the other decoders.
constexpr size_t kMaxInput = 64 * 1024;
// How a key read from a file is named in messages and password prompts (the path is not known).
constexpr const char* kLabel = "TSS2 key file";

void* newctx(void* provctx) noexcept { return provctx; }
void freectx(void*) noexcept {}

// Reads the whole input; nullopt when it is larger than any key file.
std::optional<Bytes> read_all(const ProviderCtx& prov, OSSL_CORE_BIO* in) {
  Bytes data;
  uint8_t buf[4096];
  for (;;) {
    size_t n = 0;
    if (!prov.bio_read || !prov.bio_read(in, buf, sizeof buf, &n) || n == 0) break;
    data.insert(data.end(), buf, buf + n);
    if (data.size() > kMaxInput) return std::nullopt;
  }
  return data;
}

std::string open_what() { return std::string("open(") + kLabel + ")"; }

// File contents -> KeyFile -> Key: every check that can be made without the TPM.
Result<std::shared_ptr<Key>> open_keyfile(ProviderCtx& prov, const uint8_t* der, size_t len) {
  auto kf = parse_keyfile(der, len);
  if (!kf) return kf.take_error().context(open_what());
  return Key::from_file(*prov.core, std::move(*kf), kLabel);
}

// Whether `data` starts with a TSS2 PEM header (after leading white space).
bool begins_with_tss2_pem(const Bytes& data) {
  static const std::string kBegin = std::string("-----BEGIN ") + kTss2PemLabel + "-----";
  size_t i = 0;
  while (i < data.size() && std::isspace(data[i])) ++i;
  return data.size() - i >= kBegin.size() && std::memcmp(data.data() + i, kBegin.data(), kBegin.size()) == 0;
}

// A TPM key always has both halves; parameters alone are never asked of a key file.
int does_selection(void*, int selection) noexcept {
  return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

// DER -> key reference. Data that is not a TPM key file, or a key of the other type, is passed
// over "empty-handed" (return 1, no object) so that the other decoders get their turn.
//
// OpenSSL's file store runs this decoder in a nested decoder context and discards its errors,
// so the checks whose failure the user must see are also made by decode_pem and check_der,
// which run at the outer level.
template <KeyKind kKind>
int decode(void* provctx, OSSL_CORE_BIO* in, int selection, OSSL_CALLBACK* cb, void* cbarg,
           OSSL_PASSPHRASE_CALLBACK* pw_cb, void* pw_arg) noexcept {
  auto* prov = provider_ctx(provctx);
  return guard(prov, "decode", [&]() -> Status {
    auto data = read_all(*prov, in);
    if (!data || !looks_like_tss2_der(data->data(), data->size())) return Status::Ok();
    auto key = open_keyfile(*prov, data->data(), data->size());
    if (!key) return key.take_error();
    if ((*key)->spec().kind != kKind) return Status::Ok();
    // Only the private half needs the password. Without one (no callback, no terminal,
    // cancelled) the key still loads for its public parts, and signing says what is missing:
    // an error raised here would be discarded by the file store.
    if (selection == 0 || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)) (void)ask_password(**key, pw_cb, pw_arg);

    auto* kd = new KeyData{prov, kKind, std::move(*key)};
    int type = OSSL_OBJECT_PKEY;
    // construct_utf8_string measures the string: OpenSSL copies exactly data_size bytes of it.
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type),
        OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, const_cast<char*>(data_type(kKind)), 0),
        OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &kd, sizeof kd), OSSL_PARAM_construct_end()};
    int ok = cb(params, cbarg);
    delete kd;  // still ours if keymgmt load did not take it
    if (!ok) return make_error(Reason::kInternal, "OpenSSL did not accept the key").context(open_what());
    return Status::Ok();
  });
}

// PEM -> DER for the "TSS2 PRIVATE KEY" label only, passed on as data structure "TSS2"; other
// PEM is left to the default provider. A key file that cannot be used stops decoding here, with
// the reason.
int decode_pem(void* provctx, OSSL_CORE_BIO* in, int, OSSL_CALLBACK* cb, void* cbarg, OSSL_PASSPHRASE_CALLBACK*,
               void*) noexcept {
  auto* prov = provider_ctx(provctx);
  return guard(prov, "decode_pem", [&]() -> Status {
    auto data = read_all(*prov, in);
    if (!data || data->empty()) return Status::Ok();
    BioPtr bio(BIO_new_mem_buf(data->data(), int(data->size())));
    char *name = nullptr, *header = nullptr;
    unsigned char* der = nullptr;
    long len = 0;
    bool ours = bio && PEM_read_bio(bio.get(), &name, &header, &der, &len) == 1 && std::strcmp(name, kTss2PemLabel) == 0;
    ERR_clear_error();  // not PEM, or another label: not ours to report
    Status st = Status::Ok();
    if (!ours && begins_with_tss2_pem(*data)) {
      st = make_error(Reason::kMalformedKey, "unreadable PEM (truncated or damaged)").context(open_what());
    } else if (ours) {
      auto key = open_keyfile(*prov, der, size_t(len));
      if (!key) {
        st = key.take_error();
      } else {
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, der, size_t(len)),
            OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE, const_cast<char*>("TSS2"), 0),
            OSSL_PARAM_construct_end()};
        if (!cb(params, cbarg)) st = make_error(Reason::kInternal, "OpenSSL did not accept the key").context(open_what());
      }
    }
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    return st;
  });
}

// DER key files: says what is wrong with a TPM key file that cannot be used. It passes nothing
// on, so it never feeds itself; the key decoders above make the key.
int check_der(void* provctx, OSSL_CORE_BIO* in, int, OSSL_CALLBACK*, void*, OSSL_PASSPHRASE_CALLBACK*,
              void*) noexcept {
  auto* prov = provider_ctx(provctx);
  return guard(prov, "decode_der", [&]() -> Status {
    auto data = read_all(*prov, in);
    if (!data || !looks_like_tss2_der(data->data(), data->size())) return Status::Ok();
    auto key = open_keyfile(*prov, data->data(), data->size());
    if (!key) return key.take_error();
    return Status::Ok();
  });
}

// Another provider's keymgmt could only get the public half, which would pass for a private key
// that cannot sign. The private key never leaves the TPM, so this always declines.
int export_object(void*, const void*, size_t, OSSL_CALLBACK*, void*) noexcept { return 0; }

}  // namespace

const OSSL_DISPATCH kTss2PemDecoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_NEWCTX, decoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_FREECTX, decoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DECODE, decoder_decode, decode_pem),
    {0, nullptr}};
const OSSL_DISPATCH kTss2DerChecker[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_NEWCTX, decoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_FREECTX, decoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DECODE, decoder_decode, check_der),
    {0, nullptr}};
const OSSL_DISPATCH kEcTss2Decoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_NEWCTX, decoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_FREECTX, decoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DOES_SELECTION, decoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DECODE, decoder_decode, decode<KeyKind::kEc>),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_EXPORT_OBJECT, decoder_export_object, export_object),
    {0, nullptr}};
const OSSL_DISPATCH kRsaTss2Decoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_NEWCTX, decoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_FREECTX, decoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DOES_SELECTION, decoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DECODE, decoder_decode, decode<KeyKind::kRsa>),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_EXPORT_OBJECT, decoder_export_object, export_object),
    {0, nullptr}};
const OSSL_DISPATCH kRsaPssTss2Decoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_NEWCTX, decoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_FREECTX, decoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DOES_SELECTION, decoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_DECODE, decoder_decode, decode<KeyKind::kRsaPss>),
    TPMKEY_DISPATCH(OSSL_FUNC_DECODER_EXPORT_OBJECT, decoder_export_object, export_object),
    {0, nullptr}};

}  // namespace tpmkey::provider
