#include "keystore/tpm.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <set>

#include "keystore/tcti.h"

namespace tpmkey {
namespace {

// The TPM's response code without handle/session/parameter numbers (0 for other layers).
TPM2_RC tpm_code(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return 0;
  TPM2_RC code = rc & 0xFFFu;
  return (code & TPM2_RC_FMT1) ? code & (TPM2_RC_FMT1 | 0x3Fu) : code;
}

bool is_object_memory(TSS2_RC rc) { return tpm_code(rc) == TPM2_RC_OBJECT_MEMORY; }
// TPM_RC_RETRY, YIELDED and TESTING ask for the same command again (ESYS does this itself;
// tss2-sys does not). Each attempt is prepared and authorized afresh.
template <typename Fn>
TSS2_RC resend(Fn&& fn) {
  TSS2_RC rc = TSS2_RC_SUCCESS;
  for (int attempt = 0; attempt < 50; ++attempt) {
    rc = fn();
    const TPM2_RC c = tpm_code(rc);
    if (c != TPM2_RC_RETRY && c != TPM2_RC_YIELDED && c != TPM2_RC_TESTING) break;
    if (attempt) usleep(1000 * unsigned(attempt));
  }
  return rc;
}

bool is_persistent(uint32_t handle) { return (handle >> 24) == TPM2_HT_PERSISTENT; }

std::string hex_handle(uint32_t h) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", h);
  return buf;
}

const Bytes& owner_name() {
  static const Bytes n = handle_name(TPM2_RH_OWNER);
  return n;
}

const SecretBytes& no_auth() {
  static const SecretBytes empty;
  return empty;
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

// Every live connection of this process, so objects still loaded at exit get flushed: a bare TPM
// (no resource manager) would otherwise keep them until reset. atexit() from a shared object runs
// at exit or at dlclose, whichever comes first.
// Never destroyed: OpenSSL may tear the provider down from its own exit handler, after this
// file's static objects would have been destroyed.
struct LiveConnections {
  std::mutex mu;
  std::set<Tpm*> set;
};
LiveConnections& live() {
  // In static storage, not on the heap: the module may be loaded and unloaded many times, and a
  // heap object per load would be a leak.
  alignas(LiveConnections) static unsigned char storage[sizeof(LiveConnections)];
  static auto* l = new (storage) LiveConnections;
  return *l;
}

void flush_all_at_exit() {
  std::lock_guard lock(live().mu);
  for (Tpm* t : live().set) t->flush_all();
}

void register_live(Tpm* t) {
  static bool registered = (std::atexit(flush_all_at_exit), true);
  (void)registered;
  std::lock_guard lock(live().mu);
  live().set.insert(t);
}

void unregister_live(Tpm* t) {
  std::lock_guard lock(live().mu);
  live().set.erase(t);
}

}  // namespace

ObjectId new_object_id() {
  static std::atomic<ObjectId> next{ObjectId(1) << 32};  // above every TPM handle value
  return next.fetch_add(1, std::memory_order_relaxed);
}

// ---- connection -----------------------------------------------------------------------------

Status Tpm::open_transport() {
  const std::string what = "connect(" + (opts_.tcti.empty() ? std::string("default TCTI") : opts_.tcti) + ")";
  auto tcti = open_tcti(opts_.tcti, &commands_);
  if (!tcti) return tcti.take_error().context(what);
  tcti_ = *tcti;
  const size_t size = Tss2_Sys_GetContextSize(0);
  sys_ = static_cast<TSS2_SYS_CONTEXT*>(std::calloc(1, size));
  TSS2_ABI_VERSION abi = TSS2_ABI_VERSION_CURRENT;
  TSS2_RC rc = sys_ ? Tss2_Sys_Initialize(sys_, size, tcti_, &abi) : TSS2_SYS_RC_GENERAL_FAILURE;
  if (rc != TSS2_RC_SUCCESS) {
    close_transport();
    return tss_error(what, rc);
  }
  return Status::Ok();
}

void Tpm::close_transport() {
  if (sys_) {
    Tss2_Sys_Finalize(sys_);
    std::free(sys_);
    sys_ = nullptr;
  }
  close_tcti(tcti_);
  tcti_ = nullptr;
}

Result<std::unique_ptr<Tpm>> Tpm::connect(TpmOptions opts, const Crypto& crypto) {
  std::unique_ptr<Tpm> t(new Tpm(std::move(opts), crypto));
  TPMKEY_TRY(t->open_transport());
  t->pid_ = getpid();
  register_live(t.get());
  return t;
}

void Tpm::read_limits() {
  if (limits_read_) return;
  limits_read_ = true;
  TPMS_CAPABILITY_DATA cap{};
  TPMI_YES_NO more = 0;
  // TRANSIENT_MIN, PERSISTENT_MIN and LOADED_MIN are consecutive: one command reads the limits.
  TSS2_RC rc = resend([&] {
    return Tss2_Sys_GetCapability(sys_, nullptr, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_HR_TRANSIENT_MIN, 3, &more, &cap,
                                  nullptr);
  });
  if (rc != TSS2_RC_SUCCESS) return;  // keep the defaults; the command that needs a slot reports
  for (uint32_t i = 0; i < cap.data.tpmProperties.count; ++i) {
    const TPMS_TAGGED_PROPERTY& p = cap.data.tpmProperties.tpmProperty[i];
    if (p.property == TPM2_PT_HR_TRANSIENT_MIN) transient_limit_ = p.value;
    if (p.property == TPM2_PT_HR_LOADED_MIN) session_limit_ = p.value;
  }
}

Tpm::~Tpm() {
  unregister_live(this);
  flush_all();
  close_transport();
}

void Tpm::flush_all() {
  std::lock_guard lock(mu_);
  if (sys_ && getpid() == pid_) {
    for (auto& [id, e] : objects_) flush(e);
    flush_session(session_);
  }
  objects_.clear();
  session_.end();
}

void Tpm::abandon() {
  std::lock_guard lock(mu_);
  objects_.clear();
  session_.end();
}

uint32_t Tpm::session_handle() {
  std::lock_guard lock(mu_);
  return session_.handle();
}

void Tpm::test_flush_handle(uint32_t handle) {
  std::lock_guard lock(mu_);
  Tss2_Sys_FlushContext(sys_, handle);
}

// ---- commands and sessions ------------------------------------------------------------------

template <typename Prepare, typename Complete>
TSS2_RC Tpm::run(Session* session, TPM2_CC cc, std::initializer_list<const Bytes*> names, const SecretBytes& auth,
                 CommandProtection prot, Prepare&& prepare, Complete&& complete) {
  return resend([&] { return run_once(session, cc, names, auth, prot, prepare, complete); });
}

template <typename Prepare, typename Complete>
TSS2_RC Tpm::run_once(Session* session, TPM2_CC cc, std::initializer_list<const Bytes*> names,
                      const SecretBytes& auth, CommandProtection prot, Prepare& prepare, Complete& complete) {
  TSS2_RC rc = prepare();
  if (rc != TSS2_RC_SUCCESS) return rc;
  if (session) {
    rc = session->authorize(crypto_, sys_, cc, std::span<const Bytes* const>(names.begin(), names.size()), auth, prot);
  } else {  // the documented opt-out: the password travels in clear
    TSS2L_SYS_AUTH_COMMAND cmd{};
    cmd.count = 1;
    cmd.auths[0].sessionHandle = TPM2_RS_PW;
    if (auth.size() > sizeof cmd.auths[0].hmac.buffer) return TSS2_SYS_RC_BAD_SIZE;
    cmd.auths[0].hmac.size = uint16_t(auth.size());
    if (!auth.empty()) std::memcpy(cmd.auths[0].hmac.buffer, auth.data(), auth.size());
    rc = Tss2_Sys_SetCmdAuths(sys_, &cmd);
    OPENSSL_cleanse(&cmd, sizeof cmd);
  }
  if (rc != TSS2_RC_SUCCESS) return rc;
  rc = Tss2_Sys_Execute(sys_);
  if (rc != TSS2_RC_SUCCESS) return rc;
  if (session && (rc = session->check_response(crypto_, sys_, cc, auth)) != TSS2_RC_SUCCESS) {
    // Nothing from this response is used, and the session's nonces can no longer be trusted.
    if (rc == TSS2_ESYS_RC_RSP_AUTH_FAILED) flush_session(*session);
    return rc;
  }
  return complete();
}

Status Tpm::start_session(Session& s, const Entry* salt_key) {
  TPM2B_NONCE nonce_caller{}, nonce_tpm{};
  TPMKEY_TRY(s.new_start_nonce(crypto_, &nonce_caller));
  TPM2B_ENCRYPTED_SECRET encrypted{};
  SecretBytes salt;
  TPMI_DH_OBJECT tpm_key = TPM2_RH_NULL;
  if (salt_key) {
    auto sl = make_salt(crypto_, salt_key->pub);
    if (!sl) return sl.take_error();
    encrypted = sl->encrypted;
    salt = std::move(sl->value);
    tpm_key = salt_key->handle;
  }
  TPMT_SYM_DEF sym{};
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  TPMI_SH_AUTH_SESSION handle = 0;
  TSS2_RC rc = resend([&] {
    return Tss2_Sys_StartAuthSession(sys_, tpm_key, TPM2_RH_NULL, nullptr, &nonce_caller, &encrypted, TPM2_SE_HMAC,
                                     &sym, Session::kHash, &handle, &nonce_tpm, nullptr);
  });
  if (rc != TSS2_RC_SUCCESS) {
    Error e = tss_error(salt_key ? "start a salted session" : "start a session", rc);
    if (tpm_code(rc) == TPM2_RC_SESSION_MEMORY || tpm_code(rc) == TPM2_RC_SESSION_HANDLES) {
      read_limits();
      e.detail = "the TPM's session slots (" + std::to_string(session_limit_) + ") are held by other programs: " + e.detail;
    }
    return e;
  }
  s.begin(crypto_, handle, salt, nonce_tpm);
  return Status::Ok();
}

void Tpm::flush_session(Session& s) {
  if (s.active()) Tss2_Sys_FlushContext(sys_, s.handle());
  s.end();
}

Result<Session*> Tpm::session() {
  if (opts_.password_auth) return static_cast<Session*>(nullptr);
  if (session_.active()) return &session_;
  auto k = srk();
  if (!k) return k.take_error();
  TPMKEY_TRY(start_session(session_, *k));
  return &session_;
}

// ---- objects --------------------------------------------------------------------------------

Result<TPMT_PUBLIC> Tpm::read_public(TPM2_HANDLE h, Bytes* name) {
  TPM2B_PUBLIC pub{};
  TPM2B_NAME n{}, qn{};
  TSS2_RC rc = resend([&] { return Tss2_Sys_ReadPublic(sys_, h, nullptr, &pub, &n, &qn, nullptr); });
  if (rc != TSS2_RC_SUCCESS) return tss_error("read public area of " + hex_handle(h), rc);
  auto computed = object_name(crypto_, pub.publicArea);
  if (!computed) return computed.take_error();
  if (Bytes(n.name, n.name + n.size) != *computed)
    return make_error(Reason::kUntrustedTpm, "the TPM's name for " + hex_handle(h) + " does not match its public area");
  *name = std::move(*computed);
  return pub.publicArea;
}

Status Tpm::check_pin(const Bytes& name, uint32_t handle) {
  if (opts_.pin) {
    if (name == opts_.pin->name) return Status::Ok();
    return make_error(Reason::kUntrustedTpm,
                      "the storage root key's name is " + to_hex(name) + " but the keystore pinned " +
                          to_hex(opts_.pin->name) +
                          ": the TPM was cleared or replaced, or something is impersonating it; nothing was sent "
                          "to it. If the TPM was cleared on purpose, run `tpmkey init --repin`");
  }
  opts_.pin = SrkPin{name, handle};
  if (opts_.on_first_srk) opts_.on_first_srk(*opts_.pin);
  return Status::Ok();
}

Result<Tpm::Entry*> Tpm::create_srk(Entry& e) {
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
  TSS2_RC rc = with_slot(kOwnerParent, kOwnerParent, [&] {
    return run(
        s, TPM2_CC_CreatePrimary, {&owner_name()}, no_auth(), {},
        [&] { return Tss2_Sys_CreatePrimary_Prepare(sys_, TPM2_RH_OWNER, &sensitive, &tmpl, &outside, &pcrs); },
        [&] {
          return Tss2_Sys_CreatePrimary_Complete(sys_, &e.handle, &out_pub, &cdata, &chash, &ticket, &name);
        });
  });
  if (s) flush_session(tmp);
  if (rc != TSS2_RC_SUCCESS) {
    e.handle = 0;
    Error err = slot_error(what, rc);
    if (err.reason == Reason::kAuthFailed)
      err.detail = "the owner hierarchy has a password, which tpmkey does not support: " + err.detail;
    return err;
  }
  auto computed = object_name(crypto_, out_pub.publicArea);
  if (!computed || Bytes(name.name, name.name + name.size) != *computed) {
    Tss2_Sys_FlushContext(sys_, e.handle);
    e.handle = 0;
    return make_error(Reason::kUntrustedTpm, "the new primary's name does not match its public area").context(what);
  }
  e.persistent = false;
  e.pub = out_pub.publicArea;
  e.name = std::move(*computed);
  return &e;
}

Result<Tpm::Entry*> Tpm::srk() { return parent(kOwnerParent); }

Result<Tpm::Entry*> Tpm::parent(uint32_t handle) {
  Entry& e = objects_[handle];
  e.last_use = ++clock_;
  if (e.handle) return &e;
  if (is_persistent(handle)) {
    auto pub = read_public(handle, &e.name);
    if (!pub) {
      objects_.erase(handle);
      return pub.take_error().context("open parent " + hex_handle(handle));
    }
    e.handle = handle;
    e.persistent = true;
    e.pub = *pub;
    return &e;
  }
  if (handle != kOwnerParent)
    return make_error(Reason::kUnsupported, "parent " + hex_handle(handle) +
                                                " is neither 0x40000001 nor a persistent handle");
  if (reload_saved(handle, e)) return &e;
  // The same key as the transient primary when made from the standard template (same seed), so
  // use it when `tpmkey init` (or another tool) made it persistent: no primary to create.
  if (!srk_probed_ && (!opts_.pin || opts_.pin->handle)) {
    srk_probed_ = true;
    const uint32_t h = opts_.pin && opts_.pin->handle ? opts_.pin->handle : kSrkHandle;
    Bytes name;
    auto pub = read_public(h, &name);
    if (pub && matches_srk_template(*pub)) {
      TPMKEY_TRY(check_pin(name, h));
      e.handle = h;
      e.persistent = true;
      e.pub = *pub;
      e.name = std::move(name);
      return &e;
    }
  }
  auto created = create_srk(e);
  if (!created) return created;
  if (Status pinned = check_pin(e.name, 0); !pinned) {
    Tss2_Sys_FlushContext(sys_, e.handle);
    objects_.erase(handle);
    return pinned.take_error();
  }
  return &e;
}

Error Tpm::slot_error(const std::string& what, TSS2_RC rc) {
  Error e = tss_error(what, rc);
  // with_slot already evicted everything of ours it could.
  if (is_object_memory(rc)) {
    read_limits();
    e.detail = "the TPM's object slots (" + std::to_string(transient_limit_) + ") are held by other programs: " + e.detail;
  }
  return e;
}

size_t Tpm::loaded_transients() const {
  size_t n = 0;
  for (const auto& [id, e] : objects_) n += (e.handle && !e.persistent) ? 1 : 0;
  return n;
}

void Tpm::flush(Entry& e) {
  if (e.handle && !e.persistent) Tss2_Sys_FlushContext(sys_, e.handle);
  e.handle = 0;
}

void Tpm::forget(ObjectId id) {
  std::lock_guard lock(mu_);
  auto it = objects_.find(id);
  if (it == objects_.end()) return;
  if (sys_ && getpid() == pid_) flush(it->second);
  objects_.erase(it);
}

bool Tpm::evict_one(ObjectId pinned_a, ObjectId pinned_b) {
  Entry* victim = nullptr;
  for (auto& [id, e] : objects_) {
    if (id == pinned_a || id == pinned_b || !e.handle || e.persistent) continue;
    if (!victim || e.last_use < victim->last_use) victim = &e;
  }
  if (!victim) return false;
  victim->has_saved = Tss2_Sys_ContextSave(sys_, victim->handle, &victim->saved) == TSS2_RC_SUCCESS;
  Tss2_Sys_FlushContext(sys_, victim->handle);
  victim->handle = 0;
  return true;
}

template <typename Fn>
TSS2_RC Tpm::with_slot(ObjectId pinned_a, ObjectId pinned_b, Fn&& fn) {
  // The limits only matter once there is something of ours to evict: a process that holds one
  // key never asks.
  if (loaded_transients() > 0) read_limits();
  while (loaded_transients() >= transient_limit_ && evict_one(pinned_a, pinned_b)) {
  }
  for (;;) {
    TSS2_RC rc = fn();
    if (!is_object_memory(rc) || !evict_one(pinned_a, pinned_b)) return rc;
  }
}

bool Tpm::reload_saved(ObjectId id, Entry& e) {
  if (!e.has_saved) return false;
  TSS2_RC rc = with_slot(id, id, [&] { return resend([&] { return Tss2_Sys_ContextLoad(sys_, &e.saved, &e.handle); }); });
  e.has_saved = false;  // a saved object context is good for one load
  if (rc == TSS2_RC_SUCCESS) return true;
  e.handle = 0;  // stale (the TPM was restarted): the caller recreates the object
  return false;
}

Result<Tpm::Entry*> Tpm::load(ObjectId id, const KeyFile& kf) {
  Entry& e = objects_[id];
  e.last_use = ++clock_;
  if (e.handle) return &e;
  if (reload_saved(id, e)) return &e;
  if (e.name.empty()) {
    auto n = object_name(crypto_, kf.pub.publicArea);
    if (!n) return n.take_error();
    e.name = std::move(*n);
  }
  if (kf.persistent) {
    // Used in place when the handle holds this very key (same name); otherwise the blob, if any,
    // is loaded as usual.
    Bytes name;
    auto pub = read_public(kf.persistent, &name);
    if (pub && name == e.name) {
      e.handle = kf.persistent;
      e.persistent = true;
      return &e;
    }
    if (kf.priv.size == 0) {
      if (pub) return make_error(Reason::kKeyNotFound, hex_handle(kf.persistent) + " now holds a different key");
      return pub.take_error();
    }
  }
  auto s = session();
  if (!s) return s.take_error();
  auto p = parent(kf.parent);
  if (!p) return p.take_error();
  Entry* parent_entry = *p;
  TPM2B_NAME name{};
  TSS2_RC rc = with_slot(id, kf.parent, [&] {
    return run(
        *s, TPM2_CC_Load, {&parent_entry->name}, no_auth(), {.encrypt_command = true},
        [&] { return Tss2_Sys_Load_Prepare(sys_, parent_entry->handle, &kf.priv, &kf.pub); },
        [&] { return Tss2_Sys_Load_Complete(sys_, &e.handle, &name); });
  });
  last_rc_ = rc;
  if (rc != TSS2_RC_SUCCESS) {
    e.handle = 0;
    Error err = slot_error("load", rc);
    if (tpm_code(rc) == TPM2_RC_INTEGRITY || classify_rc(rc) == Reason::kMalformedKey)
      err.detail = "the key was not made by this TPM under parent " + hex_handle(kf.parent) + ": " + err.detail;
    return err;
  }
  if (Bytes(name.name, name.name + name.size) != e.name) {
    flush(e);
    return make_error(Reason::kMalformedKey, "the TPM loaded an object whose name differs from the key file's");
  }
  return &e;
}

// ---- operations -----------------------------------------------------------------------------

Result<KeyFile> Tpm::create_key(const KeyOptions& opts, const SecretBytes& auth, uint32_t parent_handle) {
  std::lock_guard lock(mu_);
  const std::string what = std::string("create ") + opts.spec->name + " key";
  if (auth.size() > sizeof(TPM2B_AUTH::buffer))
    return make_error(Reason::kInvalidArgument, "password is longer than 64 bytes");
  auto s = session();
  if (!s) return s.take_error().context(what);
  auto p = parent(parent_handle);
  if (!p) return p.take_error().context(what);
  Entry* parent_entry = *p;
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
  // The new key's password is parameter 1: encrypted on the way in.
  // The TPM needs a free object slot to create a key in.
  TSS2_RC rc = with_slot(parent_handle, parent_handle, [&] {
    return run(
        *s, TPM2_CC_Create, {&parent_entry->name}, no_auth(), {.encrypt_command = true, .decrypt_response = true},
        [&] { return Tss2_Sys_Create_Prepare(sys_, parent_entry->handle, &sensitive, &tmpl, &outside, &pcrs); },
        [&] { return Tss2_Sys_Create_Complete(sys_, &out_priv, &out_pub, &cdata, &chash, &ticket); });
  });
  OPENSSL_cleanse(&sensitive, sizeof sensitive);
  if (rc != TSS2_RC_SUCCESS) {
    Error e = slot_error(what, rc);
    if (!is_object_memory(rc) && !test_parms(opts)) {  // say plainly when the TPM lacks the algorithm
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
}

Result<TPMT_SIGNATURE> Tpm::sign_once(ObjectId id, const KeyFile& kf, const SecretBytes& auth,
                                      const SignRequest& req) {
  last_rc_ = TSS2_RC_SUCCESS;
  auto e = load(id, kf);
  if (!e) return e.take_error();
  auto s = session();
  if (!s) return s.take_error();
  Entry* key = *e;
  TPM2B_DIGEST digest{};
  if (req.digest.size() > sizeof digest.buffer) return make_error(Reason::kInvalidArgument, "digest is too long");
  digest.size = uint16_t(req.digest.size());
  std::memcpy(digest.buffer, req.digest.data(), req.digest.size());
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;
  TPMT_SIGNATURE sig{};
  TSS2_RC rc = sign_digest(*s, *key, auth, req.scheme, digest, validation, &sig);
  last_rc_ = rc;
  if (rc != TSS2_RC_SUCCESS) return tss_error("TPM2_Sign", rc);
  return sig;
}

TSS2_RC Tpm::sign_digest(Session* s, const Entry& key, const SecretBytes& auth, const TPMT_SIG_SCHEME& scheme,
                         const TPM2B_DIGEST& digest, const TPMT_TK_HASHCHECK& ticket, TPMT_SIGNATURE* sig) {
  return run(
      s, TPM2_CC_Sign, {&key.name}, auth, {.encrypt_command = true},
      [&] { return Tss2_Sys_Sign_Prepare(sys_, key.handle, &digest, &scheme, &ticket); },
      [&] { return Tss2_Sys_Sign_Complete(sys_, sig); });
}

TSS2_RC Tpm::tpm_hash(Session* s, TPM2_ALG_ID hash, const Bytes& message, TPMI_RH_HIERARCHY hierarchy,
                      TPM2B_DIGEST* digest, TPMT_TK_HASHCHECK* ticket) {
  constexpr size_t kChunk = TPM2_MAX_DIGEST_BUFFER;
  auto chunk = [&](size_t off) {
    TPM2B_MAX_BUFFER b{};
    b.size = uint16_t(std::min(kChunk, message.size() - off));
    std::memcpy(b.buffer, message.data() + off, b.size);
    return b;
  };
  if (message.size() <= kChunk) {
    TPM2B_MAX_BUFFER data = chunk(0);
    // No authorization: the session only encrypts the message on its way to the TPM.
    return run(
        s, TPM2_CC_Hash, {}, no_auth(), {.encrypt_command = true},
        [&] { return Tss2_Sys_Hash_Prepare(sys_, &data, hash, hierarchy); },
        [&] { return Tss2_Sys_Hash_Complete(sys_, digest, ticket); });
  }
  // A hash sequence (an object with an empty password) takes a slot until it completes.
  TPM2B_AUTH empty{};
  TPMI_DH_OBJECT seq = 0;
  TSS2_RC rc = with_slot(0, 0, [&] {
    return resend([&] { return Tss2_Sys_HashSequenceStart(sys_, nullptr, &empty, hash, &seq, nullptr); });
  });
  if (rc != TSS2_RC_SUCCESS) return rc;
  const Bytes seq_name;  // a sequence object has no public area: its Name is empty
  size_t off = 0;
  for (; rc == TSS2_RC_SUCCESS && message.size() - off > kChunk; off += kChunk) {
    TPM2B_MAX_BUFFER data = chunk(off);
    rc = run(
        s, TPM2_CC_SequenceUpdate, {&seq_name}, no_auth(), {.encrypt_command = true},
        [&] { return Tss2_Sys_SequenceUpdate_Prepare(sys_, seq, &data); },
        [&] { return Tss2_Sys_SequenceUpdate_Complete(sys_); });
  }
  if (rc == TSS2_RC_SUCCESS) {
    TPM2B_MAX_BUFFER data = chunk(off);
    rc = run(
        s, TPM2_CC_SequenceComplete, {&seq_name}, no_auth(), {.encrypt_command = true},
        [&] { return Tss2_Sys_SequenceComplete_Prepare(sys_, seq, &data, hierarchy); },
        [&] { return Tss2_Sys_SequenceComplete_Complete(sys_, digest, ticket); });
  }
  if (rc != TSS2_RC_SUCCESS) Tss2_Sys_FlushContext(sys_, seq);  // completion flushes it otherwise
  return rc;
}

Result<TPMT_SIGNATURE> Tpm::sign_message(ObjectId id, const KeyFile& kf, const SecretBytes& auth,
                                         const TPMT_SIG_SCHEME& scheme, const Bytes& message) {
  std::lock_guard lock(mu_);
  auto e = load(id, kf);
  if (!e) return e.take_error();
  auto s = session();
  if (!s) return s.take_error();
  Entry* key = *e;
  // The ticket must come from the key's hierarchy: owner for keys under the SRK, endorsement
  // for attestation keys made under the EK.
  TSS2_RC rc = TSS2_RC_SUCCESS;
  for (TPMI_RH_HIERARCHY h : {TPM2_RH_OWNER, TPM2_RH_ENDORSEMENT}) {
    TPM2B_DIGEST digest{};
    TPMT_TK_HASHCHECK ticket{};
    rc = tpm_hash(*s, scheme.details.any.hashAlg, message, h, &digest, &ticket);
    if (rc != TSS2_RC_SUCCESS) return tss_error("hash in the TPM", rc);
    TPMT_SIGNATURE sig{};
    rc = sign_digest(*s, *key, auth, scheme, digest, ticket, &sig);
    if (rc == TSS2_RC_SUCCESS) return sig;
    if (tpm_code(rc) != TPM2_RC_TICKET) break;
  }
  return tss_error("TPM2_Sign", rc);
}

Result<TPMT_SIGNATURE> Tpm::sign(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const SignRequest& req) {
  std::lock_guard lock(mu_);
  auto r = sign_once(id, kf, auth, req);
  if (!r && recover(last_rc_, kf.empty_auth)) r = sign_once(id, kf, auth, req);
  return r;
}

bool Tpm::recover(TSS2_RC rc, bool empty_auth) {
  if (rc == TSS2_RC_SUCCESS) return false;
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TCTI_RC_LAYER) {
    // The connection broke (TPM or simulator restarted): whatever we had there is gone.
    objects_.clear();
    session_.end();
    srk_probed_ = false;  // look for the persistent SRK again
    close_transport();
    return open_transport().ok();
  }
  if (layer != TSS2_TPM_RC_LAYER) return false;
  const TPM2_RC code = rc & 0xFFFu, base = tpm_code(rc);
  const bool session_numbered = (code & TPM2_RC_FMT1) && !(code & TPM2_RC_P) && (code & TPM2_RC_S);
  const bool stale_reference = base >= TPM2_RC_REFERENCE_H0 && base <= TPM2_RC_REFERENCE_S6;
  const bool stale_handle = base == TPM2_RC_HANDLE || (session_numbered && base == TPM2_RC_VALUE);
  // With an empty password the HMAC key is the session key alone, so a failed HMAC means our
  // session or object is no longer what we think (never retried for password keys: lockout).
  const bool lost_hmac = empty_auth && session_numbered && (base == TPM2_RC_AUTH_FAIL || base == TPM2_RC_BAD_AUTH);
  if (!stale_reference && !stale_handle && !lost_hmac) return false;

  // Keep what is still ours (same name at the same handle); forget the rest without flushing:
  // after a TPM restart those handle numbers may belong to another program.
  for (auto& [id, e] : objects_) {
    if (!e.handle || e.persistent) continue;
    Bytes name;
    auto pub = read_public(e.handle, &name);
    if (!pub || name != e.name) {
      e.handle = 0;
      e.has_saved = false;  // a restart also invalidates saved contexts; reloading would fail anyway
    }
  }
  if (session_.active()) {
    TPMS_CAPABILITY_DATA cap{};
    TPMI_YES_NO more = 0;
    bool listed = false;
    if (Tss2_Sys_GetCapability(sys_, nullptr, TPM2_CAP_HANDLES, TPM2_LOADED_SESSION_FIRST, TPM2_MAX_CAP_HANDLES,
                               &more, &cap, nullptr) == TSS2_RC_SUCCESS) {
      for (uint32_t i = 0; i < cap.data.handles.count; ++i) listed |= cap.data.handles.handle[i] == session_.handle();
    }
    if (!listed || session_numbered) session_.end();  // not flushed: it is gone or not ours to trust
  }
  return true;
}

Result<TPM2B_PUBLIC> Tpm::public_of(uint32_t handle) {
  std::lock_guard lock(mu_);
  if (!is_persistent(handle))
    return make_error(Reason::kInvalidArgument, hex_handle(handle) + " is not a persistent handle (0x81000000-0x81ffffff)");
  Bytes name;
  auto pub = read_public(handle, &name);
  if (!pub) {
    Error e = pub.take_error();
    if (e.reason == Reason::kKeyNotFound) e.detail = "no persistent object at " + hex_handle(handle) + ": " + e.detail;
    return e;
  }
  TPM2B_PUBLIC out{};
  out.publicArea = *pub;
  return out;
}

Status Tpm::make_persistent(const KeyFile& kf, uint32_t handle) {
  std::lock_guard lock(mu_);
  const std::string what = "make the key persistent at " + hex_handle(handle);
  if (!is_persistent(handle))
    return make_error(Reason::kInvalidArgument, hex_handle(handle) + " is not a persistent handle (0x81000000-0x81ffffff)");
  Bytes existing;
  if (read_public(handle, &existing))
    return make_error(Reason::kInvalidArgument, hex_handle(handle) + " is already in use").context(what);
  const ObjectId id = new_object_id();
  KeyFile transient = kf;
  transient.persistent = 0;
  auto e = load(id, transient);
  if (!e) {
    objects_.erase(id);
    return e.take_error().context(what);
  }
  auto s = session();
  if (!s) return s.take_error().context(what);
  Entry* key = *e;
  TSS2_RC rc = run(
      *s, TPM2_CC_EvictControl, {&owner_name(), &key->name}, no_auth(), {},
      [&] { return Tss2_Sys_EvictControl_Prepare(sys_, TPM2_RH_OWNER, key->handle, handle); },
      [&] { return Tss2_Sys_EvictControl_Complete(sys_); });
  flush(*key);
  objects_.erase(id);
  if (rc != TSS2_RC_SUCCESS) return tss_error(what, rc);
  return Status::Ok();
}

Status Tpm::evict_persistent(const KeyFile& kf, uint32_t handle) {
  std::lock_guard lock(mu_);
  const std::string what = "remove the persistent key at " + hex_handle(handle);
  auto expected = object_name(crypto_, kf.pub.publicArea);
  if (!expected) return expected.take_error().context(what);
  Bytes name;
  auto pub = read_public(handle, &name);
  if (!pub) return pub.take_error().context(what);
  if (name != *expected)
    return make_error(Reason::kInvalidArgument, "it holds a different key; left alone").context(what);
  auto s = session();
  if (!s) return s.take_error().context(what);
  TSS2_RC rc = run(
      *s, TPM2_CC_EvictControl, {&owner_name(), &name}, no_auth(), {},
      [&] { return Tss2_Sys_EvictControl_Prepare(sys_, TPM2_RH_OWNER, handle, handle); },
      [&] { return Tss2_Sys_EvictControl_Complete(sys_); });
  if (rc != TSS2_RC_SUCCESS) return tss_error(what, rc);
  for (auto& [id, e] : objects_)
    if (e.handle == handle) e.handle = 0;
  return Status::Ok();
}

bool Tpm::test_parms(const KeyOptions& opts) {
  TPM2B_PUBLIC t = key_template(opts);
  TPMT_PUBLIC_PARMS parms{};
  parms.type = t.publicArea.type;
  parms.parameters = t.publicArea.parameters;
  last_test_parms_rc_ = Tss2_Sys_TestParms(sys_, nullptr, &parms, nullptr);
  return last_test_parms_rc_ == TSS2_RC_SUCCESS;
}

Status Tpm::supports(const AlgorithmSpec& spec) {
  std::lock_guard lock(mu_);
  KeyOptions opts;
  opts.spec = &spec;
  if (!test_parms(opts)) {
    TSS2_RC rc = last_test_parms_rc_;
    Error e = tss_error(std::string("TPM2_TestParms(") + spec.name + ")", rc);
    if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER) e.reason = Reason::kUnsupported;
    return e;
  }
  return Status::Ok();
}

Result<SrkPin> Tpm::provision_srk(bool persistent, Provisioned* how) {
  std::lock_guard lock(mu_);
  const std::string what = "provision the storage root key";
  Bytes name;
  auto pub = read_public(kSrkHandle, &name);
  if (!pub && pub.error().reason != Reason::kKeyNotFound) return Error(pub.error()).context(what);
  if (pub && matches_srk_template(*pub)) {
    *how = Provisioned::kAdopted;
    return SrkPin{name, kSrkHandle};
  }
  *how = !persistent ? Provisioned::kTransient : pub ? Provisioned::kHandleTaken : Provisioned::kCreated;

  Entry& e = objects_[kOwnerParent];
  flush(e);
  auto created = create_srk(e);
  if (!created) return created.take_error().context(what);
  if (*how != Provisioned::kCreated) {
    SrkPin pin{e.name, 0};
    flush(e);
    objects_.erase(kOwnerParent);
    return pin;
  }
  // Owner authorization for EvictControl, in a session salted to the key just created.
  Session tmp;
  Session* s = nullptr;
  if (!opts_.password_auth) {
    Status st = start_session(tmp, &e);
    if (!st) {
      flush(e);
      return st.take_error().context(what);
    }
    s = &tmp;
  }
  TSS2_RC rc = run(
      s, TPM2_CC_EvictControl, {&owner_name(), &e.name}, no_auth(), {},
      [&] { return Tss2_Sys_EvictControl_Prepare(sys_, TPM2_RH_OWNER, e.handle, kSrkHandle); },
      [&] { return Tss2_Sys_EvictControl_Complete(sys_); });
  if (s) flush_session(tmp);
  flush(e);
  if (rc != TSS2_RC_SUCCESS) {
    objects_.erase(kOwnerParent);
    return tss_error("make the storage root key persistent at " + hex_handle(kSrkHandle), rc);
  }
  e.handle = kSrkHandle;
  e.persistent = true;
  return SrkPin{e.name, kSrkHandle};
}

}  // namespace tpmkey
