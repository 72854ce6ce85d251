#include "keystore/tpm/connection.h"

#include <time.h>

#include <cstdio>
#include <cstdlib>

#include "keystore/tpm/tss_loader.h"

namespace tpmkey {
namespace {

int64_t boottime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

Connection::~Connection() { close(); }

Status Connection::open() {
  if (sys_) return Status::Ok();
  if (forgotten_) return make_error(Reason::kInternal, "this TPM connection belongs to the parent process");
  // libtss2-sys and libtss2-mu are loaded by the first connection (tss_loader.h).
  TPMKEY_TRY(tss::load());
  auto t = Transport::open(spec_, timeouts_, &counter_);
  if (!t) return t.take_error();
  const size_t size = Tss2_Sys_GetContextSize(0);
  auto* sys = static_cast<TSS2_SYS_CONTEXT*>(std::calloc(1, size));
  TSS2_ABI_VERSION abi = TSS2_ABI_VERSION_CURRENT;
  TSS2_RC rc = sys ? Tss2_Sys_Initialize(sys, size, (*t)->tcti(), &abi) : TSS2_SYS_RC_GENERAL_FAILURE;
  if (rc != TSS2_RC_SUCCESS) {
    std::free(sys);
    return tss_error("connect(" + spec_ + ")", rc);
  }
  transport_ = std::move(*t);
  if (held_) transport_->link().hold(true);
  sys_ = sys;
  ++generation_;
  return Status::Ok();
}

void Connection::close() {
  if (sys_) {
    Tss2_Sys_Finalize(sys_);
    std::free(sys_);
    sys_ = nullptr;
  }
  transport_.reset();
}

void Connection::forget_in_child() {
  if (transport_) transport_->link().forget_in_child();
  forgotten_ = true;
  close();  // frees memory only: the link no longer owns a descriptor or a module
}

void Connection::hold(bool on) {
  held_ = on;
  if (transport_) transport_->link().hold(on);
}

bool Connection::continuous() const { return transport_ && transport_->link().continuous(); }

void Connection::after_call(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER) {
    last_transport_error_ = transport_ ? transport_->link().error() : "";
    timed_out_ = transport_ && transport_->link().timed_out();
    close();
    return;
  }
  last_answer_ns_ = boottime_ns();
}

std::chrono::nanoseconds Connection::idle() const {
  if (!last_answer_ns_) return std::chrono::hours(24 * 365);
  return std::chrono::nanoseconds(boottime_ns() - last_answer_ns_);
}

Error Connection::error(const std::string& what, TSS2_RC rc) const {
  Error e = tss_error(what, rc);
  if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER && !last_transport_error_.empty()) {
    e.reason = Reason::kTpmUnreachable;
    char code[32];
    std::snprintf(code, sizeof code, " (rc=0x%08x)", rc);
    e.detail = last_transport_error_ + code;
  }
  return e;
}

}  // namespace tpmkey
