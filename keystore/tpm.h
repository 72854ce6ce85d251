// Tpm: the one funnel for every TPM command. Owns the TCTI, the tss2-sys context, a mutex, the
// command counter, the authorization session (session.h) and the cache of objects tpmkey loaded
// (the storage root key, other parents, keys). docs/sessions.md explains the design.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include <tss2/tss2_sys.h>

#include "keystore/algorithm.h"
#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/keyfile.h"
#include "keystore/keystore.h"
#include "keystore/ossl.h"
#include "keystore/session.h"

namespace tpmkey {

// Identifies a key in the Tpm's object cache; unique in the process (new_object_id()).
using ObjectId = uint64_t;
ObjectId new_object_id();

// Where tpmkey makes the storage root key persistent (TCG provisioning guidance).
inline constexpr uint32_t kSrkHandle = 0x81000001;

struct SignRequest {
  TPMT_SIG_SCHEME scheme{};  // ECDSA, RSASSA or RSAPSS with its hash
  Bytes digest;              // already hashed in software
};

struct TpmOptions {
  std::string tcti;              // "" = the tctildr default
  bool password_auth = false;    // opt-out: cleartext TPM_RS_PW instead of salted sessions
  std::optional<SrkPin> pin;     // the recorded SRK; nullopt = trust on first use
  // Called once when there was no pin and the SRK's name has been learnt (to record it).
  std::function<void(const SrkPin&)> on_first_srk;
};

class Tpm {
 public:
  // Connects (no TPM command is sent yet). `crypto` must outlive the Tpm.
  static Result<std::unique_ptr<Tpm>> connect(TpmOptions opts, const Crypto& crypto);
  ~Tpm();
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  // TPM commands sent through this connection so far.
  uint64_t commands() const { return commands_.load(std::memory_order_relaxed); }
  pid_t owner_pid() const { return pid_; }
  // In a forked child: forget every handle and the session without sending a command.
  void abandon();
  // Flushes every transient object and the session this connection created (owning process only).
  void flush_all();

  // Flushes the key's loaded handle, if any, and forgets it.
  void forget(ObjectId id);

  // Generates a key under the key file parent `parent` (0x40000001 or a persistent handle).
  Result<KeyFile> create_key(const KeyOptions& opts, const SecretBytes& auth, uint32_t parent);
  // Signs with the key, loading it (once) if needed: one TPM command when it is already loaded.
  // Recovers once, transparently, from a lost session or object (TPM restart, flushed context).
  Result<TPMT_SIGNATURE> sign(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const SignRequest& req);
  // The public area of the object at a persistent handle (TPM2_ReadPublic).
  Result<TPM2B_PUBLIC> public_of(uint32_t handle);
  // Makes a key file's key persistent at `handle` (TPM2_EvictControl, owner authorization).
  Status make_persistent(const KeyFile& kf, uint32_t handle);
  // Removes the persistent key at `handle` if its name is `kf`'s (TPM2_EvictControl).
  Status evict_persistent(const KeyFile& kf, uint32_t handle);
  // Signs `message` with a restricted key: the TPM hashes it (TPM2_Hash, or a hash sequence for
  // more than 1024 bytes) to get the ticket a restricted key needs, then signs (TPM2_Sign).
  Result<TPMT_SIGNATURE> sign_message(ObjectId id, const KeyFile& kf, const SecretBytes& auth,
                                      const TPMT_SIG_SCHEME& scheme, const Bytes& message);
  // Whether the TPM supports keys of this algorithm (TPM2_TestParms).
  Status supports(const AlgorithmSpec& spec);

  // `tpmkey init`: makes the standard SRK persistent at kSrkHandle, or adopts the one there when it
  // matches the standard template, and returns its pin. With `persistent` false, or when another
  // key holds kSrkHandle, only learns the name of the transient SRK (pin handle 0).
  enum class Provisioned { kCreated, kAdopted, kTransient, kHandleTaken };
  Result<SrkPin> provision_srk(bool persistent, Provisioned* how);
  // The handle of the session, 0 if none.
  uint32_t session_handle();
  // Test hook: flushes a handle behind the cache's back, as a resource manager or another
  // program could, to prove recovery.
  void test_flush_handle(uint32_t handle);

 private:
  struct Entry {
    TPM2_HANDLE handle = 0;   // 0: not loaded
    bool persistent = false;  // never flushed or context-saved
    Bytes name;
    TPMT_PUBLIC pub{};        // kept for parents (the SRK salts sessions)
    bool has_saved = false;
    TPMS_CONTEXT saved{};
    uint64_t last_use = 0;
  };

  Tpm(TpmOptions opts, const Crypto& crypto) : opts_(std::move(opts)), crypto_(crypto) {}
  Status open_transport();
  void close_transport();

  // Runs one command authorizing `names[0]`'s entity with `auth`: in `session` (tpmkey's
  // salted session, or a temporary one), or with a password when the user opted out.
  template <typename Prepare, typename Complete>
  TSS2_RC run(Session* session, TPM2_CC cc, std::initializer_list<const Bytes*> names, const SecretBytes& auth,
              CommandProtection prot, Prepare&& prepare, Complete&& complete);
  template <typename Prepare, typename Complete>
  TSS2_RC run_once(Session* session, TPM2_CC cc, std::initializer_list<const Bytes*> names, const SecretBytes& auth,
                   CommandProtection prot, Prepare& prepare, Complete& complete);
  // Starts `s`, salted to `salt_key` (nullptr: unsalted, for creating the SRK itself).
  Status start_session(Session& s, const Entry* salt_key);
  void flush_session(Session& s);
  // The salted session every authorized command uses (started on first need).
  Result<Session*> session();

  Result<Entry*> parent(uint32_t handle);
  Result<Entry*> srk();
  // Creates the standard storage primary into `e` (not yet compared with the pin).
  Result<Entry*> create_srk(Entry& e);
  // Compares the SRK's name with the pin, or records it (trust on first use) when there is none.
  Status check_pin(const Bytes& name, uint32_t handle);
  Result<Entry*> load(ObjectId id, const KeyFile& kf);
  Result<TPMT_SIGNATURE> sign_once(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const SignRequest& req);
  // TPM2_Sign of a digest with its hash-check ticket (a NULL ticket for unrestricted keys).
  TSS2_RC sign_digest(Session* s, const Entry& key, const SecretBytes& auth, const TPMT_SIG_SCHEME& scheme,
                      const TPM2B_DIGEST& digest, const TPMT_TK_HASHCHECK& ticket, TPMT_SIGNATURE* sig);
  // The TPM's digest of `message` and its ticket, in `hierarchy`.
  TSS2_RC tpm_hash(Session* s, TPM2_ALG_ID hash, const Bytes& message, TPMI_RH_HIERARCHY hierarchy,
                   TPM2B_DIGEST* digest, TPMT_TK_HASHCHECK* ticket);
  // After a failure: if it means our session or objects are gone, forget them (never flushing
  // handles that may now belong to someone else) and say whether retrying makes sense.
  bool recover(TSS2_RC rc, bool empty_auth);
  Result<TPMT_PUBLIC> read_public(TPM2_HANDLE h, Bytes* name);
  // Brings back an object we evicted with ContextSave; false if there is none or it is stale.
  bool reload_saved(ObjectId id, Entry& e);
  // Runs a command that needs a free object slot; on TPM_RC_OBJECT_MEMORY evicts our least
  // recently used object (never `pinned`) and tries again.
  template <typename Fn>
  TSS2_RC with_slot(ObjectId pinned_a, ObjectId pinned_b, Fn&& fn);
  bool evict_one(ObjectId pinned_a, ObjectId pinned_b);
  // TPM2_TestParms for the key template; the TPM's answer is kept in last_test_parms_rc_.
  bool test_parms(const KeyOptions& opts);
  size_t loaded_transients() const;
  // The error for a failed command that needed an object slot.
  Error slot_error(const std::string& what, TSS2_RC rc);
  // Reads TRANSIENT_MIN and LOADED_MIN once, when first needed (keeps the defaults on failure).
  void read_limits();
  void flush(Entry& e);

  TpmOptions opts_;
  const Crypto& crypto_;
  std::mutex mu_;
  std::atomic<uint64_t> commands_{0};
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  TSS2_SYS_CONTEXT* sys_ = nullptr;
  pid_t pid_ = 0;
  uint32_t transient_limit_ = 3;  // TPM2_PT_HR_TRANSIENT_MIN
  uint32_t session_limit_ = 3;    // TPM2_PT_HR_LOADED_MIN (tpmkey keeps one session loaded)
  bool limits_read_ = false;
  uint64_t clock_ = 0;
  bool srk_probed_ = false;  // looked for a persistent SRK at kSrkHandle
  TSS2_RC last_test_parms_rc_ = TSS2_RC_SUCCESS;
  TSS2_RC last_rc_ = TSS2_RC_SUCCESS;  // of the last load or sign, for recover()
  Session session_;
  // Parents are keyed by their key-file handle (0x40000001, 0x81xxxxxx); keys by ObjectId.
  std::unordered_map<ObjectId, Entry> objects_;
};

}  // namespace tpmkey
