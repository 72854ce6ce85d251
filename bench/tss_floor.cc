// tpmkey_tss_floor TCTI: what any provider built on tpm2-tss pays in a new process before its own
// code or any TPM crypto runs (bench/process_bench.cc, row tss-floor). Prints three times in ms:
//   libraries  dlopen of libtss2-mu and libtss2-sys (what a provider must link)
//   tcti       loading the TCTI module TCTI ("NAME:CONFIG") names and initializing it (for swtpm:
//              its module, a probe connection, the locality set over the control channel)
//   command    one TPM command round trip (TPM2_ReadPublic of 0x81000001, median of 7)
//   salted     one TPM2_StartAuthSession salted to that SRK (median of 7): the round trip plus the
//              TPM's own ECDH and KDFs, the least a salted session costs a process. The "salt" is
//              the SRK's own public point, any point on the curve makes the TPM do the same work;
//              each session is flushed, untimed.
// Exit status 1 on any failure.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <tss2/tss2_mu.h>
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

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
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
  auto* start_session = symbol<decltype(Tss2_Sys_StartAuthSession)>("Tss2_Sys_StartAuthSession");
  auto* flush = symbol<decltype(Tss2_Sys_FlushContext)>("Tss2_Sys_FlushContext");
  auto* marshal_point = symbol<decltype(Tss2_MU_TPMS_ECC_POINT_Marshal)>("Tss2_MU_TPMS_ECC_POINT_Marshal");
  if (!size || !sys_init || !read_public || !start_session || !flush || !marshal_point) return 1;
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
  TPM2B_PUBLIC srk{};
  for (int i = 0; i < 7; ++i) {
    TPM2B_NAME name{}, qualified{};
    srk = {};
    t = std::chrono::steady_clock::now();
    if (read_public(sys, 0x81000001, nullptr, &srk, &name, &qualified, nullptr) != TSS2_RC_SUCCESS) return 1;
    rt.push_back(ms_since(t));
  }
  if (srk.publicArea.type != TPM2_ALG_ECC) {
    std::fprintf(stderr, "the SRK at 0x81000001 is not an ECC key\n");
    return 1;
  }
  TPM2B_ENCRYPTED_SECRET salt{};
  size_t off = 0;
  if (marshal_point(&srk.publicArea.unique.ecc, salt.secret, sizeof salt.secret, &off) != TSS2_RC_SUCCESS) return 1;
  salt.size = uint16_t(off);
  TPM2B_NONCE nonce_caller{};
  nonce_caller.size = 32;
  TPMT_SYM_DEF symmetric{};
  symmetric.algorithm = TPM2_ALG_AES;
  symmetric.keyBits.aes = 128;
  symmetric.mode.aes = TPM2_ALG_CFB;
  std::vector<double> salted;
  for (int i = 0; i < 7; ++i) {
    TPMI_SH_AUTH_SESSION session = 0;
    TPM2B_NONCE nonce_tpm{};
    t = std::chrono::steady_clock::now();
    if (start_session(sys, 0x81000001, TPM2_RH_NULL, nullptr, &nonce_caller, &salt, TPM2_SE_HMAC, &symmetric,
                      TPM2_ALG_SHA256, &session, &nonce_tpm, nullptr) != TSS2_RC_SUCCESS)
      return 1;
    salted.push_back(ms_since(t));
    if (flush(sys, session) != TSS2_RC_SUCCESS) return 1;
  }
  Tss2_Tcti_Finalize(tcti);
  std::printf("%.4f %.4f %.4f %.4f\n", libraries, tcti_ms, median(rt), median(salted));
  return 0;
}
