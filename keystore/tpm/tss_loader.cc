// tpm2-tss loaded on first use (tss_loader.h): the list of every tpm2-tss function tpmkey calls,
// and for each a definition of the same name that forwards to the library's.
#include "keystore/tpm/tss_loader.h"

#include <dlfcn.h>

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <mutex>
#include <tuple>
#include <type_traits>

// The definitions below stay inside tpmkey-core.so and the programs: a library that really links
// tpm2-tss (ESYS in the tests) keeps calling its own.
#pragma GCC visibility push(hidden)
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_sys.h>
#pragma GCC visibility pop

// Every tpm2-tss function tpmkey calls: its library, its name, its number of parameters. The
// compiler checks each entry against tpm2-tss's own declaration (a wrong count is a conflicting
// declaration); a function that is called but not listed is an undefined reference at link time.
#define TPMKEY_TSS_FUNCTIONS(X)                  \
  X(kMu, Tss2_MU_TPM2B_PRIVATE_Marshal, 4)       \
  X(kMu, Tss2_MU_TPM2B_PRIVATE_Unmarshal, 4)     \
  X(kMu, Tss2_MU_TPM2B_PUBLIC_Marshal, 4)        \
  X(kMu, Tss2_MU_TPM2B_PUBLIC_Unmarshal, 4)      \
  X(kMu, Tss2_MU_TPMS_ECC_POINT_Marshal, 4)      \
  X(kMu, Tss2_MU_TPMT_PUBLIC_Marshal, 4)         \
  X(kMu, Tss2_MU_TPMT_SENSITIVE_Marshal, 4)      \
  X(kSys, Tss2_Sys_GetContextSize, 1)            \
  X(kSys, Tss2_Sys_Initialize, 4)                \
  X(kSys, Tss2_Sys_Finalize, 1)                  \
  X(kSys, Tss2_Sys_Execute, 1)                   \
  X(kSys, Tss2_Sys_GetCpBuffer, 3)               \
  X(kSys, Tss2_Sys_GetRpBuffer, 3)               \
  X(kSys, Tss2_Sys_SetCmdAuths, 2)               \
  X(kSys, Tss2_Sys_GetRspAuths, 2)               \
  X(kSys, Tss2_Sys_GetDecryptParam, 3)           \
  X(kSys, Tss2_Sys_SetDecryptParam, 3)           \
  X(kSys, Tss2_Sys_GetEncryptParam, 3)           \
  X(kSys, Tss2_Sys_SetEncryptParam, 3)           \
  X(kSys, Tss2_Sys_ContextLoad, 3)               \
  X(kSys, Tss2_Sys_ContextSave, 3)               \
  X(kSys, Tss2_Sys_FlushContext, 2)              \
  X(kSys, Tss2_Sys_GetCapability, 8)             \
  X(kSys, Tss2_Sys_TestParms, 4)                 \
  X(kSys, Tss2_Sys_StartAuthSession, 12)         \
  X(kSys, Tss2_Sys_ReadPublic, 7)                \
  X(kSys, Tss2_Sys_ReadPublic_Prepare, 2)        \
  X(kSys, Tss2_Sys_ReadPublic_Complete, 4)       \
  X(kSys, Tss2_Sys_ReadClock_Prepare, 1)         \
  X(kSys, Tss2_Sys_ReadClock_Complete, 2)        \
  X(kSys, Tss2_Sys_CreatePrimary_Prepare, 6)     \
  X(kSys, Tss2_Sys_CreatePrimary_Complete, 7)    \
  X(kSys, Tss2_Sys_Create_Prepare, 6)            \
  X(kSys, Tss2_Sys_Create_Complete, 6)           \
  X(kSys, Tss2_Sys_Load_Prepare, 4)              \
  X(kSys, Tss2_Sys_Load_Complete, 3)             \
  X(kSys, Tss2_Sys_Import_Prepare, 7)            \
  X(kSys, Tss2_Sys_Import_Complete, 2)           \
  X(kSys, Tss2_Sys_ObjectChangeAuth_Prepare, 4)  \
  X(kSys, Tss2_Sys_ObjectChangeAuth_Complete, 2) \
  X(kSys, Tss2_Sys_EvictControl_Prepare, 4)      \
  X(kSys, Tss2_Sys_EvictControl_Complete, 1)     \
  X(kSys, Tss2_Sys_Sign_Prepare, 5)              \
  X(kSys, Tss2_Sys_Sign_Complete, 2)             \
  X(kSys, Tss2_Sys_RSA_Decrypt_Prepare, 5)       \
  X(kSys, Tss2_Sys_RSA_Decrypt_Complete, 2)      \
  X(kSys, Tss2_Sys_ECDH_ZGen_Prepare, 3)         \
  X(kSys, Tss2_Sys_ECDH_ZGen_Complete, 2)        \
  X(kSys, Tss2_Sys_Hash_Prepare, 4)              \
  X(kSys, Tss2_Sys_Hash_Complete, 3)             \
  X(kSys, Tss2_Sys_HashSequenceStart, 6)         \
  X(kSys, Tss2_Sys_HashSequenceStart_Prepare, 3) \
  X(kSys, Tss2_Sys_HashSequenceStart_Complete, 2) \
  X(kSys, Tss2_Sys_SequenceUpdate_Prepare, 3)    \
  X(kSys, Tss2_Sys_SequenceUpdate_Complete, 1)   \
  X(kSys, Tss2_Sys_SequenceComplete_Prepare, 4)  \
  X(kSys, Tss2_Sys_SequenceComplete_Complete, 3) \
  X(kRc, Tss2_RC_Decode, 1)

namespace tpmkey::tss {
namespace {

// libtss2-rc is loaded on its own, for the first error described; mu and sys together.
enum class Lib : int { kMu, kSys, kRc };
constexpr int kLibs = 3;
// The sonames of the libraries the build found (CMakeLists.txt).
constexpr const char* kFiles[kLibs] = {TPMKEY_TSS2_MU_SONAME, TPMKEY_TSS2_SYS_SONAME, TPMKEY_TSS2_RC_SONAME};
constexpr TSS2_RC kLayers[kLibs] = {TSS2_MU_RC_LAYER, TSS2_SYS_RC_LAYER, 0};

enum Fn : size_t {
#define TPMKEY_TSS_ENUM(lib, name, n) k_##name,
  TPMKEY_TSS_FUNCTIONS(TPMKEY_TSS_ENUM)
#undef TPMKEY_TSS_ENUM
  kFunctions
};

struct Entry {
  Lib lib;
  const char* name;
};
constexpr Entry kEntries[kFunctions] = {
#define TPMKEY_TSS_ENTRY(lib, name, n) {Lib::lib, #name},
    TPMKEY_TSS_FUNCTIONS(TPMKEY_TSS_ENTRY)
#undef TPMKEY_TSS_ENTRY
};

// Trivially destructible, so the exit-time flush (process.cc) can still call through it.
struct Library {
  std::once_flag once;
  std::atomic<bool> tried{false};  // open_library has run
  char error[512] = {};            // why it is not available; empty once loaded
};
Library g_libs[kLibs];
void* g_functions[kFunctions];  // written inside the library's call_once, read after it

// Loads `lib` and resolves all of its functions, or none: a library that lacks one is not used.
void open_library(Lib lib) {
  const int i = int(lib);
  void* h = dlopen(kFiles[i], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    std::snprintf(g_libs[i].error, sizeof g_libs[i].error, "cannot load %s", e ? e : kFiles[i]);
    return;
  }
  void* found[kFunctions] = {};
  for (size_t f = 0; f < kFunctions; ++f) {
    if (kEntries[f].lib != lib) continue;
    found[f] = dlsym(h, kEntries[f].name);
    if (!found[f]) {
      std::snprintf(g_libs[i].error, sizeof g_libs[i].error,
                    "%s has no %s (a tpm2-tss older than the one tpmkey was built with?)", kFiles[i], kEntries[f].name);
      dlclose(h);
      return;
    }
  }
  for (size_t f = 0; f < kFunctions; ++f)
    if (kEntries[f].lib == lib) g_functions[f] = found[f];
}

bool ready(Lib lib) {
  Library& l = g_libs[int(lib)];
  std::call_once(l.once, [&] {
    open_library(lib);
    l.tried.store(true, std::memory_order_release);
  });
  return l.error[0] == '\0';
}

// The function `f` of `lib`, or nullptr if the library cannot be had. libtss2-sys needs
// libtss2-mu, so the two are loaded together.
void* resolve(Lib lib, Fn f) {
  if (lib == Lib::kRc ? !ready(Lib::kRc) : !ready(Lib::kMu) || !ready(Lib::kSys)) return nullptr;
  return g_functions[f];
}

// What a function returns when its library cannot be had.
template <typename R>
R unavailable(Lib lib) {
  if constexpr (std::is_void_v<R>) {
    return;
  } else if constexpr (std::is_same_v<R, TSS2_RC>) {
    return kLayers[int(lib)] | TSS2_BASE_RC_NOT_IMPLEMENTED;
  } else {
    return R{};  // 0 for Tss2_Sys_GetContextSize, nullptr for Tss2_RC_Decode
  }
}

// The return and parameter types of a tpm2-tss function, from its declaration.
template <typename F>
struct Signature;
template <typename R, typename... A>
struct Signature<R (*)(A...)> {
  using Return = R;
  template <size_t I>
  using Param = std::tuple_element_t<I, std::tuple<A...>>;
  static constexpr size_t kParams = sizeof...(A);
};

}  // namespace

Status load() {
  if (!ready(Lib::kMu)) return make_error(Reason::kTpmUnreachable, g_libs[int(Lib::kMu)].error);
  if (!ready(Lib::kSys)) return make_error(Reason::kTpmUnreachable, g_libs[int(Lib::kSys)].error);
  return Status::Ok();
}

std::string load_failure() {
  for (Lib lib : {Lib::kMu, Lib::kSys}) {
    const Library& l = g_libs[int(lib)];  // only asks: a library not tried yet is not loaded here
    if (l.tried.load(std::memory_order_acquire) && l.error[0]) return l.error;
  }
  return {};
}

}  // namespace tpmkey::tss

// The parameter list of function F with N parameters (a0, a1, ...), and the arguments that pass
// them on.
#define TPMKEY_TSS_P(F, i) typename tpmkey::tss::Signature<F>::template Param<i> a##i
#define TPMKEY_TSS_PARAMS_1(F) TPMKEY_TSS_P(F, 0)
#define TPMKEY_TSS_PARAMS_2(F) TPMKEY_TSS_PARAMS_1(F), TPMKEY_TSS_P(F, 1)
#define TPMKEY_TSS_PARAMS_3(F) TPMKEY_TSS_PARAMS_2(F), TPMKEY_TSS_P(F, 2)
#define TPMKEY_TSS_PARAMS_4(F) TPMKEY_TSS_PARAMS_3(F), TPMKEY_TSS_P(F, 3)
#define TPMKEY_TSS_PARAMS_5(F) TPMKEY_TSS_PARAMS_4(F), TPMKEY_TSS_P(F, 4)
#define TPMKEY_TSS_PARAMS_6(F) TPMKEY_TSS_PARAMS_5(F), TPMKEY_TSS_P(F, 5)
#define TPMKEY_TSS_PARAMS_7(F) TPMKEY_TSS_PARAMS_6(F), TPMKEY_TSS_P(F, 6)
#define TPMKEY_TSS_PARAMS_8(F) TPMKEY_TSS_PARAMS_7(F), TPMKEY_TSS_P(F, 7)
#define TPMKEY_TSS_PARAMS_9(F) TPMKEY_TSS_PARAMS_8(F), TPMKEY_TSS_P(F, 8)
#define TPMKEY_TSS_PARAMS_10(F) TPMKEY_TSS_PARAMS_9(F), TPMKEY_TSS_P(F, 9)
#define TPMKEY_TSS_PARAMS_11(F) TPMKEY_TSS_PARAMS_10(F), TPMKEY_TSS_P(F, 10)
#define TPMKEY_TSS_PARAMS_12(F) TPMKEY_TSS_PARAMS_11(F), TPMKEY_TSS_P(F, 11)
#define TPMKEY_TSS_ARGS_1 a0
#define TPMKEY_TSS_ARGS_2 TPMKEY_TSS_ARGS_1, a1
#define TPMKEY_TSS_ARGS_3 TPMKEY_TSS_ARGS_2, a2
#define TPMKEY_TSS_ARGS_4 TPMKEY_TSS_ARGS_3, a3
#define TPMKEY_TSS_ARGS_5 TPMKEY_TSS_ARGS_4, a4
#define TPMKEY_TSS_ARGS_6 TPMKEY_TSS_ARGS_5, a5
#define TPMKEY_TSS_ARGS_7 TPMKEY_TSS_ARGS_6, a6
#define TPMKEY_TSS_ARGS_8 TPMKEY_TSS_ARGS_7, a7
#define TPMKEY_TSS_ARGS_9 TPMKEY_TSS_ARGS_8, a8
#define TPMKEY_TSS_ARGS_10 TPMKEY_TSS_ARGS_9, a9
#define TPMKEY_TSS_ARGS_11 TPMKEY_TSS_ARGS_10, a10
#define TPMKEY_TSS_ARGS_12 TPMKEY_TSS_ARGS_11, a11

// One forwarding definition: the library's function once it is loaded, else `unavailable`.
#define TPMKEY_TSS_DEFINE(lib, name, n)                                                             \
  static_assert(tpmkey::tss::Signature<decltype(&::name)>::kParams == n, #name " takes another count"); \
  extern "C" tpmkey::tss::Signature<decltype(&::name)>::Return name(TPMKEY_TSS_PARAMS_##n(decltype(&::name))) { \
    using F = decltype(&::name);                                                                      \
    auto* f = reinterpret_cast<F>(tpmkey::tss::resolve(tpmkey::tss::Lib::lib, tpmkey::tss::k_##name)); \
    if (!f) return tpmkey::tss::unavailable<tpmkey::tss::Signature<F>::Return>(tpmkey::tss::Lib::lib); \
    return f(TPMKEY_TSS_ARGS_##n);                                                                   \
  }

TPMKEY_TSS_FUNCTIONS(TPMKEY_TSS_DEFINE)
