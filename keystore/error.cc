#include "keystore/error.h"

#include <dlfcn.h>

#include <cstdio>

#include <tss2/tss2_rc.h>
#include <tss2/tss2_tpm2_types.h>

namespace tpmkey {

const char* reason_text(Reason r) {
  switch (r) {
    case Reason::kTpmUnreachable: return "TPM unreachable";
    case Reason::kAuthFailed: return "authorization failed";
    case Reason::kLockout: return "TPM is in dictionary-attack lockout";
    case Reason::kKeyNotFound: return "key not found";
    case Reason::kMalformedUri: return "malformed tpm2: URI";
    case Reason::kMalformedKey: return "malformed or unusable key file";
    case Reason::kUnsupported: return "unsupported algorithm or parameter";
    case Reason::kTpmBusy: return "TPM busy or out of resources";
    case Reason::kInvalidArgument: return "invalid argument";
    case Reason::kIo: return "file system error";
    case Reason::kUntrustedTpm: return "TPM identity check failed";
    case Reason::kInternal: return "internal error";
  }
  return "internal error";
}

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

// The TPM's own response code with handle/session/parameter numbers masked off.
TPM2_RC tpm_base_code(TSS2_RC rc) {
  TPM2_RC code = rc & 0xFFFu;
  if (code & TPM2_RC_FMT1) return code & (TPM2_RC_FMT1 | 0x3Fu);
  return code;
}

}  // namespace

Reason classify_rc(TSS2_RC rc) {
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TPM_RC_LAYER) {
    switch (tpm_base_code(rc)) {
      case TPM2_RC_AUTH_FAIL:
      case TPM2_RC_BAD_AUTH:
      case TPM2_RC_AUTH_MISSING:
      case TPM2_RC_POLICY_FAIL:
        return Reason::kAuthFailed;
      case TPM2_RC_LOCKOUT:
        return Reason::kLockout;
      case TPM2_RC_HANDLE:
      case TPM2_RC_REFERENCE_H0:
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
      case TPM2_RC_OBJECT_MEMORY:
      case TPM2_RC_SESSION_MEMORY:
      case TPM2_RC_MEMORY:
      case TPM2_RC_RETRY:
      case TPM2_RC_YIELDED:
      case TPM2_RC_TESTING:
      case TPM2_RC_NV_RATE:
      case TPM2_RC_OBJECT_HANDLES:
      case TPM2_RC_SESSION_HANDLES:
        return Reason::kTpmBusy;
      default:
        return Reason::kInternal;
    }
  }
  const TSS2_RC base = rc & TSS2_RC_LAYER_MASK ? rc & ~TSS2_RC_LAYER_MASK : rc;
  if (layer == TSS2_TCTI_RC_LAYER || base == TSS2_BASE_RC_IO_ERROR ||
      base == TSS2_BASE_RC_NO_CONNECTION || base == TSS2_BASE_RC_TRY_AGAIN ||
      base == TSS2_BASE_RC_NOT_IMPLEMENTED)
    return Reason::kTpmUnreachable;
  return Reason::kInternal;
}

std::string describe_rc(TSS2_RC rc) {
  // libtss2-rc is loaded on the first error, not by every process that loads tpmkey.
  static const auto decode = [] {
    void* lib = dlopen("libtss2-rc.so.0", RTLD_NOW | RTLD_LOCAL);
    return lib ? reinterpret_cast<decltype(&Tss2_RC_Decode)>(dlsym(lib, "Tss2_RC_Decode")) : nullptr;
  }();
  char buf[32];
  std::snprintf(buf, sizeof buf, " (rc=0x%08x)", rc);
  return std::string(decode ? decode(rc) : "TSS2 error") + buf;
}

Error tss_error(const std::string& what, TSS2_RC rc) {
  return Error{classify_rc(rc), what, describe_rc(rc)};
}

}  // namespace tpmkey
