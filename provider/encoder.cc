// Encoder: a TPM key as its TSS2 PRIVATE KEY file, PEM or DER. Only the TPM-wrapped blob is
// written; public-only encodings (SubjectPublicKeyInfo) are left to the default provider, which
// gets the public half through keymgmt export. A cipher (`openssl pkey -aes256 -passout ...`) is
// refused: the blob is already encrypted by the TPM, and a TSS2 key file has no passphrase form,
// so writing it unencrypted would silently ignore what the user asked for.
#include <openssl/core_names.h>
#include <openssl/params.h>

#include <string>

#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

struct EncoderCtx {
  ProviderCtx* prov = nullptr;
  std::string cipher;  // asked for with OSSL_ENCODER_CTX_set_cipher; refused when encoding
};

void* newctx(void* provctx) noexcept {
  try {
    return new EncoderCtx{static_cast<ProviderCtx*>(provctx), {}};
  } catch (...) {
    return nullptr;
  }
}
void freectx(void* vctx) noexcept { delete static_cast<EncoderCtx*>(vctx); }

Status set_cipher(EncoderCtx& ctx, const OSSL_PARAM& p) {
  const char* name = nullptr;
  if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return make_error(Reason::kInvalidArgument, "cipher must be a name");
  ctx.cipher = name ? name : "";
  return Status::Ok();
}

// OpenSSL also passes "properties" (the cipher's), which the table ignores.
constexpr auto kEncoderParams = settable<EncoderCtx>({
    {OSSL_PARAM_utf8_string(OSSL_ENCODER_PARAM_CIPHER, nullptr, 0), set_cipher},
});

int set_ctx_params(void* vctx, const OSSL_PARAM params[]) noexcept {
  auto* ctx = static_cast<EncoderCtx*>(vctx);
  return guard(ctx->prov, "encoder_set_ctx_params", [&] { return apply_params(kEncoderParams, *ctx, params); });
}

const OSSL_PARAM* settable_ctx_params(void*) noexcept { return kEncoderParams.list(); }

int does_selection(void*, int selection) noexcept {
  return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

int write_all(const ProviderCtx* prov, OSSL_CORE_BIO* out, const void* data, size_t len) {
  size_t written = 0;
  return prov->bio_write && prov->bio_write(out, data, len, &written) && written == len;
}

template <bool kPem>
int encode(void* vctx, OSSL_CORE_BIO* out, const void* obj, const OSSL_PARAM[], int selection,
           OSSL_PASSPHRASE_CALLBACK*, void*) noexcept {
  auto* ctx = static_cast<EncoderCtx*>(vctx);
  ProviderCtx* prov = ctx->prov;
  return guard(prov, "encode", [&]() -> Status {
    const auto* kd = static_cast<const KeyData*>(obj);
    if (!kd || !kd->key || !(selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY))
      return make_error(Reason::kInvalidArgument, "nothing to encode");
    if (!ctx->cipher.empty())
      return make_error(Reason::kUnsupported,
                        "a TPM key file cannot be passphrase-encrypted (" + ctx->cipher +
                            " was asked for): it is already protected by the TPM, which alone can use it; write it "
                            "without a cipher, and give the key a password (tpmkey passwd) to protect its use")
          .context("encode(" + kd->key->label() + ")");
    bool ok;
    if constexpr (kPem) {
      std::string pem = keyfile_pem(kd->key->file());
      ok = write_all(prov, out, pem.data(), pem.size());
    } else {
      Bytes der = keyfile_der(kd->key->file());
      ok = write_all(prov, out, der.data(), der.size());
    }
    if (!ok) return make_error(Reason::kIo, "cannot write the key").context("encode(" + kd->key->label() + ")");
    return Status::Ok();
  });
}

}  // namespace

const OSSL_DISPATCH kTss2PemEncoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_NEWCTX, encoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_FREECTX, encoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_SET_CTX_PARAMS, encoder_set_ctx_params, set_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_SETTABLE_CTX_PARAMS, encoder_settable_ctx_params, settable_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_DOES_SELECTION, encoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_ENCODE, encoder_encode, encode<true>),
    {0, nullptr}};
const OSSL_DISPATCH kTss2DerEncoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_NEWCTX, encoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_FREECTX, encoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_SET_CTX_PARAMS, encoder_set_ctx_params, set_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_SETTABLE_CTX_PARAMS, encoder_settable_ctx_params, settable_ctx_params),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_DOES_SELECTION, encoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_ENCODE, encoder_encode, encode<false>),
    {0, nullptr}};

}  // namespace tpmkey::provider
