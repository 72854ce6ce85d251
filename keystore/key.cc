#include "keystore/key.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include "keystore/broker.h"
#include "keystore/files.h"
#include "keystore/public_key.h"
#include "keystore/rsa_padding.h"

namespace tpmkey {

Result<std::shared_ptr<Key>> Key::from_file(Context& ctx, KeyFile kf, std::string label) {
  auto spec = spec_of(kf.pub.publicArea);
  if (!spec) return spec.take_error().context("open(" + label + ")");
  if (!usage_of(kf.pub.publicArea))
    return make_error(Reason::kUnsupported,
                      (kf.pub.publicArea.objectAttributes & TPMA_OBJECT_RESTRICTED)
                          ? "the key is a storage key (restricted, decrypt): a parent, not a key for data"
                          : "the key can neither sign nor decrypt")
        .context("open(" + label + ")");
  auto crypto = ctx.crypto();
  if (!crypto) return crypto.take_error();
  auto pub = tpmkey::public_pkey(kf.pub.publicArea, (*crypto)->libctx());
  if (!pub) return pub.take_error().context("open(" + label + ")");
  std::shared_ptr<Key> k(new Key(ctx));
  k->kf_ = std::move(kf);
  k->spec_ = *spec;
  k->label_ = std::move(label);
  k->pub_ = std::move(*pub);
  k->id_ = new_object_id();
  k->needs_parent_auth_ = k->kf_.parent != kOwnerParent && ctx.keystore().parent_needs_auth(k->kf_.parent);
  return k;
}

Result<Tpm*> Key::tpm() {
  auto tpm = ctx_.tpm();
  if (!tpm || parent_auth_given_to_ == (*tpm)->serial() || kf_.parent == kOwnerParent) return tpm;
  if (has_parent_auth_) (*tpm)->set_parent_auth(kf_.parent, parent_auth_);
  else if (needs_parent_auth_) (*tpm)->require_parent_auth(kf_.parent);
  parent_auth_given_to_ = (*tpm)->serial();
  return tpm;
}

Result<std::shared_ptr<Key>> Key::generate(Context& ctx, const KeyOptions& opts, SecretBytes auth,
                                           std::string label, SecretBytes parent_auth) {
  const std::string what = std::string("generate(") + opts.spec->name + ")";
  const bool with_parent_auth = !parent_auth.empty();
  if (with_parent_auth && opts.parent == kOwnerParent)
    return make_error(Reason::kInvalidArgument,
                      "parent-auth is the password of a persistent parent (parent:0x81...); the owner SRK has none")
        .context(what);
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context(what);
  if (with_parent_auth) (*tpm)->set_parent_auth(opts.parent, parent_auth);
  else if (opts.parent != kOwnerParent && ctx.keystore().parent_needs_auth(opts.parent))
    (*tpm)->require_parent_auth(opts.parent);
  KeyOptions with_auth = opts;
  with_auth.with_auth = !auth.empty();
  auto kf = (*tpm)->create_key(with_auth, auth, opts.parent);
  if (!kf) return kf.take_error().context(what);
  // The parent took the password: record that it has one, so that loading any key under it
  // asks for it (docs/keys.md#parents-with-a-password).
  if (with_parent_auth) TPMKEY_TRY(ctx.keystore().record_parent_needs_auth(opts.parent));
  auto key = from_file(ctx, std::move(*kf), std::move(label));
  if (key && !auth.empty()) (*key)->set_auth(std::move(auth));
  if (key && with_parent_auth) (*key)->set_parent_auth(std::move(parent_auth));
  return key;
}

namespace {

// A key that lives at a persistent handle: its public area comes from the TPM. Whether it needs a
// password cannot be read from the TPM; it is used with the URI's pin if there is one.
Result<KeyFile> open_persistent(Context& ctx, uint32_t handle, bool with_pin) {
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error();
  auto pub = (*tpm)->public_of(handle);
  if (!pub) return pub.take_error();
  KeyFile kf;
  kf.pub = *pub;
  kf.parent = 0;
  kf.persistent = handle;
  kf.empty_auth = !with_pin;
  return kf;
}

}  // namespace

Result<std::shared_ptr<Key>> Key::open(Context& ctx, const TpmUri& uri) {
  const std::string label = display_uri(uri);
  Result<KeyFile> kf = make_error(Reason::kInternal, "");
  if (uri.name) {
    kf = ctx.keystore().read(*uri.name);
  } else if (uri.file) {
    // A path the user chose: the file must be theirs (or root's) and not writable by others; its
    // directories, and its group (tpm2-tools writes key files 0660), are their business
    // (docs/keys.md#by-path).
    kf = read_keyfile(*uri.file, Symlinks::kFollow, Writers::kUserOrRootAndGroup);
  } else if (uri.handle) {
    kf = open_persistent(ctx, *uri.handle, uri.pin_value || uri.pin_source);
  } else {
    kf = make_error(Reason::kInvalidArgument, "the URI names the whole keystore, not a key");
  }
  if (!kf) return kf.take_error().context("open(" + label + ")");
  auto key = from_file(ctx, std::move(*kf), label);
  if (!key) return key;
  if (!(*key)->needs_auth()) return key;  // a pin for a key without a password is not sent
  if (uri.pin_value) {
    (*key)->set_auth(*uri.pin_value);
  } else if (uri.pin_source) {
    // Read and checked as --password-file is (keystore/files.h): another user's file, or one
    // that others can read, is refused.
    auto pin = read_secret_file(*uri.pin_source);
    if (!pin) return pin.take_error().context("open(" + label + ")");
    (*key)->set_auth(std::move(*pin));
  }
  return key;
}

namespace {
bool crypto_md_ok(const Crypto& c, TPM2_ALG_ID h) { return c.md(h) != nullptr; }
}  // namespace

Key::~Key() {
  if (Tpm* t = ctx_.tpm_if_connected()) t->forget(id_);
}

size_t Key::max_signature_size() const { return size_t(EVP_PKEY_get_size(pub_.get())); }

namespace {

Error no_usage(const std::string& have, const std::string& want) {
  return make_error(Reason::kUnsupported, "the key's usage is " + have + ": it cannot " + want +
                                              " (its public area lacks the " +
                                              (want == "sign" ? "sign" : "decrypt") + " attribute)");
}

}  // namespace

bool Key::agent_signs_for_it() {
  const bool missing = (needs_auth() && !has_auth_) || (needs_parent_auth_ && !has_parent_auth_);
  return missing && !restricted() && usage() == kUsageSign && broker_holds(ctx_, kf_);
}

Result<Bytes> Key::sign(const SignScheme& scheme, const uint8_t* digest, size_t len) {
  const std::string what = "sign(" + label_ + ")";
  if (!can_sign()) return no_usage(usage_text(usage()), "sign").context(what);
  // The broker (keystore/broker.h): a running tpmkey agent that holds this key signs for a process
  // that has no TPM connection of its own yet, or no password for a key that needs one. A password
  // this process was given is never sent: such a key signs here. Any failure: the TPM below,
  // unless agent-required is set, when every signature is the agent's or an error.
  const bool required = ctx_.settings_valid() && ctx_.settings().agent_required;
  if (required && restricted())
    return make_error(Reason::kUnsupported, "agent-required is set and a restricted (attestation) key does not "
                                            "sign through the agent")
        .context(what);
  if (required || (!restricted() && !(needs_auth() && has_auth_) && (needs_auth() || !ctx_.tpm_if_connected()))) {
    auto sig = broker_sign(ctx_, kf_, pub_.get(), scheme, digest, len);
    if (sig) return std::move(*sig);
    if (required)
      return sig.take_error().context(what + ": agent-required is set, so this process does not sign with the TPM "
                                             "itself; start `tpmkey agent` (and add the key if it has a password) "
                                             "or set agent-required = no");
  }
  if (needs_auth() && !has_auth_)
    return make_error(Reason::kAuthFailed, "the key needs a password and none was given").context(what);
  auto tpm = this->tpm();
  if (!tpm) return tpm.take_error().context(what);
  SignRequest req;
  req.scheme = scheme;
  req.digest.assign(digest, digest + len);
  if (restricted())
    return make_error(Reason::kUnsupported,
                      "a restricted (attestation) key signs only whole messages that the TPM hashes itself, not a "
                      "digest: use EVP_DigestSign (openssl pkeyutl -rawin)")
        .context(what);
  auto sig = (*tpm)->sign(id_, kf_, auth_, req);
  if (!sig) return sig.take_error().context(what);
  return encode(*sig, what);
}

Result<Bytes> Key::sign_message(const SignScheme& scheme, const Bytes& message) {
  const std::string what = "sign(" + label_ + ")";
  if (!can_sign()) return no_usage(usage_text(usage()), "sign").context(what);
  if (needs_auth() && !has_auth_)
    return make_error(Reason::kAuthFailed, "the key needs a password and none was given").context(what);
  auto tpm = this->tpm();
  if (!tpm) return tpm.take_error().context(what);
  auto sig = (*tpm)->sign_message(id_, kf_, auth_, scheme, message);
  if (!sig) return sig.take_error().context(what);
  return encode(*sig, what);
}

size_t Key::modulus_size() const { return kf_.pub.publicArea.unique.rsa.size; }

namespace {

// `v` left-padded with zeros to `k` bytes (v no longer than k).
SecretBytes left_pad(const SecretBytes& v, size_t k) {
  SecretBytes out(k);
  if (!v.empty() && v.size() <= k) std::memcpy(out.data() + (k - v.size()), v.data(), v.size());
  return out;
}

const char* scheme_name(TPM2_ALG_ID s) {
  return s == TPM2_ALG_RSAES ? "RSAES (PKCS#1 v1.5)" : s == TPM2_ALG_OAEP ? "OAEP" : "another scheme";
}

}  // namespace

Result<SecretBytes> Key::rejection_secret(Tpm& tpm) {
  std::lock_guard lock(rejection_mu_);
  if (!rejection_secret_.empty()) return rejection_secret_;
  auto crypto = ctx_.crypto();
  if (!crypto) return crypto.take_error();
  RsaDecryptRequest req;
  req.scheme = TPM2_ALG_NULL;
  req.ciphertext = implicit_rejection_probe(**crypto, modulus_size());
  auto raw = tpm.rsa_decrypt(id_, kf_, auth_, req);
  if (!raw) return raw.take_error();
  if (raw->size() > modulus_size()) return make_error(Reason::kUntrustedTpm, "the TPM's RSA result is too long");
  rejection_secret_ = left_pad(*raw, modulus_size());
  return rejection_secret_;
}

Result<SecretBytes> Key::decrypt(const DecryptScheme& scheme, const uint8_t* in, size_t len) {
  const std::string what = "decrypt(" + label_ + ")";
  if (spec_->kind == KeyKind::kEc)
    return make_error(Reason::kUnsupported, "an EC key does not decrypt (it derives ECDH secrets)").context(what);
  if (!can_decrypt()) return no_usage(usage_text(usage()), "decrypt").context(what);
  if (needs_auth() && !has_auth_)
    return make_error(Reason::kAuthFailed, "the key needs a password and none was given").context(what);
  const size_t k = modulus_size();
  if (len > k || len == 0)
    return make_error(Reason::kInvalidArgument,
                      "the ciphertext is " + std::to_string(len) + " bytes; the modulus is " + std::to_string(k))
        .context(what);
  Bytes c(k, 0);
  std::memcpy(c.data() + (k - len), in, len);
  // c < n: public values, so a plain comparison (OpenSSL refuses the same).
  if (std::memcmp(c.data(), kf_.pub.publicArea.unique.rsa.buffer, k) >= 0)
    return make_error(Reason::kInvalidArgument, "the ciphertext is not below the modulus").context(what);

  // A key bound to a scheme (made by another tool) decrypts only with it: no raw operation.
  const TPMT_RSA_SCHEME& bound = kf_.pub.publicArea.parameters.rsaDetail.scheme;
  const bool raw_ok = bound.scheme == TPM2_ALG_NULL;
  auto refuse = [&](const std::string& why) {
    return make_error(Reason::kUnsupported, why).context(what);
  };
  auto crypto = ctx_.crypto();
  if (!crypto) return crypto.take_error().context(what);
  auto tpm = this->tpm();
  if (!tpm) return tpm.take_error().context(what);

  RsaDecryptRequest req;
  req.ciphertext = std::move(c);
  auto run = [&]() -> Result<SecretBytes> {
    auto out = (*tpm)->rsa_decrypt(id_, kf_, auth_, req);
    if (out) return out;
    Error e = out.take_error();
    // The TPM unpadded (RSAES, OAEP) and refused: TPM_RC_VALUE in the specification, and
    // TPM_RC_FAILURE from libtpms, which must not read as a TPM in failure mode.
    const uint32_t base = tpm_base_code(e.rc);
    if (req.scheme != TPM2_ALG_NULL && (base == TPM2_RC_VALUE || base == TPM2_RC_FAILURE || base == TPM2_RC_SIZE)) {
      e.reason = Reason::kInvalidArgument;
      e.detail = "decryption failed: the TPM rejected the ciphertext (bad padding, a wrong OAEP label or digest, or "
                 "another key's ciphertext): " + e.detail;
    }
    return e.context(what);
  };
  auto raw = [&]() -> Result<SecretBytes> {
    req.scheme = TPM2_ALG_NULL;
    auto out = run();
    if (!out) return out;
    if (out->size() > k) return make_error(Reason::kUntrustedTpm, "the TPM's RSA result is too long").context(what);
    return left_pad(*out, k);
  };

  switch (scheme.padding) {
    case RsaPadding::kNone:
      if (!raw_ok) return refuse(std::string("the key is bound to ") + scheme_name(bound.scheme) + ": no raw RSA decryption");
      return raw();
    case RsaPadding::kPkcs1: {
      if (bound.scheme == TPM2_ALG_OAEP) return refuse("the key is bound to OAEP: no PKCS#1 v1.5 decryption");
      if (scheme.implicit_rejection && raw_ok) {
        // Implicit rejection: the secret first (once per Key), then the raw decryption, then the
        // constant-time unpadding. Valid or not, the same TPM commands and no error.
        auto secret = rejection_secret(**tpm);
        if (!secret) return secret.take_error().context(what);
        auto em = raw();
        if (!em) return em;
        auto m = pkcs1_decode_implicit(**crypto, *em, *secret, req.ciphertext);
        if (!m) return m.take_error().context(what);
        return m;
      }
      // Implicit rejection off (the caller asked), or a key bound to RSAES: the TPM unpads, and
      // bad padding is an error (docs/keys.md says what that costs).
      req.scheme = TPM2_ALG_RSAES;
      return run();
    }
    case RsaPadding::kOaep: {
      if (!crypto_md_ok(**crypto, scheme.hash))
        return refuse(std::string("OAEP digest ") + hash_name(scheme.hash) + " (SHA-1, SHA-256, SHA-384 or SHA-512)");
      if (bound.scheme == TPM2_ALG_RSAES) return refuse("the key is bound to RSAES (PKCS#1 v1.5): no OAEP decryption");
      if (bound.scheme == TPM2_ALG_OAEP && bound.details.oaep.hashAlg != scheme.hash)
        return refuse(std::string("the key is bound to OAEP with ") + hash_name(bound.details.oaep.hashAlg));
      const bool tpm_label = scheme.label.empty() || scheme.label.back() == 0;
      if (tpm_label) {
        // The TPM decodes: an empty label, or one it takes as it is (NUL-terminated).
        req.scheme = TPM2_ALG_OAEP;
        req.hash = scheme.hash;
        req.label = scheme.label;
        return run();
      }
      // A label without a terminating NUL, which the TPM refuses: the raw decryption, decoded
      // here (OpenSSL's constant-time OAEP decoder).
      if (!raw_ok) return refuse("the TPM takes only NUL-terminated OAEP labels, and the key is bound to OAEP");
      auto em = raw();
      if (!em) return em;
      auto m = oaep_decode(*em, (*crypto)->md(scheme.hash), scheme.label.data(), scheme.label.size());
      if (!m) return m.take_error().context(what);
      return m;
    }
  }
  return refuse("unknown RSA padding");
}

size_t Key::shared_secret_size() const { return size_t(spec_->bits + 7) / 8; }

Result<SecretBytes> Key::derive(const uint8_t* peer_point, size_t len) {
  const std::string what = "derive(" + label_ + ")";
  if (spec_->kind != KeyKind::kEc)
    return make_error(Reason::kUnsupported, "an RSA key does not derive ECDH secrets").context(what);
  if (!can_decrypt()) return no_usage(usage_text(usage()), "derive ECDH secrets").context(what);
  if (needs_auth() && !has_auth_)
    return make_error(Reason::kAuthFailed, "the key needs a password and none was given").context(what);
  auto crypto = ctx_.crypto();
  if (!crypto) return crypto.take_error().context(what);
  // The peer point must be on the key's curve, checked here so a bad point never reaches the TPM.
  OsslPtr<EC_GROUP, EC_GROUP_free> group(
      EC_GROUP_new_by_curve_name_ex((*crypto)->libctx(), "provider=default", EC_curve_nist2nid(spec_->group)));
  OsslPtr<EC_POINT, EC_POINT_free> point(group ? EC_POINT_new(group.get()) : nullptr);
  BignumPtr x(BN_new()), y(BN_new());
  if (!group || !point || !x || !y) return make_error(Reason::kInternal, "cannot make the EC group").context(what);
  if (!peer_point || len == 0 || EC_POINT_oct2point(group.get(), point.get(), peer_point, len, nullptr) != 1 ||
      EC_POINT_is_at_infinity(group.get(), point.get()) ||
      EC_POINT_is_on_curve(group.get(), point.get(), nullptr) != 1 ||
      EC_POINT_get_affine_coordinates(group.get(), point.get(), x.get(), y.get(), nullptr) != 1) {
    ERR_clear_error();
    return make_error(Reason::kInvalidArgument, std::string("the peer's public key is not a point on ") + spec_->group)
        .context(what);
  }
  const size_t w = shared_secret_size();
  Bytes xb(w), yb(w);
  if (BN_bn2binpad(x.get(), xb.data(), int(w)) != int(w) || BN_bn2binpad(y.get(), yb.data(), int(w)) != int(w))
    return make_error(Reason::kInternal, "cannot encode the peer point").context(what);
  auto tpm = this->tpm();
  if (!tpm) return tpm.take_error().context(what);
  auto z = (*tpm)->ecdh_zgen(id_, kf_, auth_, xb, yb);
  if (!z) return z.take_error().context(what);
  if (z->size() > w) return make_error(Reason::kUntrustedTpm, "the TPM's shared point is too long").context(what);
  return left_pad(*z, w);
}

Result<SecretBytes> Key::derive(const EVP_PKEY* peer) {
  const std::string what = "derive(" + label_ + ")";
  char group[64] = "";
  size_t glen = 0;
  if (!peer || !EVP_PKEY_is_a(peer, "EC") || !EVP_PKEY_get_group_name(peer, group, sizeof group, &glen)) {
    ERR_clear_error();
    return make_error(Reason::kInvalidArgument, "the peer key is not an EC public key").context(what);
  }
  if (spec_->kind == KeyKind::kEc && find_ec_group(group) != spec_) {
    return make_error(Reason::kInvalidArgument,
                      std::string("the peer key is on ") + group + ", the key on " + spec_->group)
        .context(what);
  }
  uint8_t buf[2 * 66 + 1];
  size_t n = 0;
  if (!EVP_PKEY_get_octet_string_param(peer, OSSL_PKEY_PARAM_PUB_KEY, buf, sizeof buf, &n)) {
    ERR_clear_error();
    return make_error(Reason::kInvalidArgument, "the peer key has no public point").context(what);
  }
  return derive(buf, n);
}

Result<Bytes> Key::encode(const TPMT_SIGNATURE& sig, const std::string& what) const {
  if (is_rsa(spec_->kind)) {
    const TPM2B_PUBLIC_KEY_RSA& s = sig.signature.rsassa.sig;  // rsapss has the same layout
    return Bytes(s.buffer, s.buffer + s.size);
  }
  const TPMS_SIGNATURE_ECDSA& e = sig.signature.ecdsa;
  EcdsaSigPtr es(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(e.signatureR.buffer, e.signatureR.size, nullptr);
  BIGNUM* s = BN_bin2bn(e.signatureS.buffer, e.signatureS.size, nullptr);
  if (!es || !r || !s || !ECDSA_SIG_set0(es.get(), r, s)) {
    BN_free(r);
    BN_free(s);
    return make_error(Reason::kInternal, "cannot encode the ECDSA signature").context(what);
  }
  int n = i2d_ECDSA_SIG(es.get(), nullptr);
  Bytes out(static_cast<size_t>(n > 0 ? n : 0));
  uint8_t* p = out.data();
  if (n <= 0 || i2d_ECDSA_SIG(es.get(), &p) != n)
    return make_error(Reason::kInternal, "cannot encode the ECDSA signature").context(what);
  return out;
}

}  // namespace tpmkey
