// The templates behind Tpm's operations (tpm.h), shared by the files of its command families.
// Private to keystore/tpm/.
#pragma once

#include <unistd.h>

#include <random>
#include <thread>

#include "keystore/tpm/tpm.h"

namespace tpmkey {

inline const SecretBytes& no_auth() {
  static const SecretBytes empty;
  return empty;
}

std::string hex_handle(uint32_t h);
bool is_persistent_handle(uint32_t h);
// Sleeps before retry `round` while other programs hold the TPM's slots: 2 ms doubling to
// 128 ms, with jitter, so that racing processes do not retry in step.
void busy_backoff(unsigned round);

template <typename R, typename Fn>
R Tpm::operation(Fn&& attempt) {
  std::unique_lock lock(mu_);
  if (forked_ || getpid() != pid_)
    return R(make_error(Reason::kInternal, "this TPM connection belongs to the parent process"));
  Connection::Hold hold(conn_);  // one swtpm connection for the operation's commands
  const auto started = std::chrono::steady_clock::now();
  bool recovered = false;
  for (unsigned round = 0;; ++round) {
    if (Status st = begin(); !st) return R(st.take_error());
    R r = attempt();
    park_parents();
    if (r) return r;
    const TSS2_RC rc = r.error().rc;
    const auto waited = std::chrono::steady_clock::now() - started;
    if (is_slot_shortage(rc) && waited < opts_.timeouts.busy) {
      make_way();
      conn_.hold(false);  // the programs holding the slots need the TPM to give them back
      lock.unlock();
      busy_backoff(round);
      lock.lock();
      conn_.hold(true);
      continue;
    }
    if (!recovered && is_stale(rc)) {
      recovered = true;
      ++span_;  // prove every handle again, and re-establish what is gone
      continue;
    }
    if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER) {
      // The TPM is out of reach: which step found out does not matter to the user.
      Error e = r.error();
      e.where = "connect(" + (conn_.spec().empty() ? std::string("default TCTI") : conn_.spec()) + ")";
      return R(std::move(e));
    }
    if (is_slot_shortage(rc)) {
      Error e = r.error();
      explain_shortage(e, waited);
      return R(std::move(e));
    }
    return r;
  }
}

template <typename Fn>
TSS2_RC Tpm::with_room(size_t needed, const Object* a, const Object* b, Fn&& fn) {
  make_room(needed, a, b);
  for (;;) {
    TSS2_RC rc = fn();
    if (tpm_base_code(rc) != TPM2_RC_OBJECT_MEMORY || !evict_one(a, b)) return rc;
  }
}

template <typename Fn>
Status Tpm::with_key(ObjectId id, const KeyFile& kf, const std::string& what, Fn&& command) {
  auto key = load(id, kf);
  if (!key) return key.take_error();
  auto s = session();
  if (!s) return s.take_error();
  TSS2_RC rc = command(**key, *s);
  if (rc == TSS2_RC_SUCCESS) return Status::Ok();
  const uint32_t base = tpm_base_code(rc);
  if (base == TPM2_RC_LOCKOUT) {  // no strike, nothing stale: the user has to wait or clear it
    Error e = error(what, rc);
    explain_lockout(e);
    return e;
  }
  const bool hmac_failed = names_session(rc) && (base == TPM2_RC_AUTH_FAIL || base == TPM2_RC_BAD_AUTH);
  if (hmac_failed && *s) {
    // Wrong password, or a session or handle that is not what tpmkey thinks. A key without a
    // password has nothing to get wrong: its state is stale, and operation() recovers once. For
    // a key with one, the session is proven first (an audited command, never a strike): if it
    // is tpmkey's, the password was wrong and is not tried again.
    if (!kf.empty_auth) {
      const bool key_proven = (*key)->span == span_;
      session_span_ = 0;  // prove it now
      if (Status st = verify_session(); !st) return st;
      if (session_.active() && key_proven) {
        Error e = error(what, rc);
        e.detail = std::string(base == TPM2_RC_AUTH_FAIL ? "the password is not the key's (the TPM counted one "
                                                           "dictionary-attack failure): "
                                                         : "the password is not the key's: ") + e.detail;
        return e;
      }
    }
    Error e = error(what, rc);
    e.rc = TPM2_RC_REFERENCE_S0;  // stale: recovered once
    return e;
  }
  return error(what, rc);
}

}  // namespace tpmkey
