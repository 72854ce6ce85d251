// Importing keys made outside the TPM: TPM2_Import of a duplication blob for the parent
// (duplicate.h), made in software here (`tpmkey import` of a software key) or on another machine
// (`tpmkey wrap`, an importable key file). The TPM unwraps it with the parent's private key, checks
// that the private value belongs to the public area, and returns the key wrapped like any other
// child of the parent. Both ways share one TPM2_Import.
#include "keystore/tpm/driver.h"
#include "keystore/tpm/duplicate.h"

namespace tpmkey {

Result<TPM2B_PRIVATE> Tpm::import_blob(const TPM2B_PUBLIC& pub, uint32_t parent_handle, const BlobFor& blob_for) {
  const std::string what = "TPM2_Import";
  // The TPM refuses these too; saying so here sends nothing.
  if (pub.publicArea.objectAttributes & (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT))
    return make_error(Reason::kInvalidArgument, "an imported key cannot be fixedTPM or fixedParent").context(what);
  return operation<Result<TPM2B_PRIVATE>>([&]() -> Result<TPM2B_PRIVATE> {
    auto parent_pw = parent_auth(parent_handle);
    if (!parent_pw) return parent_pw.take_error().context(what);
    auto p = parent(parent_handle);
    if (!p) return p.take_error().context(what);
    Object* parent_obj = *p;
    // Before the session: a blob meant for another parent is refused with nothing sent but what
    // proving the parent took.
    auto blob = blob_for(*parent_obj);
    if (!blob) return blob.take_error();
    auto s = session();
    if (!s) {
      OPENSSL_cleanse(&blob->duplicate, sizeof blob->duplicate);
      return s.take_error().context(what);
    }
    const TPM2B_DATA no_inner_key{};
    TPMT_SYM_DEF_OBJECT no_inner_wrap{};
    no_inner_wrap.algorithm = TPM2_ALG_NULL;
    TPM2B_PRIVATE out{};
    // The parent's authorization (empty, or its own password) goes through the session's HMAC,
    // as for TPM2_Load.
    // Parameter 1 (encryptionKey) is empty, so there is nothing for the session to encrypt: the
    // duplicate is already encrypted to the parent, and the answer is a blob only the TPM opens.
    // A persistent parent takes an object slot while the TPM uses it.
    TSS2_RC rc = with_room(parent_obj->transient() ? 0 : 1, parent_obj, parent_obj, [&] {
      return run_.run(
          *s, TPM2_CC_Import, {&parent_obj->name}, *parent_pw, {},
          [&] {
            return Tss2_Sys_Import_Prepare(run_.sys(), parent_obj->tpm_handle(), &no_inner_key, &pub,
                                           &blob->duplicate, &blob->sym_seed, &no_inner_wrap);
          },
          [&] { return Tss2_Sys_Import_Complete(run_.sys(), &out); });
    });
    OPENSSL_cleanse(&blob->duplicate, sizeof blob->duplicate);
    if (rc != TSS2_RC_SUCCESS) {
      Error e = error(what, rc);
      check_parent_auth(parent_handle, rc, e);
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

Result<TPM2B_PRIVATE> Tpm::import_key(const TPM2B_PUBLIC& pub, const SecretBytes& secret, const SecretBytes& auth,
                                      uint32_t parent_handle) {
  if (auth.size() > hash_size(pub.publicArea.nameAlg))
    return make_error(Reason::kInvalidArgument, "the password is longer than " +
                                                    std::to_string(hash_size(pub.publicArea.nameAlg)) + " bytes")
        .context("TPM2_Import");
  // Made afresh for each attempt: after a recovery the parent is proven (and the SRK compared
  // with the pin) again, and the blob is wrapped for the parent the TPM holds now.
  return import_blob(pub, parent_handle, [&](const Object& parent_obj) {
    return make_duplicate(crypto_, parent_obj.pub, pub.publicArea, secret, auth);
  });
}

Result<TPM2B_PRIVATE> Tpm::import_duplicate(const TPM2B_PUBLIC& pub, const Duplicate& blob, const Bytes* wrapped_for) {
  return import_blob(pub, kOwnerParent, [&](const Object& srk_obj) -> Result<Duplicate> {
    if (wrapped_for && *wrapped_for != srk_obj.name)
      return make_error(Reason::kInvalidArgument, "this file was wrapped for another TPM: its SRK name is " +
                                                      to_hex(*wrapped_for) + ", this TPM's is " + to_hex(srk_obj.name) +
                                                      " (nothing was sent to import it)")
          .context("TPM2_Import");
    return blob;
  });
}

}  // namespace tpmkey
