// The provider in-process against a real swtpm: generation, signing in both provider orders,
// verification with the default provider alone, store, encoder, errors, TPM command counts.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <ostream>
#include <tuple>

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <openssl/ui.h>
#include <openssl/x509.h>

#include <tss2/tss2_tpm2_types.h>

#include "keystore/keyfile.h"
#include "provider/params.h"
#include "test/bus_proxy.h"
#include "test/fixture.h"
#include "test/support.h"

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


// The parameter is the provider order: tpmkey first, or default first.
class ProviderTest : public TpmTest, public ::testing::WithParamInterface<bool> {
 protected:
  ProviderTest() : TpmTest("tpmkey-provider-test") {}
  void SetUp() override {
    TpmTest::SetUp();
    cnf_ = cnf(tcti_, "", tpmkey_first());
    lib_ = track(new_configured_libctx(cnf_));  // freed in TearDown
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

  // From now on lib_ (and cnf_) reach the TPM through bus_, which records the commands, for the
  // tests that assert them. Only those: the proxy's threads serve the process that made it, not
  // a forked child. bus_ outlives TearDown, which frees lib_.
  void count_on_the_bus() {
    bus_.emplace(shared_swtpm().port());
    OSSL_LIB_CTX* old = lib_;
    cnf_ = cnf(bus_->tcti(), "", tpmkey_first());
    lib_ = track(new_configured_libctx(cnf_));
    release(old);  // frees it
  }

  std::optional<BusProxy> bus_;
  std::string cnf_;
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
  count_on_the_bus();
  for (const Alg& a : {kAlgs[0], kAlgs[3]}) {
    SCOPED_TRACE(a.name);
    PkeyPtr key = generate(a);
    ASSERT_TRUE(key) << drain_errors();
    SignOpts o{"SHA256", std::string(a.type) == "RSA" ? RSA_PKCS1_PSS_PADDING : 0};
    ASSERT_FALSE(digest_sign(lib_, key.get(), "cold", o).empty());  // loads the key
    uint64_t before = tpm_commands(lib_);
    bus_->clear();
    for (int i = 0; i < 5; ++i) ASSERT_FALSE(digest_sign(lib_, key.get(), "warm", o).empty());
    // Each signature is one TPM2_Sign. A pause of over a millisecond between two of them (a loaded
    // machine) adds a continuity proof before the next (docs/sessions.md), at most one each.
    EXPECT_EQ(bus_->take_commands_without_proofs(), std::vector<uint32_t>(5, TPM2_CC_Sign));
    EXPECT_LE(tpm_commands(lib_) - before, 10u);
  }
}

// Connect, parent and session happen once per process; each further key costs one Load; a warm
// signature is exactly one command (TPM2_Sign in the salted session).
TEST_P(ProviderTest, ParentIsCreatedOncePerProcess) {
  count_on_the_bus();
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
  bus_->clear();
  ASSERT_FALSE(digest_sign(lib_, a.get(), "x", {}).empty());
  // StartAuthSession (unsalted), CreatePrimary, FlushContext (the SRK, no persistent one was
  // provisioned: its name matches the pin recorded on first use); StartAuthSession (salted to the
  // SRK); GetCapability (the slot limits, read once tpmkey holds an object: here the SRK); Load;
  // Sign; then ContextSave and FlushContext of the SRK: a transient parent does not keep a slot
  // between operations (docs/sessions.md, slots). Continuity proofs after a pause are not counted
  // (BusProxy::take_commands_without_proofs).
  EXPECT_EQ(bus_->take_commands_without_proofs(),
            (std::vector<uint32_t>{TPM2_CC_StartAuthSession, TPM2_CC_CreatePrimary, TPM2_CC_FlushContext,
                                   TPM2_CC_StartAuthSession, TPM2_CC_GetCapability, TPM2_CC_Load, TPM2_CC_Sign,
                                   TPM2_CC_ContextSave, TPM2_CC_FlushContext}));
  ASSERT_FALSE(digest_sign(lib_, b.get(), "x", {}).empty());
  // ContextLoad (the saved SRK: not created again), Load, Sign, ContextSave, FlushContext; the
  // session is reused.
  EXPECT_EQ(bus_->take_commands_without_proofs(),
            (std::vector<uint32_t>{TPM2_CC_ContextLoad, TPM2_CC_Load, TPM2_CC_Sign, TPM2_CC_ContextSave,
                                   TPM2_CC_FlushContext}));
  ASSERT_FALSE(digest_sign(lib_, a.get(), "x", {}).empty());
  EXPECT_EQ(bus_->take_commands_without_proofs(), std::vector<uint32_t>{TPM2_CC_Sign});
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

// Keys that are not the TPM's, held by tpmkey's key management (what an unqualified fetch gets
// with tpmkey first): generation without a property query, key material imported as data, and
// every operation on them are the default provider's, in software. None reaches the TPM
// (docs/architecture.md, "Either provider order").
TEST_P(ProviderTest, SoftwareKeysInTpmkeysKeyManagementStayInSoftware) {
  auto derive = [](OSSL_LIB_CTX* l, EVP_PKEY* priv, EVP_PKEY* peer) {
    std::vector<unsigned char> out(128);
    size_t len = out.size();
    EVP_PKEY_CTX* c = EVP_PKEY_CTX_new_from_pkey(l, priv, nullptr);
    bool ok = c && EVP_PKEY_derive_init(c) == 1 && EVP_PKEY_derive_set_peer(c, peer) == 1 &&
              EVP_PKEY_derive(c, out.data(), &len) == 1;
    EVP_PKEY_CTX_free(c);
    out.resize(ok ? len : 0);
    return out;
  };
  for (const char* type : {"EC", "RSA"}) {
    SCOPED_TRACE(type);
    const bool ec = std::string(type) == "EC";
    // The keymgmt a fetch without properties finds when tpmkey comes first.
    EVP_PKEY_CTX* gen = EVP_PKEY_CTX_new_from_name(lib_, type, "tpmkey.keygen=software");
    ASSERT_TRUE(gen) << drain_errors();
    EVP_PKEY* raw = nullptr;
    ASSERT_EQ(EVP_PKEY_keygen_init(gen), 1);
    if (ec) ASSERT_EQ(EVP_PKEY_CTX_set_group_name(gen, "P-256"), 1);
    else ASSERT_EQ(EVP_PKEY_CTX_set_rsa_keygen_bits(gen, 2048), 1);
    ASSERT_EQ(EVP_PKEY_generate(gen, &raw), 1) << drain_errors();
    EVP_PKEY_CTX_free(gen);
    PkeyPtr soft(raw, EVP_PKEY_free);
    EXPECT_NE(std::string(EVP_PKEY_get0_description(soft.get())).find("TPM or software"), std::string::npos);
    // Signs in software, verifies in the default provider alone and in this library context.
    auto sig = digest_sign(lib_, soft.get(), "software key", {});
    ASSERT_FALSE(sig.empty()) << drain_errors();
    PkeyPtr pub = public_copy(soft.get());
    ASSERT_TRUE(pub);
    EXPECT_TRUE(digest_verify(pub.get(), "software key", sig, {}));
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    EXPECT_EQ(EVP_DigestVerifyInit_ex(md, nullptr, "SHA256", lib_, nullptr, soft.get(), nullptr), 1);
    EXPECT_EQ(EVP_DigestVerify(md, sig.data(), sig.size(), reinterpret_cast<const unsigned char*>("software key"), 12), 1);
    EVP_MD_CTX_free(md);
    // The private key exports (it is an ordinary software key) and writes as PKCS#8.
    OSSL_PARAM* params = nullptr;
    EXPECT_EQ(EVP_PKEY_todata(soft.get(), EVP_PKEY_KEYPAIR, &params), 1);
    EXPECT_TRUE(OSSL_PARAM_locate(params, ec ? OSSL_PKEY_PARAM_PRIV_KEY : OSSL_PKEY_PARAM_RSA_D));
    OSSL_PARAM_free(params);
    BIO* pem = BIO_new(BIO_s_mem());
    EXPECT_EQ(PEM_write_bio_PrivateKey(pem, soft.get(), nullptr, nullptr, 0, nullptr, nullptr), 1) << drain_errors();
    char* text = nullptr;
    long n = BIO_get_mem_data(pem, &text);
    EXPECT_EQ(std::string(text, size_t(n)).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
    BIO_free(pem);
    if (ec) {
      // A peer's public key imported as data into tpmkey's keymgmt: ECDH with it is the default
      // provider's, and agrees with the peer's own derivation.
      EVP_PKEY* peer_raw = EVP_PKEY_Q_keygen(default_only(), nullptr, "EC", "P-256");
      ASSERT_TRUE(peer_raw);
      PkeyPtr peer(peer_raw, EVP_PKEY_free);
      OSSL_PARAM* pub_params = nullptr;
      ASSERT_EQ(EVP_PKEY_todata(peer.get(), EVP_PKEY_PUBLIC_KEY, &pub_params), 1);
      EVP_PKEY_CTX* fd = EVP_PKEY_CTX_new_from_name(lib_, "EC", "provider=tpmkey");
      EVP_PKEY* imported_raw = nullptr;
      ASSERT_TRUE(fd && EVP_PKEY_fromdata_init(fd) == 1 &&
                  EVP_PKEY_fromdata(fd, &imported_raw, EVP_PKEY_PUBLIC_KEY, pub_params) == 1)
          << drain_errors();
      EVP_PKEY_CTX_free(fd);
      OSSL_PARAM_free(pub_params);
      PkeyPtr imported(imported_raw, EVP_PKEY_free);
      EXPECT_NE(std::string(EVP_PKEY_get0_description(imported.get())).find("TPM or software"), std::string::npos);
      auto ours = derive(lib_, soft.get(), imported.get());
      PkeyPtr soft_pub = public_copy(soft.get());
      auto theirs = derive(default_only(), peer.get(), soft_pub.get());
      EXPECT_FALSE(ours.empty()) << drain_errors();
      EXPECT_EQ(ours, theirs);
      // A public-only key is not a private key: it cannot sign.
      EXPECT_TRUE(digest_sign(lib_, imported.get(), "x", {}).empty());
      ERR_clear_error();
    }
  }
  // Generation without a property query, as libssl makes its ephemeral keys, in either order.
  EVP_PKEY* q = EVP_PKEY_Q_keygen(lib_, nullptr, "EC", "P-256");
  ASSERT_TRUE(q) << drain_errors();
  EVP_PKEY_free(q);
  EXPECT_EQ(tpm_commands(lib_), 0u);
}

// Verification with a TPM key's public half works in the provider's library context, in software;
// SHA-1 signatures are refused unless asked for; RSA PKCS#1 v1.5 without a digest is refused.
TEST_P(ProviderTest, VerificationSha1AndRawRsa) {
  PkeyPtr ec = generate(kAlgs[0]), rsa = generate(kAlgs[3]);
  ASSERT_TRUE(ec && rsa);
  for (EVP_PKEY* key : {ec.get(), rsa.get()}) {
    auto sig = digest_sign(lib_, key, "verify me", {});
    ASSERT_FALSE(sig.empty()) << drain_errors();
    const uint64_t before = tpm_commands(lib_);
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    EXPECT_EQ(EVP_DigestVerifyInit_ex(md, nullptr, "SHA256", lib_, nullptr, key, nullptr), 1) << drain_errors();
    EXPECT_EQ(EVP_DigestVerify(md, sig.data(), sig.size(), reinterpret_cast<const unsigned char*>("verify me"), 9), 1);
    EXPECT_NE(EVP_DigestVerify(md, sig.data(), sig.size(), reinterpret_cast<const unsigned char*>("verify mE"), 9), 1);
    EVP_MD_CTX_free(md);
    EXPECT_EQ(tpm_commands(lib_), before) << "verification reached the TPM";
    ERR_clear_error();

    EXPECT_TRUE(digest_sign(lib_, key, "old", {.md = "SHA1"}).empty());
    std::string err = drain_errors();
    EXPECT_NE(err.find("SHA-1 signatures are refused"), std::string::npos) << err;
    // Allowed explicitly (tpmkey agent --allow-sha1 does this for ssh-rsa).
    EVP_MD_CTX* md1 = EVP_MD_CTX_new();
    EVP_PKEY_CTX* pctx = nullptr;
    int yes = 1;
    OSSL_PARAM allow[] = {OSSL_PARAM_construct_int(kParamAllowSha1, &yes), OSSL_PARAM_construct_end()};
    size_t len = 0;
    ASSERT_EQ(EVP_DigestSignInit_ex(md1, &pctx, "SHA1", lib_, nullptr, key, allow), 1) << drain_errors();
    unsigned char out[512];
    len = sizeof out;
    EXPECT_EQ(EVP_DigestSign(md1, out, &len, reinterpret_cast<const unsigned char*>("old"), 3), 1) << drain_errors();
    EVP_MD_CTX_free(md1);
  }
  // RSA PKCS#1 v1.5 of a bare input without a digest: the default provider signs it with no
  // DigestInfo, which a TPM signing key cannot do; refused rather than signed differently.
  EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_from_pkey(lib_, rsa.get(), nullptr);
  auto d = sha("SHA256", "m");
  unsigned char out[512];
  size_t outlen = sizeof out;
  ASSERT_TRUE(pctx && EVP_PKEY_sign_init(pctx) == 1);
  EXPECT_NE(EVP_PKEY_sign(pctx, out, &outlen, d.data(), d.size()), 1);
  std::string err = drain_errors();
  EXPECT_NE(err.find("without a digest signs the input as it is"), std::string::npos) << err;
  // With the digest named, it signs what the default provider would.
  ASSERT_EQ(EVP_PKEY_sign_init(pctx), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()), 1);
  outlen = sizeof out;
  EXPECT_EQ(EVP_PKEY_sign(pctx, out, &outlen, d.data(), d.size()), 1) << drain_errors();
  EVP_PKEY_CTX_free(pctx);
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
  EXPECT_NE(err.find("sign(tpm2:pw): TPM2_Sign: authorization failed: the password is not the key's (the TPM counted "
                     "one dictionary-attack failure): tpm:session(1)"),
            std::string::npos)
      << err;
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

// --- parameters: the settable and gettable lists, and how each parameter set parses ---

// One entry of a settable or gettable list: what OpenSSL reads from it (the key, and the data
// type and size that OSSL_PARAM_allocate_from_text uses for `-pkeyopt name:value`).
struct ParamDef {
  std::string key;
  unsigned type = 0;
  size_t size = 0;
  bool operator==(const ParamDef&) const = default;
};
void PrintTo(const ParamDef& d, std::ostream* os) { *os << d.key << " (type " << d.type << ", size " << d.size << ")"; }
std::vector<ParamDef> defs(const OSSL_PARAM* p) {
  std::vector<ParamDef> out;
  for (; p && p->key; ++p) out.push_back({p->key, p->data_type, p->data_size});
  return out;
}

// The tpm2 store's dispatch functions, called as OpenSSL's core calls them (OSSL_STORE has no
// accessor for a loader's settable list).
class StoreDispatch {
 public:
  explicit StoreDispatch(OSSL_LIB_CTX* lib) : prov_(OSSL_PROVIDER_load(lib, "tpmkey")) {
    if (prov_) algs_ = OSSL_PROVIDER_query_operation(prov_, OSSL_OP_STORE, &no_cache_);
    for (const OSSL_DISPATCH* d = algs_ ? algs_->implementation : nullptr; d && d->function_id; ++d) {
      switch (d->function_id) {
        case OSSL_FUNC_STORE_OPEN: open = OSSL_FUNC_store_open(d); break;
        case OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS: settable = OSSL_FUNC_store_settable_ctx_params(d); break;
        case OSSL_FUNC_STORE_SET_CTX_PARAMS: set = OSSL_FUNC_store_set_ctx_params(d); break;
        case OSSL_FUNC_STORE_CLOSE: close = OSSL_FUNC_store_close(d); break;
        default: break;
      }
    }
  }
  ~StoreDispatch() {
    if (algs_) OSSL_PROVIDER_unquery_operation(prov_, OSSL_OP_STORE, algs_);
    if (prov_) OSSL_PROVIDER_unload(prov_);
  }
  StoreDispatch(const StoreDispatch&) = delete;
  StoreDispatch& operator=(const StoreDispatch&) = delete;
  void* provctx() const { return OSSL_PROVIDER_get0_provider_ctx(prov_); }

  OSSL_FUNC_store_open_fn* open = nullptr;
  OSSL_FUNC_store_settable_ctx_params_fn* settable = nullptr;
  OSSL_FUNC_store_set_ctx_params_fn* set = nullptr;
  OSSL_FUNC_store_close_fn* close = nullptr;

 private:
  OSSL_PROVIDER* prov_;
  const OSSL_ALGORITHM* algs_ = nullptr;
  int no_cache_ = 0;
};

TEST_P(ProviderTest, SettableAndGettableLists) {
  constexpr unsigned kUtf8 = OSSL_PARAM_UTF8_STRING, kUtf8Ptr = OSSL_PARAM_UTF8_PTR, kInt = OSSL_PARAM_INTEGER,
                     kUint = OSSL_PARAM_UNSIGNED_INTEGER, kOctets = OSSL_PARAM_OCTET_STRING;
  // tpmkey's own names are spelled out: they are what -pkeyopt and programs use.
  const std::vector<ParamDef> common_gen = {
      {"user-auth", kUtf8, 0}, {"digest", kUtf8, 0}, {"parent", kUint, 4}, {"parent-auth", kUtf8, 0}, {"usage", kUtf8, 0}};
  std::vector<ParamDef> ec_gen = {{OSSL_PKEY_PARAM_GROUP_NAME, kUtf8, 0}, {OSSL_PKEY_PARAM_EC_ENCODING, kUtf8, 0}};
  ec_gen.insert(ec_gen.end(), common_gen.begin(), common_gen.end());
  std::vector<ParamDef> rsa_gen = {{OSSL_PKEY_PARAM_RSA_BITS, kUint, sizeof(size_t)},
                                   {OSSL_PKEY_PARAM_RSA_E, kUint, 0},
                                   {OSSL_PKEY_PARAM_RSA_PRIMES, kUint, sizeof(size_t)}};
  rsa_gen.insert(rsa_gen.end(), common_gen.begin(), common_gen.end());
  const std::vector<ParamDef> key_common = {{OSSL_PKEY_PARAM_BITS, kInt, sizeof(int)},
                                            {OSSL_PKEY_PARAM_SECURITY_BITS, kInt, sizeof(int)},
                                            {OSSL_PKEY_PARAM_MAX_SIZE, kInt, sizeof(int)},
                                            {OSSL_PKEY_PARAM_DEFAULT_DIGEST, kUtf8, 0}};
  std::vector<ParamDef> ec_key = key_common, rsa_key = key_common;
  ec_key.insert(ec_key.end(), {{OSSL_PKEY_PARAM_GROUP_NAME, kUtf8, 0},
                               {OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, kOctets, 0},
                               {OSSL_PKEY_PARAM_PUB_KEY, kOctets, 0},
                               {OSSL_PKEY_PARAM_EC_PUB_X, kUint, 0},
                               {OSSL_PKEY_PARAM_EC_PUB_Y, kUint, 0},
                               {OSSL_PKEY_PARAM_EC_ENCODING, kUtf8, 0},
                               {OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, kUtf8, 0}});
  rsa_key.insert(rsa_key.end(), {{OSSL_PKEY_PARAM_RSA_N, kUint, 0}, {OSSL_PKEY_PARAM_RSA_E, kUint, 0}});
  for (const auto& [name, gen, key] : {std::tuple{"EC", ec_gen, ec_key}, std::tuple{"RSA", rsa_gen, rsa_key}}) {
    SCOPED_TRACE(name);
    EVP_KEYMGMT* km = EVP_KEYMGMT_fetch(lib_, name, "provider=tpmkey");
    ASSERT_TRUE(km) << drain_errors();
    EXPECT_EQ(defs(EVP_KEYMGMT_gen_settable_params(km)), gen);
    EXPECT_EQ(defs(EVP_KEYMGMT_gettable_params(km)), key);
    EVP_KEYMGMT_free(km);
  }

  const std::vector<ParamDef> ecdsa_set = {{OSSL_SIGNATURE_PARAM_DIGEST, kUtf8, 0},
                                           {OSSL_SIGNATURE_PARAM_PROPERTIES, kUtf8, 0},
                                           {kParamAllowSha1, OSSL_PARAM_INTEGER, sizeof(int)}};
  const std::vector<ParamDef> ecdsa_get = {{OSSL_SIGNATURE_PARAM_ALGORITHM_ID, kOctets, 0},
                                           {OSSL_SIGNATURE_PARAM_DIGEST, kUtf8, 0}};
  const std::vector<ParamDef> rsa_only = {{OSSL_SIGNATURE_PARAM_PAD_MODE, kUtf8, 0},
                                          {OSSL_SIGNATURE_PARAM_PSS_SALTLEN, kUtf8, 0},
                                          {OSSL_SIGNATURE_PARAM_MGF1_DIGEST, kUtf8, 0}};
  std::vector<ParamDef> rsa_set = ecdsa_set, rsa_get = ecdsa_get;
  rsa_set.insert(rsa_set.end(), rsa_only.begin(), rsa_only.end());
  rsa_get.insert(rsa_get.end(), rsa_only.begin(), rsa_only.end());
  for (const auto& [name, set, get] : {std::tuple{"ECDSA", ecdsa_set, ecdsa_get}, std::tuple{"RSA", rsa_set, rsa_get}}) {
    SCOPED_TRACE(name);
    EVP_SIGNATURE* sig = EVP_SIGNATURE_fetch(lib_, name, "provider=tpmkey");
    ASSERT_TRUE(sig) << drain_errors();
    EXPECT_EQ(defs(EVP_SIGNATURE_settable_ctx_params(sig)), set);
    EXPECT_EQ(defs(EVP_SIGNATURE_gettable_ctx_params(sig)), get);
    EVP_SIGNATURE_free(sig);
  }

  OSSL_PROVIDER* prov = OSSL_PROVIDER_load(lib_, "tpmkey");
  ASSERT_TRUE(prov);
  EXPECT_EQ(defs(OSSL_PROVIDER_gettable_params(prov)),
            (std::vector<ParamDef>{{OSSL_PROV_PARAM_NAME, kUtf8Ptr, 0},
                                   {OSSL_PROV_PARAM_VERSION, kUtf8Ptr, 0},
                                   {OSSL_PROV_PARAM_BUILDINFO, kUtf8Ptr, 0},
                                   {OSSL_PROV_PARAM_STATUS, kInt, 0},
                                   {"tpmkey-tpm-commands", kUint, 0}}));
  const char* prov_name = nullptr;
  int status = 0;
  uint64_t commands = 99;
  OSSL_PARAM asked[] = {OSSL_PARAM_construct_utf8_ptr(OSSL_PROV_PARAM_NAME, const_cast<char**>(&prov_name), 0),
                        OSSL_PARAM_construct_int(OSSL_PROV_PARAM_STATUS, &status),
                        OSSL_PARAM_construct_uint64("tpmkey-tpm-commands", &commands), OSSL_PARAM_construct_end()};
  EXPECT_EQ(OSSL_PROVIDER_get_params(prov, asked), 1);
  EXPECT_STREQ(prov_name, "tpmkey TPM 2.0 provider");
  EXPECT_EQ(status, 1);
  EXPECT_EQ(commands, 0u);
  OSSL_PROVIDER_unload(prov);

  StoreDispatch tpm2(lib_);
  ASSERT_TRUE(tpm2.settable);
  EXPECT_EQ(defs(tpm2.settable(tpm2.provctx())), (std::vector<ParamDef>{{OSSL_STORE_PARAM_EXPECT, kInt, sizeof(int)}}));
  EXPECT_EQ(tpm_commands(lib_), 0u);
}

// Every parameter set ignores keys it does not know, as OpenSSL's own providers do, and refuses a
// known key of the wrong type with a message.
// Sets one parameter on `ctx`: refused with a message containing `says`, or (nullptr) accepted.
void expect_set_params(EVP_PKEY_CTX* ctx, const OSSL_PARAM& param, const char* says) {
  OSSL_PARAM params[] = {param, OSSL_PARAM_construct_end()};
  EXPECT_EQ(EVP_PKEY_CTX_set_params(ctx, params), says ? 0 : 1);
  std::string err = drain_errors();
  if (says) {
    EXPECT_NE(err.find(says), std::string::npos) << err;
  }
}

TEST_P(ProviderTest, ParametersOfTheWrongTypeAreRefusedClearly) {
  int number = 7;
  char text[] = "text";
  unsigned char bytes[] = {1, 2};
  auto int_param = [&](const char* key) { return OSSL_PARAM_construct_int(key, &number); };
  auto text_param = [&](const char* key) { return OSSL_PARAM_construct_utf8_string(key, text, 0); };
  auto bytes_param = [&](const char* key) { return OSSL_PARAM_construct_octet_string(key, bytes, sizeof bytes); };
  struct Case {
    const char* alg;
    OSSL_PARAM param;
    const char* says;  // nullptr: accepted
  };

  for (const Case& c : std::vector<Case>{
           {"EC", int_param("group"), "group must be a string"},
           {"EC", int_param("user-auth"), "user-auth must be a string"},
           {"EC", int_param("digest"), "digest must be a string"},
           {"EC", text_param("parent"), "parent must be 0x40000001 or a persistent handle 0x81xxxxxx"},
           {"EC", text_param("colour"), nullptr},
           {"EC", text_param("bits"), nullptr},  // an RSA parameter
           {"RSA", text_param("bits"), "bits must be a number"},
           {"RSA", text_param("e"), "e must be a number"},
           {"RSA", int_param("user-auth"), "user-auth must be a string"},
           {"RSA", int_param("group"), nullptr}}) {  // an EC parameter
    SCOPED_TRACE(std::string("keygen ") + c.alg + " " + c.param.key);
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(lib_, c.alg, "provider=tpmkey");
    ASSERT_EQ(EVP_PKEY_keygen_init(ctx), 1) << drain_errors();
    expect_set_params(ctx, c.param, c.says);
    EVP_PKEY_CTX_free(ctx);
  }

  // -pkeyopt name:value: the settable list gives the type the text is converted to.
  EVP_PKEY_CTX* gen = EVP_PKEY_CTX_new_from_name(lib_, "EC", "provider=tpmkey");
  ASSERT_EQ(EVP_PKEY_keygen_init(gen), 1);
  EXPECT_EQ(EVP_PKEY_CTX_ctrl_str(gen, "parent", "0x81000001"), 1) << drain_errors();
  EXPECT_EQ(EVP_PKEY_CTX_ctrl_str(gen, "user-auth", "secret"), 1) << drain_errors();
  EXPECT_EQ(EVP_PKEY_CTX_ctrl_str(gen, "digest", "sha384"), 1) << drain_errors();
  EXPECT_NE(EVP_PKEY_CTX_ctrl_str(gen, "parent", "0x12345678"), 1);
  EXPECT_NE(drain_errors().find("parent must be 0x40000001 or a persistent handle 0x81xxxxxx"), std::string::npos);
  EVP_PKEY_CTX_free(gen);

  PkeyPtr ec = generate(kAlgs[0]), rsa = generate(kAlgs[3]);
  ASSERT_TRUE(ec && rsa) << drain_errors();
  for (const Case& c : std::vector<Case>{
           {"EC", int_param("digest"), "digest must be a name"},
           {"EC", int_param("properties"), nullptr},  // accepted and not used
           {"EC", int_param("pad-mode"), nullptr},    // an RSA parameter
           {"EC", text_param("colour"), nullptr},
           {"RSA", bytes_param("pad-mode"), "bad RSA padding mode"},
           {"RSA", bytes_param("saltlen"), "bad PSS salt length"},
           {"RSA", int_param("mgf1-digest"), "mgf1 digest must be a name"},
           {"RSA", text_param("colour"), nullptr}}) {
    SCOPED_TRACE(std::string("signature ") + c.alg + " " + c.param.key);
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(lib_, std::string(c.alg) == "EC" ? ec.get() : rsa.get(), nullptr);
    ASSERT_EQ(EVP_PKEY_sign_init(ctx), 1) << drain_errors();
    expect_set_params(ctx, c.param, c.says);
    EVP_PKEY_CTX_free(ctx);
  }

  // The store. Its set_ctx_params is called directly: OpenSSL 3.0's OSSL_STORE_open_ex cannot
  // report a refused parameter (it goes on with the loader context it has just closed).
  store(ec.get(), "k");
  StoreDispatch tpm2(lib_);
  ASSERT_TRUE(tpm2.open && tpm2.set && tpm2.close);
  void* sctx = tpm2.open(tpm2.provctx(), "tpm2:k");
  ASSERT_TRUE(sctx) << drain_errors();
  for (const Case& c : std::vector<Case>{{"tpm2", text_param(OSSL_STORE_PARAM_EXPECT), "expect must be a number"},
                                         {"tpm2", text_param("colour"), nullptr},
                                         {"tpm2", int_param(OSSL_STORE_PARAM_EXPECT), nullptr}}) {
    SCOPED_TRACE(std::string("store ") + c.param.key);
    OSSL_PARAM params[] = {c.param, OSSL_PARAM_construct_end()};
    EXPECT_EQ(tpm2.set(sctx, params), c.says ? 0 : 1);
    std::string err = drain_errors();
    if (c.says) {
      EXPECT_NE(err.find(c.says), std::string::npos) << err;
    }
  }
  tpm2.close(sctx);
  // "expect" given to OSSL_STORE_open_ex, as OSSL_STORE_expect would set it.
  int pubkey = OSSL_STORE_INFO_PUBKEY;
  OSSL_PARAM expect_public[] = {OSSL_PARAM_construct_int(OSSL_STORE_PARAM_EXPECT, &pubkey), OSSL_PARAM_construct_end()};
  OSSL_STORE_CTX* s = OSSL_STORE_open_ex("tpm2:k", lib_, nullptr, nullptr, nullptr, expect_public, nullptr, nullptr);
  ASSERT_TRUE(s) << drain_errors();
  OSSL_STORE_INFO* info = OSSL_STORE_load(s);
  ASSERT_TRUE(info) << drain_errors();
  EXPECT_EQ(OSSL_STORE_INFO_get_type(info), OSSL_STORE_INFO_PUBKEY);
  OSSL_STORE_INFO_free(info);
  OSSL_STORE_close(s);
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
  release(lib_);
  lib_ = nullptr;
  pid_t pid = fork();
  if (pid == 0) {
    child_leaks_on_purpose();
    OSSL_LIB_CTX* lib = new_configured_libctx(cnf_);
    lib_ = lib;
    EVP_PKEY* leaked = load("tpm2:held").release();  // never freed, like a careless program
    bool ok = leaked && !digest_sign(lib, leaked, "x", {}).empty() && tpm_commands(lib) > 0;
    std::exit(ok ? 0 : 1);  // runs atexit handlers, not the provider teardown
  }
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  lib_ = track(new_configured_libctx(cnf_));
  // A pin given for a key without a password is ignored, not sent to the TPM.
  PkeyPtr with_pin = load("tpm2:held?pin-value=unused");
  ASSERT_TRUE(with_pin);
  EXPECT_FALSE(digest_sign(lib_, with_pin.get(), "x", {}).empty()) << drain_errors();
  // Nor is a pin-source read for it: one that cannot be read does not matter (docs/uri.md).
  PkeyPtr unread = load("tpm2:held?pin-source=/nonexistent/pin");
  ASSERT_TRUE(unread) << drain_errors();
  EXPECT_FALSE(digest_sign(lib_, unread.get(), "x", {}).empty()) << drain_errors();
}

// --- key files by plain path (decoder) ---

// A pem_password_cb that hands out `password` (nullptr: refuses) and counts its calls.
struct PasswordSource {
  const char* password = nullptr;
  int calls = 0;
  static int cb(char* buf, int size, int, void* arg) {
    auto* self = static_cast<PasswordSource*>(arg);
    ++self->calls;
    if (!self->password) return -1;
    int n = int(std::strlen(self->password));
    if (n > size) return -1;
    std::memcpy(buf, self->password, size_t(n));
    return n;
  }
};

class KeyFileTest : public ProviderTest {
 protected:
  // Writes `key` as a TSS2 key file, PEM (by the encoder) and DER; returns the paths.
  std::pair<std::string, std::string> write_key_files(EVP_PKEY* key, const std::string& name) {
    store(key, name);
    std::string pem = keystore_ + "/" + name + ".pem";
    std::string text = read_file(pem);
    auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(text.data()), text.size());
    EXPECT_TRUE(kf) << kf.error().text();
    Bytes der = keyfile_der(*kf);
    std::string der_path = dir_ + "/" + name + ".der";
    write_file(der_path, std::string(der.begin(), der.end()));
    return {pem, der_path};
  }

  PkeyPtr read_pem(const std::string& path, PasswordSource* pw = nullptr) {
    BIO* b = BIO_new_file(path.c_str(), "r");
    EVP_PKEY* key = b ? PEM_read_bio_PrivateKey_ex(b, nullptr, pw ? &PasswordSource::cb : nullptr, pw, lib_, nullptr)
                      : nullptr;
    BIO_free(b);
    return PkeyPtr(key, EVP_PKEY_free);
  }

  // DER through a decoder context, as d2i_PrivateKey_ex and friends do.
  PkeyPtr decode_der(const std::string& path) {
    std::string der = read_file(path);
    EVP_PKEY* key = nullptr;
    OSSL_DECODER_CTX* dctx =
        OSSL_DECODER_CTX_new_for_pkey(&key, "DER", nullptr, nullptr, EVP_PKEY_KEYPAIR, lib_, nullptr);
    const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
    size_t len = der.size();
    if (dctx) OSSL_DECODER_from_data(dctx, &p, &len);
    OSSL_DECODER_CTX_free(dctx);
    return PkeyPtr(key, EVP_PKEY_free);
  }

  // OSSL_STORE with a password callback (the route `openssl -inkey PATH` takes).
  PkeyPtr store_load(const std::string& uri, PasswordSource* pw) {
    UI_METHOD* ui = UI_UTIL_wrap_read_pem_callback(&PasswordSource::cb, 0);
    OSSL_STORE_CTX* s = OSSL_STORE_open_ex(uri.c_str(), lib_, nullptr, ui, pw, nullptr, nullptr, nullptr);
    EVP_PKEY* key = nullptr;
    if (s) {
      OSSL_STORE_expect(s, OSSL_STORE_INFO_PKEY);
      while (!key && !OSSL_STORE_eof(s)) {
        OSSL_STORE_INFO* info = OSSL_STORE_load(s);
        if (!info) break;
        if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) key = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
      }
      OSSL_STORE_close(s);
    }
    UI_destroy_method(ui);
    return PkeyPtr(key, EVP_PKEY_free);
  }

  // The key came from tpmkey, is the key `pub` is the public half of, signs (hash in software,
  // digest in the TPM), and the default provider alone verifies the signature.
  void expect_tpm_key_signs(EVP_PKEY* key, EVP_PKEY* pub) {
    ASSERT_TRUE(key) << drain_errors();
    EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)), "tpmkey");
    EXPECT_EQ(spki(key), spki(pub));
    SignOpts o{"SHA256", EVP_PKEY_is_a(key, "RSA") ? RSA_PKCS1_PSS_PADDING : 0};
    auto sig = digest_sign(lib_, key, "by path", o);
    ASSERT_FALSE(sig.empty()) << drain_errors();
    EXPECT_TRUE(digest_verify(pub, "by path", sig, o)) << drain_errors();
  }

  static std::string spki(EVP_PKEY* key) {
    unsigned char* der = nullptr;
    int n = i2d_PUBKEY(key, &der);
    std::string out = n > 0 ? std::string(reinterpret_cast<char*>(der), size_t(n)) : "";
    OPENSSL_free(der);
    return out;
  }
};

INSTANTIATE_TEST_SUITE_P(Order, KeyFileTest, ::testing::Bool(), order_name);

TEST_P(KeyFileTest, PemDerAndStoreLoadTheTpmKey) {
  for (const Alg& a : {kAlgs[0], kAlgs[3]}) {
    SCOPED_TRACE(a.name);
    // Generated in another library context, as if by another process.
    PkeyPtr pub(nullptr, EVP_PKEY_free);
    std::string pem, der;
    {
      OSSL_LIB_CTX* gen = new_configured_libctx(cnf_);
      std::swap(gen, lib_);
      PkeyPtr original = generate(a);
      ASSERT_TRUE(original) << drain_errors();
      pub = public_copy(original.get());
      std::tie(pem, der) = write_key_files(original.get(), a.name);
      original.reset();
      std::swap(gen, lib_);
      OSSL_LIB_CTX_free(gen);
    }
    uint64_t before = tpm_commands(lib_);
    PkeyPtr from_pem = read_pem(pem), from_der = decode_der(der), from_store = store_load("file:" + pem, nullptr),
            from_store_der = store_load(der, nullptr);
    EXPECT_EQ(tpm_commands(lib_), before) << "loading a key file must not touch the TPM";
    expect_tpm_key_signs(from_pem.get(), pub.get());
    expect_tpm_key_signs(from_der.get(), pub.get());
    expect_tpm_key_signs(from_store.get(), pub.get());
    expect_tpm_key_signs(from_store_der.get(), pub.get());

    // SubjectPublicKeyInfo PEM, as the default provider reads it back.
    BIO* mem = BIO_new(BIO_s_mem());
    ASSERT_EQ(PEM_write_bio_PUBKEY(mem, from_pem.get()), 1) << drain_errors();
    EVP_PKEY* back = PEM_read_bio_PUBKEY_ex(mem, nullptr, nullptr, nullptr, default_only(), nullptr);
    BIO_free(mem);
    ASSERT_TRUE(back);
    EXPECT_EQ(spki(back), spki(pub.get()));
    EVP_PKEY_free(back);
  }
}

TEST_P(KeyFileTest, SoftwareKeyFilesAreUnaffected) {
  EVP_PKEY* soft = EVP_PKEY_Q_keygen(default_only(), nullptr, "EC", "P-256");
  ASSERT_TRUE(soft);
  PkeyPtr owned(soft, EVP_PKEY_free);
  std::string path = dir_ + "/soft.pem", enc = dir_ + "/soft-enc.pem";
  BIO* b = BIO_new_file(path.c_str(), "w");
  ASSERT_EQ(PEM_write_bio_PrivateKey(b, soft, nullptr, nullptr, 0, nullptr, nullptr), 1);
  BIO_free(b);
  b = BIO_new_file(enc.c_str(), "w");
  ASSERT_EQ(PEM_write_bio_PrivateKey(b, soft, EVP_aes_256_cbc(), nullptr, 0, nullptr, const_cast<char*>("soft pw")), 1);
  BIO_free(b);
  PasswordSource pw{"soft pw"};
  std::vector<PkeyPtr> keys;
  keys.push_back(read_pem(path));
  keys.push_back(read_pem(enc, &pw));
  keys.push_back(store_load(path, nullptr));
  keys.push_back(store_load(enc, &pw));
  for (const PkeyPtr& k : keys) {
    ASSERT_TRUE(k) << drain_errors();
    EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(k.get())), "default");
    EXPECT_FALSE(digest_sign(lib_, k.get(), "soft", {}).empty());
  }
  EXPECT_EQ(tpm_commands(lib_), 0u);
}

TEST_P(KeyFileTest, PasswordComesFromTheCallback) {
  // Both generated first: TPM2_Create needs a free object slot (see the report on tpm.cc).
  PkeyPtr original = generate(kAlgs[0], "file pw"), plain = generate(kAlgs[0]);
  ASSERT_TRUE(original && plain) << drain_errors();
  auto [pem, der] = write_key_files(original.get(), "pw");

  PkeyPtr pub = public_copy(original.get());
  PasswordSource right{"file pw"};
  PkeyPtr key = read_pem(pem, &right);
  EXPECT_EQ(right.calls, 1);
  expect_tpm_key_signs(key.get(), pub.get());
  PasswordSource right_store{"file pw"};
  PkeyPtr stored = store_load(der, &right_store);
  EXPECT_EQ(right_store.calls, 1);
  expect_tpm_key_signs(stored.get(), pub.get());

  // A wrong password reaches the TPM, fails there, and never appears in the message.
  PasswordSource wrong{"not-the-pw"};
  PkeyPtr bad = read_pem(pem, &wrong);
  ASSERT_TRUE(bad) << drain_errors();
  EXPECT_TRUE(digest_sign(lib_, bad.get(), "x", {}).empty());
  std::string err = drain_errors();
  EXPECT_NE(err.find("sign(TSS2 key file): TPM2_Sign: authorization failed"), std::string::npos) << err;
  EXPECT_EQ(err.find("not-the-pw"), std::string::npos) << "the password leaked: " << err;

  // No password to be had: the public half still loads, signing says what is missing.
  PasswordSource none{nullptr};
  PkeyPtr no_pw = read_pem(pem, &none);
  ASSERT_TRUE(no_pw) << drain_errors();
  EXPECT_EQ(spki(no_pw.get()), spki(pub.get()));
  EXPECT_TRUE(digest_sign(lib_, no_pw.get(), "x", {}).empty());
  err = drain_errors();
  EXPECT_NE(err.find("sign(TSS2 key file): authorization failed: the key needs a password and none was given"),
            std::string::npos)
      << err;

  // A key without a password never asks.
  auto [plain_pem, plain_der] = write_key_files(plain.get(), "plain");
  PasswordSource unused{"x"};
  EXPECT_TRUE(read_pem(plain_pem, &unused));
  EXPECT_EQ(unused.calls, 0);
}

TEST_P(KeyFileTest, DamagedFilesFailWithTheReason) {
  PkeyPtr original = generate(kAlgs[0]);
  ASSERT_TRUE(original);
  auto [pem, der_path] = write_key_files(original.get(), "k");
  uint64_t commands = tpm_commands(lib_);
  std::string der = read_file(der_path), text = read_file(pem);
  auto pem_of = [](const std::string& d) {
    BIO* b = BIO_new(BIO_s_mem());
    PEM_write_bio(b, "TSS2 PRIVATE KEY", "", reinterpret_cast<const unsigned char*>(d.data()), long(d.size()));
    char* p = nullptr;
    long n = BIO_get_mem_data(b, &p);
    std::string out(p, size_t(n));
    BIO_free(b);
    return out;
  };
  std::string sealed = der;
  sealed[der.find(std::string("\x67\x81\x05\x0a\x01\x03", 6)) + 5] = 0x05;  // the sealedData OID
  struct Case {
    std::string name, contents, says;
  };
  for (const Case& c : std::vector<Case>{
           {"trunc.der", der.substr(0, der.size() / 2), "malformed or unusable key file: truncated TSS2 PRIVATE KEY"},
           {"trunc.pem", pem_of(der.substr(0, 40)), "malformed or unusable key file: truncated TSS2 PRIVATE KEY"},
           {"cut.pem", text.substr(0, text.size() / 2), "unreadable PEM (truncated or damaged)"},
           {"trailing.der", der + "xx", "data after the TSS2 PRIVATE KEY structure"},
           {"sealed.pem", pem_of(sealed), "the file holds sealed data, not a key"},
           {"empty-seq.pem", pem_of(std::string("\x30\x03\x02\x01\x00", 5)), ""}}) {
    SCOPED_TRACE(c.name);
    std::string path = dir_ + "/" + c.name;
    write_file(path, c.contents);
    for (bool via_store : {false, true}) {
      SCOPED_TRACE(via_store ? "OSSL_STORE" : "PEM_read / decoder");
      PkeyPtr k = via_store ? store_load(path, nullptr)
                            : (c.name.ends_with(".der") ? decode_der(path) : read_pem(path));
      EXPECT_FALSE(k);
      std::string err = drain_errors();
      if (!c.says.empty()) {
        EXPECT_NE(err.find("open(TSS2 key file): "), std::string::npos) << err;
        EXPECT_NE(err.find(c.says), std::string::npos) << err;
      }
    }
  }
  // Every truncation of the DER, through both routes: no crash, no key, no TPM command.
  for (size_t n = 0; n < der.size(); n += 7) {
    write_file(dir_ + "/t.der", der.substr(0, n));
    EXPECT_FALSE(decode_der(dir_ + "/t.der")) << n;
    EXPECT_FALSE(store_load(dir_ + "/t.der", nullptr)) << n;
    ERR_clear_error();
  }
  EXPECT_EQ(tpm_commands(lib_), commands) << "damaged files must not reach the TPM";
}

TEST_P(KeyFileTest, TextShowsPublicPartsParentAndPassword) {
  auto print = [](EVP_PKEY* k, bool priv) {
    BIO* b = BIO_new(BIO_s_mem());
    int ok = priv ? EVP_PKEY_print_private(b, k, 0, nullptr) : EVP_PKEY_print_public(b, k, 0, nullptr);
    char* p = nullptr;
    long n = BIO_get_mem_data(b, &p);
    std::string out = ok == 1 ? std::string(p, size_t(n)) : "print failed: " + drain_errors();
    BIO_free(b);
    return out;
  };
  auto body = [](const std::string& text) { return text.substr(text.find('\n') + 1); };

  PkeyPtr ec = generate(kAlgs[0], "text pw"), rsa = generate(kAlgs[3]);
  ASSERT_TRUE(ec && rsa);
  uint64_t commands = tpm_commands(lib_);
  std::string t = print(ec.get(), true);
  EXPECT_EQ(t.rfind("Private-Key: (256 bit, in the TPM)\npub:\n    04:", 0), 0u) << t;
  std::string pub_text = print(public_copy(ec.get()).get(), false);
  EXPECT_NE(t.find(body(pub_text)), std::string::npos) << t << "\nvs\n" << pub_text;  // the same public parts
  EXPECT_NE(t.find("ASN1 OID: prime256v1\nNIST CURVE: P-256\n"), std::string::npos) << t;
  EXPECT_NE(t.find("TPM algorithm: ec-p256\n"), std::string::npos) << t;
  EXPECT_NE(t.find("TPM parent: 0x40000001 (owner hierarchy"), std::string::npos) << t;
  EXPECT_NE(t.find("TPM password: needed\n"), std::string::npos) << t;
  EXPECT_EQ(t.find("priv:"), std::string::npos) << t;
  EXPECT_EQ(t.find("text pw"), std::string::npos) << t;
  std::string tp = print(ec.get(), false);
  EXPECT_EQ(tp.rfind("Public-Key: (256 bit)\npub:\n", 0), 0u) << tp;

  t = print(rsa.get(), true);
  EXPECT_EQ(t.rfind("Private-Key: (2048 bit, in the TPM)\nModulus:\n    00:", 0), 0u) << t;
  EXPECT_NE(t.find("Exponent: 65537 (0x10001)\nTPM algorithm: rsa2048\n"), std::string::npos) << t;
  EXPECT_NE(t.find("TPM password: not needed\n"), std::string::npos) << t;
  for (const char* secret : {"privateExponent", "prime1", "coefficient"}) EXPECT_EQ(t.find(secret), std::string::npos);

  // A description from the file is printed, with control characters escaped.
  store(rsa.get(), "described");
  std::string path = keystore_ + "/described.pem", text = read_file(path);
  auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  ASSERT_TRUE(kf);
  kf->description = "build box \x1b[31mred\\";
  write_file(path, keyfile_pem(*kf));
  PkeyPtr described = read_pem(path);
  ASSERT_TRUE(described) << drain_errors();
  t = print(described.get(), true);
  EXPECT_NE(t.find("Description: build box \\x1b[31mred\\x5c\n"), std::string::npos) << t;
  EXPECT_EQ(tpm_commands(lib_), commands) << "printing must not touch the TPM";
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
