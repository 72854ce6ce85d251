// Decryption and key agreement with TPM keys (docs/keys.md, "Decryption" and "Key agreement"):
// the real openssl decrypting with `pkeyutl`, `cms` and `smime` what plain openssl encrypted (both
// provider orders), implicit rejection of bad PKCS#1 v1.5 padding (a synthetic result after the
// same TPM commands), key usages refused before the TPM, tpm2-openssl's keys, and ECDH through
// the keystore API compared with OpenSSL's own ECDH from the peer's side.
#include <gtest/gtest.h>

#include <filesystem>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "keystore/config.h"
#include "keystore/context.h"
#include "keystore/key.h"
#include "keystore/uri.h"
#include "test/bus_proxy.h"
#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

constexpr const char* kPassword = "decrypt secret";

class DecryptTest : public TpmTest {
 protected:
  DecryptTest() : TpmTest("tpmkey-decrypt-test") {}
  // RSA key generation is the slow part: the keys are made once for the binary.
  static void SetUpTestSuite() {
    const std::string tcti = shared_swtpm().tcti();
    suite_dir_ = make_temp_dir("tpmkey-decrypt-keys");
    suite_keystore_ = suite_dir_ + "/keystore";
    write_file(suite_dir_ + "/pw", std::string(kPassword) + "\n");
    struct Spec {
      const char *name, *usage;
      bool password;
    };
    for (const Spec& k : {Spec{"dec", "decrypt", false}, Spec{"both", "sign,decrypt", false},
                          Spec{"signer", "sign", false}, Spec{"pwdec", "decrypt", true}}) {
      std::vector<std::string> a = {tpmkey_bin(), "--tcti", tcti, "--keystore", suite_keystore_, "create", k.name,
                                    "--algorithm", "rsa2048", "--usage", k.usage};
      a.push_back(k.password ? "--password-file" : "--no-password");
      if (k.password) a.push_back(suite_dir_ + "/pw");
      ASSERT_OK(run(a, {"TSS2_LOG=all+none"}));
    }
  }
  static void TearDownTestSuite() { remove_tree(suite_dir_); }

  void SetUp() override {
    TpmTest::SetUp();
    keystore_ = suite_keystore_;
    std::filesystem::create_directories(dir_);
    env_ = {"TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_, "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none"};
    write_file(path("msg"), "a secret message\nfor the TPM key\n");
    write_file(path("dec.pub"), tpmkey({"pubkey", "dec"}).out);
  }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // openssl with both providers on the command line, in the given order.
  CommandResult openssl(const std::string& cmd, std::vector<std::string> args, bool tpmkey_first = true,
                        std::vector<std::string> env = {}) {
    std::vector<std::string> a = {"openssl", cmd, "-provider-path", provider_dir()};
    for (const char* p : tpmkey_first ? std::vector<const char*>{"tpmkey", "default"}
                                      : std::vector<const char*>{"default", "tpmkey"})
      a.insert(a.end(), {"-provider", p});
    a.insert(a.end(), args.begin(), args.end());
    if (env.empty()) env = env_;
    return run(a, env);
  }
  // openssl with the default provider alone: what encrypts and checks.
  CommandResult plain(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    return run(args, env_);
  }
  static std::vector<std::string> pkeyopts(const std::vector<std::string>& opts) {
    std::vector<std::string> out;
    for (const auto& o : opts) out.insert(out.end(), {"-pkeyopt", o});
    return out;
  }

  static std::string suite_dir_, suite_keystore_;
  std::vector<std::string> env_;
};

std::string DecryptTest::suite_dir_, DecryptTest::suite_keystore_;

// EVP_PKEY_decrypt with `key` (a TPM key in its library context); nullopt when it fails.
std::optional<std::string> evp_decrypt(EVP_PKEY* key, const std::string& ct, const std::vector<OSSL_PARAM>& params = {}) {
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr),
                                                                 EVP_PKEY_CTX_free);
  std::vector<OSSL_PARAM> p = params;
  p.push_back(OSSL_PARAM_construct_end());
  size_t len = 0;
  const auto* in = reinterpret_cast<const unsigned char*>(ct.data());
  if (!ctx || EVP_PKEY_decrypt_init_ex(ctx.get(), p.data()) <= 0 ||
      EVP_PKEY_decrypt(ctx.get(), nullptr, &len, in, ct.size()) <= 0)
    return std::nullopt;
  std::string out(len, '\0');
  if (EVP_PKEY_decrypt(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len, in, ct.size()) <= 0)
    return std::nullopt;
  out.resize(len);
  return out;
}

// PKCS#1 v1.5 encryption to `pub` by the default provider alone.
std::string encrypt_pkcs1(EVP_PKEY* tpm_key, const std::string& msg) {
  PkeyPtr pub = public_copy(tpm_key);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new_from_pkey(default_only(), pub.get(), nullptr), EVP_PKEY_CTX_free);
  size_t len = 0;
  const auto* in = reinterpret_cast<const unsigned char*>(msg.data());
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) <= 0 || EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) <= 0 ||
      EVP_PKEY_encrypt(ctx.get(), nullptr, &len, in, msg.size()) <= 0)
    return {};
  std::string out(len, '\0');
  if (EVP_PKEY_encrypt(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len, in, msg.size()) <= 0) return {};
  out.resize(len);
  return out;
}

// `openssl pkeyutl -decrypt` with the TPM key of what plain openssl encrypted to its public key:
// PKCS#1 v1.5, OAEP with SHA-1, SHA-256 and SHA-512, with and without a label (a label the TPM
// takes, NUL-terminated, and one it does not), and raw RSA; in both provider orders.
TEST_F(DecryptTest, PkeyutlDecryptsWhatOpensslEncrypted) {
  struct Variant {
    const char* name;
    std::vector<std::string> opts;
  };
  const std::vector<Variant> variants = {
      {"pkcs1", {}},
      {"pkcs1 named", {"rsa_padding_mode:pkcs1"}},
      {"oaep sha1", {"rsa_padding_mode:oaep"}},
      {"oaep sha256", {"rsa_padding_mode:oaep", "rsa_oaep_md:sha256", "rsa_mgf1_md:sha256"}},
      {"oaep sha512", {"rsa_padding_mode:oaep", "rsa_oaep_md:sha512", "rsa_mgf1_md:sha512"}},
      {"oaep sha256 label", {"rsa_padding_mode:oaep", "rsa_oaep_md:sha256", "oaep-label:a label"}},
      {"oaep sha1 NUL-terminated label", {"rsa_padding_mode:oaep", "rsa_oaep_label:6c6162656c00"}},
  };
  for (const auto& v : variants) {
    SCOPED_TRACE(v.name);
    std::vector<std::string> enc = {"pkeyutl", "-encrypt", "-pubin", "-inkey", path("dec.pub"), "-in", path("msg"),
                                    "-out", path("ct")};
    for (const auto& o : pkeyopts(v.opts)) enc.push_back(o);
    ASSERT_OK(plain(enc));
    for (bool first : {true, false}) {
      SCOPED_TRACE(first ? "tpmkey first" : "default first");
      std::filesystem::remove(path("pt"));
      std::vector<std::string> dec = {"-decrypt", "-inkey", "tpm2:dec", "-in", path("ct"), "-out", path("pt")};
      for (const auto& o : pkeyopts(v.opts)) dec.push_back(o);
      EXPECT_OK(openssl("pkeyutl", dec, first));
      EXPECT_EQ(read_file(path("pt")), read_file(path("msg")));
    }
  }
  // The wrong OAEP label: decryption fails (OAEP has no implicit rejection).
  ASSERT_OK(plain({"pkeyutl", "-encrypt", "-pubin", "-inkey", path("dec.pub"), "-in", path("msg"), "-out", path("ct"),
                   "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "oaep-label:right"}));
  EXPECT_FALSE(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:dec", "-in", path("ct"), "-out", path("pt"), "-pkeyopt",
                                   "rsa_padding_mode:oaep", "-pkeyopt", "oaep-label:wrong"})
                   .exit_code == 0);
  // MGF1 with another digest than OAEP's: the TPM cannot, and says so.
  ASSERT_OK(plain({"pkeyutl", "-encrypt", "-pubin", "-inkey", path("dec.pub"), "-in", path("msg"), "-out", path("ct"),
                   "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt",
                   "rsa_mgf1_md:sha1"}));
  EXPECT_FAILS_WITH(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:dec", "-in", path("ct"), "-out", path("pt"),
                                        "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
                                        "-pkeyopt", "rsa_mgf1_md:sha1"}),
                    "the TPM uses the OAEP digest for MGF1 too");

  // Raw RSA: a modulus-size block (its first byte zero, so it is below the modulus).
  std::string block(256, 'r');
  block[0] = '\0';
  write_file(path("block"), block);
  ASSERT_OK(plain({"pkeyutl", "-encrypt", "-pubin", "-inkey", path("dec.pub"), "-in", path("block"), "-out",
                   path("ct"), "-pkeyopt", "rsa_padding_mode:none"}));
  EXPECT_OK(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:dec", "-in", path("ct"), "-out", path("pt"), "-pkeyopt",
                                "rsa_padding_mode:none"}));
  EXPECT_EQ(read_file(path("pt")), block);

  // Encryption with the TPM key as the key: done in software with its public half, and the TPM
  // decrypts it.
  for (const char* pad : {"pkcs1", "oaep"}) {
    SCOPED_TRACE(pad);
    EXPECT_OK(openssl("pkeyutl", {"-encrypt", "-inkey", "tpm2:dec", "-in", path("msg"), "-out", path("ct"), "-pkeyopt",
                                  std::string("rsa_padding_mode:") + pad}));
    EXPECT_OK(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:dec", "-in", path("ct"), "-out", path("pt"), "-pkeyopt",
                                  std::string("rsa_padding_mode:") + pad}));
    EXPECT_EQ(read_file(path("pt")), read_file(path("msg")));
  }
}

// A password key decrypts with its PIN (authorized by the session HMAC); without it, or with the
// wrong one, it does not.
TEST_F(DecryptTest, PasswordKeyDecrypts) {
  write_file(path("pw.pub"), tpmkey({"pubkey", "pwdec"}).out);
  ASSERT_OK(plain({"pkeyutl", "-encrypt", "-pubin", "-inkey", path("pw.pub"), "-in", path("msg"), "-out", path("ct")}));
  EXPECT_OK(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:pwdec?pin-value=decrypt%20secret", "-in", path("ct"),
                                "-out", path("pt")}));
  EXPECT_EQ(read_file(path("pt")), read_file(path("msg")));
  EXPECT_FAILS_WITH(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:pwdec?pin-value=wrong", "-in", path("ct"), "-out",
                                        path("pt")}),
                    "authorization failed");
}

// openssl cms and smime decrypt envelopes that plain openssl made for a certificate of the TPM key
// (a sign,decrypt key signs its own certificate): RSA PKCS#1 v1.5 and RSA-OAEP key transport.
TEST_F(DecryptTest, CmsAndSmimeEnvelopes) {
  const std::string cert = path("both.crt");
  ASSERT_OK(openssl("req", {"-new", "-x509", "-key", "tpm2:both", "-subj", "/CN=decrypting key", "-days", "1", "-out",
                            cert}));
  ASSERT_OK(plain({"verify", "-CAfile", cert, cert}));
  struct Envelope {
    const char* name;
    std::vector<std::string> keyopts;
  };
  for (const Envelope& e : {Envelope{"pkcs1", {}},
                            Envelope{"oaep", {"-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
                                              "-keyopt", "rsa_mgf1_md:sha256"}}}) {
    SCOPED_TRACE(e.name);
    std::vector<std::string> enc = {"cms", "-encrypt", "-binary", "-aes256", "-in", path("msg"), "-out", path("env.pem"),
                                    "-outform", "PEM", "-recip", cert};
    enc.insert(enc.end(), e.keyopts.begin(), e.keyopts.end());
    ASSERT_OK(plain(enc));
    for (bool first : {true, false}) {
      SCOPED_TRACE(first ? "tpmkey first" : "default first");
      std::filesystem::remove(path("out"));
      EXPECT_OK(openssl("cms", {"-decrypt", "-binary", "-in", path("env.pem"), "-inform", "PEM", "-inkey", "tpm2:both",
                                "-recip", cert, "-out", path("out")},
                        first));
      EXPECT_EQ(read_file(path("out")), read_file(path("msg")));
    }
  }
  ASSERT_OK(plain({"smime", "-encrypt", "-binary", "-aes256", "-in", path("msg"), "-out", path("smime.txt"), cert}));
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    std::filesystem::remove(path("out"));
    EXPECT_OK(openssl("smime", {"-decrypt", "-binary", "-in", path("smime.txt"), "-inkey", "tpm2:both", "-recip", cert,
                                "-out", path("out")},
                      first));
    EXPECT_EQ(read_file(path("out")), read_file(path("msg")));
  }
}

// Implicit rejection: a tampered PKCS#1 v1.5 ciphertext decrypts to a synthetic message, the same
// one each time (and in another library context: it depends only on the key and the ciphertext),
// after as many TPM commands as a valid one. With implicit rejection turned off, it is an error.
TEST_F(DecryptTest, TamperedPkcs1GetsASyntheticMessageAfterTheSameTpmCommands) {
  const std::string msg = "the real message";
  std::string valid, tampered, synthetic;
  std::vector<uint32_t> first_use;
  BusProxy bus(shared_swtpm().port());
  const std::vector<uint32_t> one = {TPM2_CC_RSA_Decrypt};
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    for (bool tampered_first : {false, true}) {
      SCOPED_TRACE(tampered_first ? "tampered first" : "valid first");
      OSSL_LIB_CTX* l = lib(bus.tcti(), "", first);
      PkeyPtr key = load_key(l, "tpm2:dec");
      ASSERT_TRUE(key) << drain_errors();
      if (valid.empty()) {
        valid = encrypt_pkcs1(key.get(), msg);
        ASSERT_EQ(valid.size(), 256u);
        tampered = valid;
        tampered[100] ^= 0x20;
      }
      // The first decryption with a key costs more (loading, the key's implicit-rejection secret);
      // whichever ciphertext comes first, the commands are the same. Then one TPM2_RSA_Decrypt each.
      bus.clear();
      auto a = evp_decrypt(key.get(), tampered_first ? tampered : valid);
      const std::vector<uint32_t> c1 = bus.take_commands_without_proofs();
      auto b = evp_decrypt(key.get(), tampered_first ? valid : tampered);
      const std::vector<uint32_t> c2 = bus.take_commands_without_proofs();
      auto again = evp_decrypt(key.get(), tampered);
      const std::vector<uint32_t> c3 = bus.take_commands_without_proofs();
      ASSERT_TRUE(a && b && again) << drain_errors();
      const std::string& got_valid = tampered_first ? *b : *a;
      const std::string& got_tampered = tampered_first ? *a : *b;
      EXPECT_EQ(got_valid, msg);
      EXPECT_NE(got_tampered, msg);
      EXPECT_LE(got_tampered.size(), 256u - 11);
      EXPECT_EQ(*again, got_tampered);
      if (synthetic.empty()) synthetic = got_tampered;
      EXPECT_EQ(got_tampered, synthetic) << "the synthetic message must depend only on the key and the ciphertext";
      // With a transient SRK: unsalted StartAuthSession, CreatePrimary, FlushContext, salted
      // StartAuthSession, GetCapability, Load, RSA_Decrypt (the secret), the SRK's ContextSave and
      // FlushContext, RSA_Decrypt.
      if (first_use.empty()) first_use = c1;
      EXPECT_EQ(c1, first_use);
      EXPECT_EQ(c1.size(), 10u);
      EXPECT_EQ(std::count(c1.begin(), c1.end(), TPM2_CC_RSA_Decrypt), 2);
      EXPECT_EQ(c2, one);
      EXPECT_EQ(c3, one);

      // Implicit rejection off (as OpenSSL allows): the TPM unpads, and bad padding is an error.
      unsigned off = 0;
      std::vector<OSSL_PARAM> no_ir = {OSSL_PARAM_construct_uint("implicit-rejection", &off)};
      auto v = evp_decrypt(key.get(), valid, no_ir);
      ASSERT_TRUE(v) << drain_errors();
      EXPECT_EQ(*v, msg);
      EXPECT_FALSE(evp_decrypt(key.get(), tampered, no_ir));
      const std::string err = drain_errors();
      EXPECT_TRUE(contains(err, "decryption failed: the TPM rejected the ciphertext")) << err;
      key.reset();
      release(l);
    }
  }
  // The same through the openssl command, on the bus: the same commands for both ciphertexts, and
  // neither the message nor the synthetic one crosses the bus in clear.
  write_file(path("valid"), valid);
  write_file(path("tampered"), tampered);
  std::vector<std::string> env = env_;
  env[0] = "TPMKEY_TCTI=" + bus.tcti();
  std::vector<std::vector<uint32_t>> codes;
  std::vector<std::string> outs;
  for (const char* in : {"valid", "tampered"}) {
    bus.clear();
    std::filesystem::remove(path("pt"));
    EXPECT_OK(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:dec", "-in", path(in), "-out", path("pt")}, true, env));
    outs.push_back(read_file(path("pt")));
    EXPECT_FALSE(bus.crossed(outs.back())) << in << ": the plaintext crossed the bus in clear";
    codes.push_back(bus.take_commands_without_proofs());
  }
  EXPECT_EQ(outs[0], msg);
  EXPECT_EQ(outs[1], synthetic);
  EXPECT_EQ(codes[0], codes[1]);
  EXPECT_EQ(std::count(codes[0].begin(), codes[0].end(), TPM2_CC_RSA_Decrypt), 2);
}

// Raw RSA encryption (no padding) of a crafted block `em` to the key's public half, by the default
// provider alone: how the tests make exactly the padding they want.
std::string encrypt_raw(EVP_PKEY* tpm_key, const std::string& em) {
  PkeyPtr pub = public_copy(tpm_key);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new_from_pkey(default_only(), pub.get(), nullptr), EVP_PKEY_CTX_free);
  std::string out(em.size(), '\0');
  size_t len = out.size();
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) <= 0 || EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_NO_PADDING) <= 0 ||
      EVP_PKEY_encrypt(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len,
                       reinterpret_cast<const unsigned char*>(em.data()), em.size()) <= 0)
    return {};
  return out;
}

// The constant-time unpadding at its boundaries: every message length a 2048-bit key allows
// comes back whole, and each kind of bad padding (wrong first bytes, 7 padding bytes, no
// separator) gets a synthetic message, never an error.
TEST_F(DecryptTest, Pkcs1PaddingBoundaries) {
  BusProxy bus(shared_swtpm().port());
  OSSL_LIB_CTX* l = lib(bus.tcti());
  PkeyPtr key = load_key(l, "tpm2:dec");
  ASSERT_TRUE(key) << drain_errors();
  for (size_t len : {0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64, 100, 127, 128, 129, 200, 244, 245}) {
    SCOPED_TRACE(len);
    std::string m;
    for (size_t i = 0; i < len; ++i) m += char('a' + i % 26);
    auto out = evp_decrypt(key.get(), encrypt_pkcs1(key.get(), m));
    ASSERT_TRUE(out) << drain_errors();
    EXPECT_EQ(*out, m);
  }
  // Crafted blocks: 00 02, padding PS (non-zero), 00, message.
  auto block = [](char b0, char b1, size_t ps, bool separator, const std::string& msg) {
    std::string em;
    em += b0;
    em += b1;
    em += std::string(ps, '\x55');
    if (separator) em += '\0';
    em += msg;
    em.insert(em.size() - msg.size(), std::string(256 - em.size(), '\x66'));  // more padding
    return em;
  };
  const std::string msg = "boundary message";
  struct Case {
    const char* name;
    std::string em;
    bool valid;
  };
  const std::vector<Case> cases = {
      {"valid, 8 padding bytes", std::string("\0\2", 2) + std::string(8, '\x55') + std::string(1, '\0') +
                                     std::string(256 - 11 - 235, 'x') + std::string(235 - msg.size(), 'y') + msg,
       true},
      {"valid, empty message", std::string("\0\2", 2) + std::string(253, '\x55') + std::string(1, '\0'), true},
      {"7 padding bytes", std::string("\0\2", 2) + std::string(7, '\x55') + std::string(1, '\0') +
                              std::string(256 - 10, 'z'),
       false},
      {"first byte 01", block('\1', '\2', 8, true, msg), false},
      {"block type 01", block('\0', '\1', 8, true, msg), false},
      {"no separator", std::string("\0\2", 2) + std::string(254, '\x55'), false},
  };
  std::vector<std::string> cts;
  for (const Case& c : cases) {
    ASSERT_EQ(c.em.size(), 256u) << c.name;
    cts.push_back(encrypt_raw(key.get(), c.em));
    ASSERT_EQ(cts.back().size(), 256u) << drain_errors();
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string& ct = cts[i];
    SCOPED_TRACE(c.name);
    bus.clear();
    auto out = evp_decrypt(key.get(), ct);
    ASSERT_TRUE(out) << drain_errors();
    EXPECT_EQ(bus.take_commands_without_proofs(), std::vector<uint32_t>{TPM2_CC_RSA_Decrypt});
    if (c.valid) {
      const size_t sep = c.em.find('\0', 2);
      EXPECT_EQ(*out, c.em.substr(sep + 1));
    } else {
      EXPECT_LE(out->size(), 256u - 11);
      EXPECT_EQ(*evp_decrypt(key.get(), ct), *out);  // deterministic
    }
  }
  key.reset();
  release(l);  // while the bus is still there
}

// Usage is in the key's public area, and a key is refused what it lacks before any TPM command:
// a sign-only key does not decrypt, a decrypt-only key does not sign.
TEST_F(DecryptTest, UsageRefusedBeforeTheTpm) {
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    OSSL_LIB_CTX* l = lib(tcti_, "", first);
    PkeyPtr signer = load_key(l, "tpm2:signer");
    PkeyPtr dec = load_key(l, "tpm2:dec");
    ASSERT_TRUE(signer && dec) << drain_errors();
    EXPECT_FALSE(evp_decrypt(signer.get(), encrypt_pkcs1(signer.get(), "m")));
    EXPECT_TRUE(contains(drain_errors(), "the key's usage is sign: it cannot decrypt"));
    EXPECT_TRUE(digest_sign(l, dec.get(), "m", {}).empty());
    EXPECT_TRUE(contains(drain_errors(), "the key's usage is decrypt: it cannot sign"));
    EXPECT_EQ(tpm_commands(l), 0u);
    // The sign,decrypt key does both.
    PkeyPtr both = load_key(l, "tpm2:both");
    ASSERT_TRUE(both);
    EXPECT_TRUE(sign_verifies(l, both.get(), "m"));
    auto m = evp_decrypt(both.get(), encrypt_pkcs1(both.get(), "m"));
    EXPECT_TRUE(m && *m == "m");
    signer.reset();
    dec.reset();
    both.reset();
    release(l);
  }
  // The openssl command: refused, and not one TPM command on the bus.
  write_file(path("ct"), std::string(256, '\1'));
  BusProxy bus(shared_swtpm().port());
  std::vector<std::string> env = env_;
  env[0] = "TPMKEY_TCTI=" + bus.tcti();
  EXPECT_FAILS_WITH(openssl("pkeyutl", {"-decrypt", "-inkey", "tpm2:signer", "-in", path("ct"), "-out", path("pt")},
                            true, env),
                    "it cannot decrypt");
  EXPECT_FAILS_WITH(openssl("pkeyutl", {"-sign", "-inkey", "tpm2:dec", "-rawin", "-in", path("msg"), "-out",
                                        path("sig")},
                            true, env),
                    "it cannot sign");
  EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{});
}

// --usage: list and pkey -text show it, --help documents it, a bad value is a usage error.
TEST_F(DecryptTest, CreateUsageOption) {
  auto list = tpmkey({"list"});
  ASSERT_OK(list);
  EXPECT_TRUE(contains(list.out, "0x40000001 (owner SRK), usage decrypt\n")) << list.out;
  EXPECT_TRUE(contains(list.out, "0x40000001 (owner SRK), usage sign,decrypt\n")) << list.out;
  EXPECT_TRUE(contains(list.out, "signer                   rsa2048    2048   no        0x40000001 (owner SRK)\n"))
      << list.out;
  auto text = openssl("pkey", {"-in", "tpm2:both", "-text", "-noout"});
  ASSERT_OK(text);
  EXPECT_TRUE(contains(text.out, "TPM usage: sign,decrypt\n")) << text.out;
  text = openssl("pkey", {"-in", "tpm2:signer", "-text", "-noout"});
  EXPECT_TRUE(contains(text.out, "TPM usage: sign\n")) << text.out;
  auto help = tpmkey({"create", "--help"});
  EXPECT_OK(help);
  EXPECT_TRUE(contains(help.out, "--usage USAGE")) << help.out;
  auto bad = tpmkey({"create", "x", "--usage", "encrypt"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_TRUE(contains(bad.err, "--usage must be sign, decrypt or sign,decrypt, not \"encrypt\"")) << bad.err;
}

// Keys made by tpm2-openssl (sign and decrypt) decrypt through tpmkey.
TEST_F(DecryptTest, Tpm2OpensslKeysDecrypt) {
  std::vector<std::string> env = env_;
  env.push_back("TPM2OPENSSL_TCTI=" + tcti_);
  const std::string theirs = path("theirs-rsa.pem");
  ASSERT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "RSA", "-pkeyopt",
                 "bits:2048", "-out", theirs},
                env));
  ASSERT_OK(openssl("pkey", {"-in", "tpm2:file=" + theirs, "-pubout", "-out", path("theirs.pub")}));
  for (const std::vector<std::string>& opts :
       {std::vector<std::string>{}, std::vector<std::string>{"rsa_padding_mode:oaep", "rsa_oaep_md:sha256"}}) {
    std::vector<std::string> enc = {"pkeyutl", "-encrypt", "-pubin", "-inkey", path("theirs.pub"), "-in", path("msg"),
                                    "-out", path("ct")};
    std::vector<std::string> dec = {"-decrypt", "-inkey", "tpm2:file=" + theirs, "-in", path("ct"), "-out", path("pt")};
    for (const auto& o : pkeyopts(opts)) {
      enc.push_back(o);
      dec.push_back(o);
    }
    ASSERT_OK(plain(enc));
    EXPECT_OK(openssl("pkeyutl", dec));
    EXPECT_EQ(read_file(path("pt")), read_file(path("msg")));
  }
}

// ---- ECDH through the keystore API ----

class EcdhTest : public TpmTest {
 protected:
  EcdhTest() : TpmTest("tpmkey-ecdh-test") {}
  Context context(const std::string& tcti) {
    SettingsInput in;
    in.tcti = tcti.c_str();
    in.keystore = keystore_.c_str();
    return Context(resolve_settings(in));
  }
};

PkeyPtr ec_keygen(const char* group) {
  return PkeyPtr(EVP_PKEY_Q_keygen(default_only(), nullptr, "EC", group), EVP_PKEY_free);
}

Bytes encoded_point(EVP_PKEY* k) {
  uint8_t buf[200];
  size_t n = 0;
  if (!EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_PUB_KEY, buf, sizeof buf, &n)) return {};
  return Bytes(buf, buf + n);
}

// OpenSSL's ECDH from the peer's side: the peer's private key with the TPM key's public half.
std::string software_ecdh(EVP_PKEY* peer, EVP_PKEY* tpm_pub) {
  PkeyPtr pub = public_copy(tpm_pub);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new_from_pkey(default_only(), peer, nullptr), EVP_PKEY_CTX_free);
  size_t len = 0;
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) <= 0 || EVP_PKEY_derive_set_peer(ctx.get(), pub.get()) <= 0 ||
      EVP_PKEY_derive(ctx.get(), nullptr, &len) <= 0)
    return {};
  std::string out(len, '\0');
  if (EVP_PKEY_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len) <= 0) return {};
  out.resize(len);
  return out;
}

std::string str(const SecretBytes& s) { return std::string(reinterpret_cast<const char*>(s.data()), s.size()); }

// Key::derive with a TPM key (decrypt usage) and a software peer equals OpenSSL's ECDH from the
// peer's side, on P-256, P-384 and P-521; one TPM2_ECDH_ZGen once the key is loaded, and the shared
// secret never crosses the bus in clear. Points that are not on the curve are refused before the
// TPM, and so are keys without the decrypt usage.
TEST_F(EcdhTest, DeriveMatchesOpensslOnEachCurve) {
  BusProxy bus(shared_swtpm().port());
  for (const char* alg : {"ec-p256", "ec-p384", "ec-p521"}) {
    SCOPED_TRACE(alg);
    Context ctx = context(bus.tcti());
    KeyOptions opts;
    opts.spec = find_algorithm(alg);
    opts.usage = kUsageDecrypt;
    auto key = Key::generate(ctx, opts, SecretBytes(), "tpm2:ecdh");
    ASSERT_TRUE(key) << key.error().text();
    EXPECT_EQ((*key)->usage(), kUsageDecrypt);
    PkeyPtr peer = ec_keygen(opts.spec->group);
    ASSERT_TRUE(peer);
    const std::string expected = software_ecdh(peer.get(), (*key)->public_pkey());
    ASSERT_EQ(expected.size(), (*key)->shared_secret_size());
    bus.clear();
    auto z = (*key)->derive(peer.get());  // loads the key
    ASSERT_TRUE(z) << z.error().text();
    EXPECT_EQ(str(*z), expected);
    EXPECT_FALSE(bus.crossed(expected)) << "the shared secret crossed the bus in clear";
    // The same from the SEC1 point, warm: one TPM2_ECDH_ZGen.
    bus.clear();
    Bytes point = encoded_point(peer.get());
    z = (*key)->derive(point.data(), point.size());
    ASSERT_TRUE(z) << z.error().text();
    EXPECT_EQ(str(*z), expected);
    // One TPM2_ECDH_ZGen. The curve check before it can take over a millisecond, after which
    // tpmkey proves the key's handle and its session again on a simulator socket
    // (docs/sessions.md): those audited reads are not counted here.
    std::vector<uint32_t> codes = bus.command_codes();
    std::erase_if(codes, [](uint32_t cc) { return cc == TPM2_CC_ReadPublic || cc == TPM2_CC_ReadClock; });
    EXPECT_EQ(codes, std::vector<uint32_t>{TPM2_CC_ECDH_ZGen});
    EXPECT_FALSE(bus.crossed(expected)) << "the shared secret crossed the bus in clear";

    // Not on the curve: the last byte of y changed. Refused, no TPM command.
    bus.clear();
    Bytes bad = point;
    bad.back() ^= 1;
    auto r = (*key)->derive(bad.data(), bad.size());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::kInvalidArgument);
    EXPECT_TRUE(contains(r.error().text(), std::string("not a point on ") + opts.spec->group)) << r.error().text();
    // Truncated, empty, and a point of another curve.
    EXPECT_FALSE((*key)->derive(point.data(), point.size() - 1));
    EXPECT_FALSE((*key)->derive(point.data(), 0));
    PkeyPtr other = ec_keygen(std::string(alg) == "ec-p256" ? "P-384" : "P-256");
    auto o = (*key)->derive(other.get());
    ASSERT_FALSE(o);
    EXPECT_TRUE(contains(o.error().text(), "the peer key is on")) << o.error().text();
    // A decrypt-only key does not sign.
    auto d = sha("SHA256", "m");
    auto s = (*key)->sign(default_scheme(KeyKind::kEc), d.data(), d.size());
    ASSERT_FALSE(s);
    EXPECT_TRUE(contains(s.error().text(), "it cannot sign")) << s.error().text();
    EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{}) << "a refusal sent TPM commands";
  }
}

// A sign-only EC key does not derive; a sign,decrypt key with a password derives (authorized by
// the session HMAC) and signs; a tpm2-openssl EC key derives.
TEST_F(EcdhTest, UsagePasswordsAndTpm2OpensslKeys) {
  BusProxy bus(shared_swtpm().port());
  Context ctx = context(bus.tcti());
  PkeyPtr peer = ec_keygen("P-256");
  KeyOptions opts;
  opts.spec = find_algorithm("ec-p256");
  auto signer = Key::generate(ctx, opts, SecretBytes(), "tpm2:signer");
  ASSERT_TRUE(signer) << signer.error().text();
  bus.clear();
  auto r = (*signer)->derive(peer.get());
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().text(), "the key's usage is sign: it cannot derive ECDH secrets")) << r.error().text();
  EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{});

  opts.usage = kUsageSignDecrypt;
  const std::string pw = "ecdh password";
  auto both = Key::generate(ctx, opts, SecretBytes(reinterpret_cast<const uint8_t*>(pw.data()), pw.size()), "tpm2:both");
  ASSERT_TRUE(both) << both.error().text();
  auto z = (*both)->derive(peer.get());
  ASSERT_TRUE(z) << z.error().text();
  EXPECT_EQ(str(*z), software_ecdh(peer.get(), (*both)->public_pkey()));
  EXPECT_FALSE(bus.saw(pw)) << "the password crossed the bus in clear";
  auto d = sha("SHA256", "m");
  EXPECT_TRUE((*both)->sign(default_scheme(KeyKind::kEc), d.data(), d.size()));

  // tpm2-openssl's EC key (sign and decrypt), by path.
  const std::string theirs = dir_ + "/theirs-ec.pem";
  ASSERT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC", "-pkeyopt",
                 "group:P-256", "-out", theirs},
                {"TPM2OPENSSL_TCTI=" + tcti_, "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none"}));
  auto uri = parse_uri("tpm2:file=" + theirs);
  ASSERT_TRUE(uri);
  auto key = Key::open(ctx, *uri);
  ASSERT_TRUE(key) << key.error().text();
  EXPECT_TRUE((*key)->can_decrypt());
  z = (*key)->derive(peer.get());
  ASSERT_TRUE(z) << z.error().text();
  EXPECT_EQ(str(*z), software_ecdh(peer.get(), (*key)->public_pkey()));
}

}  // namespace
}  // namespace tpmkey::test

namespace tpmkey::test {
namespace {

// ECDH through the provider with the real openssl, in both provider orders: `pkeyutl -derive`
// with a TPM key (made by `tpmkey create --usage decrypt` and by `genpkey -pkeyopt usage:decrypt`)
// equals the peer's own derivation by the default provider alone; `cms -decrypt` of an ECDH key
// agreement envelope (X9.63 KDF over the TPM's secret) made by plain openssl; a sign-only key is
// refused before the TPM.
TEST_F(DecryptTest, EcdhDeriveAndCmsKeyAgreement) {
  ASSERT_OK(tpmkey({"create", "ecdh", "--usage", "decrypt"}));
  EXPECT_OK(openssl("genpkey", {"-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt", "group:P-384", "-pkeyopt",
                                "usage:decrypt", "-out", keystore_ + "/ecdh384.pem"}));
  ASSERT_OK(tpmkey({"create", "ecsign", "--usage", "sign"}));
  for (const char* name : {"ecdh", "ecdh384"}) {
    const std::string pub = path(std::string(name) + ".pub"), peer = path("peer.key"), peer_pub = path("peer.pub");
    write_file(pub, tpmkey({"pubkey", name}).out);
    const char* curve = std::string(name) == "ecdh" ? "P-256" : "P-384";
    ASSERT_OK(plain({"genpkey", "-algorithm", "EC", "-pkeyopt", std::string("ec_paramgen_curve:") + curve, "-out", peer}));
    ASSERT_OK(plain({"pkey", "-in", peer, "-pubout", "-out", peer_pub}));
    ASSERT_OK(plain({"pkeyutl", "-derive", "-inkey", peer, "-peerkey", pub, "-out", path("theirs")}));
    for (bool first : {true, false}) {
      SCOPED_TRACE(std::string(name) + (first ? ", tpmkey first" : ", default first"));
      std::filesystem::remove(path("ours"));
      EXPECT_OK(openssl("pkeyutl", {"-derive", "-inkey", std::string("tpm2:") + name, "-peerkey", peer_pub, "-out", path("ours")},
                        first));
      EXPECT_EQ(read_file(path("ours")), read_file(path("theirs")));
      EXPECT_FALSE(read_file(path("ours")).empty());
    }
  }
  EXPECT_FAILS_WITH(openssl("pkeyutl", {"-derive", "-inkey", "tpm2:ecsign", "-peerkey", path("peer.pub")}),
                    "ECDH needs a key made with --usage decrypt");

  // A certificate for the decrypt-only key (it cannot sign its own CSR: a software CA's CSR with
  // the TPM key's public key forced in), and an envelope to it.
  const std::string ca = path("ca.key"), ca_crt = path("ca.crt"), crt = path("ecdh.crt");
  ASSERT_OK(plain({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", ca, "-subj",
                   "/CN=ca", "-days", "1", "-out", ca_crt}));
  ASSERT_OK(plain({"req", "-new", "-key", ca, "-subj", "/CN=ecdh", "-out", path("ecdh.csr")}));
  ASSERT_OK(plain({"x509", "-req", "-in", path("ecdh.csr"), "-force_pubkey", path("ecdh.pub"), "-CA", ca_crt, "-CAkey", ca,
                   "-days", "1", "-out", crt}));
  ASSERT_OK(plain({"cms", "-encrypt", "-binary", "-aes256", "-recip", crt, "-in", path("msg"), "-out", path("env.pem"),
                   "-outform", "PEM"}));
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "cms, tpmkey first" : "cms, default first");
    std::filesystem::remove(path("out"));
    EXPECT_OK(openssl("cms", {"-decrypt", "-binary", "-inform", "PEM", "-in", path("env.pem"), "-inkey", "tpm2:ecdh", "-recip",
                              crt, "-out", path("out")},
                      first));
    EXPECT_EQ(read_file(path("out")), read_file(path("msg")));
  }
}

}  // namespace
}  // namespace tpmkey::test
