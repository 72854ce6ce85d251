// Where tpmkey's internal crypto lives (keystore/crypto.h): the global library context when the
// default provider is there, else a private one; the same answers either way.
#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/provider.h>

#include <cstdlib>

#include "keystore/crypto.h"

namespace tpmkey {
namespace {

std::string sha256_hex(const Crypto& c) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestInit_ex2(ctx, c.md(TPM2_ALG_SHA256), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, "abc", 3) == 1 && EVP_DigestFinal_ex(ctx, out, &n) == 1;
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned int i = 0; ok && i < n; ++i) hex += "0123456789abcdef"[out[i] >> 4], hex += "0123456789abcdef"[out[i] & 15];
  return hex;
}

TEST(Crypto, SharesTheGlobalContextWhenItHasTheDefaultProvider) {
  auto global = Crypto::create(Crypto::Where::kGlobalIfDefault);
  auto own = Crypto::create(Crypto::Where::kPrivate);
  ASSERT_TRUE(global && own);
  EXPECT_EQ((*global)->libctx(), nullptr);  // nullptr: the global library context
  EXPECT_NE((*own)->libctx(), nullptr);
  EXPECT_NE((*global)->aes128_cfb(), nullptr);
  const std::string abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  EXPECT_EQ(sha256_hex(**global), abc);
  EXPECT_EQ(sha256_hex(**own), abc);
}

// A global context without the default provider (here: only "base", as a FIPS-only set-up would
// have no "provider=default"): tpmkey falls back to its private context. Run in a fresh process
// (a "threadsafe" death test re-executes the binary), since loading a provider into the global
// context is for good.
TEST(Crypto, FallsBackToAPrivateContextWithoutTheDefaultProvider) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        OSSL_PROVIDER* base = OSSL_PROVIDER_load(nullptr, "base");  // no fallback to "default" now
        int code = 2;
        if (base) {
          auto c = Crypto::create(Crypto::Where::kGlobalIfDefault);
          code = c && (*c)->libctx() != nullptr && !sha256_hex(**c).empty() ? 0 : 1;
        }
        OSSL_PROVIDER_unload(base);
        std::exit(code);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace tpmkey
