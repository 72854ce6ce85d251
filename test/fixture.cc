#include "test/fixture.h"

#include <cstdlib>
#include <filesystem>
#include <utility>

#include <openssl/err.h>

namespace tpmkey::test {

TpmTest::TpmTest(std::string dir_prefix) : dir_prefix_(std::move(dir_prefix)) {}

void TpmTest::SetUp() {
  tcti_ = shared_swtpm().tcti();
  dir_ = make_temp_dir(dir_prefix_);
  keystore_ = dir_ + "/keystore";
}

void TpmTest::TearDown() {
  for (OSSL_LIB_CTX* l : libs_) OSSL_LIB_CTX_free(l);  // provider teardown flushes what it loaded
  libs_.clear();
  TpmHandles h = tpm_handles(tcti_);
  EXPECT_TRUE(h.clean()) << "left in the TPM: " << h.describe();
  remove_tree(dir_);
  ERR_clear_error();
}

std::string TpmTest::cnf(const std::string& tcti, const std::string& extra, bool tpmkey_first) {
  std::string sub = dir_ + "/cnf" + std::to_string(cnfs_++);
  std::filesystem::create_directories(sub);
  return write_openssl_cnf(sub, tpmkey_first, tcti, keystore_, extra);
}

OSSL_LIB_CTX* TpmTest::lib(const std::string& tcti, const std::string& extra, bool tpmkey_first) {
  return track(new_configured_libctx(cnf(tcti, extra, tpmkey_first)));
}

OSSL_LIB_CTX* TpmTest::track(OSSL_LIB_CTX* l) {
  libs_.push_back(l);
  return l;
}

void TpmTest::release(OSSL_LIB_CTX* l) {
  std::erase(libs_, l);
  OSSL_LIB_CTX_free(l);
}

void TpmTest::make_key(OSSL_LIB_CTX* l, const std::string& name, const char* password, size_t bits) {
  PkeyPtr k = bits ? generate_key(l, "RSA", nullptr, bits, password) : generate_key(l, "EC", "P-256", 0, password);
  ASSERT_TRUE(k) << drain_errors();
  ASSERT_TRUE(store_key(k.get(), keystore_ + "/" + name + ".pem")) << drain_errors();
}

bool TpmTest::sign_verifies(OSSL_LIB_CTX* l, EVP_PKEY* k, const std::string& msg) {
  auto sig = digest_sign(l, k, msg, {});
  return !sig.empty() && digest_verify(public_copy(k).get(), msg, sig, {});
}

bool TpmTest::sign_and_verify(OSSL_LIB_CTX* l, const std::string& uri, const std::string& msg) {
  PkeyPtr k = load_key(l, uri);
  return k && sign_verifies(l, k.get(), msg);
}

CommandResult TpmTest::tpmkey(std::vector<std::string> args, const std::string& tcti, int timeout_s) {
  args.insert(args.begin(), {tpmkey_bin(), "--tcti", tcti.empty() ? tcti_ : tcti, "--keystore", keystore_});
  return run(args, {"TSS2_LOG=all+none"}, "", timeout_s);
}

CommandResult TpmTest::evict_persistent_srk() {
  return run({"tpm2_evictcontrol", "-T", tcti_, "-C", "o", "-c", "0x81000001"}, {"TSS2_LOG=all+none"});
}

void TpmTest::hold_slot() {
  std::string ctx = dir_ + "/other" + std::to_string(rand()) + ".ctx";
  ASSERT_OK(run({"tpm2_createprimary", "-T", tcti_, "-C", "o", "-c", ctx}, {"TSS2_LOG=all+none"}));
}

void TpmTest::release_others() { run({"tpm2_flushcontext", "-T", tcti_, "-t"}, {"TSS2_LOG=all+none"}); }

std::string TpmTest::numbered(const std::string& prefix, int n) {
  std::string s = prefix;
  s += std::to_string(n);
  return s;
}

}  // namespace tpmkey::test
