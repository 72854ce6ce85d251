#include "keystore/counting_tcti.h"

#include <new>

#include <tss2/tss2_tctildr.h>

namespace tpmkey {
namespace {

constexpr uint64_t kMagic = 0x74706d6b65796374ull;  // "tpmkeyct"

struct CountingTcti {
  TSS2_TCTI_CONTEXT_COMMON_V2 common;  // must come first: the TSS casts to it
  TSS2_TCTI_CONTEXT* inner;
  std::atomic<uint64_t>* counter;
};

CountingTcti* self(TSS2_TCTI_CONTEXT* c) { return reinterpret_cast<CountingTcti*>(c); }

TSS2_RC transmit(TSS2_TCTI_CONTEXT* c, size_t size, const uint8_t* cmd) {
  self(c)->counter->fetch_add(1, std::memory_order_relaxed);
  return Tss2_Tcti_Transmit(self(c)->inner, size, cmd);
}
TSS2_RC receive(TSS2_TCTI_CONTEXT* c, size_t* size, uint8_t* rsp, int32_t timeout) {
  return Tss2_Tcti_Receive(self(c)->inner, size, rsp, timeout);
}
void finalize(TSS2_TCTI_CONTEXT* c) {
  if (self(c)->inner) Tss2_TctiLdr_Finalize(&self(c)->inner);
}
TSS2_RC cancel(TSS2_TCTI_CONTEXT* c) { return Tss2_Tcti_Cancel(self(c)->inner); }
TSS2_RC get_poll_handles(TSS2_TCTI_CONTEXT* c, TSS2_TCTI_POLL_HANDLE* h, size_t* n) {
  return Tss2_Tcti_GetPollHandles(self(c)->inner, h, n);
}
TSS2_RC set_locality(TSS2_TCTI_CONTEXT* c, uint8_t locality) {
  return Tss2_Tcti_SetLocality(self(c)->inner, locality);
}
TSS2_RC make_sticky(TSS2_TCTI_CONTEXT* c, TPM2_HANDLE* h, uint8_t sticky) {
  return Tss2_Tcti_MakeSticky(self(c)->inner, h, sticky);
}

}  // namespace

TSS2_TCTI_CONTEXT* counting_tcti_new(TSS2_TCTI_CONTEXT* inner, std::atomic<uint64_t>* counter) {
  auto* t = new (std::nothrow) CountingTcti{};
  if (!t) return nullptr;
  t->common.v1.magic = kMagic;
  t->common.v1.version = 2;
  t->common.v1.transmit = transmit;
  t->common.v1.receive = receive;
  t->common.v1.finalize = finalize;
  t->common.v1.cancel = cancel;
  t->common.v1.getPollHandles = get_poll_handles;
  t->common.v1.setLocality = set_locality;
  t->common.makeSticky = make_sticky;
  t->inner = inner;
  t->counter = counter;
  return reinterpret_cast<TSS2_TCTI_CONTEXT*>(t);
}

void counting_tcti_free(TSS2_TCTI_CONTEXT* tcti) {
  if (!tcti) return;
  finalize(tcti);
  delete self(tcti);
}

}  // namespace tpmkey
