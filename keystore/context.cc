#include "keystore/context.h"

#include <unistd.h>

#include "keystore/tpm/process.h"

namespace tpmkey {
namespace {

Settings settings_or_defaults(Result<Settings>& s) {
  if (s) return std::move(*s);
  auto d = resolve_settings({});
  return d ? std::move(*d) : Settings{};
}

}  // namespace

Context::Context(Result<Settings> s, Crypto::Where crypto_where)
    : settings_(settings_or_defaults(s)),
      settings_error_(s ? std::nullopt : std::optional<Error>(s.error())),
      keystore_(settings_.keystore),
      crypto_where_(crypto_where) {}

Context::~Context() {
  auto lock = lock_process();
  tpm_.reset();
  crypto_.reset();
}

Result<Tpm*> Context::tpm() {
  auto lock = lock_process();
  if (settings_error_) return *settings_error_;
  if (tpm_ && tpm_->owner_pid() != getpid()) tpm_.reset();
  if (!tpm_) {
    TpmOptions o;
    o.tcti = settings_.tcti;
    o.password_auth = settings_.authorization == "password";
    o.timeouts = settings_.timeouts;
    auto pin = keystore_.read_pin();
    if (!pin) return pin.take_error();
    o.pin = std::move(*pin);
    // Trust on first use: the first SRK seen is recorded. Another process may have recorded it a
    // moment before: then it must be the same SRK.
    o.on_first_srk = [ks = keystore_](const SrkPin& p) -> Status {
      Status written = ks.write_pin(p, false);
      if (written) return written;
      auto now = ks.read_pin();
      if (now && *now && (*now)->name == p.name) return Status::Ok();
      if (written.error().reason == Reason::kUnsafePermissions) return written;  // says what to fix
      if (now && *now)
        return make_error(Reason::kUntrustedTpm, "another process pinned a different storage root key in " +
                                                     ks.pin_path() + " meanwhile");
      return make_error(Reason::kIo, "the keystore has no SRK pin and tpmkey cannot record one (" +
                                         written.error().text() +
                                         "): without a pin any TPM's storage root key would be trusted. Make " +
                                         ks.dir() + " writable, or run `tpmkey init` as its owner")
          .context("pin the storage root key");
    };
    o.reread_pin = [ks = keystore_]() -> std::optional<SrkPin> {
      auto p = ks.read_pin();
      return p ? *p : std::nullopt;
    };
    auto c = crypto_locked();
    if (!c) return c.take_error();
    tpm_ = Tpm::create(std::move(o), **c);
  }
  return tpm_.get();
}

Tpm* Context::tpm_if_connected() {
  auto lock = lock_process();
  return tpm_ && tpm_->owner_pid() == getpid() ? tpm_.get() : nullptr;
}

Result<Crypto*> Context::crypto() {
  auto lock = lock_process();
  return crypto_locked();
}

Result<Crypto*> Context::crypto_locked() {
  if (!crypto_) {
    auto c = Crypto::create(crypto_where_);
    if (!c) return c.take_error();
    crypto_ = std::move(*c);
  }
  return crypto_.get();
}

}  // namespace tpmkey
