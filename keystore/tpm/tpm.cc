// Tpm: construction, the operation driver's non-template parts, and proving and releasing handles.
#include "keystore/tpm/tpm.h"

#include <atomic>
#include <cstdio>

#include "keystore/tpm/driver.h"
#include "keystore/tpm/kdf.h"
#include "keystore/tpm/process.h"

namespace tpmkey {
namespace {

// Releasing (flushing) a handle trusts it without a check for longer than using it: a wrong
// flush is never a dictionary-attack strike, and a process exits some milliseconds after its
// last command.
constexpr std::chrono::milliseconds kReleaseTrustWindow{50};

}  // namespace

std::string hex_handle(uint32_t h) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", h);
  return buf;
}

bool is_persistent_handle(uint32_t h) { return (h >> 24) == TPM2_HT_PERSISTENT; }

void busy_backoff(unsigned round) {
  thread_local std::minstd_rand rng(std::random_device{}() ^ unsigned(getpid()));
  const unsigned base_ms = 2u << std::min(round, 6u);
  std::this_thread::sleep_for(std::chrono::microseconds(base_ms * 500 + rng() % (base_ms * 1000)));
}

std::unique_ptr<Tpm> Tpm::create(TpmOptions opts, const Crypto& crypto) {
  std::unique_ptr<Tpm> t(new Tpm(std::move(opts), crypto));
  register_tpm(t.get());
  return t;
}

Tpm::Tpm(TpmOptions opts, const Crypto& crypto)
    : opts_(std::move(opts)), crypto_(crypto), conn_(opts_.tcti, opts_.timeouts), run_(conn_, crypto), pid_(getpid()) {
  static std::atomic<uint64_t> made{0};
  serial_ = ++made;
}

Tpm::~Tpm() {
  unregister_tpm(this);
  flush_all();
}

Status Tpm::begin() {
  if (!conn_.is_open()) TPMKEY_TRY(conn_.open());
  if (conn_.generation() != generation_seen_) {
    generation_seen_ = conn_.generation();
    ++span_;
  } else if (!conn_.continuous() && conn_.idle() > kContinuityWindow) {
    ++span_;
  }
  return Status::Ok();
}

bool Tpm::is_stale(TSS2_RC rc) const {
  if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER) return !conn_.timed_out();
  const uint32_t base = tpm_base_code(rc);
  if (base >= TPM2_RC_REFERENCE_H0 && base <= TPM2_RC_REFERENCE_S6) return true;
  return base == TPM2_RC_HANDLE || (names_session(rc) && base == TPM2_RC_VALUE);
}

void Tpm::park() {
  std::lock_guard lock(mu_);
  if (forked_ || getpid() != pid_ || !conn_.is_open() || conn_.continuous()) return;
  Connection::Hold hold(conn_);
  if (!begin()) return;
  // Proven first: after an idle pause a handle may be another program's, and saving its context
  // would make its object look like tpmkey's.
  objects_.for_each([&](Object& o) {
    if (o.transient() && o.loaded()) (void)verify(o);
  });
  while (evict_one(nullptr, nullptr)) {
  }
}

void Tpm::make_way() {
  while (evict_one(nullptr, nullptr)) {
  }
}

void Tpm::park_parents() {
  if (!conn_.is_open()) return;
  Object* srk = objects_.find_parent(kOwnerParent);
  if (!srk || !srk->transient()) return;
  TPMS_CONTEXT saved{};
  const TPM2_HANDLE n = srk->tpm_handle();
  if (srk->span == span_ && run_.plain([&] { return Tss2_Sys_ContextSave(run_.sys(), n, &saved); }) == TSS2_RC_SUCCESS) {
    release(*srk);
    srk->saved = saved;
  }
}

Status Tpm::verify_session() {
  if (!session_.active() || session_span_ == span_) return Status::Ok();
  TPMS_TIME_INFO t{};
  TSS2_RC rc = run_.run(
      &session_, TPM2_CC_ReadClock, {}, no_auth(), {.audit = true},
      [&] { return Tss2_Sys_ReadClock_Prepare(run_.sys()); },
      [&] { return Tss2_Sys_ReadClock_Complete(run_.sys(), &t); });
  if (rc == TSS2_RC_SUCCESS) {
    session_span_ = span_;
    return Status::Ok();
  }
  if (names_session(rc) || !session_.active()) {
    session_.end();  // gone, or another program's now: never flushed
    return Status::Ok();
  }
  return error("prove the session", rc);
}

Status Tpm::verify(Object& o) {
  if (!o.loaded() || o.span == span_) return Status::Ok();
  Session* audit = (!opts_.password_auth && session_.active() && session_span_ != span_) ? &session_ : nullptr;
  Bytes name;
  auto pub = read_public(o.tpm_handle(), &name, audit ? &o.name : nullptr, audit);
  if (pub) {
    if (audit && session_.active()) session_span_ = span_;
    if (name == o.name) o.span = span_;
    else o.abandon();  // another object holds the number now
    return Status::Ok();
  }
  const TSS2_RC rc = pub.error().rc;
  const uint32_t base = tpm_base_code(rc);
  if (base == TPM2_RC_HANDLE || (base >= TPM2_RC_REFERENCE_H0 && base <= TPM2_RC_REFERENCE_H6)) {
    o.abandon();
    return Status::Ok();
  }
  if (audit && names_session(rc)) {
    // The session is gone or not tpmkey's, or the object's name is not the one in the cpHash:
    // a plain read tells which.
    if (base != TPM2_RC_BAD_AUTH && base != TPM2_RC_AUTH_FAIL) session_.end();
    auto plain = read_public(o.tpm_handle(), &name);
    if (!plain) {
      if (tpm_base_code(plain.error().rc) == TPM2_RC_HANDLE) o.abandon();
      else return plain.take_error();
    } else if (name == o.name) {
      // The object is tpmkey's, so the TPM was not restarted and the session number is still
      // tpmkey's, but out of step (a command timed out and ran later): flushed.
      o.span = span_;
      run_.flush(session_);
    } else {
      o.abandon();
    }
    return Status::Ok();
  }
  return pub.take_error();
}

void Tpm::release(Object& o) {
  if (o.transient()) {
    bool trusted = o.span == span_ && conn_.generation() == generation_seen_ &&
                   (conn_.continuous() || conn_.idle() < kReleaseTrustWindow);
    if (!trusted && conn_.is_open()) {
      Bytes name;
      auto pub = read_public(o.tpm_handle(), &name);
      trusted = pub && name == o.name;
    }
    if (trusted) run_.flush(std::move(std::get<TransientHandle>(o.handle)));
  }
  o.abandon();
  o.saved.reset();  // a saved object context takes no slot
}

void Tpm::flush_all() {
  std::lock_guard lock(mu_);
  if (forked_ || getpid() != pid_ || !conn_.is_open()) {
    objects_.clear();
    session_.end();
    return;
  }
  Connection::Hold hold(conn_);
  objects_.for_each([&](Object& o) { release(o); });
  objects_.clear();
  if (session_.active()) {
    bool trusted = session_span_ == span_ && conn_.generation() == generation_seen_ &&
                   (conn_.continuous() || conn_.idle() < kReleaseTrustWindow);
    if (!trusted && conn_.is_open()) {
      ++span_;
      trusted = verify_session() && session_.active();
    }
    if (trusted) run_.flush(session_);
    session_.end();
  }
}

void Tpm::forget_in_child() {
  forked_ = true;
  objects_.clear();
  session_.end();
  conn_.forget_in_child();
}

void Tpm::forget(ObjectId id) {
  std::lock_guard lock(mu_);
  Object* o = objects_.find_key(id);
  if (!o) return;
  if (!forked_ && getpid() == pid_ && conn_.is_open()) {
    Connection::Hold hold(conn_);  // the proof and the flush on one connection: nobody in between
    release(*o);
  } else {
    o->abandon(), o->saved.reset();
  }
  objects_.erase_key(id);
}

uint32_t Tpm::session_handle() {
  std::lock_guard lock(mu_);
  return session_.handle();
}

TSS2_RC Tpm::test_flush_handle(uint32_t handle) {
  std::lock_guard lock(mu_);
  Connection::Hold hold(conn_);
  return conn_.call([&] { return Tss2_Sys_FlushContext(conn_.sys(), handle); });
}

}  // namespace tpmkey
