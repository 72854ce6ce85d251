// Keys in the TPM: loading them (TPM2_Load, or ContextLoad of an evicted one), making room in the
// TPM's object slots, and creating them (TPM2_Create).
#include <cstring>

#include "keystore/tpm/driver.h"
#include "keystore/tpm/kdf.h"

namespace tpmkey {

void Tpm::make_room(size_t needed, const Object* a, const Object* b) {
  // The limits only matter once there is something of ours to evict: a process that holds one
  // key never asks.
  if (needed == 0) return;
  if (objects_.loaded_transients() > 0) read_limits();
  while (objects_.loaded_transients() + needed > transient_limit_ && evict_one(a, b)) {
  }
}

bool Tpm::evict_one(const Object* a, const Object* b) {
  Object* victim = objects_.lru_victim(a, b);
  if (!victim) return false;
  auto& h = std::get<TransientHandle>(victim->handle);
  TPMS_CONTEXT saved{};
  const TPM2_HANDLE n = h.get();
  if (victim->span == span_ &&
      run_.plain([&] { return Tss2_Sys_ContextSave(run_.sys(), n, &saved); }) == TSS2_RC_SUCCESS)
    victim->saved = saved;
  release(*victim);  // flushes it when it is provably ours
  return true;
}

bool Tpm::reload_saved(Object& o, const Object* pinned) {
  if (!o.saved) return false;
  TPMS_CONTEXT ctx = *o.saved;
  o.saved.reset();  // a saved object context is good for one load
  TPM2_HANDLE h = 0;
  TSS2_RC rc = with_room(1, &o, pinned, [&] { return run_.plain([&] { return Tss2_Sys_ContextLoad(run_.sys(), &ctx, &h); }); });
  if (rc != TSS2_RC_SUCCESS) return false;  // stale (the TPM was restarted): the caller recreates the object
  o.handle = TransientHandle(h);
  o.span = span_;
  return true;
}

Result<Object*> Tpm::load(ObjectId id, const KeyFile& kf) {
  Object& e = objects_.key(id);
  e.last_use = ++clock_;
  if (e.loaded()) {
    TPMKEY_TRY(verify(e));
    if (e.loaded()) return &e;
  }
  if (e.name.empty()) {
    auto n = object_name(crypto_, kf.pub.publicArea);
    if (!n) return n.take_error();
    e.name = std::move(*n);
  }
  if (reload_saved(e, nullptr)) return &e;
  if (kf.persistent) {
    // Used in place when the handle holds this very key (same name); otherwise the blob, if any,
    // is loaded as usual.
    Bytes name;
    auto pub = read_public(kf.persistent, &name);
    if (pub && name == e.name) {
      e.handle = PersistentHandle(kf.persistent);
      e.span = span_;
      return &e;
    }
    if (!pub && tpm_base_code(pub.error().rc) != TPM2_RC_HANDLE) return pub.take_error();
    if (kf.priv.size == 0) {
      if (pub) return make_error(Reason::kKeyNotFound, hex_handle(kf.persistent) + " now holds a different key");
      return pub.take_error();
    }
  }
  auto p = parent(kf.parent);
  if (!p) return p.take_error();
  Object* parent_obj = *p;
  auto s = session();
  if (!s) return s.take_error();
  TPM2B_NAME name{};
  TPM2_HANDLE handle = 0;
  // libtpms needs a slot for a persistent parent during the command, and one for the key.
  const size_t needed = parent_obj->transient() ? 1 : 2;
  TSS2_RC rc = with_room(needed, &e, parent_obj, [&] {
    return run_.run(
        *s, TPM2_CC_Load, {&parent_obj->name}, no_auth(), {.encrypt_command = true},
        [&] { return Tss2_Sys_Load_Prepare(run_.sys(), parent_obj->tpm_handle(), &kf.priv, &kf.pub); },
        [&] { return Tss2_Sys_Load_Complete(run_.sys(), &handle, &name); });
  });
  if (rc != TSS2_RC_SUCCESS) {
    Error err = error("load", rc);
    if (tpm_base_code(rc) == TPM2_RC_INTEGRITY || classify_rc(rc) == Reason::kMalformedKey)
      err.detail = "the key was not made by this TPM under parent " + hex_handle(kf.parent) + ": " + err.detail;
    return err;
  }
  TransientHandle loaded(handle);
  if (Bytes(name.name, name.name + name.size) != e.name) {
    run_.flush(std::move(loaded));
    return make_error(Reason::kMalformedKey, "the TPM loaded an object whose name differs from the key file's");
  }
  e.handle = std::move(loaded);
  e.span = span_;
  return &e;
}

Result<KeyFile> Tpm::create_key(const KeyOptions& opts, const SecretBytes& auth, uint32_t parent_handle) {
  const std::string what = std::string("create ") + opts.spec->name + " key";
  if (auth.size() > sizeof(TPM2B_AUTH::buffer))
    return make_error(Reason::kInvalidArgument, "password is longer than 64 bytes");
  return operation<Result<KeyFile>>([&]() -> Result<KeyFile> {
    auto p = parent(parent_handle);
    if (!p) return p.take_error().context(what);
    Object* parent_obj = *p;
    auto s = session();
    if (!s) return s.take_error().context(what);
    TPM2B_SENSITIVE_CREATE sensitive{};
    sensitive.sensitive.userAuth.size = uint16_t(auth.size());
    if (!auth.empty()) std::memcpy(sensitive.sensitive.userAuth.buffer, auth.data(), auth.size());
    TPM2B_PUBLIC tmpl = key_template(opts), out_pub{};
    TPM2B_PRIVATE out_priv{};
    TPM2B_DATA outside{};
    TPML_PCR_SELECTION pcrs{};
    TPM2B_CREATION_DATA cdata{};
    TPM2B_DIGEST chash{};
    TPMT_TK_CREATION ticket{};
    // The new key's password is parameter 1: encrypted on the way in; the private blob comes back
    // encrypted. The TPM needs a free object slot to create a key in (two under a persistent parent).
    TSS2_RC rc = with_room(parent_obj->transient() ? 1 : 2, parent_obj, parent_obj, [&] {
      return run_.run(
          *s, TPM2_CC_Create, {&parent_obj->name}, no_auth(), {.encrypt_command = true, .decrypt_response = true},
          [&] { return Tss2_Sys_Create_Prepare(run_.sys(), parent_obj->tpm_handle(), &sensitive, &tmpl, &outside, &pcrs); },
          [&] { return Tss2_Sys_Create_Complete(run_.sys(), &out_priv, &out_pub, &cdata, &chash, &ticket); });
    });
    OPENSSL_cleanse(&sensitive, sizeof sensitive);
    if (rc != TSS2_RC_SUCCESS) {
      Error e = error(what, rc);
      const uint32_t base = tpm_base_code(rc);
      const bool algorithm_problem = (rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER && !is_slot_shortage(rc) &&
                                     !is_stale(rc) && base != TPM2_RC_AUTH_FAIL && base != TPM2_RC_BAD_AUTH;
      if (algorithm_problem && test_parms(opts) != TSS2_RC_SUCCESS) {  // say plainly when the TPM lacks the algorithm
        e.reason = Reason::kUnsupported;
        e.detail = std::string("this TPM does not support ") + opts.spec->name + " keys: " + e.detail;
      }
      return e;
    }
    KeyFile kf;
    kf.parent = parent_handle;
    kf.empty_auth = auth.empty();
    kf.pub = out_pub;
    kf.priv = out_priv;
    return kf;
  });
}

}  // namespace tpmkey
