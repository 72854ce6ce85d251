// tpmkey's TPM command counter, as a program reads it (the tests and benchmarks assert and report
// TPM commands with it): the provider parameter "tpmkey-tpm-commands", served by provider.cc.
#pragma once

#include <cstdint>

#include <openssl/params.h>
#include <openssl/provider.h>

#include "provider/params.h"  // kParamTpmCommands

namespace tpmkey {

// Reads the counter of the tpmkey provider in `libctx` into `*n`; false if it cannot.
inline bool read_tpm_commands(OSSL_LIB_CTX* libctx, uint64_t* n) {
  OSSL_PROVIDER* prov = OSSL_PROVIDER_load(libctx, "tpmkey");  // a reference to the loaded one
  OSSL_PARAM params[] = {OSSL_PARAM_uint64(kParamTpmCommands, n), OSSL_PARAM_END};
  const bool ok = prov && OSSL_PROVIDER_get_params(prov, params);
  if (prov) OSSL_PROVIDER_unload(prov);
  return ok;
}

}  // namespace tpmkey
