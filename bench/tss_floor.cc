// tpmkey_tss_floor TCTI: what any provider built on tpm2-tss pays in a new process before its own
// code or any TPM crypto runs (bench/process_bench.cc, row tss-floor). Prints three times in ms:
//   libraries  dlopen of libtss2-mu, -sys, -rc and -tctildr (what a provider links)
//   tcti       Tss2_TctiLdr_Initialize(TCTI) (for swtpm: its module, a probe, the locality)
//   command    one TPM command round trip (TPM2_ReadPublic of 0x81000001, median of 7)
// Exit status 1 on any failure.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <tss2/tss2_sys.h>
#include <tss2/tss2_tctildr.h>

namespace {

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

template <typename Fn>
Fn* symbol(const char* name) {
  return reinterpret_cast<Fn*>(dlsym(RTLD_DEFAULT, name));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: tpmkey_tss_floor TCTI\n");
    return 1;
  }
  auto t = std::chrono::steady_clock::now();
  for (const char* lib : {"libtss2-mu.so.0", "libtss2-sys.so.1", "libtss2-rc.so.0", "libtss2-tctildr.so.0"}) {
    if (!dlopen(lib, RTLD_NOW | RTLD_GLOBAL)) {
      std::fprintf(stderr, "%s\n", dlerror());
      return 1;
    }
  }
  const double libraries = ms_since(t);

  auto* init = symbol<decltype(Tss2_TctiLdr_Initialize)>("Tss2_TctiLdr_Initialize");
  auto* finalize = symbol<decltype(Tss2_TctiLdr_Finalize)>("Tss2_TctiLdr_Finalize");
  auto* size = symbol<decltype(Tss2_Sys_GetContextSize)>("Tss2_Sys_GetContextSize");
  auto* sys_init = symbol<decltype(Tss2_Sys_Initialize)>("Tss2_Sys_Initialize");
  auto* read_public = symbol<decltype(Tss2_Sys_ReadPublic)>("Tss2_Sys_ReadPublic");
  if (!init || !finalize || !size || !sys_init || !read_public) return 1;
  TSS2_TCTI_CONTEXT* tcti = nullptr;
  t = std::chrono::steady_clock::now();
  if (init(argv[1], &tcti) != TSS2_RC_SUCCESS) return 1;
  const double tcti_ms = ms_since(t);

  std::vector<unsigned char> ctx(size(0));
  TSS2_ABI_VERSION abi = TSS2_ABI_VERSION_CURRENT;
  auto* sys = reinterpret_cast<TSS2_SYS_CONTEXT*>(ctx.data());
  if (sys_init(sys, ctx.size(), tcti, &abi) != TSS2_RC_SUCCESS) return 1;
  std::vector<double> rt;
  for (int i = 0; i < 7; ++i) {
    TPM2B_PUBLIC pub{};
    TPM2B_NAME name{}, qualified{};
    t = std::chrono::steady_clock::now();
    if (read_public(sys, 0x81000001, nullptr, &pub, &name, &qualified, nullptr) != TSS2_RC_SUCCESS) return 1;
    rt.push_back(ms_since(t));
  }
  std::sort(rt.begin(), rt.end());
  finalize(&tcti);
  std::printf("%.4f %.4f %.4f\n", libraries, tcti_ms, rt[rt.size() / 2]);
  return 0;
}
