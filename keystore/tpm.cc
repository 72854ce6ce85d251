#include "keystore/tpm.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <set>

#include <tss2/tss2_tctildr.h>

#include "keystore/counting_tcti.h"

namespace tpmkey {
namespace {

// TPM_RC_OBJECT_MEMORY with any handle/session/parameter number masked off.
bool is_object_memory(TSS2_RC rc) {
  return (rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER && (rc & 0xFFFu) == TPM2_RC_OBJECT_MEMORY;
}

bool is_persistent(uint32_t handle) { return (handle >> 24) == TPM2_HT_PERSISTENT; }

std::string hex_handle(uint32_t h) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", h);
  return buf;
}

// The auth value of an object, as ESYS wants it. The copy on the stack is wiped by the caller.
Result<TPM2B_AUTH> to_auth(const SecretBytes& s) {
  TPM2B_AUTH a{};
  if (s.size() > sizeof a.buffer)
    return make_error(Reason::kInvalidArgument, "password is longer than 64 bytes");
  a.size = uint16_t(s.size());
  if (s.size()) std::memcpy(a.buffer, s.data(), s.size());
  return a;
}

}  // namespace

namespace {

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
  static auto* l = new LiveConnections;
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

Result<std::unique_ptr<Tpm>> Tpm::connect(const std::string& conf) {
  const std::string what = "connect(" + (conf.empty() ? std::string("default TCTI") : conf) + ")";
  std::unique_ptr<Tpm> t(new Tpm);
  TSS2_TCTI_CONTEXT* inner = nullptr;
  TSS2_RC rc = Tss2_TctiLdr_Initialize(conf.empty() ? nullptr : conf.c_str(), &inner);
  if (rc != TSS2_RC_SUCCESS) {
    Error e = tss_error(what, rc);
    e.reason = Reason::kTpmUnreachable;
    return e;
  }
  t->tcti_ = counting_tcti_new(inner, &t->commands_);
  if (!t->tcti_) {
    Tss2_TctiLdr_Finalize(&inner);
    return make_error(Reason::kInternal, "out of memory").context(what);
  }
  rc = Esys_Initialize(&t->esys_, t->tcti_, nullptr);
  if (rc != TSS2_RC_SUCCESS) return tss_error(what, rc);
  t->pid_ = getpid();

  TPMS_CAPABILITY_DATA* cap = nullptr;
  rc = Esys_GetCapability(t->esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                          TPM2_PT_HR_TRANSIENT_MIN, 1, nullptr, &cap);
  if (rc != TSS2_RC_SUCCESS) {
    Error e = tss_error(what, rc);
    if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) e.reason = Reason::kTpmUnreachable;
    return e;
  }
  if (cap->data.tpmProperties.count == 1 &&
      cap->data.tpmProperties.tpmProperty[0].property == TPM2_PT_HR_TRANSIENT_MIN)
    t->transient_limit_ = cap->data.tpmProperties.tpmProperty[0].value;
  Esys_Free(cap);
  register_live(t.get());
  return t;
}

Tpm::~Tpm() {
  unregister_live(this);
  flush_all();
  if (esys_) Esys_Finalize(&esys_);
  counting_tcti_free(tcti_);
}

void Tpm::flush_all() {
  std::lock_guard lock(mu_);
  if (esys_ && getpid() == pid_) {
    for (auto& [id, e] : objects_) flush(e);
  }
  objects_.clear();
}

void Tpm::abandon() {
  std::lock_guard lock(mu_);
  objects_.clear();
}

void Tpm::flush(Entry& e) {
  if (e.tr != ESYS_TR_NONE) {
    if (e.persistent) Esys_TR_Close(esys_, &e.tr);
    else Esys_FlushContext(esys_, e.tr);
    e.tr = ESYS_TR_NONE;
  }
}

void Tpm::forget(ObjectId id) {
  std::lock_guard lock(mu_);
  auto it = objects_.find(id);
  if (it == objects_.end()) return;
  flush(it->second);
  objects_.erase(it);
}

size_t Tpm::loaded_transients() const {
  size_t n = 0;
  for (const auto& [id, e] : objects_) n += (e.tr != ESYS_TR_NONE && !e.persistent) ? 1 : 0;
  return n;
}

bool Tpm::evict_one(ObjectId pinned_a, ObjectId pinned_b) {
  Entry* victim = nullptr;
  for (auto& [id, e] : objects_) {
    if (id == pinned_a || id == pinned_b || e.tr == ESYS_TR_NONE || e.persistent) continue;
    if (!victim || e.last_use < victim->last_use) victim = &e;
  }
  if (!victim) return false;
  TPMS_CONTEXT* ctx = nullptr;
  if (Esys_ContextSave(esys_, victim->tr, &ctx) == TSS2_RC_SUCCESS) {
    victim->saved = *ctx;
    victim->has_saved = true;
    Esys_Free(ctx);
  }
  Esys_FlushContext(esys_, victim->tr);
  victim->tr = ESYS_TR_NONE;
  return true;
}

template <typename Fn>
TSS2_RC Tpm::with_slot(ObjectId pinned_a, ObjectId pinned_b, Fn&& fn) {
  while (loaded_transients() >= transient_limit_ && evict_one(pinned_a, pinned_b)) {
  }
  for (;;) {
    TSS2_RC rc = fn();
    if (!is_object_memory(rc) || !evict_one(pinned_a, pinned_b)) return rc;
  }
}

bool Tpm::reload_saved(ObjectId id, Entry& e) {
  if (!e.has_saved) return false;
  TSS2_RC rc = with_slot(id, id, [&] { return Esys_ContextLoad(esys_, &e.saved, &e.tr); });
  e.has_saved = false;  // a saved object context is good for one load
  if (rc == TSS2_RC_SUCCESS) return true;
  e.tr = ESYS_TR_NONE;  // stale (the TPM was restarted): the caller recreates the object
  return false;
}

Result<ESYS_TR> Tpm::parent(uint32_t handle) {
  Entry& e = objects_[handle];
  e.last_use = ++clock_;
  if (e.tr != ESYS_TR_NONE) return e.tr;
  if (is_persistent(handle)) {
    TSS2_RC rc = Esys_TR_FromTPMPublic(esys_, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &e.tr);
    if (rc != TSS2_RC_SUCCESS) {
      objects_.erase(handle);
      return tss_error("open parent " + hex_handle(handle), rc);
    }
    e.persistent = true;
    return e.tr;
  }
  if (handle != kOwnerParent)
    return make_error(Reason::kUnsupported, "parent " + hex_handle(handle) +
                                                " is neither 0x40000001 nor a persistent handle");
  if (reload_saved(handle, e)) return e.tr;

  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_PUBLIC tmpl = srk_template();
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION pcrs{};
  TSS2_RC rc = with_slot(handle, handle, [&] {
    return Esys_CreatePrimary(esys_, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                              &tmpl, &outside, &pcrs, &e.tr, nullptr, nullptr, nullptr, nullptr);
  });
  if (rc != TSS2_RC_SUCCESS) {
    e.tr = ESYS_TR_NONE;
    return tss_error("create parent 0x40000001 (owner storage primary)", rc);
  }
  return e.tr;
}

Result<ESYS_TR> Tpm::load(ObjectId id, const KeyFile& kf) {
  Entry& e = objects_[id];
  e.last_use = ++clock_;
  if (e.tr != ESYS_TR_NONE) return e.tr;
  if (reload_saved(id, e)) return e.tr;
  auto p = parent(kf.parent);
  if (!p) return p.take_error();
  ESYS_TR parent_tr = *p;
  TSS2_RC rc = with_slot(id, kf.parent, [&] {
    return Esys_Load(esys_, parent_tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &kf.priv, &kf.pub, &e.tr);
  });
  if (rc != TSS2_RC_SUCCESS) {
    e.tr = ESYS_TR_NONE;
    Error err = tss_error("load", rc);
    if ((rc & 0xFFFu) == (TPM2_RC_INTEGRITY | TPM2_RC_P | TPM2_RC_1) || classify_rc(rc) == Reason::kMalformedKey)
      err.detail = "the key was not made by this TPM under parent " + hex_handle(kf.parent) + ": " + err.detail;
    return err;
  }
  return e.tr;
}

Result<KeyFile> Tpm::create_key(const KeyOptions& opts, const SecretBytes& auth, uint32_t parent_handle) {
  std::lock_guard lock(mu_);
  auto p = parent(parent_handle);
  if (!p) return p.take_error();
  auto a = to_auth(auth);
  if (!a) return a.take_error();
  TPM2B_SENSITIVE_CREATE sensitive{};
  sensitive.sensitive.userAuth = *a;
  OPENSSL_cleanse(&a.value(), sizeof(TPM2B_AUTH));
  TPM2B_PUBLIC tmpl = key_template(opts);
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION pcrs{};
  TPM2B_PRIVATE* out_priv = nullptr;
  TPM2B_PUBLIC* out_pub = nullptr;
  TSS2_RC rc = Esys_Create(esys_, *p, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &tmpl, &outside,
                           &pcrs, &out_priv, &out_pub, nullptr, nullptr, nullptr);
  OPENSSL_cleanse(&sensitive, sizeof sensitive);
  if (rc != TSS2_RC_SUCCESS) {
    Error e = tss_error(std::string("create ") + opts.spec->name + " key", rc);
    if (!test_parms(opts)) {  // say plainly when the TPM lacks the algorithm
      e.reason = Reason::kUnsupported;
      e.detail = std::string("this TPM does not support ") + opts.spec->name + " keys: " + e.detail;
    }
    return e;
  }
  KeyFile kf;
  kf.parent = parent_handle;
  kf.empty_auth = auth.empty();
  kf.pub = *out_pub;
  kf.priv = *out_priv;
  Esys_Free(out_pub);
  Esys_Free(out_priv);
  return kf;
}

Result<TPMT_SIGNATURE> Tpm::sign(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const SignRequest& req) {
  std::lock_guard lock(mu_);
  auto tr = load(id, kf);
  if (!tr) return tr.take_error();
  auto a = to_auth(auth);
  if (!a) return a.take_error();
  Esys_TR_SetAuth(esys_, *tr, &a.value());
  OPENSSL_cleanse(&a.value(), sizeof(TPM2B_AUTH));

  TPM2B_DIGEST digest{};
  if (req.digest.size() > sizeof digest.buffer)
    return make_error(Reason::kInvalidArgument, "digest is too long");
  digest.size = uint16_t(req.digest.size());
  std::memcpy(digest.buffer, req.digest.data(), req.digest.size());
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;
  TPMT_SIGNATURE* sig = nullptr;
  TSS2_RC rc = Esys_Sign(esys_, *tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &digest, &req.scheme,
                         &validation, &sig);
  TPM2B_AUTH empty{};
  Esys_TR_SetAuth(esys_, *tr, &empty);  // do not keep the password in the TSS longer than needed
  if (rc != TSS2_RC_SUCCESS) return tss_error("TPM2_Sign", rc);
  TPMT_SIGNATURE out = *sig;
  Esys_Free(sig);
  return out;
}

bool Tpm::test_parms(const KeyOptions& opts) {
  TPM2B_PUBLIC t = key_template(opts);
  TPMT_PUBLIC_PARMS parms{};
  parms.type = t.publicArea.type;
  parms.parameters = t.publicArea.parameters;
  last_test_parms_rc_ = Esys_TestParms(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &parms);
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

}  // namespace tpmkey
