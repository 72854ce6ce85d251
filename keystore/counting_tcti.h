// A TCTI that forwards to another and counts the commands sent: the TPM command counter that
// tests assert on and benchmarks report (tpm_cmds/op).
#pragma once

#include <atomic>
#include <cstdint>

#include <tss2/tss2_tcti.h>

namespace tpmkey {

// Wraps `inner` (owned: finalized with Tss2_TctiLdr_Finalize). Returns nullptr on allocation failure.
TSS2_TCTI_CONTEXT* counting_tcti_new(TSS2_TCTI_CONTEXT* inner, std::atomic<uint64_t>* counter);
void counting_tcti_free(TSS2_TCTI_CONTEXT* tcti);

}  // namespace tpmkey
