// Keys in the TPM: loading them (TPM2_Load, or ContextLoad of an evicted one), making room in the
// TPM's object slots, creating them (TPM2_Create), and changing their password
// (TPM2_ObjectChangeAuth).
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
  const bool kept = victim->span == span_ &&
                    run_.plain([&] { return Tss2_Sys_ContextSave(run_.sys(), n, &saved); }) == TSS2_RC_SUCCESS;
  release(*victim);  // flushes it when it is provably ours (and drops any older saved context)
  if (kept) victim->saved = saved;  // the next use loads it back (TPM2_ContextLoad)
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
  auto parent_pw = parent_auth(kf.parent);
  if (!parent_pw) return parent_pw.take_error().context("load");
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
        *s, TPM2_CC_Load, {&parent_obj->name}, *parent_pw, {.encrypt_command = true},
        [&] { return Tss2_Sys_Load_Prepare(run_.sys(), parent_obj->tpm_handle(), &kf.priv, &kf.pub); },
        [&] { return Tss2_Sys_Load_Complete(run_.sys(), &handle, &name); });
  });
  if (rc != TSS2_RC_SUCCESS) {
    Error err = error("load", rc);
    check_parent_auth(kf.parent, rc, err);
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
    auto parent_pw = parent_auth(parent_handle);
    if (!parent_pw) return parent_pw.take_error().context(what);
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
          *s, TPM2_CC_Create, {&parent_obj->name}, *parent_pw, {.encrypt_command = true, .decrypt_response = true},
          [&] { return Tss2_Sys_Create_Prepare(run_.sys(), parent_obj->tpm_handle(), &sensitive, &tmpl, &outside, &pcrs); },
          [&] { return Tss2_Sys_Create_Complete(run_.sys(), &out_priv, &out_pub, &cdata, &chash, &ticket); });
    });
    OPENSSL_cleanse(&sensitive, sizeof sensitive);
    if (rc != TSS2_RC_SUCCESS) {
      Error e = error(what, rc);
      check_parent_auth(parent_handle, rc, e);
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

Result<TPM2B_PRIVATE> Tpm::change_auth(const KeyFile& kf, const SecretBytes& old_auth, const SecretBytes& new_auth) {
  const std::string what = "TPM2_ObjectChangeAuth";
  // A persistent copy is not a blob: ObjectChangeAuth would make a new blob and leave the
  // persistent object with the old password.
  if (kf.persistent)
    return make_error(Reason::kUnsupported, "the key is persistent; its persistent copy would keep the old password")
        .context(what);
  if (new_auth.size() > hash_size(kf.pub.publicArea.nameAlg))
    return make_error(Reason::kInvalidArgument, "the password is longer than " +
                                                    std::to_string(hash_size(kf.pub.publicArea.nameAlg)) + " bytes")
        .context(what);
  TPM2B_AUTH new_value{};
  new_value.size = uint16_t(new_auth.size());
  if (!new_auth.empty()) std::memcpy(new_value.buffer, new_auth.data(), new_auth.size());
  // An object id of its own: the loaded object is of the old blob (and keeps the old password in
  // the TPM), so it is flushed at the end whatever happens and never cached for the new blob.
  const ObjectId id = new_object_id();
  auto result = operation<Result<TPM2B_PRIVATE>>([&]() -> Result<TPM2B_PRIVATE> {
    auto p = parent(kf.parent);
    if (!p) return p.take_error().context(what);
    TPM2B_PRIVATE out{};
    Error parent_error;
    bool parent_failed = false;
    Status st = with_key(id, kf, what, [&](const Object& key, Session* s) -> TSS2_RC {
      // load() used the same parent object; it is loaded again only if something evicted it since.
      Object* parent_obj = *p;
      if (!parent_obj->loaded()) {
        auto again = parent(kf.parent);
        if (!again) {
          parent_failed = true;
          parent_error = again.take_error();
          return parent_error.rc ? parent_error.rc : TSS2_ESYS_RC_GENERAL_FAILURE;
        }
        parent_obj = *again;
      }
      // Authorized by the key's current password (handle 1); the parent (handle 2) needs none. The
      // new password is parameter 1, encrypted by the session; the response HMAC is keyed with the
      // old password, which the loaded object keeps. A persistent parent takes a slot meanwhile.
      return with_room(parent_obj->transient() ? 0 : 1, &key, parent_obj, [&] {
        return run_.run(
            s, TPM2_CC_ObjectChangeAuth, {&key.name, &parent_obj->name}, old_auth, {.encrypt_command = true},
            [&] {
              return Tss2_Sys_ObjectChangeAuth_Prepare(run_.sys(), key.tpm_handle(), parent_obj->tpm_handle(),
                                                       &new_value);
            },
            [&] { return Tss2_Sys_ObjectChangeAuth_Complete(run_.sys(), &out); });
      });
    });
    if (parent_failed) return parent_error.context(what);
    if (!st) return st.take_error();
    return out;
  });
  OPENSSL_cleanse(&new_value, sizeof new_value);
  forget(id);
  return result;
}

}  // namespace tpmkey
