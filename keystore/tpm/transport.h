// The transport to the TPM: a TCTI that tss2-sys talks through, over one of two links:
//
//   "swtpm[:host=H,port=P | :path=SOCKET]"  tpmkey's own client for swtpm's socket protocol
//        (swtpm_link.cc): one connection per operation (Link::hold), as swtpm serves one client
//        at a time, close-on-exec, no SIGPIPE, and every connect, send and receive bounded by
//        the timeout;
//   "NAME[:CONFIG]"  loads libtss2-tcti-NAME.so.0 (NAME itself when it has a '/' or ".so") and
//        initializes it with CONFIG, the way tctildr reads the same string;
//   ""               the tctildr default (tpm2-abrmd, /dev/tpmrm0, /dev/tpm0, ...), for which
//        libtss2-tctildr is loaded then and only then.
//
// Every command is counted (the TPM command counter that tests assert on and benchmarks report)
// and gets a deadline: `Timeouts::command`, or `Timeouts::keygen` for the commands that generate
// keys. A TPM that does not answer in time gives TSS2_TCTI_RC_IO_ERROR and the link's words,
// "timed out after N s ...", and the connection must then be closed (connection.h).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <tss2/tss2_tcti.h>

#include "keystore/config.h"
#include "keystore/error.h"
#include "keystore/ossl.h"

namespace tpmkey {

using Deadline = std::chrono::steady_clock::time_point;

// One way of reaching a TPM.
class Link {
 public:
  virtual ~Link() = default;
  virtual TSS2_RC transmit(const uint8_t* cmd, size_t size, Deadline deadline) = 0;
  // TCTI receive semantics: `rsp` nullptr asks for the size.
  virtual TSS2_RC receive(size_t* size, uint8_t* rsp, Deadline deadline) = 0;
  // Whether the TPM's handles stay this client's between commands, so that no other program can
  // come to hold a handle number tpmkey holds without tpmkey seeing the connection break: a
  // resource manager (tpm2-abrmd, /dev/tpmrm0) virtualizes them, /dev/tpm0 is opened
  // exclusively. A bare simulator socket is not continuous (docs/sessions.md).
  virtual bool continuous() const = 0;
  // In a forked child: closes the descriptors without talking to the TPM or finalizing anything
  // the parent still uses. The link is unusable afterwards.
  virtual void forget_in_child() = 0;
  // While held, a link that connects per command (swtpm) keeps its connection from one command
  // to the next: one connection for a whole operation. Releasing it closes the connection, so
  // that other programs reach the TPM. Links that stay connected anyway ignore it.
  virtual void hold(bool /*on*/) {}
  // What went wrong last, in words ("connect(127.0.0.1:2321): Connection refused").
  const std::string& error() const { return error_; }
  // Whether the last command failed because its deadline passed.
  bool timed_out() const { return timed_out_; }
  // Called before each command, and after one timed out with the timeout it had.
  void start_command() {
    error_.clear();
    timed_out_ = false;
  }
  void explain_timeout(std::chrono::milliseconds timeout);

 protected:
  std::string error_;
  bool timed_out_ = false;
};

// The link a TCTI string names (see above). Errors have reason kTpmUnreachable.
Result<std::unique_ptr<Link>> open_link(const std::string& spec);
// A link the process provides itself, for the TCTI string "inprocess:NAME": the fuzz targets that
// play a malicious TPM register one (test/fuzz/tpm_response_fuzz.cc, tpm_fuzz.cc). Nothing else
// does, and an unregistered name is unreachable. `make` runs at each connection open.
void register_inprocess_link(const std::string& name, std::function<std::unique_ptr<Link>()> make);
Result<std::unique_ptr<Link>> open_swtpm_link(const std::string& config);

// The TCTI tss2-sys uses: counts commands and sets their deadlines, over a Link it owns.
class Transport {
 public:
  static Result<std::unique_ptr<Transport>> open(const std::string& spec, const Timeouts& timeouts,
                                                 std::atomic<uint64_t>* counter);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  TSS2_TCTI_CONTEXT* tcti();
  Link& link() { return *link_; }

 private:
  Transport() = default;
  struct Tcti;
  std::unique_ptr<Tcti> tcti_;
  std::unique_ptr<Link> link_;
};

}  // namespace tpmkey
