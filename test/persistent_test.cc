// Persistent keys against a real swtpm: `tpmkey create --persistent` and `delete`, tpm2:handle=
// for keys made persistent by tpm2-tools, and restricted (attestation) keys refused clearly.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <openssl/err.h>

#include "test/fixture.h"
#include "test/support.h"
#include "test/swtpm.h"

namespace tpmkey::test {
namespace {

class PersistentTest : public TpmTest {
 protected:
  PersistentTest() : TpmTest("tpmkey-persistent-test") {}
  void SetUp() override {
    TpmTest::SetUp();
    lib_ = lib(tcti_);
  }
  void TearDown() override {
    TpmTest::TearDown();  // frees lib_
    lib_ = nullptr;
    EXPECT_EQ(persistent_handles().find("0x810000"), std::string::npos) << "persistent keys left behind";
  }
  CommandResult tools(std::vector<std::string> args) {
    args.insert(args.begin() + 1, {"-T", tcti_});
    return run(args, {"TSS2_LOG=all+none"});
  }
  std::string persistent_handles() { return tools({"tpm2_getcap", "handles-persistent"}).out; }
  bool sign_and_verify(const std::string& uri) { return TpmTest::sign_and_verify(lib_, uri, "persistent"); }
  // A signing key made by tpm2-tools (a primary key under the owner hierarchy) and made
  // persistent at `handle` with tpm2_evictcontrol.
  void tools_persistent_key(const std::string& alg, const std::string& attrs, const std::string& handle) {
    const std::string k = dir_ + "/k.ctx";
    auto r = tools({"tpm2_createprimary", "-C", "o", "-G", alg, "-a", attrs, "-c", k});
    ASSERT_OK(r);
    r = tools({"tpm2_evictcontrol", "-C", "o", "-c", k, handle});
    ASSERT_OK(r);
    tools({"tpm2_flushcontext", "-t"});
  }
  void evict(const std::string& handle) { tools({"tpm2_evictcontrol", "-C", "o", "-c", handle}); }

  OSSL_LIB_CTX* lib_ = nullptr;
};

TEST_F(PersistentTest, CreatePersistentSignsInPlaceAndDeleteEvicts) {
  auto r = tpmkey({"create", "pk", "--persistent", "0x81000010"});
  ASSERT_OK(r);
  EXPECT_NE(r.out.find("persistent at 0x81000010"), std::string::npos) << r.out;
  EXPECT_NE(persistent_handles().find("0x81000010"), std::string::npos);
  EXPECT_NE(tpmkey({"list"}).out.find("persistent 0x81000010"), std::string::npos);
  {
    PkeyPtr k = load_key(lib_, "tpm2:pk");
    ASSERT_TRUE(k);
    auto sig = digest_sign(lib_, k.get(), "m", {});
    ASSERT_FALSE(sig.empty()) << drain_errors();
    EXPECT_TRUE(digest_verify(public_copy(k.get()).get(), "m", sig, {}));
    // ReadPublic(0x81000010) (its name matches the key file: used in place, no TPM2_Load),
    // StartAuthSession, CreatePrimary, FlushContext (the session), StartAuthSession, Sign, then
    // ContextSave and FlushContext of the SRK (a transient parent keeps no slot between
    // operations). No GetCapability: with nothing of its own to evict, tpmkey does not need the
    // slot limits.
    EXPECT_EQ(tpm_commands(lib_), 8u);
  }
  EXPECT_TRUE(sign_and_verify("tpm2:handle=0x81000010")) << drain_errors();
  // A handle in use is refused before anything is created; a non-persistent handle is a usage error.
  EXPECT_FAILS_WITH(tpmkey({"create", "other", "--persistent", "0x81000010"}), "the persistent handle is already in use");
  EXPECT_EQ(tpmkey({"create", "other", "--persistent", "0x40000001"}).exit_code, 2);
  r = tpmkey({"delete", "pk", "--yes"});
  ASSERT_OK(r);
  EXPECT_NE(r.out.find("evicted 0x81000010"), std::string::npos) << r.out;
  EXPECT_EQ(persistent_handles().find("0x81000010"), std::string::npos);
  EXPECT_FALSE(load_key(lib_, "tpm2:handle=0x81000010"));
  EXPECT_NE(drain_errors().find("no persistent object at 0x81000010"), std::string::npos);
}

TEST_F(PersistentTest, KeysMadePersistentByTpm2Tools) {
  for (const char* alg : {"ecc256:null", "rsa2048:null"}) {
    SCOPED_TRACE(alg);
    tools_persistent_key(alg, "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign", "0x81000020");
    EXPECT_TRUE(sign_and_verify("tpm2:handle=0x81000020")) << drain_errors();
    // The command line too, verified by the default provider alone.
    const std::string msg = dir_ + "/msg", sig = dir_ + "/sig", pub = dir_ + "/pub.pem";
    write_file(msg, "signed by a persistent key");
    std::vector<std::string> prov = {"-provider-path", provider_dir(), "-provider", "tpmkey", "-provider", "default"};
    auto with = [&](std::vector<std::string> a) {
      a.insert(a.begin() + 2, prov.begin(), prov.end());
      return run(a, {"TPMKEY_TCTI=" + tcti_, "TSS2_LOG=all+none", "OPENSSL_CONF=/dev/null"});
    };
    auto r = with({"openssl", "pkeyutl", "-sign", "-inkey", "tpm2:handle=0x81000020", "-rawin", "-digest", "sha256",
                   "-in", msg, "-out", sig});
    EXPECT_OK(r);
    r = with({"openssl", "pkey", "-in", "tpm2:handle=0x81000020", "-pubout", "-out", pub});
    EXPECT_OK(r);
    r = run({"openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sha256", "-in", msg,
             "-sigfile", sig},
            {"OPENSSL_CONF=/dev/null"});
    EXPECT_OK(r);
    evict("0x81000020");
  }
}

// Restricted (attestation) keys sign only messages the TPM hashed itself: EVP_DigestSign hands
// the whole message to the TPM (TPM2_Hash, or a hash sequence beyond 1024 bytes) for the ticket.
TEST_F(PersistentTest, RestrictedKeysSignWholeMessages) {
  struct Case {
    const char* alg;
    SignOpts opts;
  };
  for (const Case& c : {Case{"ecc256:ecdsa-sha256:null", {}}, Case{"rsa2048:rsassa-sha256:null", {"SHA256", 1}}}) {
    SCOPED_TRACE(c.alg);
    tools_persistent_key(c.alg, "restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth", "0x81000030");
    PkeyPtr k = load_key(lib_, "tpm2:handle=0x81000030");
    ASSERT_TRUE(k) << drain_errors();
    PkeyPtr pub = public_copy(k.get());
    for (size_t len : {size_t(10), size_t(1024), size_t(5000)}) {
      std::string msg(len, 'a');
      msg[0] = 'x';
      auto sig = digest_sign(lib_, k.get(), msg, c.opts);
      ASSERT_FALSE(sig.empty()) << len << ": " << drain_errors();
      EXPECT_TRUE(digest_verify(pub.get(), msg, sig, c.opts)) << len;
    }
    // A bare digest cannot be signed by a restricted key: clearly refused.
    EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_from_pkey(lib_, k.get(), nullptr);
    auto d = sha("SHA256", "m");
    unsigned char out[512];
    size_t outlen = sizeof out;
    EXPECT_TRUE(pctx && EVP_PKEY_sign_init(pctx) == 1);
    EXPECT_NE(EVP_PKEY_sign(pctx, out, &outlen, d.data(), d.size()), 1);
    EVP_PKEY_CTX_free(pctx);
    std::string err = drain_errors();
    EXPECT_NE(err.find("a restricted (attestation) key signs only whole messages"), std::string::npos) << err;
    k.reset();
    evict("0x81000030");
  }
}

// Key generation takes the option names tpm2-openssl users know: parent (here the persistent SRK
// that `tpmkey init` made) and digest (the key's name algorithm).
TEST_F(PersistentTest, GenerateUnderAPersistentParentWithADigest) {
  ASSERT_OK(tpmkey({"init"}));
  const std::string key = dir_ + "/k.pem", pub = dir_ + "/k.pub", msg = dir_ + "/msg", sig = dir_ + "/sig";
  write_file(msg, "under a persistent parent");
  std::vector<std::string> prov = {"-provider-path", provider_dir(), "-provider", "tpmkey", "-provider", "default"};
  auto openssl = [&](std::vector<std::string> a) {
    a.insert(a.begin() + 2, prov.begin(), prov.end());
    return run(a, {"TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_, "TSS2_LOG=all+none", "OPENSSL_CONF=/dev/null"});
  };
  auto r = openssl({"openssl", "genpkey", "-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt", "group:P-384",
                    "-pkeyopt", "parent:0x81000001", "-pkeyopt", "digest:sha384", "-out", key});
  ASSERT_OK(r);
  r = openssl({"openssl", "pkey", "-in", key, "-text", "-noout"});
  EXPECT_NE(r.out.find("TPM parent: 0x81000001"), std::string::npos) << r.out;
  EXPECT_OK(openssl({"openssl", "pkeyutl", "-sign", "-inkey", key, "-rawin", "-digest", "sha384", "-in", msg, "-out", sig}));
  EXPECT_OK(openssl({"openssl", "pkey", "-in", key, "-pubout", "-out", pub}));
  r = run({"openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sha384", "-in", msg, "-sigfile",
           sig},
          {"OPENSSL_CONF=/dev/null"});
  EXPECT_OK(r);
  r = openssl({"openssl", "genpkey", "-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt", "digest:md5", "-out", key});
  EXPECT_FAILS_WITH(r, "digest md5 (use sha256, sha384 or sha512)");
  evict("0x81000001");
}

// A persistent parent with a password of its own (tpm2_createprimary -p): a key made under it with
// -pkeyopt parent-auth: records that the parent has one, and loading any key under it then asks
// for that password through OpenSSL's passphrase UI (here -passin). No password: refused before
// TPM2_Load, no dictionary-attack failure. A wrong one: exactly one failure, and a clear message.
// Without the record, the TPM's refusal says what is missing.
TEST_F(PersistentTest, ParentWithItsOwnPassword) {
  constexpr const char* kParent = "0x81000040";
  const std::string ctx = dir_ + "/parent.ctx";
  ASSERT_OK(tools({"tpm2_createprimary", "-C", "o", "-G", "ecc256", "-p", "parent secret", "-c", ctx}));
  ASSERT_OK(tools({"tpm2_evictcontrol", "-C", "o", "-c", ctx, kParent}));
  tools({"tpm2_flushcontext", "-t"});
  set_dictionary_attack(tcti_, 1000, 1000);  // no recovery during the test: every failure stays counted
  std::filesystem::create_directories(keystore_);
  const std::string msg = dir_ + "/msg", sig = dir_ + "/sig", pub = dir_ + "/pk.pub", key = keystore_ + "/pk.pem";
  write_file(msg, "under a parent with a password");
  std::vector<std::string> prov = {"-provider-path", provider_dir(), "-provider", "tpmkey", "-provider", "default"};
  auto openssl = [&](std::vector<std::string> a) {
    a.insert(a.begin() + 2, prov.begin(), prov.end());
    return run(a, {"TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_, "TSS2_LOG=all+none", "OPENSSL_CONF=/dev/null",
                   "TPMKEY_AGENT=off"});
  };
  auto sign = [&](const std::string& in, std::vector<std::string> more) {
    std::vector<std::string> a = {"openssl", "pkeyutl", "-sign", "-inkey", in, "-rawin", "-digest", "sha256", "-in", msg,
                                  "-out", sig};
    a.insert(a.end(), more.begin(), more.end());
    return openssl(a);
  };

  // Made with the parent's password: the record is written (0600), the key signs at once.
  uint32_t strikes = lockout_counter(tcti_);
  ASSERT_OK(openssl({"openssl", "genpkey", "-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt",
                     std::string("parent:") + kParent, "-pkeyopt", "parent-auth:parent secret", "-out", key}));
  const std::string record = keystore_ + "/parent-0x81000040.auth";
  ASSERT_TRUE(std::filesystem::exists(record));
  EXPECT_EQ(std::filesystem::status(record).permissions() & std::filesystem::perms::all, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  ASSERT_OK(openssl({"openssl", "pkey", "-in", key, "-pubout", "-out", pub}));
  for (const std::string& in : {std::string("tpm2:pk"), key}) {
    SCOPED_TRACE(in);
    ASSERT_OK(sign(in, {"-passin", "pass:parent secret"}));
    EXPECT_OK(run({"openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sha256", "-in", msg,
                   "-sigfile", sig},
                  {"OPENSSL_CONF=/dev/null"}));
  }
  EXPECT_EQ(lockout_counter(tcti_), strikes);

  // A forked child signs with the key its parent loaded: its own TPM connection loads the key
  // again under the parent with the password the key was opened with, asking nothing; the parent
  // goes on signing; no dictionary-attack failure on either side.
  {
    OSSL_LIB_CTX* l = lib(tcti_);
    PkeyPtr k = load_key(l, "tpm2:pk", 0, "parent secret");
    ASSERT_TRUE(k) << drain_errors();
    ASSERT_TRUE(sign_verifies(l, k.get(), "the parent, before"));
    const pid_t pid = fork();
    if (pid == 0) {
      child_leaks_on_purpose();
      const bool ok = sign_verifies(l, k.get(), "the child") && sign_verifies(l, k.get(), "the child, again");
      if (!ok) std::fprintf(stderr, "child: %s\n", drain_errors().c_str());
      std::exit(ok ? 0 : 1);  // exit(), so that tpmkey flushes what the child loaded
    }
    ASSERT_GT(pid, 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    EXPECT_TRUE(sign_verifies(l, k.get(), "the parent, after"));
    k.reset();
    release(l);
  }
  EXPECT_EQ(lockout_counter(tcti_), strikes);

  // No password: refused before anything is sent under the parent, by the store when it asks
  // and, for a key file by path, when the key is used.
  auto r = sign("tpm2:pk", {});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no password given for the parent 0x81000040, which has one"), std::string::npos) << r.err;
  r = sign(key, {});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("the parent 0x81000040 has a password and none was given"), std::string::npos) << r.err;
  EXPECT_EQ(lockout_counter(tcti_), strikes);
  // A wrong one: one dictionary-attack failure.
  r = sign("tpm2:pk", {"-passin", "pass:not the parent's"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("the password given for the parent 0x81000040 is not its password (the TPM counted one "
                       "dictionary-attack failure)"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1);
  // tpmkey passwd does not ask for the parent's: refused, nothing sent under it, nothing written.
  write_file(dir_ + "/new", "a new password\n");
  chmod((dir_ + "/new").c_str(), 0600);
  const std::string before = read_file(key);
  EXPECT_FAILS_WITH(tpmkey({"passwd", "pk", "--password-file", dir_ + "/new"}),
                    "the parent 0x81000040 has a password and none was given");
  EXPECT_EQ(read_file(key), before);
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1);
  // Without the record, tpmkey cannot know before the TPM says so (one failure), and the message
  // says what is missing.
  std::filesystem::remove(record);
  r = sign("tpm2:pk", {});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("the parent 0x81000040 has a password and none was given (the TPM counted one"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(lockout_counter(tcti_), strikes + 2);
  // parent-auth is refused for the owner SRK, which has none.
  r = openssl({"openssl", "genpkey", "-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt",
               "parent-auth:x", "-out", dir_ + "/x.pem"});
  EXPECT_NE(r.err.find("parent-auth is the password of a persistent parent"), std::string::npos) << r.err;

  set_dictionary_attack(tcti_, 1000, 1);
  evict(kParent);
}

}  // namespace
}  // namespace tpmkey::test
