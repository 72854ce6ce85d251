#include "keystore/manage.h"

#include <cstdio>
#include <utility>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "keystore/uri.h"

namespace tpmkey {
namespace {

std::string hex32(uint32_t h) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", h);
  return buf;
}

bool is_persistent(uint32_t h) { return (h & 0xff000000u) == 0x81000000u; }

std::string create_what(const std::string& name) { return "create(tpm2:" + name + ")"; }
std::string import_what(const std::string& name) { return "import-file(tpm2:" + name + ")"; }
std::string import_key_what(const std::string& name) { return "import(tpm2:" + name + ")"; }
std::string delete_what(const std::string& name) { return "delete(tpm2:" + name + ")"; }
std::string passwd_what(const std::string& name) { return "passwd(tpm2:" + name + ")"; }

constexpr const char* kPersistentPasswd =
    "the password of a persistent key cannot be changed: TPM2_ObjectChangeAuth makes a new key blob, and the "
    "persistent object in the TPM would keep the old password";

// A new key's password: not empty (no password is nullopt), and no longer than the TPM takes.
Status check_new_password(const std::optional<SecretBytes>& password, const std::string& what) {
  if (!password) return Status::Ok();
  if (password->empty()) return make_error(Reason::kInvalidArgument, "the password is empty").context(what);
  if (password->size() > kMaxPasswordBytes)
    return make_error(Reason::kInvalidArgument,
                      "the password is " + std::to_string(password->size()) + " bytes long; a key's password can be at most " +
                          std::to_string(kMaxPasswordBytes) + " bytes (the size of a SHA-256 digest, the key's name algorithm)")
        .context(what);
  return Status::Ok();
}

}  // namespace

// ---- create ----

Status check_create(const Context& ctx, const std::string& name) {
  TPMKEY_TRY(validate_name(name));
  if (ctx.keystore().exists(name))
    return make_error(Reason::kInvalidArgument, "a key with this name already exists in " + ctx.keystore().dir())
        .context(create_what(name));
  return {};
}

Result<CreatedKey> create_key(Context& ctx, const CreateRequest& req) {
  TPMKEY_TRY(check_create(ctx, req.name));
  const std::string what = create_what(req.name);
  const AlgorithmSpec* spec = req.spec ? req.spec : find_algorithm("ec-p256");
  if (!spec) return make_error(Reason::kInternal, "no default algorithm").context(what);
  TPMKEY_TRY(check_new_password(req.password, what));
  if (req.persistent && !is_persistent(req.persistent))
    return make_error(Reason::kInvalidArgument,
                      "the persistent handle " + hex32(req.persistent) + " is not in 0x81000000-0x81ffffff")
        .context(what);
  const SecretBytes no_password;
  const SecretBytes& auth = req.password ? *req.password : no_password;
  if (!req.usage || (req.usage & ~unsigned(kUsageSignDecrypt)))
    return make_error(Reason::kInvalidArgument, "the usage must be sign, decrypt or both").context(what);
  if (spec->kind == KeyKind::kRsaPss && req.usage != kUsageSign)
    return make_error(Reason::kUnsupported, std::string("an ") + spec->name +
                                                " key only signs (usage sign): the TPM binds a key with a signature "
                                                "scheme to signing")
        .context(what);
  KeyOptions opts;
  opts.spec = spec;
  opts.usage = req.usage;
  opts.with_auth = !auth.empty();
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context(what);
  // Refused before anything is created (make_persistent checks again, after TPM2_Create).
  if (req.persistent && (*tpm)->public_of(req.persistent))
    return make_error(Reason::kInvalidArgument, "the persistent handle is already in use").context(what);
  auto kf = (*tpm)->create_key(opts, auth, kOwnerParent);
  if (!kf) return kf.take_error().context(what);
  kf->description = req.description;
  if (req.persistent) {
    if (Status st = (*tpm)->make_persistent(*kf, req.persistent); !st) return st.take_error().context(what);
    kf->persistent = req.persistent;
  }
  if (Status st = ctx.keystore().add(req.name, *kf); !st) {
    Error e = st.take_error();
    if (req.persistent) {
      // Do not leave an orphan in the TPM.
      if (Status ev = (*tpm)->evict_persistent(*kf, req.persistent); !ev)
        e.detail += "; the key also stays persistent at " + hex32(req.persistent) + " (" + ev.error().text() +
                    "; remove it with: tpm2_evictcontrol -C o -c " + hex32(req.persistent) + ")";
    }
    return e.context(what);
  }
  CreatedKey out;
  out.path = ctx.keystore().path_of(req.name);
  out.spec = spec;
  out.usage = req.usage;
  out.password = !auth.empty();
  out.persistent = req.persistent;
  return out;
}

// ---- import-file ----

Result<KeyFileImport> open_import(Context& ctx, const std::string& name, const std::string& path) {
  TPMKEY_TRY(validate_name(name));
  const std::string what = import_what(name);
  if (ctx.keystore().exists(name))
    return make_error(Reason::kInvalidArgument, "a key named \"" + name + "\" already exists in " +
                                                    ctx.keystore().dir() + "; nothing was changed")
        .context(what);
  auto kf = read_keyfile(path);  // its errors name the path
  if (!kf) return kf.take_error().context(what);
  KeyFileImport out;
  out.name = name;
  out.path = path;
  out.file = *kf;
  auto key = Key::from_file(ctx, std::move(*kf), path);
  if (!key) return key.take_error().context(what);
  out.key = std::move(*key);
  return out;
}

// Key and Tpm have no "load only" call, so this takes the path every later signature takes.
Status self_test(Key& key, const Crypto& crypto, EVP_PKEY* verify_with) {
  static constexpr char kSelfTest[] = "tpmkey import-file self-test";
  const bool rsa = is_rsa(key.spec().kind);
  // A key bound to a scheme signs only with it; a NULL scheme lets the command choose.
  auto bound = bound_scheme(key.file().pub.publicArea);
  if (!bound) return bound.take_error();
  const SignScheme scheme = bound->value_or(default_scheme(key.spec().kind));
  const EVP_MD* md = crypto.md(scheme.hash);
  if (!md) return make_error(Reason::kUnsupported, "the key is bound to a hash tpmkey does not sign with");
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(kSelfTest, sizeof kSelfTest - 1, digest, &digest_len, md, nullptr) != 1)
    return make_error(Reason::kInternal, "cannot hash the self-test message");
  auto sig = key.sign(scheme, digest, digest_len);
  if (!sig) return sig.take_error();
  EVP_PKEY* vkey = verify_with ? verify_with : key.public_pkey();
  EvpPkeyCtxPtr v(EVP_PKEY_CTX_new_from_pkey(crypto.libctx(), vkey, "provider=default"));
  bool ok = v && EVP_PKEY_verify_init(v.get()) == 1 && EVP_PKEY_CTX_set_signature_md(v.get(), md) == 1;
  if (ok && rsa) {
    const bool pss = scheme.alg == SigAlg::kRsaPss;
    // An RSA-PSS public key carries its salt length (the digest's, what the TPM makes), and
    // OpenSSL verifies a restricted key only with a stated one.
    const int saltlen = EVP_PKEY_is_a(vkey, "RSA-PSS") ? RSA_PSS_SALTLEN_DIGEST : RSA_PSS_SALTLEN_AUTO;
    ok = EVP_PKEY_CTX_set_rsa_padding(v.get(), pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) == 1 &&
         (!pss || EVP_PKEY_CTX_set_rsa_pss_saltlen(v.get(), saltlen) == 1);
  }
  ok = ok && EVP_PKEY_verify(v.get(), sig->data(), sig->size(), digest, digest_len) == 1;
  ERR_clear_error();
  if (!ok && verify_with)
    return make_error(Reason::kInternal,
                      "the TPM's self-test signature does not verify with the original key's public half");
  if (!ok)
    return make_error(Reason::kMalformedKey,
                      "the TPM's self-test signature does not verify with the public key in the file (the public and "
                      "private blobs do not belong together)");
  return {};
}

Result<ImportedKey> import_key_file(Context& ctx, KeyFileImport import, ImportOptions opts) {
  const std::string what = import_what(import.name);
  if (!import.key) return make_error(Reason::kInternal, "no key file was opened").context(what);
  KeyFile stored = std::move(import.file);
  bool empty_password = false;
  if (import.key->needs_auth() && opts.password) {
    empty_password = opts.password->empty();
    import.key->set_auth(std::move(*opts.password));
  }
  auto crypto = ctx.crypto();
  if (!crypto) return crypto.take_error().context(what);
  if (Status st = self_test(*import.key, **crypto); !st) {
    Error e = st.take_error();
    if (e.reason == Reason::kKeyNotFound && stored.parent != kOwnerParent) {
      e.detail = "this TPM has no persistent parent " + hex32(stored.parent) +
                 " (the key file comes from another TPM, or its parent was evicted): " + e.detail;
    } else if (stored.parent == kOwnerParent && tpm_base_code(e.rc) == TPM2_RC_INTEGRITY) {
      e.detail += " (made on another TPM, or under an owner primary that is not the standard ECC P-256 storage "
                  "key, for example tpm2_createprimary's default template: see docs/keys.md)";
    }
    return e.context(what);
  }
  ImportedKey out;
  if (empty_password) {
    // The TPM accepted an empty password, so the key has none: the file's missing emptyAuth was
    // wrong (tpm2-tools 5.4's tpm2_encodeobject writes it inverted). The copy says so correctly.
    stored.empty_auth = true;
    out.empty_auth_corrected = true;
  }
  if (opts.description) stored.description = *opts.description;
  out.spec = &import.key->spec();
  import.key.reset();  // done with the TPM: flush the key's handle before writing
  if (Status st = ctx.keystore().add(import.name, stored); !st) return st.take_error().context(what);
  out.path = ctx.keystore().path_of(import.name);
  out.parent = stored.parent;
  out.password = !stored.empty_auth;
  return out;
}

// ---- import (software private keys) ----

Status check_import(const Context& ctx, const std::string& name) {
  TPMKEY_TRY(validate_name(name));
  if (ctx.keystore().exists(name))
    return make_error(Reason::kInvalidArgument, "a key named \"" + name + "\" already exists in " +
                                                    ctx.keystore().dir() + "; nothing was changed")
        .context(import_key_what(name));
  return {};
}

Result<PrivateKeyImport> open_private_key(Context& ctx, const std::string& name, const std::string& path,
                                          const PassphraseSource& passphrase) {
  TPMKEY_TRY(check_import(ctx, name));
  const std::string what = import_key_what(name);
  auto crypto = ctx.crypto();
  if (!crypto) return crypto.take_error().context(what);
  auto key = read_private_key(**crypto, path, passphrase);
  if (!key) return key.take_error().context(what);
  auto form = import_form(key->pkey.get(), false);
  if (!form) return form.take_error().context("read(" + path + ")").context(what);
  PrivateKeyImport out;
  out.name = name;
  out.path = path;
  out.key = std::move(*key);
  out.spec = form->spec;
  return out;
}

Result<ImportedPrivateKey> import_private_key(Context& ctx, PrivateKeyImport import, PrivateKeyOptions opts) {
  const std::string what = import_key_what(import.name);
  if (!import.key.pkey) return make_error(Reason::kInternal, "no private key was read").context(what);
  // Everything that can be refused without the TPM is refused first.
  TPMKEY_TRY(check_new_password(opts.password, what));
  TPMKEY_TRY(check_import(ctx, import.name));
  const SecretBytes no_password;
  const SecretBytes& auth = opts.password ? *opts.password : no_password;
  auto form = import_form(import.key.pkey.get(), !auth.empty());
  if (!form) return form.take_error().context(what);
  auto crypto = ctx.crypto();
  if (!crypto) return crypto.take_error().context(what);
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context(what);
  // TPM2_TestParms costs the TPM nothing; an algorithm it lacks is refused before anything else.
  if (Status st = (*tpm)->supports(*form->spec); !st) {
    Error e = st.take_error();
    if (e.reason == Reason::kUnsupported)
      e.detail = std::string("this TPM does not support ") + form->spec->name + " keys: " + e.detail;
    return e.context(what);
  }
  auto priv = (*tpm)->import_key(form->pub, form->secret, auth, kOwnerParent);
  form->secret.wipe();
  if (!priv) return priv.take_error().context(what);

  KeyFile kf;
  kf.parent = kOwnerParent;
  kf.empty_auth = auth.empty();
  kf.pub = form->pub;
  kf.priv = *priv;
  kf.description = opts.description;
  {
    // TPM2_Load and a signature, verified with the original key: the TPM holds this very key.
    auto key = Key::from_file(ctx, kf, "tpm2:" + import.name);
    if (!key) return key.take_error().context(what);
    if (!auth.empty()) (*key)->set_auth(auth);
    if (Status st = self_test(**key, **crypto, import.key.pkey.get()); !st) return st.take_error().context(what);
  }  // the key's handle is flushed here, before anything is written
  if (Status st = ctx.keystore().add(import.name, kf); !st) return st.take_error().context(what);
  ImportedPrivateKey out;
  out.path = ctx.keystore().path_of(import.name);
  out.spec = form->spec;
  out.format = import.key.format;
  out.encrypted = import.key.encrypted;
  out.password = !auth.empty();
  return out;
}

// ---- passwd ----

Result<PasswordTarget> open_passwd(Context& ctx, const std::string& arg) {
  std::string name = arg;
  if (arg.rfind("tpm2:", 0) == 0) {
    auto uri = parse_uri(arg);
    if (!uri) return uri.take_error().context("passwd(" + arg + ")");
    if (uri->handle) return make_error(Reason::kUnsupported, kPersistentPasswd).context("passwd(" + arg + ")");
    if (!uri->name)
      return make_error(Reason::kInvalidArgument, "give a keystore key's name (tpm2:NAME)").context("passwd(" + arg + ")");
    name = *uri->name;
  }
  TPMKEY_TRY(validate_name(name));
  const std::string what = passwd_what(name);
  auto kf = ctx.keystore().read(name);
  if (!kf) return kf.take_error().context(what);
  if (kf->persistent)
    return make_error(Reason::kUnsupported, std::string(kPersistentPasswd) + " (" + hex32(kf->persistent) +
                                                "); create a new key instead")
        .context(what);
  PasswordTarget out;
  out.name = name;
  out.file = std::move(*kf);
  return out;
}

Result<ChangedPassword> change_password(Context& ctx, const PasswordTarget& target, const PasswordChange& change) {
  const std::string what = passwd_what(target.name);
  TPMKEY_TRY(check_new_password(change.new_password, what));
  if (target.has_password() && !change.old_password)
    return make_error(Reason::kAuthFailed, "the key has a password; the current one is needed").context(what);
  const SecretBytes none;
  const SecretBytes& old_auth = target.has_password() ? *change.old_password : none;
  const SecretBytes& new_auth = change.new_password ? *change.new_password : none;
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context(what);
  // A parent with a password of its own is not asked for here: refused before the TPM, without a
  // dictionary-attack failure (docs/keys.md#parents-with-a-password).
  if (target.file.parent != kOwnerParent && ctx.keystore().parent_needs_auth(target.file.parent))
    (*tpm)->require_parent_auth(target.file.parent);
  auto priv = (*tpm)->change_auth(target.file, old_auth, new_auth);
  if (!priv) return priv.take_error().context(what);  // nothing written
  KeyFile kf = target.file;
  kf.priv = *priv;
  kf.empty_auth = new_auth.empty();
  if (Status st = ctx.keystore().replace(target.name, kf); !st) return st.take_error().context(what);
  ChangedPassword out;
  out.path = ctx.keystore().path_of(target.name);
  out.had_password = target.has_password();
  out.password = !new_auth.empty();
  out.no_da = kf.pub.publicArea.objectAttributes & TPMA_OBJECT_NODA;
  return out;
}

// ---- delete ----

Status check_delete(const Context& ctx, const std::string& name) {
  TPMKEY_TRY(validate_name(name));
  if (!ctx.keystore().exists(name))
    return make_error(Reason::kKeyNotFound, "no key named \"" + name + "\" in the keystore " + ctx.keystore().dir())
        .context(delete_what(name));
  return {};
}

Result<DeletedKey> delete_key(Context& ctx, const std::string& name) {
  TPMKEY_TRY(check_delete(ctx, name));
  const std::string what = delete_what(name);
  DeletedKey out;
  if (auto kf = ctx.keystore().read(name); kf && kf->persistent) {
    out.persistent = kf->persistent;
    auto tpm = ctx.tpm();
    if (!tpm) return tpm.take_error().context(what);
    Status st = (*tpm)->evict_persistent(*kf, kf->persistent);
    if (!st && st.error().reason != Reason::kKeyNotFound) return st.take_error().context(what);
    out.eviction = st ? Eviction::kEvicted : Eviction::kAlreadyGone;
  }
  if (Status st = ctx.keystore().remove(name); !st) return st.take_error().context(what);
  return out;
}

// ---- init ----

Result<InitResult> init_keystore(Context& ctx, const InitOptions& opts) {
  const std::string what = "init(" + ctx.keystore().dir() + ")";
  auto old_pin = ctx.keystore().read_pin();
  if (!old_pin) return old_pin.take_error().context(what);
  auto tpm = ctx.tpm();
  if (!tpm) return tpm.take_error().context(what);
  InitResult out;
  // The pin is checked before the SRK is made persistent: a TPM that presents another SRK gets
  // nothing persistent from tpmkey unless the user asked to repin.
  const Bytes* expected = *old_pin && !opts.repin ? &(*old_pin)->name : nullptr;
  auto pin = (*tpm)->provision_srk(opts.persistent, expected, &out.srk);
  if (!pin) return pin.take_error().context(what);
  const std::optional<SrkPin>& old = *old_pin;
  if (old && old->name != pin->name && !opts.repin)
    return make_error(Reason::kUntrustedTpm, "this TPM's storage root key is " + to_hex(pin->name) +
                                                 " but the keystore pinned " + to_hex(old->name) +
                                                 ". If the TPM was cleared on purpose, run again with --repin")
        .context(what);
  if (old && old->name == pin->name && old->handle == pin->handle) {
    out.pin_outcome = PinOutcome::kAlreadyPinned;
  } else {
    if (Status st = ctx.keystore().write_pin(*pin, old.has_value()); !st) return st.take_error().context(what);
    out.pin_outcome = old ? PinOutcome::kReplaced : PinOutcome::kPinned;
  }
  out.pin = std::move(*pin);
  out.pin_path = ctx.keystore().pin_path();
  return out;
}

}  // namespace tpmkey
