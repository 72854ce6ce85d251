// The storage root key (SRK), other parents, and the salted session: the SRK is resolved once per
// continuity span (tpm.h), and its name is compared with the pin before a session is salted to it.
#include <cstring>

#include "keystore/tpm/driver.h"
#include "keystore/tpm/kdf.h"

namespace tpmkey {
namespace {

const Bytes& owner_name() {
  static const Bytes n = handle_name(TPM2_RH_OWNER);
  return n;
}

// Whether a public area is the standard ECC P-256 storage primary (any unique point).
bool matches_srk_template(const TPMT_PUBLIC& p) {
  const TPMT_PUBLIC t = srk_template().publicArea;
  const TPMS_ECC_PARMS &a = p.parameters.eccDetail, &b = t.parameters.eccDetail;
  return p.type == t.type && p.nameAlg == t.nameAlg && p.objectAttributes == t.objectAttributes &&
         p.authPolicy.size == 0 && a.symmetric.algorithm == b.symmetric.algorithm &&
         a.symmetric.keyBits.aes == b.symmetric.keyBits.aes && a.symmetric.mode.aes == b.symmetric.mode.aes &&
         a.scheme.scheme == b.scheme.scheme && a.curveID == b.curveID && a.kdf.scheme == b.kdf.scheme;
}

}  // namespace

Result<TPMT_PUBLIC> Tpm::read_public(TPM2_HANDLE h, Bytes* name, const Bytes* expected, Session* audit) {
  TPM2B_PUBLIC pub{};
  TPM2B_NAME n{}, qn{};
  TSS2_RC rc;
  if (audit) {
    rc = run_.run(
        audit, TPM2_CC_ReadPublic, {expected}, no_auth(), {.audit = true},
        [&] { return Tss2_Sys_ReadPublic_Prepare(run_.sys(), h); },
        [&] { return Tss2_Sys_ReadPublic_Complete(run_.sys(), &pub, &n, &qn); });
  } else {
    rc = run_.plain([&] { return Tss2_Sys_ReadPublic(run_.sys(), h, nullptr, &pub, &n, &qn, nullptr); });
  }
  if (rc != TSS2_RC_SUCCESS) return error("read public area of " + hex_handle(h), rc);
  auto computed = object_name(crypto_, pub.publicArea);
  if (!computed) return computed.take_error();
  if (Bytes(n.name, n.name + n.size) != *computed)
    return make_error(Reason::kUntrustedTpm, "the TPM's name for " + hex_handle(h) + " does not match its public area");
  *name = std::move(*computed);
  return pub.publicArea;
}

Status Tpm::check_pin(const Bytes& name, uint32_t handle, bool created) {
  if (opts_.pin) {
    if (name == opts_.pin->name) return Status::Ok();
    if (opts_.reread_pin) {
      if (auto now = opts_.reread_pin(); now && now->name == name) {
        opts_.pin = std::move(*now);
        return Status::Ok();
      }
    }
    const std::string sent =
        created ? "tpmkey sent it only TPM2_CreatePrimary of the standard SRK template (in an unsalted session, nothing "
                  "secret) and has flushed that key again"
                : "tpmkey sent it only TPM2_ReadPublic (no authorization, nothing secret)";
    return make_error(Reason::kUntrustedTpm,
                      "the storage root key's name is " + to_hex(name) + " but the keystore pinned " +
                          to_hex(opts_.pin->name) + ": the TPM was cleared or replaced, or something is impersonating it; " +
                          sent + ". If the TPM was cleared on purpose, run `tpmkey init --repin`");
  }
  const SrkPin pin{name, handle};
  if (opts_.on_first_srk) TPMKEY_TRY(opts_.on_first_srk(pin));
  opts_.pin = pin;
  return Status::Ok();
}

Result<Object*> Tpm::create_srk(Object& e) {
  const std::string what = "create the storage root key (owner primary, standard ECC P-256 template)";
  // The owner hierarchy authorizes this; its password is empty and nothing sent is secret, so an
  // unsalted session suffices. The result is only trusted after its name matches the pin.
  Session tmp;
  Session* s = nullptr;
  if (!opts_.password_auth) {
    TPMKEY_TRY(start_session(tmp, nullptr));
    s = &tmp;
  }
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_PUBLIC tmpl = srk_template(), out_pub{};
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION pcrs{};
  TPM2B_CREATION_DATA cdata{};
  TPM2B_DIGEST chash{};
  TPMT_TK_CREATION ticket{};
  TPM2B_NAME name{};
  TPM2_HANDLE handle = 0;
  TSS2_RC rc = with_room(1, &e, &e, [&] {
    return run_.run(
        s, TPM2_CC_CreatePrimary, {&owner_name()}, no_auth(), {},
        [&] { return Tss2_Sys_CreatePrimary_Prepare(run_.sys(), TPM2_RH_OWNER, &sensitive, &tmpl, &outside, &pcrs); },
        [&] {
          return Tss2_Sys_CreatePrimary_Complete(run_.sys(), &handle, &out_pub, &cdata, &chash, &ticket, &name);
        });
  });
  if (s) run_.flush(tmp);
  if (rc != TSS2_RC_SUCCESS) {
    Error err = error(what, rc);
    if (err.reason == Reason::kAuthFailed)
      err.detail = "the owner hierarchy has a password, which tpmkey does not support: " + err.detail;
    return err;
  }
  TransientHandle created(handle);
  auto computed = object_name(crypto_, out_pub.publicArea);
  if (!computed || Bytes(name.name, name.name + name.size) != *computed) {
    run_.flush(std::move(created));
    return make_error(Reason::kUntrustedTpm, "the new primary's name does not match its public area").context(what);
  }
  e.handle = std::move(created);
  e.pub = out_pub.publicArea;
  e.name = std::move(*computed);
  e.span = span_;
  return &e;
}

Result<Object*> Tpm::srk() {
  Object& e = objects_.parent(kOwnerParent);
  e.last_use = ++clock_;
  if (e.loaded()) {
    TPMKEY_TRY(verify(e));
    if (e.loaded()) return &e;
  }
  if (reload_saved(e, &e)) return &e;
  // The standard template gives the same key as the transient primary (same seed), so use it when
  // `tpmkey init` (or another tool) made it persistent: no primary to create.
  const uint32_t h = opts_.pin && opts_.pin->handle ? opts_.pin->handle : kSrkHandle;
  if ((!opts_.pin || opts_.pin->handle) && no_persistent_srk_span_ != span_) {
    Bytes name;
    auto pub = read_public(h, &name);
    if (pub && matches_srk_template(*pub)) {
      TPMKEY_TRY(check_pin(name, h, false));
      e.handle = PersistentHandle(h);
      e.pub = *pub;
      e.name = std::move(name);
      e.span = span_;
      return &e;
    }
    // Only "no such object" means there is none: a busy or unreachable TPM is not an answer.
    if (!pub && tpm_base_code(pub.error().rc) != TPM2_RC_HANDLE)
      return pub.take_error().context("open the storage root key at " + hex_handle(h));
    no_persistent_srk_span_ = span_;
  }
  auto created = create_srk(e);
  if (!created) return created;
  if (Status pinned = check_pin(e.name, 0, true); !pinned) {
    run_.flush(std::move(std::get<TransientHandle>(e.handle)));
    e.handle = std::monostate{};
    return pinned.take_error();
  }
  return &e;
}

void Tpm::set_parent_auth(uint32_t parent, SecretBytes auth) {
  std::lock_guard lock(mu_);
  parent_needs_auth_.insert(parent);
  parent_auth_[parent] = std::move(auth);
}

void Tpm::require_parent_auth(uint32_t parent) {
  std::lock_guard lock(mu_);
  parent_needs_auth_.insert(parent);
}

Result<SecretBytes> Tpm::parent_auth(uint32_t parent) const {
  if (auto it = parent_auth_.find(parent); it != parent_auth_.end()) return it->second;
  if (parent_needs_auth_.count(parent))
    return make_error(Reason::kAuthFailed, "the parent " + hex_handle(parent) +
                                               " has a password and none was given (docs/keys.md#parents-with-a-password)");
  return SecretBytes();
}

void Tpm::check_parent_auth(uint32_t parent, TSS2_RC rc, Error& e) {
  const uint32_t base = tpm_base_code(rc);
  if (parent == kOwnerParent || !names_session(rc) || (base != TPM2_RC_AUTH_FAIL && base != TPM2_RC_BAD_AUTH)) return;
  const bool had = parent_auth_.erase(parent) > 0;
  parent_needs_auth_.insert(parent);
  e.reason = Reason::kAuthFailed;
  e.detail = (had ? "the password given for the parent " + hex_handle(parent) + " is not its password"
                  : "the parent " + hex_handle(parent) + " has a password and none was given") +
             std::string(base == TPM2_RC_AUTH_FAIL ? " (the TPM counted one dictionary-attack failure)" : "") +
             "; see docs/keys.md#parents-with-a-password: " + e.detail;
}

Result<Object*> Tpm::parent(uint32_t handle) {
  if (handle == kOwnerParent) return srk();
  if (!is_persistent_handle(handle))
    return make_error(Reason::kUnsupported,
                      "parent " + hex_handle(handle) + " is neither 0x40000001 nor a persistent handle");
  Object& e = objects_.parent(handle);
  e.last_use = ++clock_;
  if (e.loaded() && e.span == span_) return &e;
  Bytes name;
  auto pub = read_public(handle, &name);
  if (!pub) {
    objects_.erase_parent(handle);
    return pub.take_error().context("open parent " + hex_handle(handle));
  }
  e.handle = PersistentHandle(handle);
  e.pub = *pub;
  e.name = std::move(name);
  e.span = span_;
  return &e;
}

Status Tpm::start_session(Session& s, const Object* salt_key) {
  TPM2B_NONCE nonce_caller{}, nonce_tpm{};
  TPMKEY_TRY(s.new_start_nonce(crypto_, &nonce_caller));
  TPM2B_ENCRYPTED_SECRET encrypted{};
  SecretBytes salt;
  TPMI_DH_OBJECT tpm_key = TPM2_RH_NULL;
  if (salt_key) {
    auto shared = ecdh_share(crypto_, salt_key->pub, "SECRET");
    if (!shared) return shared.take_error();
    encrypted = shared->encrypted;
    salt = std::move(shared->value);
    tpm_key = salt_key->tpm_handle();
  }
  TPMT_SYM_DEF sym{};
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  TPMI_SH_AUTH_SESSION handle = 0;
  TSS2_RC rc = run_.plain([&] {
    return Tss2_Sys_StartAuthSession(run_.sys(), tpm_key, TPM2_RH_NULL, nullptr, &nonce_caller, &encrypted,
                                     TPM2_SE_HMAC, &sym, Session::kHash, &handle, &nonce_tpm, nullptr);
  });
  if (rc != TSS2_RC_SUCCESS) {
    return error(salt_key ? "start a salted session" : "start a session", rc);
  }
  s.begin(crypto_, handle, salt, nonce_tpm);
  return Status::Ok();
}

Result<Session*> Tpm::session() {
  if (opts_.password_auth) return static_cast<Session*>(nullptr);
  if (session_.active()) {
    TPMKEY_TRY(verify_session());
    if (session_.active()) return &session_;
  }
  auto k = srk();
  if (!k) return k.take_error();
  // A persistent SRK takes an object slot while the TPM decrypts the salt.
  Status st;
  TSS2_RC rc = with_room((*k)->transient() ? 0 : 1, *k, *k, [&] {
    st = start_session(session_, *k);
    return st ? TSS2_RC_SUCCESS : st.error().rc;
  });
  (void)rc;
  if (!st) return st.take_error();
  session_span_ = span_;
  return &session_;
}

Result<SrkPin> Tpm::provision_srk(bool persistent, const Bytes* expected, Provisioned* how) {
  return operation<Result<SrkPin>>([&]() -> Result<SrkPin> {
    const std::string what = "provision the storage root key";
    Bytes name;
    auto pub = read_public(kSrkHandle, &name);
    if (!pub && pub.error().reason != Reason::kKeyNotFound) return Error(pub.error()).context(what);
    if (pub && matches_srk_template(*pub)) {
      *how = Provisioned::kAdopted;
      return SrkPin{name, kSrkHandle};
    }
    *how = !persistent ? Provisioned::kTransient : pub ? Provisioned::kHandleTaken : Provisioned::kCreated;

    Object& e = objects_.parent(kOwnerParent);
    release(e);
    auto created = create_srk(e);
    if (!created) return created.take_error().context(what);
    if (expected && e.name != *expected) {  // the caller refuses it: nothing is made persistent
      SrkPin pin{e.name, 0};
      release(e);
      objects_.erase_parent(kOwnerParent);
      return pin;
    }
    if (*how != Provisioned::kCreated) {
      SrkPin pin{e.name, 0};
      release(e);
      objects_.erase_parent(kOwnerParent);
      return pin;
    }
    // Owner authorization for EvictControl, in a session salted to the key just created.
    Session tmp;
    Session* s = nullptr;
    if (!opts_.password_auth) {
      if (Status st = start_session(tmp, &e); !st) {
        release(e);
        return st.take_error().context(what);
      }
      s = &tmp;
    }
    TSS2_RC rc = run_.run(
        s, TPM2_CC_EvictControl, {&owner_name(), &e.name}, no_auth(), {},
        [&] { return Tss2_Sys_EvictControl_Prepare(run_.sys(), TPM2_RH_OWNER, e.tpm_handle(), kSrkHandle); },
        [&] { return Tss2_Sys_EvictControl_Complete(run_.sys()); });
    if (s) run_.flush(tmp);
    release(e);
    if (rc != TSS2_RC_SUCCESS) {
      objects_.erase_parent(kOwnerParent);
      return error("make the storage root key persistent at " + hex_handle(kSrkHandle), rc);
    }
    e.handle = PersistentHandle(kSrkHandle);
    e.span = span_;
    return SrkPin{e.name, kSrkHandle};
  });
}

// `tpmkey srk`: what srk() resolved, pin checked.
Result<Tpm::SrkPublic> Tpm::srk_public() {
  return operation<Result<SrkPublic>>([&]() -> Result<SrkPublic> {
    auto k = srk();
    if (!k) return k.take_error().context("read the storage root key");
    return SrkPublic{(*k)->pub, (*k)->name};
  });
}

}  // namespace tpmkey
