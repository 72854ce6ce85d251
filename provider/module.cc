// tpmkey.so: the module OpenSSL loads, a small front for the provider proper (tpmkey-core.so,
// provider.cc and the operation files). tpmkey activated in a system-wide openssl.cnf is loaded by
// every program that uses OpenSSL, and most never touch a TPM key: for them this front answers
// activation (the reason strings) and every operation tpmkey has none of (digests, ciphers, RAND,
// ...) by itself. The first question only the provider can answer (its key management, signature,
// store, encoders, decoders, parameters or TLS groups) loads tpmkey-core.so from this module's own
// directory, runs its OSSL_provider_init with OpenSSL's handle and core functions, and from then on
// passes every question on (docs/architecture.md, "Two modules"; docs/performance.md, "The idle
// provider").
//
// Built without the C++ runtime: it links libc only, and mapping it costs a process about what an
// empty module does.
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provider/module.h"

namespace tpmkey::provider {
namespace {

struct FrontCtx {
  void* core;  // first: the provider's context once it is loaded (provider_context_of, module.h)
  const OSSL_CORE_HANDLE* handle;
  OSSL_DISPATCH* in;  // a copy of OpenSSL's core functions, for the provider's init
  OSSL_FUNC_core_new_error_fn* new_error;
  OSSL_FUNC_core_set_error_debug_fn* set_error_debug;
  OSSL_FUNC_core_vset_error_fn* vset_error;
  pthread_mutex_t mu;
  bool tried;  // loading was tried (once: a failure is not retried)
  // The provider's own functions, once loaded.
  OSSL_FUNC_provider_teardown_fn* teardown;
  OSSL_FUNC_provider_gettable_params_fn* gettable_params;
  OSSL_FUNC_provider_get_params_fn* get_params;
  OSSL_FUNC_provider_query_operation_fn* query_operation;
  OSSL_FUNC_provider_get_capabilities_fn* get_capabilities;
  char path[PATH_MAX];  // of tpmkey-core.so
};

// Puts an error on OpenSSL's queue, as the provider does (ProviderCtx::raise).
void raise(const FrontCtx* f, const char* func, const char* fmt, ...) {
  if (!f->new_error || !f->vset_error) return;
  f->new_error(f->handle);
  if (f->set_error_debug) f->set_error_debug(f->handle, nullptr, 0, func);
  va_list ap;
  va_start(ap, fmt);
  f->vset_error(f->handle, uint32_t(Reason::kInternal), fmt, ap);
  va_end(ap);
}

// The provider, loaded on first need; false if it cannot be.
bool load(FrontCtx* f) {
  pthread_mutex_lock(&f->mu);
  if (!f->tried) {
    f->tried = true;
    void* lib = dlopen(f->path, RTLD_NOW | RTLD_LOCAL);
    auto* init = lib ? reinterpret_cast<OSSL_provider_init_fn*>(dlsym(lib, "OSSL_provider_init")) : nullptr;
    const OSSL_DISPATCH* out = nullptr;
    void* core = nullptr;
    if (!init) {
      const char* why = dlerror();
      raise(f, "OSSL_provider_init", "tpmkey: cannot load %s: %s", f->path, why ? why : "no OSSL_provider_init");
    } else if (!init(f->handle, f->in, &out, &core) || !core) {
      raise(f, "OSSL_provider_init", "tpmkey: %s did not start", f->path);
    } else {
      for (; out && out->function_id != 0; ++out) {
        switch (out->function_id) {
          case OSSL_FUNC_PROVIDER_TEARDOWN: f->teardown = OSSL_FUNC_provider_teardown(out); break;
          case OSSL_FUNC_PROVIDER_GETTABLE_PARAMS: f->gettable_params = OSSL_FUNC_provider_gettable_params(out); break;
          case OSSL_FUNC_PROVIDER_GET_PARAMS: f->get_params = OSSL_FUNC_provider_get_params(out); break;
          case OSSL_FUNC_PROVIDER_QUERY_OPERATION: f->query_operation = OSSL_FUNC_provider_query_operation(out); break;
          case OSSL_FUNC_PROVIDER_GET_CAPABILITIES: f->get_capabilities = OSSL_FUNC_provider_get_capabilities(out); break;
          default: break;  // its reason strings are the front's (module.h)
        }
      }
      f->core = core;
    }
    // The library stays loaded for the life of the process, like any provider module.
  }
  const bool loaded = f->core != nullptr;
  pthread_mutex_unlock(&f->mu);
  return loaded;
}

void teardown(void* vctx) {
  auto* f = static_cast<FrontCtx*>(vctx);
  if (f->core && f->teardown) f->teardown(f->core);
  pthread_mutex_destroy(&f->mu);
  free(f->in);
  free(f);
}

const OSSL_ALGORITHM* query_operation(void* vctx, int operation_id, int* no_cache) {
  auto* f = static_cast<FrontCtx*>(vctx);
  *no_cache = 0;
  if (!serves_operation(operation_id) || !load(f) || !f->query_operation) return nullptr;
  return f->query_operation(f->core, operation_id, no_cache);
}

const OSSL_PARAM* gettable_params(void* vctx) {
  auto* f = static_cast<FrontCtx*>(vctx);
  return load(f) && f->gettable_params ? f->gettable_params(f->core) : nullptr;
}

int get_params(void* vctx, OSSL_PARAM params[]) {
  auto* f = static_cast<FrontCtx*>(vctx);
  return load(f) && f->get_params ? f->get_params(f->core, params) : 0;
}

int get_capabilities(void* vctx, const char* capability, OSSL_CALLBACK* cb, void* arg) {
  auto* f = static_cast<FrontCtx*>(vctx);
  if (!load(f)) return 0;
  return f->get_capabilities ? f->get_capabilities(f->core, capability, cb, arg) : 1;
}

const OSSL_ITEM* get_reason_strings(void*) { return kReasonStrings.items; }

const OSSL_DISPATCH kFrontDispatch[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, reinterpret_cast<void (*)()>(teardown)},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, reinterpret_cast<void (*)()>(gettable_params)},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, reinterpret_cast<void (*)()>(get_params)},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, reinterpret_cast<void (*)()>(query_operation)},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, reinterpret_cast<void (*)()>(get_reason_strings)},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, reinterpret_cast<void (*)()>(get_capabilities)},
    {0, nullptr}};

// tpmkey-core.so's path: this module's own file, symlinks resolved, with its name replaced. The
// path the module was loaded by is used as it is when it is absolute and not itself a symlink
// (symlinked directories above it lead to the same directory); otherwise realpath() resolves it, so
// that the path stays right should the process change its directory before its first key.
bool core_path(char (&out)[PATH_MAX]) {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<const void*>(&kFrontDispatch), &info) || !info.dli_fname) return false;
  char self[PATH_MAX];
  struct stat st{};
  if (info.dli_fname[0] == '/' && lstat(info.dli_fname, &st) == 0 && !S_ISLNK(st.st_mode)) {
    const size_t n = strlen(info.dli_fname);
    if (n >= sizeof self) return false;
    memcpy(self, info.dli_fname, n + 1);
  } else if (!realpath(info.dli_fname, self)) {
    return false;
  }
  char* slash = strrchr(self, '/');
  if (!slash) return false;
  const size_t dir = size_t(slash - self) + 1;
  if (dir + sizeof kCoreModule > sizeof out) return false;
  memcpy(out, self, dir);
  memcpy(out + dir, kCoreModule, sizeof kCoreModule);
  return true;
}

}  // namespace
}  // namespace tpmkey::provider

using namespace tpmkey::provider;

extern "C" __attribute__((visibility("default"))) int OSSL_provider_init(const OSSL_CORE_HANDLE* handle,
                                                                         const OSSL_DISPATCH* in,
                                                                         const OSSL_DISPATCH** out,
                                                                         void** provctx) {
  auto* f = static_cast<FrontCtx*>(calloc(1, sizeof(FrontCtx)));
  if (!f) return 0;
  f->handle = handle;
  size_t n = 0;
  while (in[n].function_id != 0) ++n;
  f->in = static_cast<OSSL_DISPATCH*>(calloc(n + 1, sizeof(OSSL_DISPATCH)));
  if (!f->in) {
    free(f);
    return 0;
  }
  memcpy(f->in, in, n * sizeof(OSSL_DISPATCH));
  for (size_t i = 0; i < n; ++i) {
    switch (in[i].function_id) {
      case OSSL_FUNC_CORE_NEW_ERROR: f->new_error = OSSL_FUNC_core_new_error(&in[i]); break;
      case OSSL_FUNC_CORE_SET_ERROR_DEBUG: f->set_error_debug = OSSL_FUNC_core_set_error_debug(&in[i]); break;
      case OSSL_FUNC_CORE_VSET_ERROR: f->vset_error = OSSL_FUNC_core_vset_error(&in[i]); break;
      default: break;
    }
  }
  // A missing provider is an activation failure, said now, not a surprise at the first key.
  if (!core_path(f->path) || access(f->path, R_OK) != 0) {
    raise(f, "OSSL_provider_init", "tpmkey: %s is missing (it is installed next to tpmkey.so)",
          f->path[0] ? f->path : kCoreModule);
    free(f->in);
    free(f);
    return 0;
  }
  pthread_mutex_init(&f->mu, nullptr);
  *out = kFrontDispatch;
  *provctx = f;
  return 1;
}
