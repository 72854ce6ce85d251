// What tpmkey.so's small front (module.cc) and the provider proper in tpmkey-core.so (provider.cc)
// agree on: where the provider proper is, which operations it answers, its reason strings, and the
// provider context OpenSSL hands to every function (docs/architecture.md, "Two modules").
#pragma once

#include <openssl/core.h>
#include <openssl/core_dispatch.h>

#include "keystore/error.h"

namespace tpmkey::provider {

// The provider proper: a file next to tpmkey.so (in the same directory, symlinks resolved).
inline constexpr const char kCoreModule[] = "tpmkey-core.so";

// The operations the provider answers. For any other (digests, ciphers, RAND, MACs, KDFs, ...) the
// front answers "none" itself, so a process that uses no key never loads the provider proper.
constexpr bool serves_operation(int operation_id) {
  switch (operation_id) {
    case OSSL_OP_KEYMGMT:
    case OSSL_OP_SIGNATURE:
    case OSSL_OP_ASYM_CIPHER:
    case OSSL_OP_KEYEXCH:
    case OSSL_OP_STORE:
    case OSSL_OP_ENCODER:
    case OSSL_OP_DECODER: return true;
    default: return false;
  }
}

// OpenSSL takes a provider's reason strings once, when it activates it: the front gives them.
struct ReasonStrings {
  OSSL_ITEM items[int(kLastReason) + 1] = {};
  constexpr ReasonStrings() {
    for (int r = int(kFirstReason); r <= int(kLastReason); ++r)
      items[r - 1] = {unsigned(r), const_cast<char*>(reason_text(Reason(r)))};
    items[int(kLastReason)] = {0, nullptr};
  }
};
inline constexpr ReasonStrings kReasonStrings{};

// The provider context. OpenSSL passes one pointer to every function of a provider: the front's
// own context when tpmkey.so was loaded, the provider's when it runs on its own (built into the
// tpmkey program, or tpmkey-core.so loaded directly). Both begin with a pointer to the provider's
// context (ProviderCtx::self, FrontCtx::core), so either leads to it.
inline void* provider_context_of(void* provctx) { return provctx ? *static_cast<void* const*>(provctx) : nullptr; }

}  // namespace tpmkey::provider
