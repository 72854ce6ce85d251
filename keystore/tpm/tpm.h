// Tpm: the one funnel for every TPM command. One per provider instance (or CLI run): it owns the
// connection (connection.h), a mutex, the authorization session (session.h) and the objects
// tpmkey loaded (objects.h). docs/sessions.md explains the design; the command families live in
// their own files: srk.cc (the storage root key and its pin), keys.cc (loading keys, the generic
// key routine, TPM2_Create, TPM2_ObjectChangeAuth), sign.cc (TPM2_Sign, TPM2_Hash), decrypt.cc
// (TPM2_RSA_Decrypt, TPM2_ECDH_ZGen), import.cc (TPM2_Import),
// persistent.cc (EvictControl, ReadPublic of persistent handles), capability.cc (limits,
// TestParms), process.cc (exit, fork).
//
// Every operation runs through operation(), which
//   - opens the connection if it is closed (a TPM that is down fails this call, not all later ones);
//   - starts a new *continuity span* after a reconnect, a failure that questions tpmkey's handles,
//     or, on a transport that is not continuous (a bare simulator socket), an idle time longer
//     than kContinuityWindow: a handle proven in an older span is proven again (TPM2_ReadPublic
//     in the session, audited, so a failure is never a dictionary-attack strike) before anything
//     is authorized with it, and the SRK's name is compared with the pin again before a session is
//     salted to it. So a TPM restart, another program taking over the handle numbers, or a
//     replaced TPM never receives an authorized command meant for an object it no longer holds;
//   - waits, with backoff and up to Timeouts::busy, while other programs hold the TPM's slots;
//   - recovers once, transparently, from a lost session or object.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include <tss2/tss2_sys.h>

#include "keystore/algorithm.h"
#include "keystore/config.h"
#include "keystore/crypto.h"
#include "keystore/error.h"
#include "keystore/keyfile.h"
#include "keystore/keystore.h"
#include "keystore/ossl.h"
#include "keystore/tpm/connection.h"
#include "keystore/tpm/duplicate.h"
#include "keystore/tpm/objects.h"
#include "keystore/tpm/runner.h"
#include "keystore/tpm/session.h"

namespace tpmkey {

// Where tpmkey makes the storage root key persistent (TCG provisioning guidance).
inline constexpr uint32_t kSrkHandle = 0x81000001;

// A transport that is not continuous is trusted to keep tpmkey's handles only between commands
// less than this far apart. A simulator restart plus another program loading objects and
// starting sessions takes longer (swtpm alone needs 2 ms to come back; docs/sessions.md).
inline constexpr std::chrono::microseconds kContinuityWindow{1000};

struct SignRequest {
  SignScheme scheme;
  Bytes digest;  // already hashed in software
};

// One TPM2_RSA_Decrypt. `scheme` is TPM_ALG_NULL (the raw RSA operation, for a key whose own
// scheme is NULL), TPM_ALG_RSAES (PKCS#1 v1.5) or TPM_ALG_OAEP with `hash`. The TPM takes an OAEP
// label only empty or NUL-terminated, and hashes it with its terminating NUL (TPM 2.0 Part 3
// RSA_Decrypt, Part 1 Annex B.4); `label` is sent as it is.
struct RsaDecryptRequest {
  TPM2_ALG_ID scheme = TPM2_ALG_NULL;
  TPM2_ALG_ID hash = TPM2_ALG_NULL;
  Bytes label;
  Bytes ciphertext;  // exactly the modulus size
};

struct TpmOptions {
  std::string tcti;              // "" = the tctildr default
  bool password_auth = false;    // opt-out: cleartext TPM_RS_PW instead of salted sessions
  Timeouts timeouts;
  std::optional<SrkPin> pin;     // the recorded SRK; nullopt = trust on first use
  // Called once when there was no pin and the SRK's name has been learnt, to record it. A failure
  // is the operation's failure: without a recorded pin every later process would trust whatever
  // SRK it meets.
  std::function<Status(const SrkPin&)> on_first_srk;
  // Reads the recorded pin again (after `tpmkey init --repin` by another process), when the
  // SRK's name differs from the pin this Tpm started with.
  std::function<std::optional<SrkPin>()> reread_pin;
};

class Tpm {
 public:
  // Sends nothing and opens nothing yet: the connection opens on first use. `crypto` must
  // outlive the Tpm.
  static std::unique_ptr<Tpm> create(TpmOptions opts, const Crypto& crypto);
  ~Tpm();
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  // TPM commands sent so far.
  uint64_t commands() const { return conn_.commands(); }
  pid_t owner_pid() const { return pid_; }
  // Tells this connection apart from every other a process has had: a Tpm made after another
  // was freed (a forked child's first, for one) may sit at the same address.
  uint64_t serial() const { return serial_; }

  // Flushes the key's loaded handle, if any, and forgets it.
  void forget(ObjectId id);

  // A persistent parent's own password (docs/keys.md#parents-with-a-password), for TPM2_Load,
  // TPM2_Create and TPM2_Import under it, in the salted session. require_parent_auth says that a
  // parent has one without giving it: commands under it then fail before they reach the TPM. A
  // password the TPM refuses is forgotten (one dictionary-attack failure, never a second).
  void set_parent_auth(uint32_t parent, SecretBytes auth);
  void require_parent_auth(uint32_t parent);

  // Generates a key under the key file parent `parent` (0x40000001 or a persistent handle).
  Result<KeyFile> create_key(const KeyOptions& opts, const SecretBytes& auth, uint32_t parent);
  // Brings in a key made outside the TPM, under the key file parent `parent` (0x40000001 or a
  // persistent ECC storage key): wrapped in software for the parent (duplicate.h), then
  // TPM2_Import. `pub` is an import_template() public area with its unique field filled in,
  // `secret` the RSA prime p or the ECC private d, `auth` the key's password (at most the digest
  // size of its nameAlg). Returns the private blob that TPM2_Load takes with `pub`; nothing is
  // left loaded.
  Result<TPM2B_PRIVATE> import_key(const TPM2B_PUBLIC& pub, const SecretBytes& secret, const SecretBytes& auth,
                                   uint32_t parent);
  // Changes a key's password: TPM2_ObjectChangeAuth under its parent, authorized with `old_auth`
  // in the salted session, `new_auth` (parameter 1) encrypted by it. Returns the new private blob
  // (same public area, so the same name). The TPM leaves the old blob valid with the old password.
  // The key is loaded under an object id of its own and flushed again, so no cached object of the
  // old blob is ever used with the new one. Not for persistent keys (kf.persistent).
  Result<TPM2B_PRIVATE> change_auth(const KeyFile& kf, const SecretBytes& old_auth, const SecretBytes& new_auth);
  // TPM2_Import of a duplication blob made elsewhere for the owner SRK (`tpmkey wrap`), in the
  // salted session. `wrapped_for`, when the file says, is the name of the SRK it was made for: an
  // SRK of another name is refused before TPM2_Import is sent. Returns the private blob that
  // TPM2_Load takes with `pub`; nothing is left loaded.
  Result<TPM2B_PRIVATE> import_duplicate(const TPM2B_PUBLIC& pub, const Duplicate& blob, const Bytes* wrapped_for);
  // The owner SRK's public area and name, compared with the pin like before any other use
  // (`tpmkey srk`). One TPM2_ReadPublic of the persistent SRK, or TPM2_CreatePrimary.
  struct SrkPublic {
    TPMT_PUBLIC pub{};
    Bytes name;
  };
  Result<SrkPublic> srk_public();
  // Signs with the key, loading it (once) if needed: one TPM command when it is already loaded.
  Result<TPMT_SIGNATURE> sign(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const SignRequest& req);
  // Signs `message` with a restricted key: the TPM hashes it (TPM2_Hash, or a hash sequence for
  // more than 1024 bytes) to get the ticket a restricted key needs, then signs (TPM2_Sign).
  Result<TPMT_SIGNATURE> sign_message(ObjectId id, const KeyFile& kf, const SecretBytes& auth,
                                      const SignScheme& scheme, const Bytes& message);
  // Decrypts with an RSA key (TPM2_RSA_Decrypt), loading it (once) if needed, in the salted
  // session with the ciphertext encrypted going in and the message encrypted coming out, so the
  // plaintext never crosses the bus in clear (decrypt.cc).
  Result<SecretBytes> rsa_decrypt(ObjectId id, const KeyFile& kf, const SecretBytes& auth,
                                  const RsaDecryptRequest& req);
  // ECDH with an EC key (TPM2_ECDH_ZGen): the x-coordinate of d * (x, y), as long as the curve's
  // field, the response encrypted in the session. The caller checks that (x, y) is on the curve.
  Result<SecretBytes> ecdh_zgen(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const Bytes& x,
                                const Bytes& y);
  // The public area of the object at a persistent handle (TPM2_ReadPublic).
  Result<TPM2B_PUBLIC> public_of(uint32_t handle);
  // Makes a key file's key persistent at `handle` (TPM2_EvictControl, owner authorization).
  Status make_persistent(const KeyFile& kf, uint32_t handle);
  // Removes the persistent key at `handle` if its name is `kf`'s (TPM2_EvictControl).
  Status evict_persistent(const KeyFile& kf, uint32_t handle);
  // Whether the TPM supports keys of this algorithm (TPM2_TestParms).
  Status supports(const AlgorithmSpec& spec);

  // `tpmkey init`: makes the standard SRK persistent at kSrkHandle, or adopts the one there when it
  // matches the standard template, and returns its pin. With `persistent` false, or when another
  // key holds kSrkHandle, only learns the name of the transient SRK (pin handle 0). With
  // `expected` (the name the keystore already pinned), an SRK of another name is refused before
  // anything is made persistent.
  enum class Provisioned { kCreated, kAdopted, kTransient, kHandleTaken };
  Result<SrkPin> provision_srk(bool persistent, const Bytes* expected, Provisioned* how);

  // Gives the object slots of loaded keys back, on a TPM without a resource manager where every
  // program shares a few (swtpm has 3): each key is proven, saved (TPM2_ContextSave) and flushed,
  // and its next use loads it back (TPM2_ContextLoad). A long-lived process calls it when idle
  // (tpmkey agent does). Nothing happens on a resource manager, which swaps objects itself.
  void park();

  // At exit: flushes every transient object and the session this connection created and can
  // still prove are its own (owning process only).
  void flush_all();
  // In a forked child (process.cc calls this from its pthread_atfork child handler): forgets the
  // connection, the session and every handle without sending anything.
  void forget_in_child();

  // Test hooks: the session's handle (0 if none), and a flush behind the cache's back, as a
  // resource manager or another program could do.
  uint32_t session_handle();
  TSS2_RC test_flush_handle(uint32_t handle);

 private:
  friend class ForkRegistry;  // process.cc: locks mu_ around fork()

  Tpm(TpmOptions opts, const Crypto& crypto);

  // ---- the operation driver (tpm.cc) ----
  // R is Status or Result<T>; `attempt` returns an R and may run several times.
  template <typename R, typename Fn>
  R operation(Fn&& attempt);
  Status begin();
  // Gives the TPM back the slots tpmkey holds (saving its objects) before waiting for others'.
  void make_way();
  // After an operation: a transient parent (the SRK) is saved and flushed, so that a process
  // holds one object slot per loaded key and no more on a bare TPM (ContextLoad brings it back).
  void park_parents();
  // The error for a failed command while doing `what` (transport failures in the transport's words).
  Error error(const std::string& what, TSS2_RC rc) const { return conn_.error(what, rc); }
  // Whether a failure means tpmkey's own state is stale (lost handle or session, broken connection).
  bool is_stale(TSS2_RC rc) const;

  // ---- proving handles (tpm.cc) ----
  // Proves `o` (and, when it can, the session) in the current span; drops what is not tpmkey's
  // any more. Returns an error only for failures that are not about the handle (unreachable, busy).
  Status verify(Object& o);
  Status verify_session();
  // Releases an object: flushed if it is provably tpmkey's, else just forgotten.
  void release(Object& o);

  // ---- import (import.cc) ----
  // The one TPM2_Import: `blob_for` makes (or checks) the duplicate for the proven parent, on
  // each attempt.
  using BlobFor = std::function<Result<Duplicate>(const Object& parent)>;
  Result<TPM2B_PRIVATE> import_blob(const TPM2B_PUBLIC& pub, uint32_t parent_handle, const BlobFor& blob_for);

  // ---- objects and slots (keys.cc) ----
  Result<Object*> load(ObjectId id, const KeyFile& kf);
  // Brings back an object evicted with ContextSave; false if there is none or it is stale.
  bool reload_saved(Object& o, const Object* pinned);
  // Evicts tpmkey's own least recently used objects until `needed` slots are free by tpmkey's
  // count (never `a` or `b`). A Load under a persistent parent needs 2 on libtpms.
  void make_room(size_t needed, const Object* a, const Object* b);
  bool evict_one(const Object* a, const Object* b);
  // Runs a command that needs object slots; on TPM_RC_OBJECT_MEMORY evicts one of tpmkey's own
  // objects and tries again.
  template <typename Fn>
  TSS2_RC with_room(size_t needed, const Object* a, const Object* b, Fn&& fn);
  // The generic routine: `command(key, session)` on the loaded key, authorized in the session;
  // an HMAC failure is told apart: wrong password, or stale state (then recovered once by
  // operation()).
  template <typename Fn>
  Status with_key(ObjectId id, const KeyFile& kf, const std::string& what, Fn&& command);
  Result<TPMT_SIGNATURE> sign_digest(Session* s, const Object& key, const SecretBytes& auth,
                                     const TPMT_SIG_SCHEME& scheme, const TPM2B_DIGEST& digest,
                                     const TPMT_TK_HASHCHECK& ticket, TSS2_RC* rc);
  // The TPM's digest of `message` and its ticket, in `hierarchy`.
  TSS2_RC tpm_hash(Session* s, TPM2_ALG_ID hash, const Bytes& message, TPMI_RH_HIERARCHY hierarchy,
                   TPM2B_DIGEST* digest, TPMT_TK_HASHCHECK* ticket);

  // ---- the SRK, parents and the session (srk.cc) ----
  Result<Object*> parent(uint32_t handle);
  // The password to authorize `parent` with (empty for the SRK and parents without one); an
  // error when the parent needs one and none was given.
  Result<SecretBytes> parent_auth(uint32_t parent) const;
  // After a command under `parent` failed with `rc`: when the TPM refused the parent's
  // authorization, forgets the password and says so in `e`.
  void check_parent_auth(uint32_t parent, TSS2_RC rc, Error& e);
  Result<Object*> srk();
  Result<Object*> create_srk(Object& e);
  Status check_pin(const Bytes& name, uint32_t handle, bool created);
  // The salted session every authorized command uses (started, or proven, on first need in a
  // span); nullptr with the password opt-out.
  Result<Session*> session();
  // Starts `s`, salted to `salt_key` (nullptr: unsalted, for creating the SRK itself).
  Status start_session(Session& s, const Object* salt_key);
  // TPM2_ReadPublic; its name is checked against the public area. With `audit`, the read also
  // proves the session (the cpHash then includes `expected`, the name tpmkey expects there).
  Result<TPMT_PUBLIC> read_public(TPM2_HANDLE h, Bytes* name, const Bytes* expected = nullptr,
                                  Session* audit = nullptr);

  // ---- capabilities (capability.cc) ----
  // Reads TRANSIENT_MIN and LOADED_MIN once, when first needed (keeps the defaults on failure).
  void read_limits();
  TSS2_RC test_parms(const KeyOptions& opts);
  // Says whose slots are full, and how long tpmkey waited for them.
  void explain_shortage(Error& e, std::chrono::steady_clock::duration waited);
  // Says what to do about TPM_RC_LOCKOUT, with the TPM's recovery interval when it can be read.
  void explain_lockout(Error& e);

  TpmOptions opts_;
  const Crypto& crypto_;
  std::mutex mu_;
  Connection conn_;
  Runner run_;
  pid_t pid_ = 0;
  uint64_t serial_ = 0;
  bool forked_ = false;

  Session session_;
  uint64_t session_span_ = 0;
  ObjectCache objects_;
  uint64_t span_ = 1;
  uint64_t generation_seen_ = 0;
  uint64_t clock_ = 0;
  uint64_t no_persistent_srk_span_ = 0;  // the span in which kSrkHandle was found empty
  uint32_t transient_limit_ = 3;         // TPM2_PT_HR_TRANSIENT_MIN
  uint32_t session_limit_ = 3;           // TPM2_PT_HR_LOADED_MIN (tpmkey keeps one session loaded)
  bool limits_read_ = false;
  std::map<uint32_t, SecretBytes> parent_auth_;  // by persistent parent handle
  std::set<uint32_t> parent_needs_auth_;
};

}  // namespace tpmkey
