// What the TPM can do and hold: its slot limits (TPM2_GetCapability) and algorithms (TPM2_TestParms),
// and its dictionary-attack settings when it is in lockout.
#include "keystore/tpm/driver.h"

namespace tpmkey {

void Tpm::read_limits() {
  if (limits_read_) return;
  limits_read_ = true;
  TPMS_CAPABILITY_DATA cap{};
  TPMI_YES_NO more = 0;
  // TRANSIENT_MIN, PERSISTENT_MIN and LOADED_MIN are consecutive: one command reads the limits.
  TSS2_RC rc = run_.plain([&] {
    return Tss2_Sys_GetCapability(run_.sys(), nullptr, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_HR_TRANSIENT_MIN, 3, &more, &cap,
                                  nullptr);
  });
  // The response is not authenticated: its own selector and count are checked before use, and a
  // limit outside what any TPM has is ignored (the defaults stay).
  if (rc != TSS2_RC_SUCCESS || cap.capability != TPM2_CAP_TPM_PROPERTIES ||
      cap.data.tpmProperties.count > TPM2_MAX_TPM_PROPERTIES)
    return;
  for (uint32_t i = 0; i < cap.data.tpmProperties.count; ++i) {
    const TPMS_TAGGED_PROPERTY& p = cap.data.tpmProperties.tpmProperty[i];
    if (p.value < 2 || p.value > 64) continue;
    if (p.property == TPM2_PT_HR_TRANSIENT_MIN) transient_limit_ = p.value;
    if (p.property == TPM2_PT_HR_LOADED_MIN) session_limit_ = p.value;
  }
}

void Tpm::explain_shortage(Error& e, std::chrono::steady_clock::duration waited) {
  // operation() already gave back every slot of tpmkey's and waited.
  read_limits();
  const uint32_t base = tpm_base_code(e.rc);
  std::string which;
  if (base == TPM2_RC_OBJECT_MEMORY || base == TPM2_RC_OBJECT_HANDLES)
    which = "the TPM's object slots (" + std::to_string(transient_limit_) + ") are held by other programs";
  else if (base == TPM2_RC_SESSION_MEMORY || base == TPM2_RC_SESSION_HANDLES)
    which = "the TPM's session slots (" + std::to_string(session_limit_) + ") are held by other programs";
  else
    which = "the TPM stayed busy";
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(waited).count();
  e.detail = which + " (waited " + std::to_string(ms) + " ms; busy-timeout): " + e.detail;
}

TSS2_RC Tpm::test_parms(const KeyOptions& opts) {
  TPM2B_PUBLIC t = key_template(opts);
  TPMT_PUBLIC_PARMS parms{};
  parms.type = t.publicArea.type;
  parms.parameters = t.publicArea.parameters;
  return run_.plain([&] { return Tss2_Sys_TestParms(run_.sys(), nullptr, &parms, nullptr); });
}

Status Tpm::supports(const AlgorithmSpec& spec) {
  return operation<Status>([&]() -> Status {
    KeyOptions opts;
    opts.spec = &spec;
    TSS2_RC rc = test_parms(opts);
    if (rc == TSS2_RC_SUCCESS) return Status::Ok();
    Error e = error(std::string("TPM2_TestParms(") + spec.name + ")", rc);
    if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER && (e.reason == Reason::kInternal || e.reason == Reason::kUnsupported))
      e.reason = Reason::kUnsupported;
    return e;
  });
}

void Tpm::explain_lockout(Error& e) {
  // One unauthenticated read, on this error path only: it tells the user how long to wait. Its
  // answer only shapes a message.
  TPMS_CAPABILITY_DATA cap{};
  TPMI_YES_NO more = 0;
  uint32_t interval = 0;
  bool known = false;
  TSS2_RC rc = run_.plain([&] {
    return Tss2_Sys_GetCapability(run_.sys(), nullptr, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_LOCKOUT_INTERVAL, 1, &more,
                                  &cap, nullptr);
  });
  if (rc == TSS2_RC_SUCCESS && cap.capability == TPM2_CAP_TPM_PROPERTIES && cap.data.tpmProperties.count == 1 &&
      cap.data.tpmProperties.tpmProperty[0].property == TPM2_PT_LOCKOUT_INTERVAL) {
    interval = cap.data.tpmProperties.tpmProperty[0].value;
    known = true;
  }
  std::string wait;
  if (!known)
    wait = "Wait (the TPM forgets one failure per recovery interval)";
  else if (interval == 0)
    wait = "This TPM forgets no failure by itself (its recovery interval is 0)";
  else
    wait = "Wait (the TPM forgets one failure every " + std::to_string(interval) + " s)";
  e.detail = "too many wrong passwords: until it recovers, the TPM refuses every key made with a password. " + wait +
             (interval == 0 && known ? "; clear" : ", or clear") +
             " the lockout with `tpm2_dictionarylockout --clear-lockout` (with the lockout hierarchy's password, if it "
             "has one): " + e.detail;
}

}  // namespace tpmkey
