// The ssh-agent protocol (draft-miller-ssh-agent, RFC 9987; OpenSSH PROTOCOL.agent): one request
// message in, one response message out, over the keys the agent holds. TPM keys are opened and
// signed through the tpmkey provider in the agent's own library context; software keys added with
// plain ssh-add are held by OpenSSL's default provider. No sockets here (server.h), so every
// message can be tested on its own. docs/ssh.md.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "keystore/keystore.h"
#include "keystore/ossl.h"
#include "keystore/ssh_wire.h"

namespace tpmkey::agent {

// Message numbers.
namespace msg {
inline constexpr uint8_t kFailure = 5, kSuccess = 6, kRequestIdentities = 11, kIdentitiesAnswer = 12,
                         kSignRequest = 13, kSignResponse = 14, kAddIdentity = 17, kRemoveIdentity = 18,
                         kRemoveAllIdentities = 19, kAddSmartcardKey = 20, kRemoveSmartcardKey = 21, kLock = 22,
                         kUnlock = 23, kAddIdConstrained = 25, kAddSmartcardKeyConstrained = 26, kExtension = 27,
                         kExtensionFailure = 28, kExtensionResponse = 29;
}  // namespace msg

struct AgentOptions {
  std::string keystore;         // the keystore directory whose keys are served
  bool serve_keystore = true;   // false: --no-keystore
  bool allow_sha1 = false;      // --allow-sha1: plain ssh-rsa signatures
  uint32_t default_lifetime = 0;  // -t: seconds for added keys without their own, 0 = until removed
  std::string upstream;         // -A: another agent's socket
  std::string askpass;          // the confirmation program ("" = $SSH_ASKPASS, else ssh-askpass)
};

// One client connection, as the server knows it.
struct Peer {
  uid_t uid = 0;
  pid_t pid = 0;
  // session-bind@openssh.com: the host keys (blobs) this connection was bound to.
  std::vector<Bytes> bound_hosts;
  bool forwarded = false;
};

class Agent {
 public:
  // Sets up the library context (tpmkey built in, and default). Touches no TPM.
  static Result<std::unique_ptr<Agent>> create(AgentOptions opts);
  ~Agent();

  // `message` is one request (its type byte first, without the length); returns the response.
  // Secrets in the request (keys, PINs, passphrases) are wiped from `message` before returning.
  Bytes handle(Peer& peer, uint8_t* message, size_t size);
  // Drops keys whose lifetime is over; milliseconds until the next one ends (-1: none does).
  int expire();
  // No request for a while: the TPM's object slots are given back to other programs on a TPM
  // without a resource manager (Tpm::park); the next signature loads its key back.
  void idle();
  size_t held() const { return added_.size(); }

 private:
  struct Identity;
  struct KeystoreEntry;
  explicit Agent(AgentOptions opts);

  Bytes identities();
  Bytes sign(SshReader& r, const uint8_t* message, size_t size, const Peer& peer);
  Bytes add_identity(SshReader& r, bool constrained);
  Bytes add_smartcard_key(SshReader& r, bool constrained);
  Bytes remove_identity(SshReader& r);
  Bytes remove_smartcard_key(SshReader& r);
  Bytes remove_all();
  Bytes lock(SshReader& r);
  Bytes unlock(SshReader& r);
  Bytes extension(SshReader& r, Peer& peer);
  // sign-digest@tpmkey: a digest signed for a tpmkey provider in a one-shot process (keystore/broker.h).
  Bytes sign_digest(SshReader& r, const Peer& peer);
  // holds-key@tpmkey: whether sign-digest would sign with this key now (asked by a provider
  // loading a password key, so that it does not prompt for a password the agent holds).
  Bytes holds_key(SshReader& r, const Peer& peer);
  // The TPM key sign-digest signs with for this blob and key file id: an added one (`*added` is
  // set) or the keystore's; nullptr if none is held.
  EVP_PKEY* held_tpm_key(const Bytes& blob, const Bytes& file_id, std::string* label, const Identity** added);

  struct Constraints {
    uint32_t lifetime = 0;
    bool confirm = false;
  };
  std::optional<Constraints> read_constraints(SshReader& r);
  void add(std::unique_ptr<Identity> id);
  void refresh_keystore();
  // Whether the keystore file of `name` is still the one `e` was read from.
  bool still_current(const std::string& name, const KeystoreEntry& e) const;
  Identity* find(const Bytes& blob);
  // The keystore entry served with this blob (and, if given, key file id), opened through the
  // provider on first use; nullptr if none is served or it does not open.
  EVP_PKEY* keystore_key(const Bytes& blob, const Bytes* file_id, std::string* label);
  bool confirmed(const Identity& id);
  Result<EvpPkeyPtr> open_tpm_key(const std::string& uri, const SecretBytes* pin);
  Result<Bytes> lock_hash(const SshView& passphrase, const Bytes& salt);

  AgentOptions opts_;
  Keystore keystore_;
  LibCtxPtr libctx_;
  OSSL_PROVIDER* default_ = nullptr;
  OSSL_PROVIDER* tpmkey_ = nullptr;
  std::vector<std::unique_ptr<Identity>> added_;            // ssh-add and ssh-add -s, in order
  std::map<std::string, std::unique_ptr<KeystoreEntry>> keystore_keys_;  // by name
  std::set<std::string> hidden_;  // keystore keys removed with ssh-add -d or -e
  bool keystore_served_ = true;   // ssh-add -D stops serving the keystore
  bool locked_ = false;
  Bytes lock_salt_, lock_hash_;
};

}  // namespace tpmkey::agent
