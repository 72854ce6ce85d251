#include "keystore/tpm/objects.h"

#include <atomic>

namespace tpmkey {

ObjectId new_object_id() {
  static std::atomic<ObjectId> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

size_t ObjectCache::loaded_transients() const {
  size_t n = 0;
  for (const auto& [h, o] : parents_) n += o.transient() ? 1 : 0;
  for (const auto& [id, o] : keys_) n += o.transient() ? 1 : 0;
  return n;
}

Object* ObjectCache::lru_victim(const Object* a, const Object* b) {
  Object* victim = nullptr;
  for_each([&](Object& o) {
    if (&o == a || &o == b || !o.transient()) return;
    if (!victim || o.last_use < victim->last_use) victim = &o;
  });
  return victim;
}

void ObjectCache::abandon_all() {
  for_each([](Object& o) {
    o.abandon();
    o.saved.reset();
  });
}

void ObjectCache::clear() {
  abandon_all();
  parents_.clear();
  keys_.clear();
}

}  // namespace tpmkey
