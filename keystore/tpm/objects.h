// The objects tpmkey has loaded into the TPM: the storage root key and other parents (keyed by
// the parent handle a key file names: 0x40000001 or 0x81xxxxxx) and keys (keyed by ObjectId,
// one per Key). Each remembers its name, its handle (transient or persistent, handles.h), a
// saved context when it was evicted to make room, and the continuity span it was last proven
// in (tpm.h: a handle is used without a check only within the span it was proven in).
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <variant>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/ossl.h"
#include "keystore/tpm/handles.h"

namespace tpmkey {

// Identifies a key in the object cache; unique in the process (new_object_id()).
using ObjectId = uint64_t;
ObjectId new_object_id();

struct Object {
  Bytes name;
  TPMT_PUBLIC pub{};  // kept for parents (the SRK salts sessions)
  std::variant<std::monostate, TransientHandle, PersistentHandle> handle;
  std::optional<TPMS_CONTEXT> saved;  // evicted with ContextSave: ContextLoad brings it back
  uint64_t last_use = 0;
  uint64_t span = 0;  // the span in which the handle was last proven to be this object

  bool loaded() const { return !std::holds_alternative<std::monostate>(handle); }
  bool transient() const { return std::holds_alternative<TransientHandle>(handle); }
  TPM2_HANDLE tpm_handle() const {
    if (auto* t = std::get_if<TransientHandle>(&handle)) return t->get();
    if (auto* p = std::get_if<PersistentHandle>(&handle)) return p->get();
    return 0;
  }
  // Forgets the handle without flushing it (a persistent one is simply closed).
  void abandon() {
    if (auto* t = std::get_if<TransientHandle>(&handle)) t->abandon();
    handle = std::monostate{};
  }
};

class ObjectCache {
 public:
  Object& key(ObjectId id) { return keys_[id]; }
  Object* find_key(ObjectId id) {
    auto it = keys_.find(id);
    return it == keys_.end() ? nullptr : &it->second;
  }
  Object& parent(uint32_t handle) { return parents_[handle]; }
  Object* find_parent(uint32_t handle) {
    auto it = parents_.find(handle);
    return it == parents_.end() ? nullptr : &it->second;
  }
  void erase_key(ObjectId id) { keys_.erase(id); }
  void erase_parent(uint32_t handle) { parents_.erase(handle); }

  // Transient objects loaded now.
  size_t loaded_transients() const;
  // The least recently used loaded transient object that is neither `a` nor `b`, or nullptr.
  Object* lru_victim(const Object* a, const Object* b);
  template <typename Fn>
  void for_each(Fn&& fn) {
    for (auto& [id, o] : parents_) fn(o);
    for (auto& [id, o] : keys_) fn(o);
  }
  // Forgets every handle without flushing (after a restart or in a forked child), keeping names.
  void abandon_all();
  void clear();

 private:
  std::unordered_map<uint32_t, Object> parents_;
  std::unordered_map<ObjectId, Object> keys_;
};

}  // namespace tpmkey
