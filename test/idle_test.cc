// The idle provider (docs/performance.md): a process with tpmkey activated in its openssl.cnf that
// asks it nothing maps tpmkey.so's front alone (provider/module.cc), one that asks it for key
// management or decoders (a software key) also the provider proper, tpmkey-core.so, and no
// tpm2-tss library; the first TPM command loads libtss2-mu and libtss2-sys (keystore/tpm/tss_loader.cc;
// reading a key file needs neither, keystore/tpm_wire.h). Which libraries a real `openssl` process
// loads is read from the dynamic loader's own account of it (LD_DEBUG=files), in both provider orders.
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <filesystem>

#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

class IdleTest : public TpmTest, public ::testing::WithParamInterface<bool> {
 protected:
  IdleTest() : TpmTest("tpmkey-idle-test") {}
  void SetUp() override {
    TpmTest::SetUp();
    write_file(dir_ + "/msg", "a file to hash and sign\n");
    cnf_ = cnf(tcti_, "", GetParam());
  }

  // openssl with tpmkey and default activated by cnf_, the dynamic loader reporting every file it
  // loads on stderr.
  CommandResult openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    return run(args, {"OPENSSL_CONF=" + cnf_, "LD_DEBUG=files", "TSS2_LOG=all+none"});
  }
  // Whether the loader's report names `file` as loaded (its "file=PATH [0];  ..." lines).
  static bool loaded(const CommandResult& r, const std::string& file) {
    for (size_t at = r.err.find("file="); at != std::string::npos; at = r.err.find("file=", at + 1)) {
      const size_t end = r.err.find_first_of(" \n", at);
      const std::string path = r.err.substr(at + 5, end == std::string::npos ? std::string::npos : end - at - 5);
      if (std::filesystem::path(path).filename().string().rfind(file, 0) == 0) return true;
    }
    return false;
  }
  void verify(const std::string& pub, const std::string& sig) {
    auto v = run({"openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sha256", "-in",
                  dir_ + "/msg", "-sigfile", sig},
                 {"OPENSSL_CONF=/dev/null"});
    EXPECT_OK(v);
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out;
  }
  std::vector<std::string> sign_args(const std::string& key, const std::string& sig) {
    return {"pkeyutl", "-sign", "-inkey", key, "-rawin", "-digest", "sha256", "-in", dir_ + "/msg", "-out", sig};
  }

  std::string cnf_;
};

TEST_P(IdleTest, SoftwareOnlyProcessMapsNoTss) {
  auto dgst = openssl({"dgst", "-sha256", dir_ + "/msg"});
  EXPECT_OK(dgst);
  EXPECT_NE(dgst.out.find("SHA2-256("), std::string::npos) << dgst.out;
  EXPECT_TRUE(loaded(dgst, "tpmkey.so")) << dgst.err;  // the provider was activated
  EXPECT_FALSE(loaded(dgst, "tpmkey-core.so")) << dgst.err;  // and asked nothing it answers
  EXPECT_TRUE(loaded(dgst, "libcrypto.so")) << dgst.err;
  EXPECT_FALSE(loaded(dgst, "libtss2-")) << dgst.err;

  // A software key, signed with while tpmkey is active (its decoders and store are asked too).
  ASSERT_OK(run({"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                 dir_ + "/soft.pem"},
                {"OPENSSL_CONF=/dev/null"}));
  ASSERT_OK(run({"openssl", "pkey", "-in", dir_ + "/soft.pem", "-pubout", "-out", dir_ + "/soft.pub"},
                {"OPENSSL_CONF=/dev/null"}));
  auto sign = openssl(sign_args(dir_ + "/soft.pem", dir_ + "/soft.sig"));
  EXPECT_OK(sign);
  EXPECT_TRUE(loaded(sign, "tpmkey.so")) << sign.err;
  EXPECT_TRUE(loaded(sign, "tpmkey-core.so")) << sign.err;  // asked for its decoders
  EXPECT_FALSE(loaded(sign, "libtss2-")) << sign.err;
  verify(dir_ + "/soft.pub", dir_ + "/soft.sig");
}

TEST_P(IdleTest, TpmKeyLoadsTssOnFirstUse) {
  ASSERT_OK(tpmkey({"create", "idle"}));
  auto pub = tpmkey({"pubkey", "idle"});
  ASSERT_OK(pub);
  write_file(dir_ + "/idle.pub", pub.out);
  auto sign = openssl(sign_args("tpm2:idle", dir_ + "/idle.sig"));
  EXPECT_OK(sign);
  EXPECT_TRUE(loaded(sign, "tpmkey-core.so")) << sign.err;
  EXPECT_TRUE(loaded(sign, "libtss2-mu.so")) << sign.err;
  EXPECT_TRUE(loaded(sign, "libtss2-sys.so")) << sign.err;
  EXPECT_FALSE(loaded(sign, "libtss2-esys")) << sign.err;
  verify(dir_ + "/idle.pub", dir_ + "/idle.sig");
}

// The file behind this process's libtss2-sys (the tests link it), or "".
std::string tss_sys_file() {
  void* h = dlopen("libtss2-sys.so.1", RTLD_NOW | RTLD_NOLOAD);
  link_map* map = nullptr;
  if (!h || dlinfo(h, RTLD_DI_LINKMAP, &map) != 0 || !map) return "";
  std::error_code ec;
  return std::filesystem::canonical(map->l_name, ec).string();
}

// Without a usable libtss2-sys (an empty file bind-mounted over it in a private mount namespace),
// a software digest still works, and using a TPM key is a clean error that says what is missing.
TEST_P(IdleTest, MissingTssIsAClearErrorOnFirstUse) {
  const std::string lib = tss_sys_file();
  ASSERT_FALSE(lib.empty());
  if (run({"unshare", "-m", "true"}).exit_code != 0) GTEST_SKIP() << "no mount namespaces here";
  ASSERT_OK(tpmkey({"create", "nolib"}));
  // The sanitizer runtime goes to openssl only, as run() does (process.cc).
  const char* preload = std::getenv("TPMKEY_SUBPROCESS_PRELOAD");
  const std::string script = std::string("mount --bind /dev/null \"$0\" || exit 99; ") +
                             (preload && *preload ? "export LD_PRELOAD=\"$TPMKEY_SUBPROCESS_PRELOAD\" "
                                                    "ASAN_OPTIONS=detect_leaks=0; "
                                                  : "") +
                             "exec openssl \"$@\"";
  auto without = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"unshare", "-m", "sh", "-c", script, lib});
    return run(args, {"OPENSSL_CONF=" + cnf_, "TSS2_LOG=all+none"});
  };
  auto dgst = without({"dgst", "-sha256", dir_ + "/msg"});
  EXPECT_OK(dgst);
  auto sign = without(sign_args("tpm2:nolib", dir_ + "/nolib.sig"));
  EXPECT_FAILS_WITH(sign, "TPM unreachable: cannot load ");
  EXPECT_NE(sign.err.find("libtss2-sys.so"), std::string::npos) << sign.err;
}

INSTANTIATE_TEST_SUITE_P(Orders, IdleTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "TpmkeyFirst" : "DefaultFirst"; });

}  // namespace
}  // namespace tpmkey::test
