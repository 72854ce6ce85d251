#include "tools/agent/agent.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/store.h>
#include <openssl/ui.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "keystore/broker.h"
#include "keystore/public_key.h"
#include "keystore/uri.h"
#include "provider/provider.h"
#include "tools/agent/askpass.h"
#include "tools/agent/log.h"
#include "tools/agent/ssh_key.h"
#include "tools/agent/upstream.h"

// The provider's entry point, built into this program (provider/provider.cc). Not noexcept, as
// openssl/core.h declares it (clang refuses the mismatch).
extern "C" int OSSL_provider_init(const OSSL_CORE_HANDLE* handle, const OSSL_DISPATCH* in, const OSSL_DISPATCH** out,
                                  void** provctx);

namespace tpmkey::agent {

// A key held because ssh-add added it: a software key, or a TPM key (ssh-add -s).
struct Agent::Identity {
  Bytes blob;
  std::string comment;
  EvpPkeyPtr pkey;
  std::string reader;  // ssh-add -s: the reader as given ("tpm2:NAME", a key file path)
  Bytes file_id;       // ssh-add -s: key_file_id of its key file (keystore/broker.h)
  time_t expires = 0;  // 0: until removed
  bool confirm = false;
  bool tpm() const { return !reader.empty(); }
};

// A key of the keystore, served without being added (keys without a password).
struct Agent::KeystoreEntry {
  struct timespec mtime {};
  ino_t ino = 0;
  off_t size = 0;
  bool usable = false;  // false: needs a password, or not a key SSH can use
  Bytes blob;
  Bytes file_id;  // key_file_id (keystore/broker.h)
  std::string comment;
  EvpPkeyPtr pkey;  // opened through the provider on first use
};

namespace {

constexpr uint8_t kConstrainLifetime = 1, kConstrainConfirm = 2, kConstrainExtension = 255;
constexpr int kLockIterations = 100000;

Bytes status(bool ok) { return Bytes{ok ? msg::kSuccess : msg::kFailure}; }
Bytes failure() { return status(false); }

// Text from a client, fit for a log line: printable ASCII only, at most 200 characters.
std::string printable(std::string_view s) {
  std::string out;
  for (char ch : s.substr(0, 200)) out += (ch >= 0x20 && ch < 0x7f) ? ch : '?';
  if (s.size() > 200) out += "...";
  return out;
}

std::string describe(const Bytes& blob) { return blob_type(blob) + " " + ssh_fingerprint(blob); }

// ssh-add -s READER: a tpm2: URI as given, or an absolute key file path.
Result<std::string> reader_uri(std::string_view reader) {
  if (reader.rfind("tpm2:", 0) == 0) return std::string(reader);
  if (reader.empty() || reader[0] != '/')
    return make_error(Reason::kInvalidArgument,
                      "ssh-add -s needs a tpm2: URI (tpm2:NAME) or the absolute path of a TSS2 key file");
  std::string uri = "tpm2:file=";
  static const char* hex = "0123456789ABCDEF";
  for (unsigned char ch : reader) {
    if (std::isalnum(ch) || ch == '/' || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
      uri += char(ch);
    } else {
      uri += '%';
      uri += hex[ch >> 4];
      uri += hex[ch & 15];
    }
  }
  return uri;
}

// The PIN ssh-add sent, handed to the provider's password callback (docs/ssh.md). OpenSSL asks
// only for a key whose file says it has a password: an empty PIN then fails here, before the TPM
// sees an attempt that would cost a dictionary-attack strike.
int pin_callback(char* buf, int size, int, void* u) {
  const auto* pin = static_cast<const SecretBytes*>(u);
  if (!pin || pin->empty() || pin->size() > size_t(size)) return -1;
  std::memcpy(buf, pin->data(), pin->size());
  return int(pin->size());
}

// The key file id (keystore/broker.h) of what an ssh-add -s URI names, read again for it; empty
// (no sign-digest answer) if it cannot be read.
Bytes smartcard_file_id(const std::string& uri, const Keystore& keystore, OSSL_LIB_CTX* libctx) {
  auto parsed = parse_uri(uri);
  if (!parsed) return {};
  Result<KeyFile> kf = make_error(Reason::kKeyNotFound, "");
  if (parsed->name) {
    kf = keystore.read(*parsed->name);
  } else if (parsed->file) {
    kf = read_keyfile(*parsed->file, Symlinks::kFollow, Writers::kUserOrRootAndGroup);
  } else if (parsed->handle) {
    KeyFile k;  // as Key::open makes it for tpm2:handle=
    k.parent = 0;
    k.persistent = *parsed->handle;
    kf = k;
  }
  return kf ? key_file_id(*kf, libctx) : Bytes{};
}

}  // namespace

Agent::Agent(AgentOptions opts) : opts_(std::move(opts)), keystore_(opts_.keystore) {
  keystore_served_ = opts_.serve_keystore;
}

Agent::~Agent() {
  added_.clear();
  keystore_keys_.clear();
  if (tpmkey_) OSSL_PROVIDER_unload(tpmkey_);
  if (default_) OSSL_PROVIDER_unload(default_);
}

Result<std::unique_ptr<Agent>> Agent::create(AgentOptions opts) {
  std::unique_ptr<Agent> a(new Agent(std::move(opts)));
  a->libctx_.reset(OSSL_LIB_CTX_new());
  if (!a->libctx_ || !OSSL_PROVIDER_add_builtin(a->libctx_.get(), "tpmkey", OSSL_provider_init))
    return make_error(Reason::kInternal, "cannot make the agent's OpenSSL library context");
  a->default_ = OSSL_PROVIDER_load(a->libctx_.get(), "default");
  a->tpmkey_ = OSSL_PROVIDER_load(a->libctx_.get(), "tpmkey");
  if (!a->default_ || !a->tpmkey_)
    return make_error(Reason::kInternal, "cannot load the providers: " + drain_openssl_errors("; "));
  // The provider built in here is the agent's own: it must never ask an agent (this one) to sign.
  auto* prov = static_cast<provider::ProviderCtx*>(OSSL_PROVIDER_get0_provider_ctx(a->tpmkey_));
  if (!prov || !prov->core) return make_error(Reason::kInternal, "the built-in provider has no context");
  prov->core->never_use_agent();
  return a;
}

Result<EvpPkeyPtr> Agent::open_tpm_key(const std::string& uri, const SecretBytes* pin) {
  // Always a UI method of our own: a key that needs a password it was not given fails, rather
  // than OpenSSL asking on whatever terminal the agent was started from.
  static const SecretBytes kNoPin;
  UI_METHOD* ui = UI_UTIL_wrap_read_pem_callback(pin_callback, 0);
  OSSL_STORE_CTX* st = OSSL_STORE_open_ex(uri.c_str(), libctx_.get(), "provider=tpmkey", ui,
                                          const_cast<SecretBytes*>(pin ? pin : &kNoPin), nullptr, nullptr, nullptr);
  EVP_PKEY* pkey = nullptr;
  if (st) {
    OSSL_STORE_expect(st, OSSL_STORE_INFO_PKEY);
    while (!pkey && !OSSL_STORE_eof(st)) {
      OSSL_STORE_INFO* info = OSSL_STORE_load(st);
      if (!info) break;
      if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) pkey = OSSL_STORE_INFO_get1_PKEY(info);
      OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(st);
  }
  UI_destroy_method(ui);
  if (!pkey) {
    std::string why = drain_openssl_errors("; ");
    return make_error(Reason::kKeyNotFound, why.empty() ? "no key there" : why);
  }
  ERR_clear_error();
  return EvpPkeyPtr(pkey);
}

void Agent::refresh_keystore() {
  if (!keystore_served_) {
    keystore_keys_.clear();
    return;
  }
  auto names = keystore_.list();
  if (!names) {
    log_error("cannot list the keystore: " + names.error().text());
    return;
  }
  std::map<std::string, std::unique_ptr<KeystoreEntry>> next;
  for (const auto& name : *names) {
    struct stat st{};
    if (stat(keystore_.path_of(name).c_str(), &st) != 0) continue;
    auto it = keystore_keys_.find(name);
    if (it != keystore_keys_.end() && still_current(name, *it->second)) {
      next[name] = std::move(it->second);
      continue;
    }
    auto e = std::make_unique<KeystoreEntry>();
    e->mtime = st.st_mtim;
    e->ino = st.st_ino;
    e->size = st.st_size;
    auto kf = keystore_.read(name);
    if (!kf) {
      log_error("tpm2:" + name + ": " + kf.error().text());
    } else if (!(usage_of(kf->pub.publicArea) & kUsageSign)) {
      log_info("tpm2:" + name + " is not usable for SSH: its usage is " + usage_text(usage_of(kf->pub.publicArea)));
    } else if (!kf->empty_auth) {
      log_info("tpm2:" + name + " needs a password: not served until added with: ssh-add -s tpm2:" + name);
    } else if (auto pub = public_pkey(kf->pub.publicArea, libctx_.get()); !pub) {
      log_error("tpm2:" + name + ": " + pub.error().text());
    } else if (auto blob = public_blob(pub->get()); !blob) {
      log_info("tpm2:" + name + " is not usable for SSH: " + blob.error().text());
    } else {
      e->usable = true;
      e->blob = std::move(*blob);
      e->file_id = key_file_id(*kf, libctx_.get());
      e->comment = kf->description.empty() ? name : kf->description;
      log_debug("serving tpm2:" + name + " (" + describe(e->blob) + ")");
    }
    next[name] = std::move(e);
  }
  keystore_keys_ = std::move(next);
}

bool Agent::still_current(const std::string& name, const KeystoreEntry& e) const {
  struct stat st{};
  return stat(keystore_.path_of(name).c_str(), &st) == 0 && st.st_ino == e.ino && st.st_size == e.size &&
         st.st_mtim.tv_sec == e.mtime.tv_sec && st.st_mtim.tv_nsec == e.mtime.tv_nsec;
}

EVP_PKEY* Agent::keystore_key(const Bytes& blob, const Bytes* file_id, std::string* label) {
  KeystoreEntry* entry = nullptr;
  std::string name;
  auto lookup = [&] {
    for (auto& [n, e] : keystore_keys_)
      if (e->usable && !hidden_.count(n) && e->blob == blob && (!file_id || e->file_id == *file_id)) {
        entry = e.get();
        name = n;
        return;
      }
  };
  lookup();
  // The listing may be older than the keystore: a key created since, or deleted or replaced.
  if (!entry || !still_current(name, *entry)) {
    refresh_keystore();
    entry = nullptr;
    lookup();
  }
  if (!entry) return nullptr;
  if (!entry->pkey) {
    auto opened = open_tpm_key("tpm2:" + name, nullptr);
    if (!opened) {
      log_error("cannot open tpm2:" + name + ": " + opened.error().text());
      return nullptr;
    }
    entry->pkey = std::move(*opened);
  }
  *label = "tpm2:" + name;
  return entry->pkey.get();
}

Agent::Identity* Agent::find(const Bytes& blob) {
  for (auto& id : added_)
    if (id->blob == blob) return id.get();
  return nullptr;
}

void Agent::add(std::unique_ptr<Identity> id) {
  // The same key added again replaces the old entry (and its constraints), as with OpenSSH.
  added_.erase(std::remove_if(added_.begin(), added_.end(), [&](const auto& o) { return o->blob == id->blob; }),
               added_.end());
  added_.push_back(std::move(id));
}

int Agent::expire() {
  const time_t now = time(nullptr);
  int next = -1;
  for (auto it = added_.begin(); it != added_.end();) {
    if ((*it)->expires && (*it)->expires <= now) {
      log_info("lifetime over: removed " + printable((*it)->comment) + " (" + describe((*it)->blob) + ")");
      it = added_.erase(it);
      continue;
    }
    if ((*it)->expires) {
      int ms = int(std::min<time_t>((*it)->expires - now, 86400)) * 1000;
      next = next < 0 ? ms : std::min(next, ms);
    }
    ++it;
  }
  return next;
}

void Agent::idle() {
  // The provider built into this program: its context is the core's (provider/provider.h).
  auto* prov = static_cast<provider::ProviderCtx*>(OSSL_PROVIDER_get0_provider_ctx(tpmkey_));
  if (!prov || !prov->core) return;
  if (Tpm* tpm = prov->core->tpm_if_connected()) tpm->park();
}

Bytes Agent::handle(Peer& peer, uint8_t* message, size_t size) {
  struct Wipe {
    uint8_t* p;
    size_t n;
    ~Wipe() { OPENSSL_cleanse(p, n); }
  } wipe{message, size};
  if (size == 0) return failure();
  SshReader r(message + 1, size - 1);
  const uint8_t type = message[0];
  if (locked_ && type != msg::kUnlock) {
    // Locked: nothing is listed, nothing signed or changed.
    if (type == msg::kRequestIdentities) return Bytes{msg::kIdentitiesAnswer, 0, 0, 0, 0};
    return failure();
  }
  switch (type) {
    case msg::kRequestIdentities: return identities();
    case msg::kSignRequest: return sign(r, message, size, peer);
    case msg::kAddIdentity: return add_identity(r, false);
    case msg::kAddIdConstrained: return add_identity(r, true);
    case msg::kRemoveIdentity: return remove_identity(r);
    case msg::kRemoveAllIdentities: return remove_all();
    case msg::kAddSmartcardKey: return add_smartcard_key(r, false);
    case msg::kAddSmartcardKeyConstrained: return add_smartcard_key(r, true);
    case msg::kRemoveSmartcardKey: return remove_smartcard_key(r);
    case msg::kLock: return lock(r);
    case msg::kUnlock: return unlock(r);
    case msg::kExtension: return extension(r, peer);
    default:
      log_debug("unknown message type " + std::to_string(type) + ": failure");
      return failure();
  }
}

Bytes Agent::identities() {
  expire();
  refresh_keystore();
  std::vector<std::pair<const Bytes*, const std::string*>> list;
  auto listed = [&](const Bytes& b) {
    return std::any_of(list.begin(), list.end(), [&](const auto& e) { return *e.first == b; });
  };
  for (const auto& [name, e] : keystore_keys_)
    if (e->usable && !hidden_.count(name) && !find(e->blob)) list.emplace_back(&e->blob, &e->comment);
  for (const auto& id : added_) list.emplace_back(&id->blob, &id->comment);

  // Then the upstream agent's keys that are not already listed.
  Bytes upstream_answer;
  std::vector<std::pair<Bytes, std::string>> upstream;
  if (!opts_.upstream.empty()) {
    auto answer = ask_upstream(opts_.upstream, Bytes{msg::kRequestIdentities});
    if (!answer) {
      log_error(answer.error().text());
    } else if (!answer->empty() && (*answer)[0] == msg::kIdentitiesAnswer) {
      SshReader r(answer->data() + 1, answer->size() - 1);
      uint32_t n = 0;
      if (r.u32(&n)) {
        for (uint32_t i = 0; i < n && i < 1024; ++i) {
          SshView blob, comment;
          if (!r.string(&blob) || !r.string(&comment)) break;
          upstream.emplace_back(blob.bytes(), std::string(comment.text()));
        }
      }
    }
  }
  SshWriter w;
  w.u8(msg::kIdentitiesAnswer);
  size_t count = list.size();
  for (const auto& u : upstream)
    if (!listed(u.first)) ++count;
  w.u32(uint32_t(count));
  for (const auto& [blob, comment] : list) {
    w.string(*blob);
    w.string(*comment);
  }
  for (const auto& u : upstream) {
    if (listed(u.first)) continue;
    w.string(u.first);
    w.string(u.second);
  }
  return w.take();
}

bool Agent::confirmed(const Identity& id) {
  const std::string prompt = "Allow use of key " + printable(id.comment) + "?\nKey fingerprint " +
                             ssh_fingerprint(id.blob) + ".";
  bool ok = ask_confirmation(askpass_program(opts_.askpass), prompt);
  log_info(std::string(ok ? "confirmed" : "denied") + " the use of " + printable(id.comment));
  return ok;
}

Bytes Agent::sign(SshReader& r, const uint8_t* message, size_t size, const Peer& peer) {
  SshView blob_view, data;
  uint32_t flags = 0;
  if (!r.string(&blob_view) || !r.string(&data) || !r.u32(&flags) || !r.done()) {
    log_error("malformed sign request from pid " + std::to_string(peer.pid));
    return failure();
  }
  const Bytes blob = blob_view.bytes();
  expire();
  EVP_PKEY* pkey = nullptr;
  std::string label;
  if (Identity* id = find(blob)) {
    if (id->confirm && !confirmed(*id)) return failure();
    pkey = id->pkey.get();
    label = printable(id->comment);
  } else {
    pkey = keystore_key(blob, nullptr, &label);
  }
  if (!pkey) {
    if (!opts_.upstream.empty()) {
      auto answer = ask_upstream(opts_.upstream, Bytes(message, message + size));
      if (answer) return std::move(*answer);
      log_error(answer.error().text());
      return failure();
    }
    log_debug("sign request for a key not held: " + describe(blob));
    return failure();
  }
  auto sig = ssh_sign(pkey, libctx_.get(), data.data, data.size, flags, opts_.allow_sha1);
  if (!sig) {
    log_error("signing with " + label + " failed: " + sig.error().text());
    return failure();
  }
  log_debug("signed with " + label + " for pid " + std::to_string(peer.pid));
  SshWriter w;
  w.u8(msg::kSignResponse);
  w.string(*sig);
  return w.take();
}

EVP_PKEY* Agent::held_tpm_key(const Bytes& blob, const Bytes& file_id, std::string* label, const Identity** added) {
  expire();
  // Only TPM keys: the added ones whose key file is this one, then the keystore's.
  for (auto& id : added_) {
    if (!id->tpm() || id->blob != blob || id->file_id != file_id) continue;
    *label = printable(id->comment);
    *added = id.get();
    return id->pkey.get();
  }
  return keystore_key(blob, &file_id, label);
}

Bytes Agent::holds_key(SshReader& r, const Peer& peer) {
  // string key blob, string key file id (docs/ssh.md#the-sign-digest-extension).
  SshView blob, file_id;
  if (!r.string(&blob) || !r.string(&file_id) || !r.done()) {
    log_error("malformed holds-key request from pid " + std::to_string(peer.pid));
    return Bytes{msg::kExtensionFailure};
  }
  std::string label;
  const Identity* added = nullptr;
  const bool held = held_tpm_key(blob.bytes(), file_id.bytes(), &label, &added) != nullptr;
  log_debug(std::string(held ? "holds " : "does not hold ") + (held ? label : describe(blob.bytes())) +
            " (asked by pid " + std::to_string(peer.pid) + ")");
  return status(held);
}

Bytes Agent::sign_digest(SshReader& r, const Peer& peer) {
  // string key blob, string key file id, string scheme, string hash, string digest
  // (docs/ssh.md#the-sign-digest-extension).
  SshView blob_view, file_id_view, scheme_name, hash_view, digest;
  if (!r.string(&blob_view) || !r.string(&file_id_view) || !r.string(&scheme_name) || !r.string(&hash_view) ||
      !r.string(&digest) || !r.done()) {
    log_error("malformed sign-digest request from pid " + std::to_string(peer.pid));
    return Bytes{msg::kExtensionFailure};
  }
  const auto scheme = scheme_from_wire(scheme_name.text(), hash_view.text());
  if (!scheme || digest.size != hash_size(scheme->hash)) {
    log_error("sign-digest request from pid " + std::to_string(peer.pid) + " with an unknown scheme " +
              printable(scheme_name.text()) + "/" + printable(hash_view.text()) + " or a digest of the wrong size");
    return Bytes{msg::kExtensionFailure};
  }
  const Bytes blob = blob_view.bytes(), file_id = file_id_view.bytes();
  std::string label;
  const Identity* added = nullptr;
  EVP_PKEY* pkey = held_tpm_key(blob, file_id, &label, &added);
  if (!pkey) {
    log_debug("sign-digest request for a key not held: " + describe(blob));
    return failure();
  }
  if (added && added->confirm && !confirmed(*added)) return failure();
  const bool rsa = EVP_PKEY_is_a(pkey, "RSA");
  if (rsa != (scheme->alg != SigAlg::kEcdsa)) {
    log_error("sign-digest request from pid " + std::to_string(peer.pid) + ": scheme " +
              std::string(scheme_wire_name(scheme->alg)) + " for " + label);
    return Bytes{msg::kExtensionFailure};
  }
  // Through the provider, as every signature here: digest, and for RSA the padding (PSS: a salt
  // as long as the digest, MGF1 with the same hash; what the TPM does).
  OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free> sctx(EVP_PKEY_CTX_new_from_pkey(libctx_.get(), pkey, nullptr));
  char md[16], pad[16], salt[] = OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST;
  std::snprintf(md, sizeof md, "%s", hash_name(scheme->hash));
  std::snprintf(pad, sizeof pad, "%s",
                scheme->alg == SigAlg::kRsaPss ? OSSL_PKEY_RSA_PAD_MODE_PSS : OSSL_PKEY_RSA_PAD_MODE_PKCSV15);
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, md, 0);
  if (rsa) params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, pad, 0);
  if (scheme->alg == SigAlg::kRsaPss) {
    params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, salt, 0);
    params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, md, 0);
  }
  params[n] = OSSL_PARAM_construct_end();
  size_t len = 0;
  Bytes sig;
  bool ok = sctx && EVP_PKEY_sign_init_ex(sctx.get(), params) > 0 &&
            EVP_PKEY_sign(sctx.get(), nullptr, &len, digest.data, digest.size) > 0;
  if (ok) {
    sig.resize(len);
    ok = EVP_PKEY_sign(sctx.get(), sig.data(), &len, digest.data, digest.size) > 0;
    sig.resize(len);
  }
  if (!ok) {
    log_error("sign-digest with " + label + " failed: " + drain_openssl_errors("; "));
    return failure();
  }
  log_debug("signed a digest with " + label + " for pid " + std::to_string(peer.pid));
  SshWriter w;
  w.u8(msg::kExtensionResponse);
  w.string(kSignDigestExtension);
  w.string(sig);
  return w.take();
}

std::optional<Agent::Constraints> Agent::read_constraints(SshReader& r) {
  Constraints c;
  c.lifetime = opts_.default_lifetime;
  while (!r.done()) {
    uint8_t type = 0;
    r.u8(&type);
    if (type == kConstrainLifetime) {
      if (!r.u32(&c.lifetime)) return std::nullopt;
    } else if (type == kConstrainConfirm) {
      c.confirm = true;
    } else if (type == kConstrainExtension) {
      SshView name;
      if (r.string(&name))
        log_error("refused a key with the constraint " + printable(name.text()) + ", which this agent does not enforce");
      return std::nullopt;
    } else {
      log_error("refused a key with an unknown constraint " + std::to_string(type));
      return std::nullopt;
    }
  }
  return c;
}

Bytes Agent::add_identity(SshReader& r, bool constrained) {
  auto key = read_private_key(r, libctx_.get());
  if (!key) {
    log_error("refused a key from ssh-add: " + key.error().text());
    return failure();
  }
  SshView comment;
  if (!r.string(&comment)) {
    log_error("refused a key from ssh-add: the message is truncated");
    return failure();
  }
  auto c = constrained ? read_constraints(r) : std::optional<Constraints>(Constraints{opts_.default_lifetime, false});
  if (!c || (!constrained && !r.done())) return failure();
  auto id = std::make_unique<Identity>();
  id->blob = std::move(key->blob);
  id->pkey = std::move(key->pkey);
  id->comment = std::string(comment.text());
  id->confirm = c->confirm;
  if (c->lifetime) id->expires = time(nullptr) + c->lifetime;
  log_info("added " + printable(id->comment) + " (" + describe(id->blob) + ")" +
           (c->lifetime ? ", for " + std::to_string(c->lifetime) + " s" : "") + (c->confirm ? ", confirm each use" : ""));
  add(std::move(id));
  return status(true);
}

Bytes Agent::add_smartcard_key(SshReader& r, bool constrained) {
  SshView reader_view, pin_view;
  if (!r.string(&reader_view) || !r.string(&pin_view)) return failure();
  const std::string reader(reader_view.text());
  SecretBytes pin(pin_view.data, pin_view.size);
  auto c = constrained ? read_constraints(r) : std::optional<Constraints>(Constraints{opts_.default_lifetime, false});
  if (!c || (!constrained && !r.done())) return failure();
  const std::string what = "ssh-add -s " + printable(reader);
  auto uri = reader_uri(reader);
  if (!uri) {
    log_error(what + ": " + uri.error().text());
    return failure();
  }
  auto pkey = open_tpm_key(*uri, &pin);
  if (!pkey) {
    log_error(what + ": " + pkey.error().text());
    return failure();
  }
  auto blob = public_blob(pkey->get());
  if (!blob) {
    log_error(what + ": " + blob.error().text());
    return failure();
  }
  // One signature proves the PIN before the key is listed: a wrong one costs this one
  // dictionary-attack strike, and ssh-add hears of it.
  static const uint8_t kSelfTest[] = "tpmkey agent: PIN check";
  if (auto sig = ssh_sign(pkey->get(), libctx_.get(), kSelfTest, sizeof kSelfTest - 1, kRsaSha2_256, false); !sig) {
    log_error(what + ": the key does not sign with this PIN: " + sig.error().text());
    return failure();
  }
  auto id = std::make_unique<Identity>();
  id->blob = std::move(*blob);
  id->pkey = std::move(*pkey);
  id->file_id = smartcard_file_id(*uri, keystore_, libctx_.get());
  id->reader = reader;
  id->comment = reader;
  id->confirm = c->confirm;
  if (c->lifetime) id->expires = time(nullptr) + c->lifetime;
  if (auto parsed = parse_uri(*uri); parsed && parsed->name) hidden_.erase(*parsed->name);
  log_info("added " + what + " (" + describe(id->blob) + ")" +
           (c->lifetime ? ", for " + std::to_string(c->lifetime) + " s" : "") + (c->confirm ? ", confirm each use" : ""));
  add(std::move(id));
  return status(true);
}

Bytes Agent::remove_identity(SshReader& r) {
  SshView blob_view;
  if (!r.string(&blob_view) || !r.done()) return failure();
  const Bytes blob = blob_view.bytes();
  bool removed = false;
  for (auto it = added_.begin(); it != added_.end();) {
    if ((*it)->blob == blob) {
      log_info("removed " + printable((*it)->comment) + " (" + describe(blob) + ")");
      it = added_.erase(it);
      removed = true;
    } else {
      ++it;
    }
  }
  refresh_keystore();
  for (const auto& [name, e] : keystore_keys_)
    if (e->usable && e->blob == blob && !hidden_.count(name)) {
      hidden_.insert(name);
      log_info("no longer serving tpm2:" + name);
      removed = true;
    }
  return status(removed);
}

Bytes Agent::remove_smartcard_key(SshReader& r) {
  SshView reader_view, pin;
  if (!r.string(&reader_view) || !r.string(&pin) || !r.done()) return failure();
  const std::string reader(reader_view.text());
  bool removed = false;
  for (auto it = added_.begin(); it != added_.end();) {
    if ((*it)->reader == reader) {
      it = added_.erase(it);
      removed = true;
    } else {
      ++it;
    }
  }
  if (auto parsed = parse_uri(reader); parsed && parsed->name && keystore_keys_.count(*parsed->name)) {
    removed |= hidden_.insert(*parsed->name).second;
  }
  log_info(std::string(removed ? "removed " : "nothing to remove for ") + "ssh-add -e " + printable(reader));
  return status(removed);
}

Bytes Agent::remove_all() {
  log_info("removed all " + std::to_string(added_.size()) + " added keys" +
           (keystore_served_ ? ", and stopped serving the keystore" : ""));
  added_.clear();
  keystore_served_ = false;
  keystore_keys_.clear();
  return status(true);
}

Result<Bytes> Agent::lock_hash(const SshView& passphrase, const Bytes& salt) {
  OsslPtr<EVP_KDF, EVP_KDF_free> kdf(EVP_KDF_fetch(libctx_.get(), "PBKDF2", "provider=default"));
  OsslPtr<EVP_KDF_CTX, EVP_KDF_CTX_free> kctx(kdf ? EVP_KDF_CTX_new(kdf.get()) : nullptr);
  if (!kctx) return make_error(Reason::kInternal, "no PBKDF2");
  int iter = kLockIterations;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PASSWORD, const_cast<uint8_t*>(passphrase.data), passphrase.size),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size()),
      OSSL_PARAM_int(OSSL_KDF_PARAM_ITER, &iter), OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_END};
  Bytes out(32);
  if (EVP_KDF_derive(kctx.get(), out.data(), out.size(), params) <= 0) return make_error(Reason::kInternal, "PBKDF2 failed");
  return out;
}

Bytes Agent::lock(SshReader& r) {
  SshView pass;
  if (!r.string(&pass) || !r.done()) return failure();
  Bytes salt(16);
  if (RAND_bytes_ex(libctx_.get(), salt.data(), salt.size(), 0) <= 0) return failure();
  auto hash = lock_hash(pass, salt);
  if (!hash) return failure();
  lock_salt_ = std::move(salt);
  lock_hash_ = std::move(*hash);
  locked_ = true;
  log_info("locked");
  return status(true);
}

Bytes Agent::unlock(SshReader& r) {
  SshView pass;
  if (!r.string(&pass) || !r.done() || !locked_) return failure();
  auto hash = lock_hash(pass, lock_salt_);
  if (!hash || CRYPTO_memcmp(hash->data(), lock_hash_.data(), lock_hash_.size()) != 0) {
    log_error("unlock refused: wrong passphrase");
    return failure();
  }
  locked_ = false;
  OPENSSL_cleanse(lock_hash_.data(), lock_hash_.size());
  log_info("unlocked");
  return status(true);
}

Bytes Agent::extension(SshReader& r, Peer& peer) {
  SshView name;
  if (!r.string(&name)) return failure();
  if (name.text() == "query") {
    SshWriter w;
    w.u8(msg::kExtensionResponse);
    w.string("query");
    w.string("query");
    w.string("session-bind@openssh.com");
    w.string(kSignDigestExtension);
    w.string(kHoldsKeyExtension);
    return w.take();
  }
  if (name.text() == kSignDigestExtension) return sign_digest(r, peer);
  if (name.text() == kHoldsKeyExtension) return holds_key(r, peer);
  if (name.text() == "session-bind@openssh.com") {
    SshView host_key, session_id, signature;
    bool forwarding = false;
    if (!r.string(&host_key) || !r.string(&session_id) || !r.string(&signature) || !r.boolean(&forwarding) ||
        !r.done() || peer.bound_hosts.size() >= 16) {
      log_error("malformed session-bind from pid " + std::to_string(peer.pid));
      return failure();
    }
    // The host signed the session identifier during the key exchange: a binding it did not sign
    // is refused, as OpenSSH's agent does.
    if (!ssh_verify(host_key.bytes(), libctx_.get(), signature.data, signature.size, session_id.data,
                    session_id.size)) {
      log_error("session-bind from pid " + std::to_string(peer.pid) + ": the host key's signature does not verify");
      return failure();
    }
    peer.bound_hosts.push_back(host_key.bytes());
    peer.forwarded = peer.forwarded || forwarding;
    log_debug("pid " + std::to_string(peer.pid) + " bound to host key " + describe(host_key.bytes()) +
              (forwarding ? " (forwarding)" : ""));
    return status(true);
  }
  log_debug("unknown extension " + printable(name.text()) + ": failure");
  return failure();
}

}  // namespace tpmkey::agent
