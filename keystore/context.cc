#include "keystore/context.h"

#include <unistd.h>

namespace tpmkey {

Result<Tpm*> Context::tpm() {
  std::lock_guard lock(mu_);
  if (tpm_ && tpm_->owner_pid() != getpid()) {
    tpm_->abandon();
    tpm_.reset();
  }
  if (!tpm_) {
    TpmOptions o;
    o.tcti = settings_.tcti;
    if (settings_.authorization == "password") o.password_auth = true;
    else if (settings_.authorization != "session")
      return make_error(Reason::kInvalidArgument, "authorization must be \"session\" or \"password\", not \"" +
                                                      settings_.authorization + "\"");
    auto pin = keystore_.read_pin();
    if (!pin) return pin.take_error();
    o.pin = std::move(*pin);
    // Trust on first use: the first SRK seen is recorded, when the keystore can be written.
    o.on_first_srk = [ks = keystore_](const SrkPin& p) { (void)ks.write_pin(p, false); };
    auto c = crypto_locked();
    if (!c) return c.take_error();
    auto t = Tpm::connect(std::move(o), **c);
    if (!t) return t.take_error();
    tpm_ = std::move(*t);
  }
  return tpm_.get();
}

Tpm* Context::tpm_if_connected() {
  std::lock_guard lock(mu_);
  return tpm_ && tpm_->owner_pid() == getpid() ? tpm_.get() : nullptr;
}

Result<Crypto*> Context::crypto() {
  std::lock_guard lock(mu_);
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
