// A TCTI module that counts TPM commands: libtpmkey-bench-tcti.so. tctildr loads it like any
// other TCTI, by path: "/path/libtpmkey-bench-tcti.so:swtpm:host=127.0.0.1,port=N". Everything
// after the first ':' is the TCTI it forwards to. It lets the benchmarks count the commands of a
// library they cannot instrument (tpm2-openssl, raw ESYS, and `openssl pkeyutl` processes).
//
// The count is read in-process with tpmkey_bench_tcti_commands() (dlsym), or, when the
// environment variable TPMKEY_BENCH_COUNT_FILE names a file, appended to that file as one line when
// the module is unloaded (at dlclose or at process exit). For a process that keeps running (the
// agent), TPMKEY_BENCH_COUNT_MAP names a file of 8 bytes that the module maps shared and counts
// into as it goes, so another process can read the count between two requests.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <tss2/tss2_tcti.h>
#include <tss2/tss2_tctildr.h>

namespace {

constexpr uint64_t kMagic = 0x626e63686374696cull;  // "bnchctil"

std::atomic<uint64_t> g_commands{0};

// The counter in the file TPMKEY_BENCH_COUNT_MAP names (mapped on first use), or nullptr. Counted
// with atomic adds: the reader is another process mapping the same page.
uint64_t* shared_counter() {
  static uint64_t* const counter = []() -> uint64_t* {
    const char* path = std::getenv("TPMKEY_BENCH_COUNT_MAP");
    if (!path || !*path) return nullptr;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return nullptr;
    void* p = mmap(nullptr, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? nullptr : static_cast<uint64_t*>(p);
  }();
  return counter;
}

struct Counting {
  TSS2_TCTI_CONTEXT_COMMON_V2 common;  // first: the TSS casts to it
  TSS2_TCTI_CONTEXT* inner;
};

Counting* self(TSS2_TCTI_CONTEXT* c) { return reinterpret_cast<Counting*>(c); }

TSS2_RC transmit(TSS2_TCTI_CONTEXT* c, size_t size, const uint8_t* cmd) {
  g_commands.fetch_add(1, std::memory_order_relaxed);
  if (uint64_t* shared = shared_counter()) __atomic_fetch_add(shared, 1, __ATOMIC_RELAXED);
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
TSS2_RC set_locality(TSS2_TCTI_CONTEXT* c, uint8_t locality) { return Tss2_Tcti_SetLocality(self(c)->inner, locality); }
TSS2_RC make_sticky(TSS2_TCTI_CONTEXT* c, TPM2_HANDLE* h, uint8_t sticky) {
  return Tss2_Tcti_MakeSticky(self(c)->inner, h, sticky);
}

TSS2_RC init(TSS2_TCTI_CONTEXT* ctx, size_t* size, const char* conf) {
  if (!size) return TSS2_TCTI_RC_BAD_VALUE;
  if (!ctx) {
    *size = sizeof(Counting);
    return TSS2_RC_SUCCESS;
  }
  if (*size < sizeof(Counting)) return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
  Counting* t = self(ctx);
  std::memset(t, 0, sizeof *t);
  shared_counter();  // mapped now, not during the first command
  TSS2_RC rc = Tss2_TctiLdr_Initialize(conf && *conf ? conf : nullptr, &t->inner);
  if (rc != TSS2_RC_SUCCESS) return rc;
  t->common.v1.magic = kMagic;
  t->common.v1.version = 2;
  t->common.v1.transmit = transmit;
  t->common.v1.receive = receive;
  t->common.v1.finalize = finalize;
  t->common.v1.cancel = cancel;
  t->common.v1.getPollHandles = get_poll_handles;
  t->common.v1.setLocality = set_locality;
  t->common.makeSticky = make_sticky;
  return TSS2_RC_SUCCESS;
}

const TSS2_TCTI_INFO kInfo = {
    2, "tpmkey-bench-count", "counts TPM commands and forwards them to another TCTI",
    "the TCTI to forward to, e.g. swtpm:host=127.0.0.1,port=2321", init,
};

__attribute__((destructor)) void write_count_file() {
  const char* path = std::getenv("TPMKEY_BENCH_COUNT_FILE");
  if (!path || !*path) return;
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  char line[32];
  int n = std::snprintf(line, sizeof line, "%llu\n", static_cast<unsigned long long>(g_commands.load()));
  if (n > 0) (void)!write(fd, line, size_t(n));
  close(fd);
}

}  // namespace

extern "C" {
__attribute__((visibility("default"))) const TSS2_TCTI_INFO* Tss2_Tcti_Info(void) { return &kInfo; }
__attribute__((visibility("default"))) uint64_t tpmkey_bench_tcti_commands(void) { return g_commands.load(); }
}
