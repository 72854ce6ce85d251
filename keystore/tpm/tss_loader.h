// tpm2-tss's libraries, loaded when tpmkey first needs them. tpmkey is not linked against
// libtss2-sys, libtss2-mu or libtss2-rc: tss_loader.cc defines every Tss2_Sys_*, Tss2_MU_* and
// Tss2_RC_* function tpmkey calls, and each forwards to the library's own, resolved with dlopen
// and dlsym the first time one of them is called. A process that loads the provider and never
// uses a TPM key maps none of them (docs/performance.md, "The idle provider").
//
// A call to a function missing from the list in tss_loader.cc is an undefined reference when
// tpmkey-core.so and the tpmkey program are linked: add the function there.
#pragma once

#include <string>

#include "keystore/error.h"

namespace tpmkey::tss {

// Loads libtss2-mu and libtss2-sys and resolves every function of the list in them, once per
// process. Ok, or a kTpmUnreachable error saying which library or function is missing (the same
// error on every later call). The forwarding functions load by themselves; calling this first
// gives a failure its words instead of a return code.
Status load();

// Why libtss2-mu or libtss2-sys could not be loaded, or "" (loaded, or not tried yet). When it is
// not empty, every Tss2_Sys_* and Tss2_MU_* function returns TSS2_BASE_RC_NOT_IMPLEMENTED in its
// layer, and describe_rc (keystore/error.cc) gives this text for that code.
std::string load_failure();

}  // namespace tpmkey::tss
