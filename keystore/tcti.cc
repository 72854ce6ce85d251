#include "keystore/tcti.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include <tss2/tss2_tctildr.h>

namespace tpmkey {
namespace {

constexpr uint64_t kMagic = 0x74706d6b65796374ull;  // "tpmkeyct"

struct CountingTcti {
  TSS2_TCTI_CONTEXT_COMMON_V2 common;  // must come first: the TSS casts to it
  TSS2_TCTI_CONTEXT* inner;
  void* module;  // dlopen handle: the TCTI module, or libtss2-tctildr for the default
  char* config;  // what the module was initialized with: kept for as long as it runs
  decltype(&Tss2_TctiLdr_Finalize) ldr_finalize;  // set when tctildr made `inner`
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
  CountingTcti* t = self(c);
  if (t->inner && t->ldr_finalize) {
    t->ldr_finalize(&t->inner);
  } else if (t->inner) {
    Tss2_Tcti_Finalize(t->inner);
    std::free(t->inner);
  }
  t->inner = nullptr;
  if (t->module) dlclose(t->module);
  t->module = nullptr;
  std::free(t->config);
  t->config = nullptr;
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

Error unreachable(std::string detail) { return make_error(Reason::kTpmUnreachable, std::move(detail)); }

void* load_library(const std::string& file, Status* st) {
  void* h = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    std::string why = e ? e : "dlopen failed";  // "FILE: reason"
    if (why.rfind(file + ": ", 0) == 0) why.erase(0, file.size() + 2);
    *st = unreachable("cannot load " + file + ": " + why);
  }
  return h;
}

// tctildr's default search.
Status open_default(CountingTcti& t) {
  Status st;
  t.module = load_library("libtss2-tctildr.so.0", &st);
  if (!t.module) return st;
  auto init = reinterpret_cast<decltype(&Tss2_TctiLdr_Initialize)>(dlsym(t.module, "Tss2_TctiLdr_Initialize"));
  auto fin = reinterpret_cast<decltype(&Tss2_TctiLdr_Finalize)>(dlsym(t.module, "Tss2_TctiLdr_Finalize"));
  if (!init || !fin) return unreachable("libtss2-tctildr.so.0 lacks Tss2_TctiLdr_Initialize");
  if (TSS2_RC rc = init(nullptr, &t.inner); rc != TSS2_RC_SUCCESS) {
    t.inner = nullptr;
    return unreachable(describe_rc(rc));
  }
  t.ldr_finalize = fin;
  return Status::Ok();
}

// The TCTI module `name`, initialized with `config` (nullptr: the module's default).
Status open_module(const std::string& name, const char* config, CountingTcti& t) {
  const bool is_file = name.find('/') != std::string::npos || name.find(".so") != std::string::npos;
  const std::string file = is_file ? name : "libtss2-tcti-" + name + ".so.0";
  Status st;
  t.module = load_library(file, &st);
  if (!t.module) return st;
  auto info_fn = reinterpret_cast<TSS2_TCTI_INFO_FUNC>(dlsym(t.module, TSS2_TCTI_INFO_SYMBOL));
  const TSS2_TCTI_INFO* info = info_fn ? info_fn() : nullptr;
  if (!info || !info->init) return unreachable(file + " is not a TCTI module (no " TSS2_TCTI_INFO_SYMBOL ")");
  size_t size = 0;
  TSS2_RC rc = info->init(nullptr, &size, config);
  if (rc == TSS2_RC_SUCCESS) {
    t.inner = static_cast<TSS2_TCTI_CONTEXT*>(std::calloc(1, size));
    if (!t.inner) return make_error(Reason::kInternal, "out of memory");
    rc = info->init(t.inner, &size, config);
  }
  if (rc != TSS2_RC_SUCCESS) {
    std::free(t.inner);
    t.inner = nullptr;
    return unreachable(describe_rc(rc));
  }
  return Status::Ok();
}

}  // namespace

Result<TSS2_TCTI_CONTEXT*> open_tcti(const std::string& spec, std::atomic<uint64_t>* counter) {
  auto* t = new (std::nothrow) CountingTcti{};
  if (!t) return make_error(Reason::kInternal, "out of memory");
  t->common.v1.magic = kMagic;
  t->common.v1.version = 2;
  t->common.v1.transmit = transmit;
  t->common.v1.receive = receive;
  t->common.v1.finalize = finalize;
  t->common.v1.cancel = cancel;
  t->common.v1.getPollHandles = get_poll_handles;
  t->common.v1.setLocality = set_locality;
  t->common.makeSticky = make_sticky;
  t->counter = counter;
  auto* ctx = reinterpret_cast<TSS2_TCTI_CONTEXT*>(t);
  // Split as tctildr does: the module name up to the first ':', its configuration after it.
  const size_t colon = spec.find(':');
  if (colon != std::string::npos && colon + 1 < spec.size()) {
    t->config = strdup(spec.c_str() + colon + 1);
    if (!t->config) {
      close_tcti(ctx);
      return make_error(Reason::kInternal, "out of memory");
    }
  }
  Status st = spec.empty() ? open_default(*t) : open_module(spec.substr(0, colon), t->config, *t);
  if (!st) {
    close_tcti(ctx);
    return st.take_error();
  }
  return ctx;
}

void close_tcti(TSS2_TCTI_CONTEXT* tcti) {
  if (!tcti) return;
  finalize(tcti);
  delete self(tcti);
}

}  // namespace tpmkey
