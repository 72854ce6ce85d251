// Encoder: a TPM key as its TSS2 PRIVATE KEY file, PEM or DER. Only the TPM-wrapped blob is
// written; public-only encodings (SubjectPublicKeyInfo) are left to the default provider, which
// gets the public half through keymgmt export.
#include <openssl/core_names.h>

#include "provider/provider.h"

namespace tpmkey::provider {
namespace {

void* newctx(void* provctx) noexcept { return provctx; }
void freectx(void*) noexcept {}

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
  auto* prov = static_cast<ProviderCtx*>(vctx);
  return guard(prov, "encode", [&]() -> Status {
    const auto* kd = static_cast<const KeyData*>(obj);
    if (!kd || !kd->key || !(selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY))
      return make_error(Reason::kInvalidArgument, "nothing to encode");
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
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_DOES_SELECTION, encoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_ENCODE, encoder_encode, encode<true>),
    {0, nullptr}};
const OSSL_DISPATCH kTss2DerEncoder[] = {
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_NEWCTX, encoder_newctx, newctx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_FREECTX, encoder_freectx, freectx),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_DOES_SELECTION, encoder_does_selection, does_selection),
    TPMKEY_DISPATCH(OSSL_FUNC_ENCODER_ENCODE, encoder_encode, encode<false>),
    {0, nullptr}};

}  // namespace tpmkey::provider
