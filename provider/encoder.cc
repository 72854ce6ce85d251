// Encoder: a TPM key as its TSS2 PRIVATE KEY file, PEM or DER. Only the TPM-wrapped blob is
// written; public-only encodings (SubjectPublicKeyInfo) are left to the default provider, which
// gets the public half through keymgmt export. A software key is written by the default
// provider's own encoders, passphrase and cipher included. A cipher for a TPM key (`openssl pkey
// -aes256 -passout ...`) is refused: the blob is already encrypted by the TPM, and a TSS2 key file
// has no passphrase form, so writing it unencrypted would silently ignore what the user asked for.
#include <openssl/core_names.h>
#include <openssl/encoder.h>

#include <cstring>

#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

struct EncCtx {
  ProviderCtx* prov = nullptr;
  std::string cipher, cipher_props;  // a passphrase-protected encoding was asked for
};

void* newctx(void* provctx) noexcept {
  auto* c = new (std::nothrow) EncCtx;
  if (c) c->prov = provider_ctx(provctx);
  return c;
}
void freectx(void* vctx) noexcept { delete static_cast<EncCtx*>(vctx); }

Status set_cipher(EncCtx& c, const OSSL_PARAM& p) {
  const char* v = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &v)) return make_error(Reason::kInvalidArgument, "cipher must be a name");
  c.cipher = v ? v : "";
  return Status::Ok();
}
Status set_cipher_props(EncCtx& c, const OSSL_PARAM& p) {
  const char* v = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &v)) return make_error(Reason::kInvalidArgument, "properties must be a string");
  c.cipher_props = v ? v : "";
  return Status::Ok();
}
constexpr auto kEncoderSettable = settable<EncCtx>({
    {OSSL_PARAM_utf8_string(OSSL_ENCODER_PARAM_CIPHER, nullptr, 0), set_cipher},
    {OSSL_PARAM_utf8_string(OSSL_ENCODER_PARAM_PROPERTIES, nullptr, 0), set_cipher_props},
});
const OSSL_PARAM* settable_ctx_params(void*) noexcept { return kEncoderSettable.list(); }
int set_ctx_params(void* vctx, const OSSL_PARAM params[]) noexcept {
  auto* c = static_cast<EncCtx*>(vctx);
  return guard(c->prov, "encoder_set_ctx_params", [&] { return apply_params(kEncoderSettable, *c, params); });
}

int does_selection(void*, int selection) noexcept {
  return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

int write_all(const ProviderCtx* prov, OSSL_CORE_BIO* out, const void* data, size_t len) {
  size_t written = 0;
  return prov->bio_write && prov->bio_write(out, data, len, &written) && written == len;
}

template <bool kPem, bool kTss2>
int encode(void* vctx, OSSL_CORE_BIO* out, const void* obj, const OSSL_PARAM[], int selection,
           OSSL_PASSPHRASE_CALLBACK* cb, void* cbarg) noexcept {
  auto* c = static_cast<EncCtx*>(vctx);
  const ProviderCtx* prov = c->prov;
  return guard(prov, "encode", [&]() -> Status {
    const auto* kd = static_cast<const KeyData*>(obj);
    if (!kd || !kd->pkey() || !(selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY))
      return make_error(Reason::kInvalidArgument, "nothing to encode");
    // A software key has no TSS2 form. OpenSSL picks the TSS2 encoder when no structure was asked
    // for (`openssl ecparam -genkey`): the default provider then writes what it writes without
    // tpmkey.
    if (!kd->key)
      return encode_software(prov, out, *kd, selection, kPem ? "PEM" : "DER", kTss2 ? nullptr : "PrivateKeyInfo",
                             c->cipher, cb, cbarg);
    if (!c->cipher.empty())
      return make_error(Reason::kUnsupported,
                        "a TPM key file cannot be passphrase-encrypted (" + c->cipher +
                            " was asked for): it is already protected by the TPM, which alone can use it; write it "
                            "without a cipher, and give the key a password (tpmkey passwd) to protect its use")
          .context("encode(" + kd->key->label() + ")");
    bool ok;
    if constexpr (kPem) {
      std::string pem = keyfile_pem(kd->key->file());
      if (pem.empty()) return keyfile_unwritable().context("encode(" + kd->key->label() + ")");
      ok = write_all(prov, out, pem.data(), pem.size());
    } else {
      Bytes der = keyfile_der(kd->key->file());
      if (der.empty()) return keyfile_unwritable().context("encode(" + kd->key->label() + ")");
      ok = write_all(prov, out, der.data(), der.size());
    }
    if (!ok) return make_error(Reason::kIo, "cannot write the key").context("encode(" + kd->key->label() + ")");
    return Status::Ok();
  });
}

}  // namespace

Status encode_software(const ProviderCtx* prov, OSSL_CORE_BIO* out, const KeyData& kd, int selection,
                       const char* output, const char* structure, const std::string& cipher,
                       OSSL_PASSPHRASE_CALLBACK* cb, void* cbarg) {
  OsslPtr<OSSL_ENCODER_CTX, OSSL_ENCODER_CTX_free> ectx(
      OSSL_ENCODER_CTX_new_for_pkey(kd.soft.get(), selection, output, structure, kSoftwareProps));
  if (!ectx || OSSL_ENCODER_CTX_get_num_encoders(ectx.get()) == 0)
    return make_error(Reason::kUnsupported, std::string("the default provider cannot write this key as ") + output);
  if (!cipher.empty() && (OSSL_ENCODER_CTX_set_cipher(ectx.get(), cipher.c_str(), nullptr) != 1 ||
                          OSSL_ENCODER_CTX_set_passphrase_cb(ectx.get(), cb, cbarg) != 1))
    return make_error(Reason::kUnsupported, "cipher " + cipher);
  unsigned char* data = nullptr;
  size_t len = 0;
  if (OSSL_ENCODER_to_data(ectx.get(), &data, &len) != 1)
    return make_error(Reason::kInvalidArgument, std::string("the default provider could not write the key as ") + output);
  bool ok = write_all(prov, out, data, len);
  OPENSSL_clear_free(data, len);
  if (!ok) return make_error(Reason::kIo, "cannot write the key");
  return Status::Ok();
}

#define TPMKEY_ENCODER(pem, tss2)                                                                      \
  {TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_NEWCTX, encoder_newctx, newctx),                                  \
   TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_FREECTX, encoder_freectx, freectx),                               \
   TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_SETTABLE_CTX_PARAMS, encoder_settable_ctx_params, settable_ctx_params), \
   TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_SET_CTX_PARAMS, encoder_set_ctx_params, set_ctx_params),          \
   TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_DOES_SELECTION, encoder_does_selection, does_selection),          \
   TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_ENCODE, encoder_encode, (encode<pem, tss2>)),                     \
   {0, nullptr}}
const OSSL_DISPATCH kTss2PemEncoder[] = TPMKEY_ENCODER(true, true);
const OSSL_DISPATCH kTss2DerEncoder[] = TPMKEY_ENCODER(false, true);
const OSSL_DISPATCH kPrivateKeyInfoPemEncoder[] = TPMKEY_ENCODER(true, false);
const OSSL_DISPATCH kPrivateKeyInfoDerEncoder[] = TPMKEY_ENCODER(false, false);

}  // namespace tpmkey::provider
