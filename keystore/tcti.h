// The transport to the TPM: loads the TCTI module a TCTI string names, and wraps it to count the
// commands sent (the TPM command counter that tests assert on and benchmarks report).
//
//   "NAME[:CONFIG]"  loads libtss2-tcti-NAME.so.0 (NAME itself when it has a '/' or ".so") and
//                    initializes it with CONFIG, the way tctildr reads the same string;
//   ""               the tctildr default (tpm2-abrmd, /dev/tpmrm0, /dev/tpm0, ...), for which
//                    libtss2-tctildr is loaded then and only then.
// tpmkey loads named modules itself because, in a new process, tctildr costs one more library
// and a failed search of the whole library path for the bare NAME (docs/performance.md).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include <tss2/tss2_tcti.h>

#include "keystore/error.h"

namespace tpmkey {

// The counting TCTI over the module `spec` names. Errors have reason kTpmUnreachable.
Result<TSS2_TCTI_CONTEXT*> open_tcti(const std::string& spec, std::atomic<uint64_t>* counter);
// Finalizes the module's TCTI and unloads the module. Accepts nullptr.
void close_tcti(TSS2_TCTI_CONTEXT* tcti);

}  // namespace tpmkey
