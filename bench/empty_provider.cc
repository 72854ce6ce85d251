// An OpenSSL provider module that answers nothing: no algorithms, no parameters. The idle-provider
// row (process_bench.cc) activates it in place of tpmkey, to show what a second activated provider
// costs a process by itself, before anything tpmkey's own front (provider/module.cc) does.
#include <openssl/core.h>
#include <openssl/core_dispatch.h>

namespace {

const OSSL_ALGORITHM* query_operation(void*, int, int* no_cache) {
  *no_cache = 0;
  return nullptr;
}

void teardown(void*) {}

const OSSL_DISPATCH kDispatch[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, reinterpret_cast<void (*)()>(query_operation)},
    {OSSL_FUNC_PROVIDER_TEARDOWN, reinterpret_cast<void (*)()>(teardown)},
    {0, nullptr}};

}  // namespace

extern "C" __attribute__((visibility("default"))) int OSSL_provider_init(const OSSL_CORE_HANDLE*, const OSSL_DISPATCH*,
                                                                         const OSSL_DISPATCH** out, void** provctx) {
  *out = kDispatch;
  *provctx = const_cast<OSSL_DISPATCH*>(kDispatch);
  return 1;
}
