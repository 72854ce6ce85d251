#include "keystore/key.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "keystore/broker.h"
#include "keystore/public_key.h"

namespace tpmkey {

Result<std::shared_ptr<Key>> Key::from_file(Context& ctx, KeyFile kf, std::string label) {
  auto spec = spec_of(kf.pub.publicArea);
  if (!spec) return spec.take_error().context("open(" + label + ")");
  if (!(kf.pub.publicArea.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT))
    return make_error(Reason::kUnsupported, "the key is not a signing key").context("open(" + label + ")");
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
  return k;
}

Result<std::shared_ptr<Key>> Key::generate(Context& ctx, const KeyOptions& opts, SecretBytes auth,
                                           std::string label) {
  const std::string what = std::string("generate(") + opts.spec->name + ")";
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context(what);
  KeyOptions with_auth = opts;
  with_auth.with_auth = !auth.empty();
  auto kf = (*tpm)->create_key(with_auth, auth, opts.parent);
  if (!kf) return kf.take_error().context(what);
  auto key = from_file(ctx, std::move(*kf), std::move(label));
  if (key && !auth.empty()) (*key)->set_auth(std::move(auth));
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
    auto pin = read_pin_source(*uri.pin_source);
    if (!pin) return pin.take_error().context("open(" + label + ")");
    (*key)->set_auth(std::move(*pin));
  }
  return key;
}

Key::~Key() {
  if (Tpm* t = ctx_.tpm_if_connected()) t->forget(id_);
}

size_t Key::max_signature_size() const { return size_t(EVP_PKEY_get_size(pub_.get())); }

Result<Bytes> Key::sign(const SignScheme& scheme, const uint8_t* digest, size_t len) {
  const std::string what = "sign(" + label_ + ")";
  // The broker (keystore/broker.h): a running tpmkey agent that holds this key signs for a process
  // that has no TPM connection of its own yet, or no password for a key that needs one. A password
  // this process was given is never sent: such a key signs here. Any failure: the TPM below.
  if (!restricted() && !(needs_auth() && has_auth_) && (needs_auth() || !ctx_.tpm_if_connected())) {
    if (auto sig = broker_sign(ctx_, kf_, pub_.get(), scheme, digest, len)) return std::move(*sig);
  }
  if (needs_auth() && !has_auth_)
    return make_error(Reason::kAuthFailed, "the key needs a password and none was given").context(what);
  auto tpm = ctx_.tpm();
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
  if (needs_auth() && !has_auth_)
    return make_error(Reason::kAuthFailed, "the key needs a password and none was given").context(what);
  auto tpm = ctx_.tpm();
  if (!tpm) return tpm.take_error().context(what);
  auto sig = (*tpm)->sign_message(id_, kf_, auth_, scheme, message);
  if (!sig) return sig.take_error().context(what);
  return encode(*sig, what);
}

Result<Bytes> Key::encode(const TPMT_SIGNATURE& sig, const std::string& what) const {
  if (spec_->kind == KeyKind::kRsa) {
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

Result<SecretBytes> read_pin_source(const std::string& path) {
  const std::string what = "pin-source(" + path + ")";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(Reason::kIo, std::strerror(errno)).context(what);
  uint8_t buf[256];
  ssize_t n;
  do n = read(fd, buf, sizeof buf); while (n < 0 && errno == EINTR);
  close(fd);
  if (n < 0) return make_error(Reason::kIo, std::strerror(errno)).context(what);
  size_t len = 0;
  while (len < size_t(n) && buf[len] != '\n' && buf[len] != '\r') ++len;
  SecretBytes pin(buf, len);
  OPENSSL_cleanse(buf, sizeof buf);
  return pin;
}

}  // namespace tpmkey
