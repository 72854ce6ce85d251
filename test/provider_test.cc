// The provider in-process against a real swtpm: generation, signing in both provider orders,
// verification with the default provider alone, store, encoder, errors, TPM command counts.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstring>
#include <filesystem>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <openssl/x509.h>

#include "keystore/keyfile.h"
#include "test/support.h"

// LeakSanitizer asks this at exit; the forked child below leaks on purpose.
static bool g_child_leaks_on_purpose = false;
extern "C" int __lsan_is_turned_off() { return g_child_leaks_on_purpose; }

namespace tpmkey::test {
namespace {

struct Alg {
  const char* name;  // tpmkey algorithm name
  const char* type;  // "EC" / "RSA"
  const char* group;
  unsigned bits;
};
const Alg kAlgs[] = {{"ec-p256", "EC", "P-256", 0}, {"ec-p384", "EC", "P-384", 0}, {"ec-p521", "EC", "P-521", 0},
                     {"rsa2048", "RSA", nullptr, 2048}, {"rsa3072", "RSA", nullptr, 3072},
                     {"rsa4096", "RSA", nullptr, 4096}};


class ProviderTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    tcti_ = shared_swtpm().tcti();
    dir_ = make_temp_dir("tpmkey-provider-test");
    keystore_ = dir_ + "/keystore";
    cnf_ = write_openssl_cnf(dir_, tpmkey_first(), tcti_, keystore_);
    lib_ = new_configured_libctx(cnf_);
  }
  void TearDown() override {
    OSSL_LIB_CTX_free(lib_);  // provider teardown flushes what it loaded
    lib_ = nullptr;
    TpmHandles h = tpm_handles(tcti_);
    EXPECT_TRUE(h.clean()) << "left in the TPM: " << h.describe();
    remove_tree(dir_);
    ERR_clear_error();
  }
  bool tpmkey_first() const { return GetParam(); }

  // Generates a key inside the TPM through EVP_PKEY_generate.
  PkeyPtr generate(const Alg& a, const char* user_auth = nullptr) {
    return generate_key(lib_, a.type, a.group, a.bits, user_auth);
  }

  // Whether this TPM can make keys of `a` (swtpm builds differ on P-521 / RSA-4096).
  bool tpm_supports(const Alg& a) {
    auto r = run({tpmkey_bin(), "--tcti", tcti_, "algorithms"});
    return r.out.find(std::string(a.name) + std::string(10 - std::strlen(a.name), ' ') + "supported") !=
           std::string::npos;
  }

  // Stores `key` as keystore entry `name` through the TSS2 encoder.
  void store(EVP_PKEY* key, const std::string& name) {
    ASSERT_TRUE(store_key(key, keystore_ + "/" + name + ".pem")) << drain_errors();
  }

  PkeyPtr load(const std::string& uri, int expect = 0) { return load_key(lib_, uri, expect); }

  std::string tcti_, dir_, keystore_, cnf_;
  OSSL_LIB_CTX* lib_ = nullptr;
};

std::string order_name(const ::testing::TestParamInfo<bool>& i) { return i.param ? "TpmkeyFirst" : "DefaultFirst"; }
INSTANTIATE_TEST_SUITE_P(Order, ProviderTest, ::testing::Bool(), order_name);

TEST_P(ProviderTest, LoadingAndListingDoNotTouchTheTpm) {
  EXPECT_TRUE(OSSL_PROVIDER_available(lib_, "tpmkey"));
  EVP_KEYMGMT* km = EVP_KEYMGMT_fetch(lib_, "EC", "provider=tpmkey");
  EXPECT_TRUE(km);
  EVP_KEYMGMT_free(km);
  // No RAND, digest or cipher is registered: those always come from the default provider.
  EVP_MD* md = EVP_MD_fetch(lib_, "SHA256", "provider=tpmkey");
  EXPECT_EQ(md, nullptr);
  EVP_MD_free(md);
  ERR_clear_error();
  EXPECT_EQ(tpm_commands(lib_), 0u);
}

TEST_P(ProviderTest, GenerateSignVerifyEveryAlgorithm) {
  const std::string msg = "tpmkey signs this";
  for (const Alg& a : kAlgs) {
    SCOPED_TRACE(a.name);
    if (!tpm_supports(a)) {
      std::printf("[   NOTE   ] %s: not supported by this TPM, checked that it fails cleanly\n", a.name);
      EXPECT_FALSE(generate(a));
      EXPECT_NE(drain_errors().find("unsupported"), std::string::npos);
      continue;
    }
    PkeyPtr key = generate(a);
    ASSERT_TRUE(key) << drain_errors();
    PkeyPtr pub = public_copy(key.get());
    ASSERT_TRUE(pub);
    EXPECT_EQ(EVP_PKEY_get_bits(key.get()), EVP_PKEY_get_bits(pub.get()));
    std::vector<SignOpts> variants = {{"SHA256", 0}, {"SHA384", 0}, {"SHA512", 0}};
    if (std::string(a.type) == "RSA") {
      variants = {{"SHA256", RSA_PKCS1_PADDING}, {"SHA384", RSA_PKCS1_PADDING}, {"SHA256", RSA_PKCS1_PSS_PADDING},
                  {"SHA512", RSA_PKCS1_PSS_PADDING}};
    }
    for (SignOpts o : variants) {
      SCOPED_TRACE(std::string(o.md) + " padding " + std::to_string(o.padding));
      auto sig = digest_sign(lib_, key.get(), msg, o);
      ASSERT_FALSE(sig.empty()) << drain_errors();
      EXPECT_TRUE(digest_verify(pub.get(), msg, sig, o)) << drain_errors();
      EXPECT_FALSE(digest_verify(pub.get(), msg + "!", sig, o));
      ERR_clear_error();

      // EVP_PKEY_sign: the caller hashes, the TPM signs the digest.
      auto d = sha(o.md, msg);
      EVP_PKEY_CTX* sctx = EVP_PKEY_CTX_new_from_pkey(lib_, key.get(), nullptr);
      ASSERT_EQ(EVP_PKEY_sign_init(sctx), 1) << drain_errors();
      if (o.padding) {
        ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(sctx, o.padding), 1);
      }
      ASSERT_EQ(EVP_PKEY_CTX_set_signature_md(sctx, EVP_get_digestbyname(o.md)), 1);
      size_t len = 0;
      ASSERT_EQ(EVP_PKEY_sign(sctx, nullptr, &len, d.data(), d.size()), 1);
      std::vector<unsigned char> raw(len);
      ASSERT_EQ(EVP_PKEY_sign(sctx, raw.data(), &len, d.data(), d.size()), 1) << drain_errors();
      raw.resize(len);
      EVP_PKEY_CTX_free(sctx);
      EVP_PKEY_CTX* vctx = EVP_PKEY_CTX_new_from_pkey(default_only(), pub.get(), nullptr);
      EVP_PKEY_verify_init(vctx);
      if (o.padding) EVP_PKEY_CTX_set_rsa_padding(vctx, o.padding);
      if (o.padding == RSA_PKCS1_PSS_PADDING) EVP_PKEY_CTX_set_rsa_pss_saltlen(vctx, RSA_PSS_SALTLEN_DIGEST);
      EVP_PKEY_CTX_set_signature_md(vctx, EVP_get_digestbyname(o.md));
      EXPECT_EQ(EVP_PKEY_verify(vctx, raw.data(), raw.size(), d.data(), d.size()), 1) << drain_errors();
      EVP_PKEY_CTX_free(vctx);
    }
  }
}

TEST_P(ProviderTest, WarmSignatureIsExactlyOneTpmCommand) {
  for (const Alg& a : {kAlgs[0], kAlgs[3]}) {
    SCOPED_TRACE(a.name);
    PkeyPtr key = generate(a);
    ASSERT_TRUE(key) << drain_errors();
    SignOpts o{"SHA256", std::string(a.type) == "RSA" ? RSA_PKCS1_PSS_PADDING : 0};
    ASSERT_FALSE(digest_sign(lib_, key.get(), "cold", o).empty());  // loads the key
    uint64_t before = tpm_commands(lib_);
    for (int i = 0; i < 5; ++i) ASSERT_FALSE(digest_sign(lib_, key.get(), "warm", o).empty());
    EXPECT_EQ(tpm_commands(lib_) - before, 5u);
  }
}

// Connect, parent and session happen once per process; each further key costs one Load; a warm
// signature is exactly one command (TPM2_Sign in the salted session).
TEST_P(ProviderTest, ParentIsCreatedOncePerProcess) {
  {
    OSSL_LIB_CTX* gen = new_configured_libctx(cnf_);
    std::swap(gen, lib_);
    PkeyPtr a = generate(kAlgs[0]), b = generate(kAlgs[0]);
    ASSERT_TRUE(a && b);
    store(a.get(), "a");
    store(b.get(), "b");
    a.reset();
    b.reset();
    std::swap(gen, lib_);
    OSSL_LIB_CTX_free(gen);
  }
  ASSERT_EQ(tpm_commands(lib_), 0u);
  PkeyPtr a = load("tpm2:a"), b = load("tpm2:b");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(tpm_commands(lib_), 0u);  // loading from the store does not touch the TPM
  ASSERT_FALSE(digest_sign(lib_, a.get(), "x", {}).empty());
  // GetCapability; StartAuthSession (unsalted), CreatePrimary, FlushContext (the SRK, no persistent
  // one was provisioned: its name matches the pin recorded on first use); StartAuthSession (salted
  // to the SRK); Load; Sign.
  EXPECT_EQ(tpm_commands(lib_), 7u);
  ASSERT_FALSE(digest_sign(lib_, b.get(), "x", {}).empty());
  EXPECT_EQ(tpm_commands(lib_), 9u);  // Load, Sign: the parent and the session are reused
  ASSERT_FALSE(digest_sign(lib_, a.get(), "x", {}).empty());
  EXPECT_EQ(tpm_commands(lib_), 10u);  // Sign
}

TEST_P(ProviderTest, ParamsForTlsAndX509) {
  PkeyPtr ec = generate(kAlgs[1]);
  ASSERT_TRUE(ec);
  EXPECT_EQ(EVP_PKEY_get_bits(ec.get()), 384);
  EXPECT_EQ(EVP_PKEY_get_security_bits(ec.get()), 192);
  EXPECT_GE(EVP_PKEY_get_size(ec.get()), 100);
  char group[32] = {};
  EXPECT_EQ(EVP_PKEY_get_group_name(ec.get(), group, sizeof group, nullptr), 1);
  EXPECT_STREQ(group, "secp384r1");
  char mdname[32] = {};
  EXPECT_GT(EVP_PKEY_get_default_digest_name(ec.get(), mdname, sizeof mdname), 0);
  EXPECT_STREQ(mdname, "SHA256");
  unsigned char* point = nullptr;
  EXPECT_EQ(EVP_PKEY_get1_encoded_public_key(ec.get(), &point), 97u);
  OPENSSL_free(point);
  EXPECT_TRUE(EVP_PKEY_can_sign(ec.get()));

  PkeyPtr rsa = generate(kAlgs[3]);
  ASSERT_TRUE(rsa);
  EXPECT_EQ(EVP_PKEY_get_bits(rsa.get()), 2048);
  EXPECT_EQ(EVP_PKEY_get_size(rsa.get()), 256);
  BIGNUM* e = nullptr;
  ASSERT_EQ(EVP_PKEY_get_bn_param(rsa.get(), OSSL_PKEY_PARAM_RSA_E, &e), 1);
  EXPECT_EQ(BN_get_word(e), 65537u);
  BN_free(e);
}

TEST_P(ProviderTest, ExportsOnlyThePublicHalf) {
  PkeyPtr key = generate(kAlgs[0]);
  ASSERT_TRUE(key);
  OSSL_PARAM* params = nullptr;
  EXPECT_NE(EVP_PKEY_todata(key.get(), EVP_PKEY_KEYPAIR, &params), 1);
  EXPECT_EQ(EVP_PKEY_todata(key.get(), EVP_PKEY_PUBLIC_KEY, &params), 1);
  EXPECT_TRUE(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PUB_KEY));
  EXPECT_FALSE(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PRIV_KEY));
  OSSL_PARAM_free(params);
  ERR_clear_error();
}

TEST_P(ProviderTest, ForeignKeysNeverReachTheTpm) {
  // A software key in the same library context signs and verifies in software.
  EVP_PKEY* soft = EVP_PKEY_Q_keygen(lib_, "provider=default", "EC", "P-256");
  ASSERT_TRUE(soft);
  PkeyPtr owned(soft, EVP_PKEY_free);
  auto sig = digest_sign(lib_, soft, "software", {});
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ASSERT_EQ(EVP_DigestVerifyInit_ex(md, nullptr, "SHA256", lib_, nullptr, soft, nullptr), 1);
  EXPECT_EQ(EVP_DigestVerify(md, sig.data(), sig.size(), reinterpret_cast<const unsigned char*>("software"), 8), 1);
  EVP_MD_CTX_free(md);
  EXPECT_EQ(tpm_commands(lib_), 0u);
}

TEST_P(ProviderTest, StoreListsLoadsAndGivesPublicKeys) {
  PkeyPtr a = generate(kAlgs[0]), b = generate(kAlgs[3]);
  ASSERT_TRUE(a && b);
  store(a.get(), "alpha");
  store(b.get(), "beta");
  // The file is a standard TSS2 key file, 0600.
  std::string pem = read_file(keystore_ + "/alpha.pem");
  auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
  ASSERT_TRUE(kf) << kf.error().text();
  EXPECT_EQ(kf->parent, kOwnerParent);
  EXPECT_TRUE(kf->pub.publicArea.objectAttributes & TPMA_OBJECT_FIXEDTPM);
  EXPECT_TRUE(kf->pub.publicArea.objectAttributes & TPMA_OBJECT_FIXEDPARENT);

  OSSL_STORE_CTX* s = OSSL_STORE_open_ex("tpm2:", lib_, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  ASSERT_TRUE(s) << drain_errors();
  std::vector<std::string> names;
  while (!OSSL_STORE_eof(s)) {
    OSSL_STORE_INFO* info = OSSL_STORE_load(s);
    if (!info) break;
    EXPECT_EQ(OSSL_STORE_INFO_get_type(info), OSSL_STORE_INFO_NAME);
    names.push_back(OSSL_STORE_INFO_get0_NAME(info));
    OSSL_STORE_INFO_free(info);
  }
  OSSL_STORE_close(s);
  EXPECT_EQ(names, (std::vector<std::string>{"tpm2:alpha", "tpm2:beta"}));

  PkeyPtr loaded = load("tpm2:alpha");
  ASSERT_TRUE(loaded) << drain_errors();
  EXPECT_EQ(EVP_PKEY_eq(loaded.get(), a.get()), 1);
  auto sig = digest_sign(lib_, loaded.get(), "from the store", {});
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EXPECT_TRUE(digest_verify(public_copy(a.get()).get(), "from the store", sig, {}));

  PkeyPtr pub = load("tpm2:name=beta;type=public");
  ASSERT_TRUE(pub) << drain_errors();
  EXPECT_EQ(EVP_PKEY_get_bits(pub.get()), 2048);
  EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(pub.get())), "default");

  PkeyPtr by_file = load("tpm2:file=" + keystore_ + "/beta.pem");
  ASSERT_TRUE(by_file) << drain_errors();
  EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(by_file.get())), "tpmkey");
}

TEST_P(ProviderTest, MoreKeysThanTpmSlotsAllSign) {
  std::vector<PkeyPtr> keys;
  for (int i = 0; i < 5; ++i) {
    keys.push_back(generate(kAlgs[0]));
    ASSERT_TRUE(keys.back()) << drain_errors();
  }
  for (int round = 0; round < 2; ++round) {
    for (auto& k : keys) {
      auto sig = digest_sign(lib_, k.get(), "slot", {});
      ASSERT_FALSE(sig.empty()) << drain_errors();
      EXPECT_TRUE(digest_verify(public_copy(k.get()).get(), "slot", sig, {}));
    }
  }
}

TEST_P(ProviderTest, KeyWithPassword) {
  PkeyPtr key = generate(kAlgs[0], "correct horse");
  ASSERT_TRUE(key) << drain_errors();
  ASSERT_FALSE(digest_sign(lib_, key.get(), "pw", {}).empty()) << drain_errors();
  store(key.get(), "pw");
  // No pin and no way to ask for one: the load fails before anything reaches the TPM.
  EXPECT_FALSE(load("tpm2:pw"));
  EXPECT_NE(drain_errors().find("open(tpm2:pw): authorization failed: no password given"), std::string::npos);
  PkeyPtr with_pin = load("tpm2:pw?pin-value=correct%20horse");
  ASSERT_TRUE(with_pin);
  EXPECT_FALSE(digest_sign(lib_, with_pin.get(), "pw", {}).empty()) << drain_errors();
  write_file(dir_ + "/pin", "correct horse\n");
  PkeyPtr with_source = load("tpm2:pw?pin-source=" + dir_ + "/pin");
  ASSERT_TRUE(with_source);
  EXPECT_FALSE(digest_sign(lib_, with_source.get(), "pw", {}).empty()) << drain_errors();
  PkeyPtr wrong = load("tpm2:pw?pin-value=wrong");
  ASSERT_TRUE(wrong);
  EXPECT_TRUE(digest_sign(lib_, wrong.get(), "pw", {}).empty());
  std::string err = drain_errors();
  EXPECT_NE(err.find("sign(tpm2:pw): TPM2_Sign: authorization failed: tpm:session(1)"), std::string::npos) << err;
  EXPECT_EQ(err.find("wrong"), std::string::npos) << "the pin leaked into a message: " << err;
}

TEST_P(ProviderTest, ErrorsAreClear) {
  struct Case {
    std::string uri, says;
  };
  std::filesystem::create_directories(keystore_);
  write_file(keystore_ + "/corrupt.pem", "-----BEGIN TSS2 PRIVATE KEY-----\nMAMCAQA=\n-----END TSS2 PRIVATE KEY-----\n");
  write_file(keystore_ + "/empty.pem", "");
  for (const Case& c : std::vector<Case>{
           {"tpm2:missing", "open(tpm2:missing): key not found: no key named \"missing\""},
           {"tpm2:bad/name", "malformed tpm2: URI: key name \"bad/name\""},
           {"tpm2:name=a;color=red", "unknown attribute \"color\""},
           {"tpm2:corrupt", "open(tpm2:corrupt): read(" + keystore_ + "/corrupt.pem): malformed or unusable key file"},
           {"tpm2:empty", "file is empty"},
           {"tpm2:file=/nonexistent/k.pem", "read(/nonexistent/k.pem): key not found: No such file"}}) {
    SCOPED_TRACE(c.uri);
    EXPECT_FALSE(load(c.uri));
    std::string err = drain_errors();
    EXPECT_NE(err.find(c.says), std::string::npos) << err;
  }
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(lib_, "EC", "provider=tpmkey");
  ASSERT_EQ(EVP_PKEY_keygen_init(ctx), 1);
  EXPECT_NE(EVP_PKEY_CTX_set_group_name(ctx, "P-192"), 1);
  EXPECT_NE(drain_errors().find("EC group \"P-192\""), std::string::npos);
  EVP_PKEY_CTX_free(ctx);
}

// A process that exits while still holding a loaded key leaves nothing in a bare TPM.
TEST_P(ProviderTest, ExitWhileHoldingKeysLeavesTheTpmClean) {
#ifdef TPMKEY_SANITIZED
  GTEST_SKIP() << "the child leaks on purpose; runs in the normal build";
#endif
  PkeyPtr key = generate(kAlgs[0]);
  ASSERT_TRUE(key);
  store(key.get(), "held");
  key.reset();
  OSSL_LIB_CTX_free(lib_);
  lib_ = nullptr;
  pid_t pid = fork();
  if (pid == 0) {
    g_child_leaks_on_purpose = true;
    OSSL_LIB_CTX* lib = new_configured_libctx(cnf_);
    lib_ = lib;
    EVP_PKEY* leaked = load("tpm2:held").release();  // never freed, like a careless program
    bool ok = leaked && !digest_sign(lib, leaked, "x", {}).empty() && tpm_commands(lib) > 0;
    std::exit(ok ? 0 : 1);  // runs atexit handlers, not the provider teardown
  }
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  lib_ = new_configured_libctx(cnf_);  // for TearDown
  // A pin given for a key without a password is ignored, not sent to the TPM.
  PkeyPtr with_pin = load("tpm2:held?pin-value=unused");
  ASSERT_TRUE(with_pin);
  EXPECT_FALSE(digest_sign(lib_, with_pin.get(), "x", {}).empty()) << drain_errors();
}

TEST(ProviderUnreachable, LoadsThenFailsCleanly) {
  std::string dir = make_temp_dir("tpmkey-unreachable");
  // A port nothing listens on: the provider must load, and fail only when a key is used.
  std::string cnf = write_openssl_cnf(dir, true, "swtpm:host=127.0.0.1,port=1", dir + "/ks");
  OSSL_LIB_CTX* lib = new_configured_libctx(cnf);
  EXPECT_TRUE(OSSL_PROVIDER_available(lib, "tpmkey"));
  EVP_PKEY* key = EVP_PKEY_Q_keygen(lib, "provider=tpmkey", "EC", "P-256");
  EXPECT_EQ(key, nullptr);
  std::string err = drain_errors();
  EXPECT_NE(err.find("generate(ec-p256): connect(swtpm:host=127.0.0.1,port=1): TPM unreachable"), std::string::npos)
      << err;
  OSSL_LIB_CTX_free(lib);
  remove_tree(dir);
}

}  // namespace
}  // namespace tpmkey::test
