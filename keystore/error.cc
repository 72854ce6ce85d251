#include "keystore/error.h"

#include <algorithm>
#include <cstdio>
#include <string_view>

#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_sys.h>
#include <tss2/tss2_tpm2_types.h>

#include "keystore/tpm/tss_loader.h"

namespace tpmkey {

Error& Error::context(const std::string& what) {
  where = where.empty() ? what : what + ": " + where;
  return *this;
}

std::string Error::text() const {
  std::string out = where;
  if (!out.empty()) out += ": ";
  out += reason_text(reason);
  if (!detail.empty()) out += ": " + detail;
  return out;
}

Error make_error(Reason r, std::string detail) { return Error{r, {}, std::move(detail)}; }

namespace {

bool continuation(const std::string& s, size_t i) { return i < s.size() && (uint8_t(s[i]) & 0xC0) == 0x80; }

}  // namespace

std::string shorten_text(const std::string& text, size_t max) {
  constexpr size_t kKeep = 32;  // of a shortened word, at least this much stays (start and end)
  constexpr std::string_view kEllipsis = "...";
  std::string out = text;
  while (out.size() > max) {
    size_t best = 0, best_len = 0;
    for (size_t i = 0; i < out.size();) {
      size_t j = i;
      while (j < out.size() && out[j] != ' ') ++j;
      if (j - i > best_len) best = i, best_len = j - i;
      i = j + 1;
    }
    if (best_len <= kKeep + kEllipsis.size()) break;
    const size_t excess = out.size() - max;
    const size_t keep = best_len > excess + kEllipsis.size() + kKeep ? best_len - excess - kEllipsis.size() : kKeep;
    size_t head = best + keep / 2, tail = best + best_len - (keep - keep / 2);
    while (head > best && continuation(out, head)) --head;
    while (tail < best + best_len && continuation(out, tail)) ++tail;
    out = out.substr(0, head) + std::string(kEllipsis) + out.substr(tail);
  }
  if (out.size() > max) {
    size_t cut = max > kEllipsis.size() ? max - kEllipsis.size() : 0;
    while (cut > 0 && continuation(out, cut)) --cut;
    out = out.substr(0, cut) + std::string(kEllipsis.substr(0, std::min(kEllipsis.size(), max)));
  }
  return out;
}

uint32_t tpm_base_code(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return 0;
  TPM2_RC code = rc & 0xFFFu;
  if (code & TPM2_RC_FMT1) return code & (TPM2_RC_FMT1 | 0x3Fu);
  return code;
}

bool names_session(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return false;
  const TPM2_RC code = rc & 0xFFFu;
  const uint32_t base = tpm_base_code(rc);
  if (base >= TPM2_RC_REFERENCE_S0 && base <= TPM2_RC_REFERENCE_S6) return true;
  return (code & TPM2_RC_FMT1) && !(code & TPM2_RC_P) && (code & TPM2_RC_S);
}

bool is_slot_shortage(TSS2_RC rc) {
  switch (tpm_base_code(rc)) {
    case TPM2_RC_OBJECT_MEMORY:
    case TPM2_RC_SESSION_MEMORY:
    case TPM2_RC_MEMORY:
    case TPM2_RC_OBJECT_HANDLES:
    case TPM2_RC_SESSION_HANDLES:
    case TPM2_RC_CONTEXT_GAP:
    case TPM2_RC_NV_RATE:
      return true;
    default:
      return false;
  }
}

Reason classify_rc(TSS2_RC rc) {
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TPM_RC_LAYER) {
    const uint32_t base = tpm_base_code(rc);
    if (base >= TPM2_RC_REFERENCE_H0 && base <= TPM2_RC_REFERENCE_H6) return Reason::kKeyNotFound;
    if (is_slot_shortage(rc)) return Reason::kTpmBusy;
    switch (base) {
      case TPM2_RC_AUTH_FAIL:
      case TPM2_RC_BAD_AUTH:
      case TPM2_RC_AUTH_MISSING:
      case TPM2_RC_POLICY_FAIL:
        return Reason::kAuthFailed;
      case TPM2_RC_LOCKOUT:
        return Reason::kLockout;
      case TPM2_RC_HANDLE:
        return Reason::kKeyNotFound;
      case TPM2_RC_INTEGRITY:
      case TPM2_RC_SENSITIVE:
        return Reason::kMalformedKey;
      case TPM2_RC_CURVE:
      case TPM2_RC_KEY_SIZE:
      case TPM2_RC_SCHEME:
      case TPM2_RC_HASH:
      case TPM2_RC_ASYMMETRIC:
        return Reason::kUnsupported;
      case TPM2_RC_RETRY:
      case TPM2_RC_YIELDED:
      case TPM2_RC_TESTING:
        return Reason::kTpmBusy;
      case TPM2_RC_INITIALIZE:
      case TPM2_RC_FAILURE:
      case TPM2_RC_REBOOT:
      case TPM2_RC_UPGRADE:
      case TPM2_RC_NEEDS_TEST:
        return Reason::kTpmNotReady;
      default:
        return Reason::kInternal;
    }
  }
  const TSS2_RC base = rc & ~TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TCTI_RC_LAYER || base == TSS2_BASE_RC_IO_ERROR || base == TSS2_BASE_RC_NO_CONNECTION ||
      base == TSS2_BASE_RC_TRY_AGAIN || base == TSS2_BASE_RC_NOT_IMPLEMENTED)
    return Reason::kTpmUnreachable;
  // What the TPM sent could not be parsed, or failed its HMAC: nothing in it is trusted.
  if (base == TSS2_BASE_RC_MALFORMED_RESPONSE || base == TSS2_BASE_RC_INSUFFICIENT_RESPONSE ||
      base == TSS2_BASE_RC_RSP_AUTH_FAILED)
    return Reason::kUntrustedTpm;
  return Reason::kInternal;
}

std::string describe_rc(TSS2_RC rc) {
  char buf[32];
  std::snprintf(buf, sizeof buf, " (rc=0x%08x)", rc);
  const TSS2_RC base = rc & ~TSS2_RC_LAYER_MASK;
  // tpmkey's own words where the TSS's would mislead (ESYS's text for a check tpmkey makes).
  if (base == TSS2_BASE_RC_RSP_AUTH_FAILED)
    return std::string("the TPM's response failed its HMAC check (changed on the way, or not from the TPM the "
                       "session was started with); nothing in it was used") + buf;
  if (base == TSS2_BASE_RC_MALFORMED_RESPONSE || base == TSS2_BASE_RC_INSUFFICIENT_RESPONSE)
    return std::string("the TPM's response could not be parsed; nothing in it was used") + buf;
  // What every tpm2-tss function returns when libtss2-sys or libtss2-mu could not be loaded.
  if (base == TSS2_BASE_RC_NOT_IMPLEMENTED) {
    if (std::string why = tss::load_failure(); !why.empty()) return why + buf;
  }
  // libtss2-rc is loaded on the first error, not by every process that loads tpmkey
  // (keystore/tpm/tss_loader.cc); nullptr if it cannot be.
  const char* text = Tss2_RC_Decode(rc);
  return std::string(text ? text : "TSS2 error") + buf;
}

Error tss_error(const std::string& what, TSS2_RC rc) {
  Error e{classify_rc(rc), what, describe_rc(rc), rc};
  if (e.reason == Reason::kTpmNotReady && tpm_base_code(rc) == TPM2_RC_INITIALIZE)
    e.detail = "the TPM has not been started (TPM2_Startup; run tpm2_startup -c, or start swtpm with --flags "
               "startup-clear): " + e.detail;
  return e;
}

}  // namespace tpmkey
