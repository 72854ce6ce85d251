// Context: what one provider instance (or one CLI run) shares: settings, the keystore, and a
// lazily made TPM connection and crypto context. Nothing here touches the TPM until asked.
#pragma once

#include <memory>
#include <mutex>

#include "keystore/config.h"
#include "keystore/crypto.h"
#include "keystore/keystore.h"
#include "keystore/tpm.h"

namespace tpmkey {

class Context {
 public:
  // `crypto_where`: see Crypto (the provider passes kGlobalIfDefault when OpenSSL loaded it into
  // the global library context).
  explicit Context(Settings s, Crypto::Where crypto_where = Crypto::Where::kPrivate)
      : settings_(std::move(s)), keystore_(settings_.keystore), crypto_where_(crypto_where) {}
  const Settings& settings() const { return settings_; }
  const Keystore& keystore() const { return keystore_; }

  // Connects on first use. After fork() the child drops the parent's connection without
  // touching its handles, and connects anew.
  Result<Tpm*> tpm();
  // The connection if there is one in this process, else nullptr (never connects).
  Tpm* tpm_if_connected();
  Result<Crypto*> crypto();

 private:
  Result<Crypto*> crypto_locked();

  Settings settings_;
  Keystore keystore_;
  Crypto::Where crypto_where_;
  std::mutex mu_;
  std::unique_ptr<Crypto> crypto_;  // declared first: the Tpm uses it until it is destroyed
  std::unique_ptr<Tpm> tpm_;
};

}  // namespace tpmkey
