// Key: one TPM key as the provider and the CLI use it: its key file, its public half, and signing.
#pragma once

#include <memory>
#include <string>

#include "keystore/algorithm.h"
#include "keystore/context.h"
#include "keystore/tpm/objects.h"
#include "keystore/keyfile.h"
#include "keystore/uri.h"

namespace tpmkey {

class Key {
 public:
  // `label` names the key in messages ("tpm2:ssh").
  static Result<std::shared_ptr<Key>> from_file(Context& ctx, KeyFile kf, std::string label);
  // Generates a key inside the TPM under the owner storage primary.
  static Result<std::shared_ptr<Key>> generate(Context& ctx, const KeyOptions& opts, SecretBytes auth,
                                               std::string label);
  // Opens what a tpm2: URI names (a keystore entry or a key file), with the URI's pin, if any.
  static Result<std::shared_ptr<Key>> open(Context& ctx, const TpmUri& uri);
  ~Key();

  const KeyFile& file() const { return kf_; }
  const AlgorithmSpec& spec() const { return *spec_; }
  const std::string& label() const { return label_; }
  EVP_PKEY* public_pkey() const { return pub_.get(); }
  bool needs_auth() const { return !kf_.empty_auth; }
  bool has_auth() const { return has_auth_; }
  void set_auth(SecretBytes auth) {
    auth_ = std::move(auth);
    has_auth_ = true;
  }
  // A restricted (attestation) key: the TPM signs only what it hashed itself (sign_message).
  bool restricted() const { return kf_.pub.publicArea.objectAttributes & TPMA_OBJECT_RESTRICTED; }
  // ECDSA: DER ECDSA-Sig-Value; RSA: the signature octets. `digest` is already hashed.
  Result<Bytes> sign(const SignScheme& scheme, const uint8_t* digest, size_t len);
  // The same for a whole message, hashed by the TPM: how restricted keys sign.
  Result<Bytes> sign_message(const SignScheme& scheme, const Bytes& message);
  // Largest signature sign() returns.
  size_t max_signature_size() const;

 private:
  Key(Context& ctx) : ctx_(ctx) {}
  Result<Bytes> encode(const TPMT_SIGNATURE& sig, const std::string& what) const;
  Context& ctx_;
  KeyFile kf_;
  const AlgorithmSpec* spec_ = nullptr;
  std::string label_;
  EvpPkeyPtr pub_;
  ObjectId id_ = 0;  // this key's entry in the Tpm object cache
  SecretBytes auth_;
  bool has_auth_ = false;
};

// Reads a password from a pin-source path (first line, without the newline).
Result<SecretBytes> read_pin_source(const std::string& path);

}  // namespace tpmkey
