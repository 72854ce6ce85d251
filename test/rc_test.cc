#include <gtest/gtest.h>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/error.h"

namespace tpmkey {
namespace {

TEST(ReturnCodes, MasksSessionHandleAndParameterNumbers) {
  // TPM_RC_AUTH_FAIL on session 1 (0x98e) and TPM_RC_BAD_AUTH on session 1 (0x9a2).
  EXPECT_EQ(classify_rc(TPM2_RC_AUTH_FAIL | TPM2_RC_S | TPM2_RC_1), Reason::kAuthFailed);
  EXPECT_EQ(classify_rc(TPM2_RC_BAD_AUTH | TPM2_RC_S | TPM2_RC_1), Reason::kAuthFailed);
  EXPECT_EQ(classify_rc(TPM2_RC_HANDLE | TPM2_RC_H | TPM2_RC_1), Reason::kKeyNotFound);
  EXPECT_EQ(classify_rc(TPM2_RC_INTEGRITY | TPM2_RC_P | TPM2_RC_2), Reason::kMalformedKey);
  EXPECT_EQ(classify_rc(TPM2_RC_CURVE | TPM2_RC_P | TPM2_RC_2), Reason::kUnsupported);
  EXPECT_EQ(classify_rc(TPM2_RC_KEY_SIZE), Reason::kUnsupported);
}

TEST(ReturnCodes, Warnings) {
  EXPECT_EQ(classify_rc(TPM2_RC_LOCKOUT), Reason::kLockout);
  EXPECT_EQ(classify_rc(TPM2_RC_OBJECT_MEMORY), Reason::kTpmBusy);
  EXPECT_EQ(classify_rc(TPM2_RC_RETRY), Reason::kTpmBusy);
  EXPECT_EQ(classify_rc(TPM2_RC_SESSION_MEMORY), Reason::kTpmBusy);
}

TEST(ReturnCodes, Layers) {
  EXPECT_EQ(classify_rc(TSS2_TCTI_RC_IO_ERROR), Reason::kTpmUnreachable);
  EXPECT_EQ(classify_rc(TSS2_TCTI_RC_NO_CONNECTION), Reason::kTpmUnreachable);
  EXPECT_EQ(classify_rc(TSS2_ESYS_RC_BAD_REFERENCE), Reason::kInternal);
}

TEST(ReturnCodes, MessageHasContextReasonAndDecodedCode) {
  Error e = tss_error("TPM2_Sign", TPM2_RC_BAD_AUTH | TPM2_RC_S | TPM2_RC_1);
  e.context("sign(tpm2:ssh)");
  EXPECT_EQ(e.text(),
            "sign(tpm2:ssh): TPM2_Sign: authorization failed: tpm:session(1):authorization failure without DA "
            "implications (rc=0x000009a2)");
}

}  // namespace
}  // namespace tpmkey
