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

// OpenSSL drops an error text of 1024 bytes or more: long texts are shortened, paths in the
// middle, and a UTF-8 character is never cut.
TEST(ErrorText, LongTextsAreShortenedBelowOpenSslsLimit) {
  EXPECT_EQ(shorten_text("short: text", 100), "short: text");
  const std::string path = "/home/user/" + std::string(3000, 'd') + "/key.pem";
  const std::string text = "read(" + path + "): key not found: No such file or directory";
  const std::string s = shorten_text(text, kMaxErrorText);
  EXPECT_LE(s.size(), kMaxErrorText);
  EXPECT_EQ(s.rfind("read(/home/user/ddd", 0), 0u) << s;
  EXPECT_NE(s.find("ddd...ddd"), std::string::npos) << s;
  const std::string end = "ddd/key.pem): key not found: No such file or directory";
  EXPECT_EQ(s.substr(s.size() - end.size()), end) << s;
  // Many long words: each loses its middle; words of 35 bytes or less are kept whole.
  std::string many;
  for (int i = 0; i < 40; ++i) many += std::string(100, char('a' + i % 26)) + " ";
  const std::string m = shorten_text(many, kMaxErrorText);
  EXPECT_LE(m.size(), kMaxErrorText);
  // Nothing but short words: the end is cut.
  std::string words;
  for (int i = 0; i < 400; ++i) words += "word ";
  const std::string w = shorten_text(words, kMaxErrorText);
  EXPECT_LE(w.size(), kMaxErrorText);
  EXPECT_EQ(w.substr(w.size() - 3), "...");
  // Multi-byte characters are never split.
  std::string utf8;
  for (int i = 0; i < 1000; ++i) utf8 += "\xc3\xa9";  // é
  for (const std::string& in : {utf8, "x " + utf8, utf8 + " " + utf8}) {
    const std::string u = shorten_text(in, kMaxErrorText);
    EXPECT_LE(u.size(), kMaxErrorText);
    for (size_t i = 0; i < u.size(); ++i) {
      if (uint8_t(u[i]) == 0xc3) {
        EXPECT_TRUE(i + 1 < u.size() && uint8_t(u[i + 1]) == 0xa9) << "split at " << i;
      }
      if (uint8_t(u[i]) == 0xa9) {
        EXPECT_TRUE(i > 0 && uint8_t(u[i - 1]) == 0xc3) << "orphan at " << i;
      }
    }
  }
}

}  // namespace
}  // namespace tpmkey
