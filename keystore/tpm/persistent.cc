// Persistent objects: reading one by handle (tpm2:handle=), making a key persistent and evicting
// it (TPM2_EvictControl, owner authorization in the session).
#include "keystore/tpm/driver.h"
#include "keystore/tpm/kdf.h"

namespace tpmkey {
namespace {

const Bytes& owner_name() {
  static const Bytes n = handle_name(TPM2_RH_OWNER);
  return n;
}

Error not_persistent(uint32_t handle) {
  return make_error(Reason::kInvalidArgument, hex_handle(handle) + " is not a persistent handle (0x81000000-0x81ffffff)");
}

}  // namespace

// The plain TPM2_ReadPublic that tells the name is unauthenticated: anything on the bus could
// answer with another key's public area and the matching name. So the same handle is read again
// in the salted session as an audit session: the command HMAC covers the name read first (in the
// cpHash), and the response HMAC covers the public area returned. Only a public area that the TPM
// vouches for in the session is used (docs/security.md#what-tpmkey-trusts).
Result<TPM2B_PUBLIC> Tpm::public_of(uint32_t handle) {
  if (!is_persistent_handle(handle)) return not_persistent(handle);
  const std::string what = "read the public key at " + hex_handle(handle);
  return operation<Result<TPM2B_PUBLIC>>([&]() -> Result<TPM2B_PUBLIC> {
    Bytes name;
    auto pub = read_public(handle, &name);
    if (!pub) {
      Error e = pub.take_error();
      if (e.reason == Reason::kKeyNotFound) e.detail = "no persistent object at " + hex_handle(handle) + ": " + e.detail;
      return e;
    }
    TPM2B_PUBLIC out{};
    out.publicArea = *pub;
    auto s = session();
    if (!s) return s.take_error().context(what);
    if (!*s) return out;  // the cleartext opt-out: nothing on the bus is authenticated
    Bytes proven;
    auto audited = read_public(handle, &proven, &name, *s);
    if (!audited) {
      Error e = audited.take_error();
      if (names_session(e.rc) && (tpm_base_code(e.rc) == TPM2_RC_BAD_AUTH || tpm_base_code(e.rc) == TPM2_RC_AUTH_FAIL))
        return make_error(Reason::kUntrustedTpm,
                          "the TPM does not vouch for the public area it returned (its name is not the one the TPM "
                          "holds at that handle): something on the TPM bus altered the answer; the key is not used")
            .context(what);
      return e.context(what);
    }
    if (proven != name)
      return make_error(Reason::kUntrustedTpm,
                        "the public area read in the session differs from the one read before: something on the TPM "
                        "bus altered the answer; the key is not used")
          .context(what);
    out.publicArea = *audited;
    return out;
  });
}

Status Tpm::make_persistent(const KeyFile& kf, uint32_t handle) {
  const std::string what = "make the key persistent at " + hex_handle(handle);
  if (!is_persistent_handle(handle)) return not_persistent(handle);
  return operation<Status>([&]() -> Status {
    Bytes existing;
    if (read_public(handle, &existing))
      return make_error(Reason::kInvalidArgument, hex_handle(handle) + " is already in use").context(what);
    const ObjectId id = new_object_id();
    KeyFile transient = kf;
    transient.persistent = 0;
    auto e = load(id, transient);
    if (!e) {
      objects_.erase_key(id);
      return e.take_error().context(what);
    }
    auto s = session();
    if (!s) {
      release(**e);
      objects_.erase_key(id);
      return s.take_error().context(what);
    }
    Object* key = *e;
    TSS2_RC rc = run_.run(
        *s, TPM2_CC_EvictControl, {&owner_name(), &key->name}, no_auth(), {},
        [&] { return Tss2_Sys_EvictControl_Prepare(run_.sys(), TPM2_RH_OWNER, key->tpm_handle(), handle); },
        [&] { return Tss2_Sys_EvictControl_Complete(run_.sys()); });
    release(*key);
    objects_.erase_key(id);
    if (rc != TSS2_RC_SUCCESS) return error(what, rc);
    return Status::Ok();
  });
}

Status Tpm::evict_persistent(const KeyFile& kf, uint32_t handle) {
  const std::string what = "remove the persistent key at " + hex_handle(handle);
  auto expected = object_name(crypto_, kf.pub.publicArea);
  if (!expected) return expected.take_error().context(what);
  return operation<Status>([&]() -> Status {
    Bytes name;
    auto pub = read_public(handle, &name);
    if (!pub) return pub.take_error().context(what);
    if (name != *expected) return make_error(Reason::kInvalidArgument, "it holds a different key; left alone").context(what);
    auto s = session();
    if (!s) return s.take_error().context(what);
    TSS2_RC rc = run_.run(
        *s, TPM2_CC_EvictControl, {&owner_name(), &name}, no_auth(), {},
        [&] { return Tss2_Sys_EvictControl_Prepare(run_.sys(), TPM2_RH_OWNER, handle, handle); },
        [&] { return Tss2_Sys_EvictControl_Complete(run_.sys()); });
    if (rc != TSS2_RC_SUCCESS) return error(what, rc);
    objects_.for_each([&](Object& o) {
      if (!o.transient() && o.tpm_handle() == handle) o.abandon();
    });
    return Status::Ok();
  });
}

}  // namespace tpmkey
