#include "keystore/tpm/process.h"

#include <pthread.h>

#include <cstdlib>
#include <new>
#include <set>

#include "keystore/tpm/tpm.h"

// What std::atexit does in a shared object (glibc), spelled out: see install_handlers().
extern "C" int __cxa_atexit(void (*fn)(void*), void* arg, void* dso);
extern "C" void* __dso_handle;

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
    // The exit flush belongs to this module (__dso_handle), so that it is dropped if the
    // provider module is unloaded (dlclose) before the process exits, as glibc's atexit does for
    // a shared object. Spelled out because ThreadSanitizer's atexit interceptor loses that tie:
    // the handler would then run after the module is gone.
    __cxa_atexit([](void*) { flush_all_at_exit(); }, nullptr, &__dso_handle);
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
