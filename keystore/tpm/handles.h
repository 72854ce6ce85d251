// TPM handles as C++ types that say how they are released (rust-tss-esapi's distinction):
// a transient object tpmkey loaded is *flushed* (TPM2_FlushContext, by the runner, which is the
// only code that can take the number out); a persistent object is *closed*, that is simply
// forgotten: it is never flushed. Dropping a TransientHandle that still holds a number is a bug
// (the object would stay in the TPM): debug builds abort.
#pragma once

#include <cassert>
#include <cstdint>
#include <utility>

#include <tss2/tss2_tpm2_types.h>

namespace tpmkey {

class TransientHandle {
 public:
  TransientHandle() = default;
  explicit TransientHandle(TPM2_HANDLE h) : h_(h) {}
  TransientHandle(TransientHandle&& o) noexcept : h_(std::exchange(o.h_, 0)) {}
  TransientHandle& operator=(TransientHandle&& o) noexcept {
    assert(!h_ && "overwrote a transient handle that was neither flushed nor abandoned");
    h_ = std::exchange(o.h_, 0);
    return *this;
  }
  TransientHandle(const TransientHandle&) = delete;
  TransientHandle& operator=(const TransientHandle&) = delete;
  ~TransientHandle() { assert(!h_ && "a transient handle was neither flushed nor abandoned"); }

  TPM2_HANDLE get() const { return h_; }
  explicit operator bool() const { return h_ != 0; }
  // Gives the number up without flushing: after a TPM restart, a reconnect or a fork, it may
  // name another program's object.
  void abandon() { h_ = 0; }

 private:
  friend class Runner;
  TPM2_HANDLE take() { return std::exchange(h_, 0); }
  TPM2_HANDLE h_ = 0;
};

class PersistentHandle {
 public:
  explicit PersistentHandle(TPM2_HANDLE h) : h_(h) {}
  TPM2_HANDLE get() const { return h_; }

 private:
  TPM2_HANDLE h_;
};

}  // namespace tpmkey
