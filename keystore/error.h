// Error and Result: how the core reports expected failures (no exceptions cross the C ABI).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include <tss2/tss2_common.h>

namespace tpmkey {

// The few reasons a user can act on. Values are the provider's OpenSSL reason codes (stable:
// new reasons are added at the end).
enum class Reason : int {
  kTpmUnreachable = 1,
  kAuthFailed,
  kLockout,
  kKeyNotFound,
  kMalformedUri,
  kMalformedKey,
  kUnsupported,
  kTpmBusy,
  kInvalidArgument,
  kIo,
  kUntrustedTpm,
  kInternal,
  kTpmNotReady,
  kUnsafePermissions,  // a file or directory another user could have written (files.h)
};
inline constexpr Reason kFirstReason = Reason::kTpmUnreachable;
inline constexpr Reason kLastReason = Reason::kUnsafePermissions;

// Human text for a reason, e.g. "authorization failed". Inline, so that tpmkey.so's front
// (provider/module.cc) gives OpenSSL the same texts without the core.
constexpr const char* reason_text(Reason r) {
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
    case Reason::kTpmNotReady: return "TPM not ready";
    case Reason::kUnsafePermissions: return "unsafe ownership or permissions";
  }
  return "internal error";
}

// Never holds a secret: messages name objects and decoded return codes only.
struct Error {
  Reason reason = Reason::kInternal;
  std::string where;   // what was being done to which object: "sign(tpm2:ssh)"
  std::string detail;  // why: "tpm:session(1):the authorization HMAC check failed (rc=0x000009a2)"
  TSS2_RC rc = TSS2_RC_SUCCESS;  // the TPM or TSS return code behind it, if there is one

  // Prepends an outer operation: "load(tpm2:ssh)" + "read(/k.pem)" -> "load(tpm2:ssh): read(/k.pem)".
  Error& context(const std::string& what);
  // "sign(tpm2:ssh): authorization failed: tpm:session(1):... (rc=0x000009a2)"
  std::string text() const;
};

Error make_error(Reason r, std::string detail);

// OpenSSL drops an error text of ERR_MAX_DATA_SIZE (1024) bytes or more, NUL included, and its
// user sees an empty line: the provider raises at most this many bytes.
inline constexpr size_t kMaxErrorText = 1000;
// `text` in at most `max` bytes: the longest words (paths, mostly) lose their middle to "...",
// then, if it is still too long, its end. A UTF-8 character is never split.
std::string shorten_text(const std::string& text, size_t max);

// Classifies a TSS2 return code into a Reason, masking handle/session/parameter numbers.
Reason classify_rc(TSS2_RC rc);
// "tpm:session(1):the authorization HMAC check failed (rc=0x000009a2)"
std::string describe_rc(TSS2_RC rc);
// The error for a failed TPM/TSS call made while doing `what`.
Error tss_error(const std::string& what, TSS2_RC rc);

// The parts of a TPM response code (TPM 2.0 Part 2, "Response Codes").
// The code without handle/session/parameter numbers; 0 for codes of other layers.
uint32_t tpm_base_code(TSS2_RC rc);
// Whether the code names a session (format one, session-numbered).
bool names_session(TSS2_RC rc);
// Whether the TPM said its object or session slots are full (or similar transient shortage).
bool is_slot_shortage(TSS2_RC rc);

// Result<T>: a value or an Error. Result<void> is spelled Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error e) : v_(std::move(e)) {}
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T* operator->() { return &value(); }
  T& operator*() { return value(); }
  const Error& error() const { return std::get<1>(v_); }
  Error&& take_error() { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error e) : err_(std::move(e)), ok_(false) {}
  static Status Ok() { return {}; }
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return err_; }
  Error&& take_error() { return std::move(err_); }

 private:
  Error err_;
  bool ok_ = true;
};

}  // namespace tpmkey

// Propagates a failed Result/Status out of the current function.
#define TPMKEY_TRY(expr)                                   \
  do {                                                     \
    auto&& tpmkey_try_r_ = (expr);                         \
    if (!tpmkey_try_r_) return tpmkey_try_r_.take_error(); \
  } while (0)
