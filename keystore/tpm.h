// Tpm: the one funnel for every TPM command. Owns the TCTI, the ESYS context, a mutex, the
// command counter and the cache of objects tpmkey loaded (parents and keys).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include <tss2/tss2_esys.h>

#include "keystore/algorithm.h"
#include "keystore/error.h"
#include "keystore/keyfile.h"
#include "keystore/ossl.h"

namespace tpmkey {

// Identifies a key in the Tpm's object cache; unique in the process (new_object_id()).
using ObjectId = uint64_t;
ObjectId new_object_id();

struct SignRequest {
  TPMT_SIG_SCHEME scheme{};  // ECDSA, RSASSA or RSAPSS with its hash
  Bytes digest;              // already hashed in software
};

class Tpm {
 public:
  // Connects to `tcti` ("" = the tctildr default) and reads the TPM's slot limits.
  static Result<std::unique_ptr<Tpm>> connect(const std::string& tcti);
  ~Tpm();
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  // TPM commands sent through this connection so far.
  uint64_t commands() const { return commands_.load(std::memory_order_relaxed); }
  pid_t owner_pid() const { return pid_; }
  // In a forked child: forget every handle and session without sending a command.
  void abandon();
  // Flushes every transient object this connection loaded (in the owning process only).
  void flush_all();

  // Flushes the key's loaded handle, if any, and forgets it.
  void forget(ObjectId id);

  // Generates a key under the key file parent `parent` (0x40000001 or a persistent handle).
  Result<KeyFile> create_key(const KeyOptions& opts, const SecretBytes& auth, uint32_t parent);
  // Signs with the key, loading it (once) if needed. One TPM command when it is already loaded.
  Result<TPMT_SIGNATURE> sign(ObjectId id, const KeyFile& kf, const SecretBytes& auth, const SignRequest& req);
  // Whether the TPM supports keys of this algorithm (TPM2_TestParms).
  Status supports(const AlgorithmSpec& spec);

 private:
  struct Entry {
    ESYS_TR tr = ESYS_TR_NONE;
    bool persistent = false;  // closed, never flushed or context-saved
    bool has_saved = false;
    TPMS_CONTEXT saved{};
    uint64_t last_use = 0;
  };

  Tpm() = default;
  Result<ESYS_TR> parent(uint32_t handle);
  Result<ESYS_TR> load(ObjectId id, const KeyFile& kf);
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
  void flush(Entry& e);

  std::mutex mu_;
  std::atomic<uint64_t> commands_{0};
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
  pid_t pid_ = 0;
  uint32_t transient_limit_ = 3;
  uint64_t clock_ = 0;
  TSS2_RC last_test_parms_rc_ = TSS2_RC_SUCCESS;
  // Parents are keyed by their key-file handle (0x40000001, 0x81xxxxxx); keys by ObjectId.
  std::unordered_map<ObjectId, Entry> objects_;
};

}  // namespace tpmkey
