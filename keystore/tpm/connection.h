// Connection: the transport and the tss2-sys context over it, as a small state machine.
//
//   closed --open()--> open --transport failure or timeout--> closed (open() reconnects)
//
// Nothing is sent by open(); a TPM that is down makes each command fail at once (connection
// refused) or at its deadline, with "TPM unreachable" and the transport's words, and the next
// command tries again. Each (re)open starts a new generation: handles from an older one are not
// trusted until verified (tpm.h). After fork() the child forgets the parent's connection without
// sending anything, closing its descriptors (the parent keeps using them).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <tss2/tss2_sys.h>

#include "keystore/config.h"
#include "keystore/error.h"
#include "keystore/tpm/transport.h"

namespace tpmkey {

class Connection {
 public:
  Connection(std::string spec, Timeouts timeouts) : spec_(std::move(spec)), timeouts_(timeouts) {}
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Status open();
  bool is_open() const { return sys_ != nullptr; }
  void close();
  void forget_in_child();

  TSS2_SYS_CONTEXT* sys() const { return sys_; }
  const std::string& spec() const { return spec_; }
  const Timeouts& timeouts() const { return timeouts_; }
  // See Link::continuous(); false while closed.
  bool continuous() const;
  uint64_t generation() const { return generation_; }
  uint64_t commands() const { return counter_.load(std::memory_order_relaxed); }
  // Whether the last transport failure was a command's deadline passing.
  bool timed_out() const { return timed_out_; }

  // Runs one tss2-sys call that talks to the TPM and keeps the state: a transport failure closes
  // the connection; an answer (success or a TPM error) is recorded as contact.
  template <typename Fn>
  TSS2_RC call(Fn&& fn) {
    if (!sys_) return TSS2_TCTI_RC_IO_ERROR;
    TSS2_RC rc = fn();
    after_call(rc);
    return rc;
  }
  // Holds the link's connection from one command to the next until released (Link::hold); a
  // reconnection stays held. Hold does so for one operation, under the Tpm's lock (never nested).
  void hold(bool on);
  class Hold {
   public:
    explicit Hold(Connection& c) : c_(c) { c_.hold(true); }
    ~Hold() { c_.hold(false); }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

   private:
    Connection& c_;
  };
  // How long since the TPM last answered, on a clock that also counts suspended time.
  std::chrono::nanoseconds idle() const;
  // The error for a failed call made while doing `what`, with the transport's words for a
  // transport failure ("TPM unreachable: connect(127.0.0.1:2321): Connection refused").
  Error error(const std::string& what, TSS2_RC rc) const;

 private:
  void after_call(TSS2_RC rc);

  std::string spec_;
  Timeouts timeouts_;
  std::atomic<uint64_t> counter_{0};
  std::unique_ptr<Transport> transport_;
  TSS2_SYS_CONTEXT* sys_ = nullptr;
  uint64_t generation_ = 0;
  int64_t last_answer_ns_ = 0;  // 0: never
  std::string last_transport_error_;
  bool forgotten_ = false;
  bool timed_out_ = false;
  bool held_ = false;
};

}  // namespace tpmkey
