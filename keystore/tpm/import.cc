// Importing keys made outside the TPM: TPM2_Import of a duplication blob made in software for the
// parent (duplicate.h). The TPM unwraps it with the parent's private key, checks that the private
// value belongs to the public area, and returns the key wrapped like any other child of the parent.
#include "keystore/tpm/driver.h"
#include "keystore/tpm/duplicate.h"

namespace tpmkey {

Result<TPM2B_PRIVATE> Tpm::import_key(const TPM2B_PUBLIC& pub, const SecretBytes& secret, const SecretBytes& auth,
                                      uint32_t parent_handle) {
  const std::string what = "TPM2_Import";
  const TPMA_OBJECT attrs = pub.publicArea.objectAttributes;
  // The TPM refuses these too; saying so here sends nothing.
  if (attrs & (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT))
    return make_error(Reason::kInvalidArgument, "an imported key cannot be fixedTPM or fixedParent").context(what);
  if (auth.size() > hash_size(pub.publicArea.nameAlg))
    return make_error(Reason::kInvalidArgument, "the password is longer than " +
                                                    std::to_string(hash_size(pub.publicArea.nameAlg)) + " bytes")
        .context(what);
  return operation<Result<TPM2B_PRIVATE>>([&]() -> Result<TPM2B_PRIVATE> {
    auto p = parent(parent_handle);
    if (!p) return p.take_error().context(what);
    Object* parent_obj = *p;
    auto s = session();
    if (!s) return s.take_error().context(what);
    // Made afresh for each attempt: after a recovery the parent is proven (and the SRK compared
    // with the pin) again, and the blob is wrapped for the parent the TPM holds now.
    auto blob = make_duplicate(crypto_, parent_obj->pub, pub.publicArea, secret, auth);
    if (!blob) return blob.take_error();
    const TPM2B_DATA no_inner_key{};
    TPMT_SYM_DEF_OBJECT no_inner_wrap{};
    no_inner_wrap.algorithm = TPM2_ALG_NULL;
    TPM2B_PRIVATE out{};
    // The parent's (empty) authorization goes through the session's HMAC, as for TPM2_Load.
    // Parameter 1 (encryptionKey) is empty, so there is nothing for the session to encrypt: the
    // duplicate is already encrypted to the parent, and the answer is a blob only the TPM opens.
    // A persistent parent takes an object slot while the TPM uses it.
    TSS2_RC rc = with_room(parent_obj->transient() ? 0 : 1, parent_obj, parent_obj, [&] {
      return run_.run(
          *s, TPM2_CC_Import, {&parent_obj->name}, no_auth(), {},
          [&] {
            return Tss2_Sys_Import_Prepare(run_.sys(), parent_obj->tpm_handle(), &no_inner_key, &pub,
                                           &blob->duplicate, &blob->sym_seed, &no_inner_wrap);
          },
          [&] { return Tss2_Sys_Import_Complete(run_.sys(), &out); });
    });
    OPENSSL_cleanse(&blob->duplicate, sizeof blob->duplicate);
    if (rc != TSS2_RC_SUCCESS) {
      Error e = error(what, rc);
      const uint32_t base = tpm_base_code(rc);
      if (base == TPM2_RC_ATTRIBUTES || base == TPM2_RC_KEY || base == TPM2_RC_BINDING || base == TPM2_RC_ECC_POINT ||
          base == TPM2_RC_KEY_SIZE || base == TPM2_RC_VALUE || base == TPM2_RC_SCHEME || base == TPM2_RC_CURVE) {
        e.reason = Reason::kUnsupported;
        e.detail = "the TPM refused the key: " + e.detail;
      }
      return e;
    }
    return out;
  });
}

}  // namespace tpmkey
