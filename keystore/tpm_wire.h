// A key file's two TPM blobs read without tpm2-tss: the TPM2B_PUBLIC and the TPM2B_PRIVATE, in the
// TPM's own encoding (TPM 2.0 Part 2, big-endian, sizes first). Reading a key file is all that
// a process which signs through a running agent does with the key's TPM structures, and this
// keeps libtss2-mu and -sys out of it (docs/performance.md, "One-shot process with a tpmkey agent
// running"). Writing them, and everything sent to the TPM, is tss2-mu's.
#pragma once

#include <cstddef>
#include <cstdint>

#include <tss2/tss2_tpm2_types.h>

namespace tpmkey {

// The whole of `data` as a TPM2B_PUBLIC whose TPMT_PUBLIC fills its size exactly: an RSA, ECC,
// keyed-hash or symmetric object with the selectors TPM 2.0 defines for it. False for anything
// else, `out` then unspecified. What it accepts, tss2-mu reads the same (test/keyfile_test.cc).
bool read_tpm2b_public(const uint8_t* data, size_t size, TPM2B_PUBLIC* out);
// The whole of `data` as a TPM2B_PRIVATE (a size and that many bytes, at most its buffer's).
bool read_tpm2b_private(const uint8_t* data, size_t size, TPM2B_PRIVATE* out);

}  // namespace tpmkey
