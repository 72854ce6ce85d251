#include "keystore/tpm/process.h"

#include <pthread.h>

#include <cstdlib>
#include <new>
#include <set>

#include "keystore/tpm/tpm.h"

namespace tpmkey {
namespace {

struct Registry {
  ProcessLock mu;
  std::set<Tpm*> live;
};

// In static storage and never destroyed: OpenSSL may tear the provider down from its own exit
// handler, after this file's static objects would have been destroyed, and the module may be
// loaded and unloaded many times (a heap object per load would be a leak).
Registry& registry() {
  alignas(Registry) static unsigned char storage[sizeof(Registry)];
  static auto* r = new (storage) Registry;
  return *r;
}

}  // namespace

// Friend of Tpm: the fork protocol needs its lock.
class ForkRegistry {
 public:
  static void prepare() {
    registry().mu.lock();
    for (Tpm* t : registry().live) t->mu_.lock();
  }
  static void parent() {
    for (Tpm* t : registry().live) t->mu_.unlock();
    registry().mu.unlock();
  }
  static void child() {
    for (Tpm* t : registry().live) {
      t->forget_in_child();
      t->mu_.unlock();
    }
    registry().mu.unlock();
  }
};

namespace {

void flush_all_at_exit() {
  std::lock_guard lock(registry().mu);
  for (Tpm* t : registry().live) t->flush_all();
}

void install_handlers() {
  static bool installed = [] {
    std::atexit(flush_all_at_exit);
    pthread_atfork([] { ForkRegistry::prepare(); }, [] { ForkRegistry::parent(); }, [] { ForkRegistry::child(); });
    return true;
  }();
  (void)installed;
}

}  // namespace

std::unique_lock<ProcessLock> lock_process() { return std::unique_lock(registry().mu); }

void register_tpm(Tpm* t) {
  install_handlers();
  std::lock_guard lock(registry().mu);
  registry().live.insert(t);
}

void unregister_tpm(Tpm* t) {
  std::lock_guard lock(registry().mu);
  registry().live.erase(t);
}

}  // namespace tpmkey
