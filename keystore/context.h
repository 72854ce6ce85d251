// Context: what one provider instance (or one CLI run) shares: settings, the keystore, and a
// lazily made Tpm and crypto context. Nothing here touches the TPM until asked.
#pragma once

#include <memory>
#include <optional>

#include "keystore/config.h"
#include "keystore/crypto.h"
#include "keystore/keystore.h"
#include "keystore/tpm/tpm.h"

namespace tpmkey {

class Context {
 public:
  // `crypto_where`: see Crypto (the provider passes kGlobalIfDefault when OpenSSL loaded it into
  // the global library context). Settings that failed to resolve are reported by the first use
  // of the TPM (a process that never uses it is not broken by them).
  explicit Context(Result<Settings> s, Crypto::Where crypto_where = Crypto::Where::kPrivate);
  ~Context();
  const Settings& settings() const { return settings_; }
  // Whether the settings resolved (an error is reported by tpm()).
  bool settings_valid() const { return !settings_error_; }
  // The agent's own provider signs directly: it is the agent (keystore/broker.h).
  void never_use_agent() {
    settings_.agent = "off";
    settings_.agent_required = false;
  }
  const Keystore& keystore() const { return keystore_; }
  // The error of settings that failed to resolve, if they did. Then keystore() is the default
  // settings' (or none): the store reports this before it reads the keystore.
  Status settings_status() const { return settings_error_ ? Status(*settings_error_) : Status::Ok(); }

  // Made on first use. In a forked child the parent's Tpm (which the fork handler already made
  // forget everything) is replaced by a new one.
  Result<Tpm*> tpm();
  // The Tpm if one exists for this process, else nullptr (never makes one).
  Tpm* tpm_if_connected();
  Result<Crypto*> crypto();

 private:
  Result<Crypto*> crypto_locked();

  Settings settings_;
  std::optional<Error> settings_error_;
  Keystore keystore_;
  Crypto::Where crypto_where_;
  std::unique_ptr<Crypto> crypto_;  // declared first: the Tpm uses it until it is destroyed
  std::unique_ptr<Tpm> tpm_;
};

}  // namespace tpmkey
