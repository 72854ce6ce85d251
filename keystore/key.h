// Key: one TPM key as the provider and the CLI use it: its key file, its public half, signing,
// RSA decryption and ECDH (docs/keys.md).
#pragma once

#include <memory>
#include <mutex>
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
  // Generates a key inside the TPM under opts.parent (the owner SRK or a persistent parent).
  // `parent_auth`: the password of opts.parent, a persistent parent with one; it is recorded in
  // the keystore that the parent has one.
  static Result<std::shared_ptr<Key>> generate(Context& ctx, const KeyOptions& opts, SecretBytes auth,
                                               std::string label, SecretBytes parent_auth = {});
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
  // The key's persistent parent has a password of its own, recorded in the keystore
  // (Keystore::parent_needs_auth): loading the key asks for it (docs/keys.md#parents-with-a-password).
  bool needs_parent_auth() const { return needs_parent_auth_; }
  bool has_parent_auth() const { return has_parent_auth_; }
  void set_parent_auth(SecretBytes auth) {
    parent_auth_ = std::move(auth);
    has_parent_auth_ = true;
  }
  // A restricted (attestation) key: the TPM signs only what it hashed itself (sign_message).
  bool restricted() const { return kf_.pub.publicArea.objectAttributes & TPMA_OBJECT_RESTRICTED; }
  // What the key's public area allows (kUsage* bits): sign, decrypt (RSA decryption, ECDH), both.
  unsigned usage() const { return usage_of(kf_.pub.publicArea); }
  bool can_sign() const { return usage() & kUsageSign; }
  bool can_decrypt() const { return usage() & kUsageDecrypt; }
  // Whether a running tpmkey agent holds this key, unlocked, and signs with it for this process
  // (keystore/broker.h), while this process lacks a password the key or its parent needs: then
  // loading it asks for none. Only for keys that can do
  // nothing but sign, since the agent does nothing else for other processes.
  bool agent_signs_for_it();
  // ECDSA: DER ECDSA-Sig-Value; RSA: the signature octets. `digest` is already hashed.
  // A key without the sign usage is refused before any TPM command.
  Result<Bytes> sign(const SignScheme& scheme, const uint8_t* digest, size_t len);
  // The same for a whole message, hashed by the TPM: how restricted keys sign.
  Result<Bytes> sign_message(const SignScheme& scheme, const Bytes& message);
  // Largest signature sign() returns.
  size_t max_signature_size() const;

  // RSA decryption of `in` (at most the modulus size, and below the modulus) with TPM2_RSA_Decrypt
  // (tpm.h rsa_decrypt): the same lifecycle, retries, reconnects and errors as sign(). An EC key,
  // or a key without the decrypt usage, is refused before any TPM command. PKCS#1 v1.5 with
  // implicit rejection (the default) never fails for bad padding: it returns a synthetic message,
  // deterministic per ciphertext, after the same TPM commands as for valid padding (docs/keys.md,
  // "Implicit rejection"). kNone returns the modulus-size raw result.
  Result<SecretBytes> decrypt(const DecryptScheme& scheme, const uint8_t* in, size_t len);
  // The modulus size: the longest ciphertext and plaintext (RSA keys).
  size_t modulus_size() const;

  // ECDH with an EC key that has the decrypt usage (TPM2_ECDH_ZGen): the shared secret, the
  // x-coordinate of d * peer, as long as the curve's field (what OpenSSL's ECDH derive returns).
  // `peer_point` is a SEC1 point on the key's curve (04 || x || y, or compressed), as
  // OSSL_PKEY_PARAM_PUB_KEY holds it; a point that is not on the curve is refused before any TPM
  // command.
  Result<SecretBytes> derive(const uint8_t* peer_point, size_t len);
  // The same with the peer's public key (an EC key on the same curve, from any provider).
  Result<SecretBytes> derive(const EVP_PKEY* peer);
  // The shared secret's size: the curve's field size in bytes (EC keys).
  size_t shared_secret_size() const;

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
  SecretBytes parent_auth_;
  bool has_parent_auth_ = false;
  bool needs_parent_auth_ = false;
  // Tpm::serial() of the connection the parent's password was given to: once per connection, so
  // that a password it refused is not sent again; a new one (a forked child's) gets it again.
  uint64_t parent_auth_given_to_ = 0;
  // The TPM connection, told the parent's password (or that it needs one) first.
  Result<Tpm*> tpm();
  // The implicit-rejection secret: the raw decryption of implicit_rejection_probe
  // (rsa_padding.h), made once per Key by the TPM.
  Result<SecretBytes> rejection_secret(Tpm& tpm);
  std::mutex rejection_mu_;
  SecretBytes rejection_secret_;
};

}  // namespace tpmkey
