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
    auto t = Tpm::connect(settings_.tcti);
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
  if (!crypto_) {
    auto c = Crypto::create();
    if (!c) return c.take_error();
    crypto_ = std::move(*c);
  }
  return crypto_.get();
}

}  // namespace tpmkey
