// What the process does to tpmkey's TPM connections: exit and fork (process.cc).
//   - exit: a bare TPM (no resource manager) keeps whatever a process leaves loaded until it is
//     reset, so every live Tpm flushes its objects and session from an atexit handler (which glibc
//     runs at exit or at dlclose of the module, whichever comes first);
//   - fork: pthread_atfork handlers take every Tpm's lock before fork() (so no command is half
//     sent and no descriptor is mid-use), release them in the parent, and in the child make every
//     Tpm forget its connection, session and handles without sending anything and close its
//     descriptors (the parent keeps using them). The child connects afresh on its first use.
// The registry's lock also guards Context's lazy creation of its Tpm and Crypto, so it is
// released cleanly in a child too.
#pragma once

#include <atomic>
#include <mutex>
#include <thread>

namespace tpmkey {

class Tpm;

// A lock the same thread may take again (Context holds it while its new Tpm registers). Not a
// std::recursive_mutex: glibc checks a recursive mutex's owner by thread id, which differs in a
// forked child, so the child could never release what the parent's fork handler took.
class ProcessLock {
 public:
  void lock() {
    if (owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
      ++depth_;
      return;
    }
    mu_.lock();
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    depth_ = 1;
  }
  void unlock() {
    if (--depth_ > 0) return;
    owner_.store(std::thread::id(), std::memory_order_relaxed);
    mu_.unlock();
  }

 private:
  std::mutex mu_;
  std::atomic<std::thread::id> owner_{};
  int depth_ = 0;
};

std::unique_lock<ProcessLock> lock_process();
void register_tpm(Tpm* t);
void unregister_tpm(Tpm* t);

}  // namespace tpmkey
