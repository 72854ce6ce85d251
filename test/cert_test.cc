// Certificates and signed messages: the real openssl and tpmkey binaries make self-signed
// certificates, CSRs, CA-issued certificates and CMS signatures with TPM keys, and openssl with
// nothing but the default provider checks every one of them.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

constexpr const char* kPassword = "cert secret";
constexpr const char* kPasswordUri = "tpm2:pw?pin-value=cert%20secret";  // the same, percent-encoded

// The keys are made once for the binary (key generation is the slow part); each test has its own
// directory for what it produces.
class CertTest : public TpmTest {
 protected:
  CertTest() : TpmTest("tpmkey-cert-test") {}
  static void SetUpTestSuite() {
    const std::string tcti = shared_swtpm().tcti();
    suite_dir_ = make_temp_dir("tpmkey-cert-keys");
    suite_keystore_ = suite_dir_ + "/keystore";
    write_file(suite_dir_ + "/pw", std::string(kPassword) + "\n");
    struct Spec {
      const char *name, *alg;
      bool password;
    };
    for (const Spec& k : {Spec{"ec256", "ec-p256", false}, Spec{"ec384", "ec-p384", false},
                          Spec{"rsa", "rsa2048", false}, Spec{"ca", "ec-p256", false}, Spec{"pw", "ec-p256", true}}) {
      std::vector<std::string> a = {tpmkey_bin(), "--tcti", tcti, "--keystore", suite_keystore_, "create", k.name,
                                    "--algorithm", k.alg};
      if (k.password) a.insert(a.end(), {"--password-file", suite_dir_ + "/pw"});
      ASSERT_OK(run(a, {"TSS2_LOG=all+none"}));
    }
  }
  static void TearDownTestSuite() { remove_tree(suite_dir_); }

  void SetUp() override {
    TpmTest::SetUp();
    keystore_ = suite_keystore_;  // the suite's keys; dir_ is this test's own
    env_ = {"TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_, "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none"};
    // Line ends and bytes that text-mode S/MIME would change: -binary must keep them.
    static constexpr char kMsg[] = "a message to sign\r\nwith a NUL \0 byte\n";
    write_file(dir_ + "/msg", std::string(kMsg, sizeof kMsg - 1));
  }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string key_file(const std::string& name) const { return keystore_ + "/" + name + ".pem"; }

  // openssl with the providers on the command line, in the given order.
  CommandResult openssl(const std::string& cmd, std::vector<std::string> args, bool tpmkey_first = true) {
    std::vector<std::string> a = {"openssl", cmd, "-provider-path", provider_dir()};
    for (const char* p : tpmkey_first ? std::vector<const char*>{"tpmkey", "default"}
                                      : std::vector<const char*>{"default", "tpmkey"})
      a.insert(a.end(), {"-provider", p});
    a.insert(a.end(), args.begin(), args.end());
    return run(a, env_);
  }
  // openssl with both providers activated by an openssl.cnf, in the given order.
  CommandResult openssl_cnf(std::vector<std::string> args, bool tpmkey_first) {
    std::vector<std::string> env = env_;
    env[2] = "OPENSSL_CONF=" + write_openssl_cnf(dir_, tpmkey_first, tcti_, keystore_);
    args.insert(args.begin(), "openssl");
    return run(args, env);
  }
  // openssl with nothing but the default provider: the independent verifier.
  CommandResult plain(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    return run(args, env_);
  }

  // A self-signed certificate for `key` (valid for one day), made by `openssl req -x509`.
  void self_signed(const std::string& key, const std::string& cn, const std::string& cert,
                   std::vector<std::string> extra = {}, bool tpmkey_first = true) {
    std::vector<std::string> a = {"-new", "-x509", "-key", key, "-subj", "/CN=" + cn, "-days", "1", "-out", cert};
    a.insert(a.end(), extra.begin(), extra.end());
    auto r = openssl("req", a, tpmkey_first);
    EXPECT_OK(r);
  }
  // `openssl verify -CAfile ca cert` with the default provider alone.
  void expect_verifies(const std::string& ca, const std::string& cert) {
    auto r = plain({"verify", "-CAfile", ca, cert});
    EXPECT_OK(r);
    EXPECT_EQ(r.out, cert + ": OK\n");
  }
  // `openssl req -verify` of a CSR with the default provider alone.
  void expect_csr_verifies(const std::string& csr) {
    auto r = plain({"req", "-verify", "-noout", "-in", csr});
    EXPECT_OK(r);
    EXPECT_TRUE(contains(r.err, "self-signature verify OK")) << r.err;
  }
  // `openssl cms -verify` with the default provider alone; the content that comes out must be
  // the message. `signed_file` is PEM unless it ends in .der; detached unless `attached`.
  void expect_cms_verifies(const std::string& signed_file, const std::string& ca, bool attached) {
    std::string out = path("verified.out");
    std::filesystem::remove(out);
    std::vector<std::string> a = {"cms", "-verify", "-binary", "-CAfile", ca, "-in", signed_file, "-inform",
                                  signed_file.ends_with(".der") ? "DER" : "PEM", "-out", out};
    if (!attached) a.insert(a.end(), {"-content", path("msg")});
    auto r = plain(a);
    EXPECT_OK(r);
    EXPECT_TRUE(contains(r.err, "CMS Verification successful")) << r.err;
    EXPECT_EQ(read_file(out), read_file(path("msg")));
  }
  // The text of a certificate, CSR or CMS structure as the default provider prints it.
  std::string text_of(const std::string& cmd, const std::string& file) {
    auto r = cmd == "cms" ? plain({"cms", "-cmsout", "-print", "-noout", "-in", file, "-inform",
                                   file.ends_with(".der") ? "DER" : "PEM"})
                          : plain({cmd, "-in", file, "-noout", "-text"});
    EXPECT_OK(r);
    return r.out;
  }

  static std::string suite_dir_, suite_keystore_;
  std::vector<std::string> env_;
};

std::string CertTest::suite_dir_, CertTest::suite_keystore_;

struct Variant {
  std::string key, digest, padding;  // padding: "" (EC), "pkcs1" (RSA default) or "pss"
  std::string sig_alg;               // as `openssl x509 -text` names it
  std::vector<std::string> sigopts() const {
    if (padding != "pss") return {};
    return {"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"};
  }
  std::string label() const { return key + (padding.empty() ? "" : "-" + padding); }
};

const std::vector<Variant> kVariants = {{"ec256", "sha256", "", "ecdsa-with-SHA256"},
                                        {"ec384", "sha384", "", "ecdsa-with-SHA384"},
                                        {"rsa", "sha256", "pkcs1", "sha256WithRSAEncryption"},
                                        {"rsa", "sha256", "pss", "rsassaPss"}};

// openssl req -x509 and openssl req -new with every key type and padding, in both provider orders.
TEST_F(CertTest, SelfSignedCertificatesAndCsrs) {
  for (const Variant& v : kVariants) {
    for (bool first : {true, false}) {
      SCOPED_TRACE(v.label() + (first ? " tpmkey first" : " default first"));
      std::string cert = path(v.label() + ".crt"), csr = path(v.label() + ".csr");
      auto opts = v.sigopts();
      opts.push_back("-" + v.digest);
      self_signed("tpm2:" + v.key, "tpmkey " + v.label(), cert, opts, first);
      expect_verifies(cert, cert);
      std::string text = text_of("x509", cert);
      EXPECT_TRUE(contains(text, "Signature Algorithm: " + v.sig_alg)) << text;
      EXPECT_TRUE(contains(text, "Subject: CN = tpmkey " + v.label())) << text;
      if (v.padding == "pss") {
        EXPECT_TRUE(contains(text, "Hash Algorithm: " + v.digest)) << text;
        EXPECT_TRUE(contains(text, "Salt Length: 0x20")) << text;
      }

      std::vector<std::string> req = {"-new", "-key", "tpm2:" + v.key, "-subj", "/CN=csr " + v.label(), "-out", csr};
      req.insert(req.end(), opts.begin(), opts.end());
      EXPECT_OK(openssl("req", req, first));
      expect_csr_verifies(csr);
      std::string csr_text = text_of("req", csr);
      EXPECT_TRUE(contains(csr_text, "Signature Algorithm: " + v.sig_alg)) << csr_text;
      EXPECT_TRUE(contains(csr_text, "Subject: CN = csr " + v.label())) << csr_text;
    }
  }
  // A PSS salt the TPM cannot make is refused, not signed wrongly.
  EXPECT_FAILS_WITH(openssl("req", {"-new", "-x509", "-key", "tpm2:rsa", "-subj", "/CN=x", "-sigopt",
                                    "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max", "-out", path("x.crt")}),
                    "the TPM signs PSS with a salt as long as the digest");
}

// A TPM key as a CA with `openssl x509 -req`: a leaf whose key is in software and one whose key
// is in the TPM, an EC and an RSA-PSS CA.
TEST_F(CertTest, TpmCaIssuesCertificatesWithX509Req) {
  std::string ca = path("ca.pem");
  self_signed("tpm2:ca", "tpmkey test CA", ca,
              {"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"});
  std::string ca_text = text_of("x509", ca);
  EXPECT_TRUE(contains(ca_text, "CA:TRUE")) << ca_text;

  // The leaf key in software: key and CSR by the default provider alone.
  EXPECT_OK(plain({"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path("soft.key")}));
  EXPECT_OK(plain({"req", "-new", "-key", path("soft.key"), "-subj", "/CN=software leaf", "-out", path("soft.csr")}));
  // The leaf key in the TPM.
  EXPECT_OK(openssl("req", {"-new", "-key", "tpm2:ec256", "-subj", "/CN=tpm leaf", "-out", path("tpm.csr")}));

  bool first = true;
  for (const std::string leaf : {"soft", "tpm"}) {
    SCOPED_TRACE(leaf);
    std::string cert = path(leaf + ".pem");
    EXPECT_OK(openssl("x509", {"-req", "-in", path(leaf + ".csr"), "-CA", ca, "-CAkey", "tpm2:ca", "-CAcreateserial",
                               "-days", "1", "-out", cert},
                      first));
    first = !first;
    expect_verifies(ca, cert);
    std::string text = text_of("x509", cert);
    EXPECT_TRUE(contains(text, "Issuer: CN = tpmkey test CA")) << text;
    EXPECT_TRUE(contains(text, "Signature Algorithm: ecdsa-with-SHA256")) << text;
  }
  EXPECT_TRUE(std::filesystem::exists(path("ca.srl")));
  // The TPM leaf's certificate holds the TPM key's public key.
  auto pub = openssl("pkey", {"-in", "tpm2:ec256", "-pubout"});
  EXPECT_OK(pub);
  EXPECT_EQ(plain({"x509", "-in", path("tpm.pem"), "-noout", "-pubkey"}).out, pub.out);
  // Another self-signed certificate is no issuer of these.
  self_signed("tpm2:ec384", "not the CA", path("other.pem"));
  EXPECT_FAILS_WITH(plain({"verify", "-CAfile", path("other.pem"), path("soft.pem")}),
                    "unable to get local issuer certificate");
  // openssl checks that the CA key belongs to the CA certificate, also for TPM keys.
  EXPECT_FAILS_WITH(openssl("x509", {"-req", "-in", path("soft.csr"), "-CA", ca, "-CAkey", "tpm2:ec256",
                                     "-CAcreateserial", "-out", path("bad.pem")}),
                    "CA certificate and CA private key do not match");

  // An RSA CA signing with PSS.
  std::string rsa_ca = path("rsa-ca.pem");
  self_signed("tpm2:rsa", "tpmkey RSA CA", rsa_ca,
              {"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest", "-addext",
               "basicConstraints=critical,CA:TRUE"});
  EXPECT_OK(openssl("x509", {"-req", "-in", path("soft.csr"), "-CA", rsa_ca, "-CAkey", "tpm2:rsa", "-sigopt",
                             "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest", "-CAcreateserial", "-days",
                             "1", "-out", path("pss-leaf.pem")},
                    false));
  expect_verifies(rsa_ca, path("pss-leaf.pem"));
  std::string pss_text = text_of("x509", path("pss-leaf.pem"));
  EXPECT_TRUE(contains(pss_text, "Signature Algorithm: rsassaPss")) << pss_text;
  EXPECT_TRUE(contains(pss_text, "Salt Length: 0x20")) << pss_text;
}

// `openssl ca` with a minimal CA directory, the CA key in the TPM.
TEST_F(CertTest, OpensslCaSignsCsrs) {
  std::string ca = path("ca.pem"), cadir = path("ca");
  self_signed("tpm2:ca", "tpmkey test CA", ca,
              {"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"});
  std::filesystem::create_directories(cadir + "/newcerts");
  write_file(cadir + "/index.txt", "");
  write_file(cadir + "/serial", "1000\n");
  write_file(cadir + "/ca.cnf",
             "[ca]\ndefault_ca = tpm_ca\n\n"
             "[tpm_ca]\ndir = " + cadir + "\n"
             "database = $dir/index.txt\nnew_certs_dir = $dir/newcerts\nserial = $dir/serial\n"
             "default_md = sha256\ndefault_days = 1\npolicy = policy_any\nunique_subject = no\n\n"
             "[policy_any]\ncommonName = supplied\n\n"
             "[leaf_ext]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n");
  EXPECT_OK(plain({"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path("soft.key")}));
  EXPECT_OK(plain({"req", "-new", "-key", path("soft.key"), "-subj", "/CN=software leaf", "-out", path("soft.csr")}));
  EXPECT_OK(openssl("req", {"-new", "-key", "tpm2:ec384", "-subj", "/CN=tpm leaf", "-out", path("tpm.csr")}));

  bool first = true;
  for (const std::string leaf : {"soft", "tpm"}) {
    SCOPED_TRACE(leaf);
    std::string cert = path(leaf + ".pem");
    auto r = openssl("ca", {"-config", cadir + "/ca.cnf", "-keyfile", "tpm2:ca", "-cert", ca, "-in",
                            path(leaf + ".csr"), "-out", cert, "-extensions", "leaf_ext", "-batch"},
                     first);
    first = !first;
    EXPECT_OK(r);
    EXPECT_TRUE(contains(r.err, "Database updated")) << r.err;
    expect_verifies(ca, cert);
    std::string text = text_of("x509", cert);
    EXPECT_TRUE(contains(text, "Issuer: CN = tpmkey test CA")) << text;
    EXPECT_TRUE(contains(text, "CA:FALSE")) << text;
  }
  std::string index = read_file(cadir + "/index.txt");
  EXPECT_TRUE(contains(index, "\t1000\tunknown\t/CN=software leaf\n")) << index;
  EXPECT_TRUE(contains(index, "\t1001\tunknown\t/CN=tpm leaf\n")) << index;
  EXPECT_EQ(read_file(cadir + "/serial"), "1002\n");
  EXPECT_TRUE(std::filesystem::exists(cadir + "/newcerts/1001.pem"));
}

// openssl cms -sign with TPM keys (EC, RSA PKCS#1, RSA-PSS), detached and attached, verified by
// the default provider alone; and openssl smime.
TEST_F(CertTest, CmsSignAndVerify) {
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.label());
    std::string cert = path(v.label() + ".crt");
    self_signed("tpm2:" + v.key, "signer " + v.label(), cert, v.sigopts());
    std::vector<std::string> keyopts;
    if (v.padding == "pss") keyopts = {"-keyopt", "rsa_padding_mode:pss", "-keyopt", "rsa_pss_saltlen:digest"};
    bool first = v.key != "ec384";
    // Detached, PEM.
    std::string detached = path(v.label() + ".p7s");
    std::vector<std::string> sign = {"-sign", "-binary", "-md", v.digest, "-inkey", "tpm2:" + v.key, "-signer", cert,
                                     "-in", path("msg"), "-outform", "PEM", "-out", detached};
    sign.insert(sign.end(), keyopts.begin(), keyopts.end());
    EXPECT_OK(openssl("cms", sign, first));
    expect_cms_verifies(detached, cert, false);
    // Attached, DER.
    std::string attached = path(v.label() + ".der");
    sign = {"-sign", "-binary", "-nodetach", "-md", v.digest, "-inkey", "tpm2:" + v.key, "-signer", cert,
            "-in", path("msg"), "-outform", "DER", "-out", attached};
    sign.insert(sign.end(), keyopts.begin(), keyopts.end());
    EXPECT_OK(openssl("cms", sign, !first));
    expect_cms_verifies(attached, cert, true);

    std::string printed = text_of("cms", attached);
    if (v.padding == "pss") {
      EXPECT_TRUE(contains(printed, "algorithm: rsassaPss")) << printed;
      EXPECT_TRUE(contains(printed, "INTEGER           :20")) << printed;  // salt length 32
    }
    EXPECT_TRUE(contains(printed, "algorithm: " + v.digest)) << printed;
  }
  // A changed message does not verify.
  write_file(path("msg.changed"), "a message to sign, changed\n");
  EXPECT_FAILS_WITH(plain({"cms", "-verify", "-binary", "-CAfile", path("ec256.crt"), "-in", path("ec256.p7s"),
                           "-inform", "PEM", "-content", path("msg.changed"), "-out", path("x")}),
                    "Verification failure");

  // S/MIME (text, multipart/signed).
  write_file(path("mail.txt"), "Hello from the TPM\n");
  EXPECT_OK(openssl("smime", {"-sign", "-inkey", "tpm2:ec256", "-signer", path("ec256.crt"), "-in", path("mail.txt"),
                              "-out", path("mail.smime")}));
  std::string mail = read_file(path("mail.smime"));
  EXPECT_TRUE(contains(mail, "Content-Type: multipart/signed")) << mail;
  auto smime = plain({"smime", "-verify", "-CAfile", path("ec256.crt"), "-in", path("mail.smime"), "-out",
                      path("mail.out")});
  EXPECT_OK(smime);
  EXPECT_TRUE(contains(smime.err, "Verification successful")) << smime.err;
  EXPECT_TRUE(contains(read_file(path("mail.out")), "Hello from the TPM")) << read_file(path("mail.out"));
}

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

X509Ptr read_cert(const std::string& file) {
  X509* x = X509_new_ex(default_only(), nullptr);
  BIO* b = BIO_new_file(file.c_str(), "r");
  if (!b || !PEM_read_bio_X509(b, &x, nullptr, nullptr)) {
    X509_free(x);
    x = nullptr;
  }
  BIO_free(b);
  return X509Ptr(x, X509_free);
}

// Which certificate belongs to which TPM key: the public key, X509_check_private_key, -checkend.
TEST_F(CertTest, CertificatesMatchTheirKeys) {
  for (const std::string name : {"ec256", "ec384", "rsa", "ca"}) self_signed("tpm2:" + name, name, path(name + ".crt"));
  self_signed("tpm2:pw", "pw", path("pw.crt"), {"-passin", std::string("pass:") + kPassword});

  for (const char* name : {"ec256", "rsa", "pw"}) {
    SCOPED_TRACE(name);
    auto from_cert = plain({"x509", "-in", path(std::string(name) + ".crt"), "-noout", "-pubkey"});
    EXPECT_OK(from_cert);
    auto from_key = openssl("pkey", {"-in", std::string("tpm2:") + name, "-pubout", "-passin",
                                     std::string("pass:") + kPassword});
    EXPECT_OK(from_key);
    EXPECT_EQ(from_cert.out, from_key.out);
    EXPECT_EQ(from_cert.out.rfind("-----BEGIN PUBLIC KEY-----\n", 0), 0u) << from_cert.out;
  }

  // Valid now, and (made with -days 1) expired in two days.
  auto now = plain({"x509", "-in", path("ec256.crt"), "-noout", "-checkend", "0"});
  EXPECT_OK(now);
  EXPECT_EQ(now.out, "Certificate will not expire\n");
  auto later = plain({"x509", "-in", path("ec256.crt"), "-noout", "-checkend", "172800"});
  EXPECT_EQ(later.exit_code, 1);
  EXPECT_EQ(later.out, "Certificate will expire\n");

  // In process: keys from OSSL_STORE in a library context with tpmkey, certificates read by the
  // default provider alone. Matching uses the public half only: no TPM command is sent.
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    OSSL_LIB_CTX* libctx = lib(tcti_, "", first);
    {  // the keys go before their library context
      auto ec256 = load_key(libctx, "tpm2:ec256"), rsa = load_key(libctx, "tpm2:rsa"), ca = load_key(libctx, "tpm2:ca");
      auto pw = load_key(libctx, kPasswordUri), by_path = load_key(libctx, key_file("ec384"));
      ASSERT_TRUE(ec256 && rsa && ca && pw && by_path) << drain_errors();
      auto c_ec256 = read_cert(path("ec256.crt")), c_ec384 = read_cert(path("ec384.crt")),
           c_rsa = read_cert(path("rsa.crt")), c_ca = read_cert(path("ca.crt")), c_pw = read_cert(path("pw.crt"));
      ASSERT_TRUE(c_ec256 && c_ec384 && c_rsa && c_ca && c_pw);
      EXPECT_EQ(X509_check_private_key(c_ec256.get(), ec256.get()), 1) << drain_errors();
      EXPECT_EQ(X509_check_private_key(c_rsa.get(), rsa.get()), 1) << drain_errors();
      EXPECT_EQ(X509_check_private_key(c_ca.get(), ca.get()), 1) << drain_errors();
      EXPECT_EQ(X509_check_private_key(c_pw.get(), pw.get()), 1) << drain_errors();
      EXPECT_EQ(X509_check_private_key(c_ec384.get(), by_path.get()), 1) << drain_errors();
      // Another key's certificate: same curve, another curve, another type.
      EXPECT_EQ(X509_check_private_key(c_ca.get(), ec256.get()), 0);
      EXPECT_EQ(X509_check_private_key(c_ec256.get(), ca.get()), 0);
      EXPECT_EQ(X509_check_private_key(c_ec384.get(), ec256.get()), 0);
      EXPECT_EQ(X509_check_private_key(c_rsa.get(), ec256.get()), 0);
      EXPECT_EQ(X509_check_private_key(c_ec256.get(), rsa.get()), 0);
      drain_errors();
      EXPECT_EQ(tpm_commands(libctx), 0u);
    }
    release(libctx);
  }
}

// Key files by plain path, with tpmkey activated by openssl.cnf in both orders.
TEST_F(CertTest, KeyFilesByPlainPathInBothOrders) {
  std::string ca = path("ca.pem");
  self_signed("tpm2:ca", "tpmkey test CA", ca, {"-addext", "basicConstraints=critical,CA:TRUE"});
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    std::string ec = path("ec.crt"), rsa = path("rsa.crt"), csr = path("ec384.csr"), leaf = path("leaf.pem");
    EXPECT_OK(openssl_cnf({"req", "-new", "-x509", "-key", key_file("ec256"), "-subj", "/CN=ec by path", "-days", "1",
                           "-out", ec},
                          first));
    expect_verifies(ec, ec);
    EXPECT_OK(openssl_cnf({"req", "-new", "-x509", "-key", key_file("rsa"), "-subj", "/CN=rsa by path", "-sigopt",
                           "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest", "-days", "1", "-out", rsa},
                          first));
    expect_verifies(rsa, rsa);
    EXPECT_OK(openssl_cnf({"req", "-new", "-key", key_file("ec384"), "-subj", "/CN=ec384 by path", "-out", csr},
                          first));
    expect_csr_verifies(csr);
    // The CA key by path.
    EXPECT_OK(openssl_cnf({"x509", "-req", "-in", csr, "-CA", ca, "-CAkey", key_file("ca"), "-CAcreateserial",
                           "-days", "1", "-out", leaf},
                          first));
    expect_verifies(ca, leaf);
    // CMS with key files by path.
    for (const auto& [key, cert] : {std::pair{key_file("ec256"), ec}, std::pair{key_file("rsa"), rsa}}) {
      SCOPED_TRACE(key);
      std::string p7s = path("signed.p7s");
      EXPECT_OK(openssl_cnf({"cms", "-sign", "-binary", "-inkey", key, "-signer", cert, "-in", path("msg"), "-outform",
                             "PEM", "-out", p7s},
                            first));
      expect_cms_verifies(p7s, cert, false);
    }
  }
}

// A key with a password: -passin, and pin-value= in the URI, for req, x509 -req and cms.
TEST_F(CertTest, PasswordKeys) {
  std::string pass = std::string("pass:") + kPassword;
  std::string cert = path("pw.crt");
  self_signed("tpm2:pw", "password key", cert, {"-passin", pass});
  expect_verifies(cert, cert);
  self_signed(kPasswordUri, "password key", path("pw2.crt"), {}, false);
  expect_verifies(path("pw2.crt"), path("pw2.crt"));

  EXPECT_OK(openssl("req", {"-new", "-key", kPasswordUri, "-subj", "/CN=pw csr", "-out", path("pw.csr")}));
  expect_csr_verifies(path("pw.csr"));
  EXPECT_OK(openssl("req", {"-new", "-key", "tpm2:pw", "-passin", "file:" + suite_dir_ + "/pw", "-subj", "/CN=pw csr",
                            "-out", path("pw.csr")},
                    false));
  expect_csr_verifies(path("pw.csr"));

  // The password key as a CA.
  EXPECT_OK(openssl("x509", {"-req", "-in", path("pw.csr"), "-CA", cert, "-CAkey", "tpm2:pw", "-passin", pass,
                             "-CAcreateserial", "-days", "1", "-out", path("leaf.pem")}));
  expect_verifies(cert, path("leaf.pem"));

  for (const auto& key_args : {std::vector<std::string>{"-inkey", "tpm2:pw", "-passin", pass},
                               std::vector<std::string>{"-inkey", kPasswordUri}}) {
    SCOPED_TRACE(key_args[1]);
    std::vector<std::string> a = {"-sign", "-binary", "-signer", cert, "-in", path("msg"), "-outform", "PEM",
                                  "-out", path("pw.p7s")};
    a.insert(a.end(), key_args.begin(), key_args.end());
    EXPECT_OK(openssl("cms", a));
    expect_cms_verifies(path("pw.p7s"), cert, false);
  }
  // The key file by path with -passin, both orders.
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    EXPECT_OK(openssl_cnf({"cms", "-sign", "-binary", "-inkey", key_file("pw"), "-passin", pass, "-signer", cert,
                           "-in", path("msg"), "-outform", "PEM", "-out", path("pw.p7s")},
                          first));
    expect_cms_verifies(path("pw.p7s"), cert, false);
    EXPECT_OK(openssl_cnf({"req", "-new", "-key", key_file("pw"), "-passin", pass, "-subj", "/CN=pw by path", "-out",
                           path("pw.csr")},
                          first));
    expect_csr_verifies(path("pw.csr"));
  }

  // A wrong password: the TPM refuses, and the password is not repeated in the message.
  auto wrong = openssl("req", {"-new", "-key", "tpm2:pw", "-passin", "pass:wrong guess", "-subj", "/CN=x", "-out",
                               path("x.csr")});
  EXPECT_FAILS_WITH(wrong, "sign(tpm2:pw): TPM2_Sign: authorization failed");
  EXPECT_FALSE(contains(wrong.err, "wrong guess")) << wrong.err;
  auto wrong_cms = openssl("cms", {"-sign", "-binary", "-inkey", "tpm2:pw?pin-value=wrong", "-signer", cert, "-in",
                                   path("msg"), "-out", path("x.p7s")});
  EXPECT_FAILS_WITH(wrong_cms, "authorization failed");
  // No password and no terminal.
  EXPECT_FAILS_WITH(openssl("req", {"-new", "-key", "tpm2:pw", "-subj", "/CN=x", "-out", path("x.csr")}),
                    "open(tpm2:pw): authorization failed: no password given");
}

// TLS client authentication with a TPM key file: openssl s_client and curl (which loads the key
// with SSL_CTX_use_PrivateKey_file) against an s_server on loopback that requires a client
// certificate. The server runs with the default provider alone.
TEST_F(CertTest, TlsClientAuthenticationWithAKeyFile) {
  const std::string client_crt = path("client.crt"), srv_key = path("srv.key"), srv_crt = path("srv.crt");
  self_signed(key_file("ec256"), "client", client_crt);
  // A key that had a certificate before it moved into the TPM (tpmkey import): its original
  // certificate still works with the imported key.
  const std::string orig_key = path("orig.key"), orig_crt = path("orig.crt"), trusted = path("trusted.crt");
  EXPECT_OK(plain({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", orig_key,
                   "-subj", "/CN=imported", "-days", "1", "-out", orig_crt}));
  ASSERT_OK(tpmkey({"import", "imported", orig_key}));
  write_file(trusted, read_file(client_crt) + read_file(orig_crt));
  EXPECT_OK(plain({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", srv_key,
                   "-subj", "/CN=localhost", "-days", "1", "-out", srv_crt}));
  int port = 0;
  {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
  }
  const std::string accept = "127.0.0.1:" + std::to_string(port);
  const pid_t server = launch({.argv = {"openssl", "s_server", "-accept", accept, "-cert", srv_crt, "-key", srv_key,
                                         "-Verify", "1", "-CAfile", trusted, "-www"},
                                .env = {"OPENSSL_CONF=/dev/null"},
                                .in = "/dev/null",
                                .out = "/dev/null",
                                .err_to_out = true});
  ASSERT_GT(server, 0) << "cannot start openssl s_server";
  for (int i = 0; i < 200; ++i) {  // until it listens
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool up = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    if (up) break;
    usleep(20000);
  }
  for (bool tpmkey_first : {true, false}) {
    SCOPED_TRACE(tpmkey_first ? "tpmkey first" : "default first");
    std::vector<std::string> env = env_;
    env[2] = "OPENSSL_CONF=" + write_openssl_cnf(dir_, tpmkey_first, tcti_, keystore_);
    auto r = run({"openssl", "s_client", "-connect", accept, "-cert", client_crt, "-key", key_file("ec256"), "-CAfile",
                  srv_crt, "-verify_return_error", "-ign_eof"},
                 env, "GET / HTTP/1.0\r\n\r\n");
    EXPECT_NE(r.out.find("Verification: OK"), std::string::npos) << r.out << r.err;
    EXPECT_NE(r.out.find("HTTP/1.0 200 ok"), std::string::npos) << r.out << r.err;
#ifndef TPMKEY_SANITIZED  // curl deadlocks at start with the sanitizer runtime preloaded
    r = run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", srv_crt, "--cert", client_crt, "--key",
             key_file("ec256"), "--resolve", "localhost:" + std::to_string(port) + ":127.0.0.1",
             "https://localhost:" + std::to_string(port) + "/"},
            env);
    EXPECT_EQ(r.out, "200") << r.err;
#endif
  }
  {
    std::vector<std::string> env = env_;
    env[2] = "OPENSSL_CONF=" + write_openssl_cnf(dir_, true, tcti_, keystore_);
    auto r = run({"openssl", "s_client", "-connect", accept, "-cert", orig_crt, "-key", "tpm2:imported", "-CAfile",
                  srv_crt, "-verify_return_error", "-ign_eof"},
                 env, "GET / HTTP/1.0\r\n\r\n");
    EXPECT_NE(r.out.find("HTTP/1.0 200 ok"), std::string::npos) << "imported key: " << r.out << r.err;
  }
  // Without the client key the server refuses the handshake: the check above is real.
  auto r = run({"openssl", "s_client", "-connect", accept, "-CAfile", srv_crt, "-ign_eof"}, env_, "GET / HTTP/1.0\r\n\r\n");
  EXPECT_EQ(r.out.find("HTTP/1.0 200 ok"), std::string::npos) << r.out;
  kill(server, SIGTERM);
  waitpid(server, nullptr, 0);
}

}  // namespace
}  // namespace tpmkey::test
