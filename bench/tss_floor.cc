// tpmkey_tss_floor TCTI: what any provider built on tpm2-tss pays in a new process before its own
// code or any TPM crypto runs (bench/process_bench.cc, row tss-floor). Prints three times in ms:
//   libraries  dlopen of libtss2-mu and libtss2-sys (what a provider must link)
//   tcti       loading the TCTI module TCTI ("NAME:CONFIG") names and initializing it (for swtpm:
//              its module, a probe connection, the locality set over the control channel)
//   command    one TPM command round trip (TPM2_ReadPublic of 0x81000001, median of 7)
// Exit status 1 on any failure.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <tss2/tss2_sys.h>
#include <tss2/tss2_tcti.h>

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
  for (const char* lib : {"libtss2-mu.so.0", "libtss2-sys.so.1"}) {
    if (!dlopen(lib, RTLD_NOW | RTLD_GLOBAL)) {
      std::fprintf(stderr, "%s\n", dlerror());
      return 1;
    }
  }
  const double libraries = ms_since(t);

  auto* size = symbol<decltype(Tss2_Sys_GetContextSize)>("Tss2_Sys_GetContextSize");
  auto* sys_init = symbol<decltype(Tss2_Sys_Initialize)>("Tss2_Sys_Initialize");
  auto* read_public = symbol<decltype(Tss2_Sys_ReadPublic)>("Tss2_Sys_ReadPublic");
  if (!size || !sys_init || !read_public) return 1;
  const std::string spec = argv[1];
  const size_t colon = spec.find(':');
  const std::string module = "libtss2-tcti-" + spec.substr(0, colon) + ".so.0";
  const char* config = colon == std::string::npos ? nullptr : argv[1] + colon + 1;
  t = std::chrono::steady_clock::now();
  void* lib = dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);
  auto* info = lib ? reinterpret_cast<TSS2_TCTI_INFO_FUNC>(dlsym(lib, TSS2_TCTI_INFO_SYMBOL)) : nullptr;
  size_t tcti_size = 0;
  if (!info || info()->init(nullptr, &tcti_size, config) != TSS2_RC_SUCCESS) return 1;
  std::vector<unsigned char> tcti_mem(tcti_size);
  auto* tcti = reinterpret_cast<TSS2_TCTI_CONTEXT*>(tcti_mem.data());
  if (info()->init(tcti, &tcti_size, config) != TSS2_RC_SUCCESS) return 1;
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
  Tss2_Tcti_Finalize(tcti);
  std::printf("%.4f %.4f %.4f\n", libraries, tcti_ms, rt[rt.size() / 2]);
  return 0;
}
