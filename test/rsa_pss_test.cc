// RSA-PSS keys (docs/keys.md, "RSA-PSS keys"): RSA keys whose TPM public area binds them to the
// RSASSA-PSS scheme and one hash. Made by `openssl genpkey -algorithm RSA-PSS` (asking for the TPM)
// and `tpmkey create --algorithm rsa-pss`, in both provider orders; signing only with PSS, verified
// by the default provider alone; CSRs and certificates; SubjectPublicKeyInfo with the PSS
// parameters; reloaded from the keystore and by path as RSA-PSS keys; TLS 1.3 and 1.2 server and
// client keys; tpmkey import of software RSA-PSS keys; left out by tpmkey agent; refusals before
// any TPM command.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "keystore/algorithm.h"
#include "keystore/keyfile.h"
#include "test/agent_process.h"
#include "test/fixture.h"
#include "test/loopback.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

class RsaPssTest : public TpmTest, public ::testing::WithParamInterface<bool> {
 protected:
  RsaPssTest() : TpmTest("tpmkey-pss-test") {}
  void SetUp() override {
    TpmTest::SetUp();
    env_ = {"TPMKEY_TCTI=" + bus_.tcti(), "TPMKEY_KEYSTORE=" + keystore_, "OPENSSL_CONF=/dev/null",
            "TSS2_LOG=all+none"};
    cnf_env_ = env_;
    cnf_env_[2] = "OPENSSL_CONF=" + write_openssl_cnf(dir_, tpmkey_first(), bus_.tcti(), keystore_);
    write_file(dir_ + "/msg", "a file to sign with PSS\n");
    ASSERT_EQ(mkdir(keystore_.c_str(), 0700), 0);  // genpkey -out writes into it
  }
  bool tpmkey_first() const { return GetParam(); }

  // openssl with both providers activated by openssl.cnf, in this test's order.
  CommandResult openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    return run(args, cnf_env_);
  }
  // openssl with nothing but the default provider: the independent verifier.
  CommandResult plain_openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    return run(args, env_);
  }
  CommandResult cli(std::vector<std::string> args) {
    args.insert(args.begin(), tpmkey_bin());
    return run(args, env_);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string entry(const std::string& name) const { return keystore_ + "/" + name + ".pem"; }

  // Makes keystore entry `name` in the TPM through genpkey with the provider asked for.
  void genpkey(const std::string& name, std::vector<std::string> opts = {}) {
    std::vector<std::string> a = {"genpkey", "-propquery", "provider=tpmkey", "-algorithm", "RSA-PSS"};
    a.insert(a.end(), opts.begin(), opts.end());
    a.insert(a.end(), {"-out", entry(name)});
    ASSERT_OK(openssl(a));
  }
  // The key's public key as the provider writes it (openssl pkey -pubout), in pub.pem.
  std::string pubkey(const std::string& uri) {
    auto r = openssl({"pkey", "-in", uri, "-pubout", "-out", path("pub.pem")});
    EXPECT_OK(r);
    return path("pub.pem");
  }
  // The TPM public area of a keystore entry.
  TPMT_PUBLIC public_area(const std::string& name) {
    std::string pem = read_file(entry(name));
    auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
    EXPECT_TRUE(kf) << kf.error().text();
    return kf ? kf->pub.publicArea : TPMT_PUBLIC{};
  }
  // Signs msg with `key` (pkeyutl -rawin, `digest`); the default provider alone verifies it with
  // `pub` as an RSA-PSS key, with the salt length the TPM uses (the digest's).
  void expect_signs(const std::string& key, const std::string& pub, const std::string& digest = "sha256") {
    EXPECT_OK(openssl({"pkeyutl", "-sign", "-inkey", key, "-rawin", "-digest", digest, "-in", path("msg"), "-out",
                       path("sig")}));
    auto v = plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", digest, "-pkeyopt",
                            "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest", "-in", path("msg"),
                            "-sigfile", path("sig")});
    EXPECT_OK(v);
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out << v.err;
  }

  BusProxy bus_{shared_swtpm().port()};
  std::vector<std::string> env_, cnf_env_;
};

std::string order_name(const ::testing::TestParamInfo<bool>& i) { return i.param ? "TpmkeyFirst" : "DefaultFirst"; }
INSTANTIATE_TEST_SUITE_P(Order, RsaPssTest, ::testing::Bool(), order_name);

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// genpkey -propquery provider=tpmkey -algorithm RSA-PSS: an RSA-2048 key in the TPM with scheme
// RSAPSS and SHA-256, listed as rsa-pss2048, whose public key is an RSASSA-PSS SubjectPublicKeyInfo
// with its parameters, and which signs with PSS only.
TEST_P(RsaPssTest, GenpkeyMakesAPssKeyInTheTpm) {
  genpkey("pss");
  const TPMT_PUBLIC pub = public_area("pss");
  EXPECT_EQ(pub.type, TPM2_ALG_RSA);
  EXPECT_EQ(pub.parameters.rsaDetail.keyBits, 2048);
  EXPECT_EQ(pub.parameters.rsaDetail.scheme.scheme, TPM2_ALG_RSAPSS);
  EXPECT_EQ(pub.parameters.rsaDetail.scheme.details.rsapss.hashAlg, TPM2_ALG_SHA256);
  EXPECT_TRUE(pub.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT);
  EXPECT_FALSE(pub.objectAttributes & TPMA_OBJECT_DECRYPT);

  auto list = cli({"list"});
  EXPECT_OK(list);
  EXPECT_TRUE(contains(list.out, "rsa-pss2048")) << list.out;

  // The public key, as the provider writes it and as tpmkey pubkey prints it: RSASSA-PSS with the
  // hash, MGF1 with the same hash, and a 32-byte salt.
  const std::string spki = pubkey("tpm2:pss");
  auto text = plain_openssl({"pkey", "-pubin", "-in", spki, "-noout", "-text"});
  EXPECT_OK(text);
  EXPECT_TRUE(contains(text.out, "PSS parameter restrictions:")) << text.out;
  EXPECT_TRUE(contains(text.out, "Hash Algorithm: SHA2-256")) << text.out;
  EXPECT_TRUE(contains(text.out, "Mask Algorithm: MGF1 with SHA2-256")) << text.out;
  EXPECT_TRUE(contains(text.out, "Minimum Salt Length: 32")) << text.out;
  auto cli_pub = cli({"pubkey", "pss"});
  EXPECT_OK(cli_pub);
  EXPECT_EQ(cli_pub.out, read_file(spki));
  auto asn1 = plain_openssl({"asn1parse", "-in", spki});
  EXPECT_TRUE(contains(asn1.out, "rsassaPss")) << asn1.out;
  EXPECT_FALSE(contains(asn1.out, "rsaEncryption")) << asn1.out;

  expect_signs("tpm2:pss", spki);
  expect_signs(entry("pss"), spki);  // the key file by path: the decoder
  // openssl dgst, verified by the default provider with the key's own restrictions.
  EXPECT_OK(openssl({"dgst", "-sha256", "-sign", "tpm2:pss", "-out", path("dgst.sig"), path("msg")}));
  auto v = plain_openssl({"dgst", "-sha256", "-verify", spki, "-signature", path("dgst.sig"), path("msg")});
  EXPECT_OK(v);
  EXPECT_TRUE(contains(v.out, "Verified OK")) << v.out << v.err;

  // The key file read by path is an RSA-PSS key too.
  auto ktext = openssl({"pkey", "-in", entry("pss"), "-noout", "-text"});
  EXPECT_OK(ktext);
  EXPECT_TRUE(contains(ktext.out, "TPM algorithm: rsa-pss2048")) << ktext.out;
  EXPECT_TRUE(contains(ktext.out, "Hash Algorithm: SHA2-256")) << ktext.out;
}

// PKCS#1 v1.5, another digest, another MGF1 digest or another salt length: refused with the reason
// before any TPM command.
TEST_P(RsaPssTest, SigningRefusesWhatThePssKeyCannotDo) {
  genpkey("pss");
  const std::string spki = pubkey("tpm2:pss");
  bus_.clear();
  struct Case {
    std::vector<std::string> opts;
    const char* error;
  };
  for (const Case& c : {Case{{"-digest", "sha256", "-pkeyopt", "rsa_padding_mode:pkcs1"}, "signs only with PSS"},
                        Case{{"-digest", "sha384"}, "bound to SHA256"},
                        Case{{"-digest", "sha256", "-pkeyopt", "rsa_mgf1_md:sha512"}, "MGF1"},
                        Case{{"-digest", "sha256", "-pkeyopt", "rsa_pss_saltlen:20"}, "salt"}}) {
    SCOPED_TRACE(c.error);
    std::vector<std::string> a = {"pkeyutl", "-sign", "-inkey", "tpm2:pss", "-rawin"};
    a.insert(a.end(), c.opts.begin(), c.opts.end());
    a.insert(a.end(), {"-in", path("msg"), "-out", path("bad.sig")});
    EXPECT_FAILS_WITH(openssl(a), c.error);
  }
  for (uint32_t cc : bus_.take_commands_without_proofs()) EXPECT_NE(cc, TPM2_CC_Sign);
  // And the key still signs.
  expect_signs("tpm2:pss", spki);
}

// openssl req -new with an RSA-PSS key: the CSR's signature algorithm is RSASSA-PSS, and the
// default provider alone verifies it; a self-signed certificate, a leaf it signs as a CA, and a CMS
// signature, all verified by the default provider alone.
TEST_P(RsaPssTest, CertificateRequestIsSignedWithPss) {
  genpkey("pss");
  EXPECT_OK(openssl({"req", "-new", "-key", "tpm2:pss", "-subj", "/CN=pss", "-out", path("req.pem")}));
  auto v = plain_openssl({"req", "-verify", "-in", path("req.pem"), "-noout", "-text"});
  EXPECT_OK(v);
  EXPECT_TRUE(contains(v.out + v.err, "verify OK")) << v.out << v.err;
  EXPECT_TRUE(contains(v.out, "Signature Algorithm: rsassaPss")) << v.out;
  EXPECT_TRUE(contains(v.out, "Salt Length: 0x20")) << v.out;
  // A self-signed certificate too.
  EXPECT_OK(openssl({"req", "-new", "-x509", "-key", "tpm2:pss", "-subj", "/CN=pss", "-days", "1", "-out",
                     path("pss.crt")}));
  auto cv = plain_openssl({"verify", "-CAfile", path("pss.crt"), path("pss.crt")});
  EXPECT_OK(cv);
  // As a CA: x509 -req signs a leaf.
  EXPECT_OK(openssl({"req", "-new", "-key", "tpm2:pss", "-subj", "/CN=leaf", "-out", path("leaf.csr")}));
  EXPECT_OK(openssl({"x509", "-req", "-in", path("leaf.csr"), "-CA", path("pss.crt"), "-CAkey", "tpm2:pss", "-days",
                     "1", "-out", path("leaf.crt")}));
  EXPECT_OK(plain_openssl({"verify", "-CAfile", path("pss.crt"), path("leaf.crt")}));
  // cms -sign: with rsa_padding_mode:pss, as OpenSSL 3.0 needs for any RSA-PSS key (without it, it
  // writes rsaEncryption as the signature algorithm for software RSA-PSS keys too).
  write_file(path("m.txt"), "signed with PSS\n");
  EXPECT_OK(openssl({"cms", "-sign", "-in", path("m.txt"), "-signer", path("pss.crt"), "-inkey", "tpm2:pss",
                     "-keyopt", "rsa_padding_mode:pss", "-outform", "PEM", "-out", path("m.p7")}));
  auto cms = plain_openssl({"cms", "-verify", "-in", path("m.p7"), "-inform", "PEM", "-CAfile", path("pss.crt"),
                            "-content", path("m.txt"), "-out", path("m.out")});
  EXPECT_OK(cms);
  EXPECT_TRUE(contains(cms.err, "Verification successful")) << cms.err;
  auto printed = plain_openssl({"cms", "-cmsout", "-print", "-in", path("m.p7"), "-inform", "PEM"});
  EXPECT_TRUE(contains(printed.out, "rsassaPss")) << printed.out;
}

// The RSA-PSS key generation parameters: the bits, the digest with MGF1 over it and a salt as long
// as it are what the TPM key is bound to; 1024 bits only by size, with the weak-key warning; what
// the TPM cannot honour is refused before any TPM command.
TEST_P(RsaPssTest, KeygenParameters) {
  genpkey("pss384", {"-pkeyopt", "rsa_pss_keygen_md:sha384", "-pkeyopt", "rsa_pss_keygen_mgf1_md:sha384", "-pkeyopt",
                     "rsa_pss_keygen_saltlen:48"});
  const TPMT_PUBLIC pub = public_area("pss384");
  EXPECT_EQ(pub.parameters.rsaDetail.scheme.scheme, TPM2_ALG_RSAPSS);
  EXPECT_EQ(pub.parameters.rsaDetail.scheme.details.rsapss.hashAlg, TPM2_ALG_SHA384);
  const std::string spki = pubkey("tpm2:pss384");
  auto text = plain_openssl({"pkey", "-pubin", "-in", spki, "-noout", "-text"});
  EXPECT_TRUE(contains(text.out, "Hash Algorithm: SHA2-384")) << text.out;
  EXPECT_TRUE(contains(text.out, "Minimum Salt Length: 48")) << text.out;
  expect_signs("tpm2:pss384", spki, "sha384");

  // RSA-PSS-1024 only by size, with the weak-key warning.
  auto weak = openssl({"genpkey", "-propquery", "provider=tpmkey", "-algorithm", "RSA-PSS", "-pkeyopt",
                       "rsa_keygen_bits:1024", "-out", entry("weak")});
  EXPECT_OK(weak);
  EXPECT_TRUE(contains(weak.err, kWeakWarning)) << weak.err;
  // `tpmkey list` names each key's one hash, its columns aligned however wide the entries are.
  auto list = cli({"list"});
  EXPECT_TRUE(contains(list.out, "\npss384                   rsa-pss2048 (sha384) 2048   no        0x40000001")) << list.out;
  EXPECT_TRUE(contains(list.out, "\nweak                     rsa-pss1024 (sha256) 1024   no        0x40000001")) << list.out;
  EXPECT_TRUE(contains(list.out, "NAME                     ALGORITHM            BITS   PASSWORD  PARENT\n")) << list.out;
  const std::string weak_pub = pubkey("tpm2:weak");
  expect_signs("tpm2:weak", weak_pub);

  bus_.clear();
  struct Case {
    std::vector<std::string> opts;
    const char* error;
  };
  for (const Case& c : {Case{{"-pkeyopt", "rsa_pss_keygen_mgf1_md:sha512"}, "the TPM uses the key's digest for MGF1"},
                        Case{{"-pkeyopt", "rsa_pss_keygen_saltlen:20"}, "salt as long as the digest (32 bytes"},
                        Case{{"-pkeyopt", "rsa_pss_keygen_md:sha1"}, "RSA-PSS digest"},
                        Case{{"-pkeyopt", "rsa_keygen_bits:1536"}, "RSA key size 1536"},
                        Case{{"-pkeyopt", "usage:sign,decrypt"}, "only signs"}}) {
    SCOPED_TRACE(c.error);
    std::vector<std::string> a = {"genpkey", "-propquery", "provider=tpmkey", "-algorithm", "RSA-PSS"};
    a.insert(a.end(), c.opts.begin(), c.opts.end());
    a.insert(a.end(), {"-out", path("bad.pem")});
    EXPECT_FAILS_WITH(openssl(a), c.error);
  }
  EXPECT_EQ(bus_.take_commands_without_proofs(), std::vector<uint32_t>{});
}

// Without asking for the TPM, genpkey -algorithm RSA-PSS makes a software key (with tpmkey first,
// through its first key management, which hands generation to the default provider): a PKCS#8 file
// the default provider reads alone, and not a TPM command.
TEST_P(RsaPssTest, UnqualifiedGenpkeyStaysInSoftware) {
  bus_.clear();
  EXPECT_OK(openssl({"genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_pss_keygen_md:sha256", "-pkeyopt",
                     "rsa_pss_keygen_mgf1_md:sha256", "-pkeyopt", "rsa_pss_keygen_saltlen:32", "-out",
                     path("soft.pem")}));
  EXPECT_EQ(bus_.command_codes(), std::vector<uint32_t>{});
  EXPECT_TRUE(contains(read_file(path("soft.pem")), "BEGIN PRIVATE KEY"));
  auto text = plain_openssl({"pkey", "-in", path("soft.pem"), "-noout", "-text"});
  EXPECT_OK(text);
  EXPECT_TRUE(contains(text.out, "PSS parameter restrictions:")) << text.out;
  // It signs in software, in both orders.
  EXPECT_OK(plain_openssl({"pkey", "-in", path("soft.pem"), "-pubout", "-out", path("soft.pub")}));
  expect_signs(path("soft.pem"), path("soft.pub"));
  EXPECT_EQ(bus_.command_codes(), std::vector<uint32_t>{});
}

// tpmkey create --algorithm rsa-pss (and rsa-pss3072): listed, offered by `tpmkey algorithms`,
// signing through the provider with PSS; no decryption usage and no OpenSSH public key, and
// tpmkey agent does not serve it.
TEST_P(RsaPssTest, CliCreatesPssKeys) {
  auto algs = cli({"algorithms"});
  EXPECT_OK(algs);
  EXPECT_TRUE(contains(algs.out, "rsa-pss2048 supported")) << algs.out;
  EXPECT_TRUE(contains(algs.out, "rsa-pss3072 supported")) << algs.out;

  auto made = cli({"create", "p", "--algorithm", "rsa-pss", "--no-password"});
  EXPECT_OK(made);
  EXPECT_TRUE(contains(made.out, "created tpm2:p (rsa-pss2048)")) << made.out;
  EXPECT_EQ(public_area("p").parameters.rsaDetail.scheme.scheme, TPM2_ALG_RSAPSS);
  const std::string pub = path("p.pub");
  write_file(pub, cli({"pubkey", "p"}).out);
  expect_signs("tpm2:p", pub);
  EXPECT_FAILS_WITH(openssl({"pkeyutl", "-sign", "-inkey", "tpm2:p", "-rawin", "-digest", "sha256", "-pkeyopt",
                             "rsa_padding_mode:pkcs1", "-in", path("msg"), "-out", path("bad.sig")}),
                    "signs only with PSS");

  if (tpmkey_first()) {  // once is enough for what does not depend on the provider order
    auto big = cli({"create", "p3", "--algorithm", "rsa-pss3072", "--no-password"});
    EXPECT_OK(big);
    EXPECT_EQ(public_area("p3").parameters.rsaDetail.keyBits, 3072);
    const std::string pub3 = path("p3.pub");
    write_file(pub3, cli({"pubkey", "p3"}).out);
    expect_signs("tpm2:p3", pub3);
    auto list = cli({"list"});
    EXPECT_TRUE(contains(list.out, "rsa-pss3072")) << list.out;

    // tpmkey agent serves the keystore's EC key and says why it leaves the RSA-PSS keys out.
    EXPECT_OK(cli({"create", "ec", "--no-password"}));
    AgentProcess agent(dir_, bus_.tcti(), keystore_);
    auto keys = agent.ssh_add({"-L"});
    EXPECT_OK(keys);
    EXPECT_EQ(std::count(keys.out.begin(), keys.out.end(), '\n'), 1) << keys.out;
    EXPECT_TRUE(contains(keys.out, "ecdsa-sha2-nistp256")) << keys.out;
    EXPECT_TRUE(contains(agent.log(), "tpm2:p is not usable for SSH: unsupported algorithm or parameter: an RSA-PSS key signs only with PSS"))
        << agent.log();
    EXPECT_EQ(agent.stop(), 0);
  }

  bus_.clear();
  EXPECT_FAILS_WITH(cli({"create", "d", "--algorithm", "rsa-pss", "--usage", "sign,decrypt", "--no-password"}),
                    "only signs");
  EXPECT_FALSE(std::filesystem::exists(entry("d")));
  EXPECT_FAILS_WITH(cli({"pubkey", "p", "--format", "openssh"}), "SSH's RSA signatures are PKCS#1 v1.5");
  for (uint32_t cc : bus_.take_commands_without_proofs()) EXPECT_NE(cc, TPM2_CC_Create);
}

// tpmkey import of software RSA-PSS keys: restricted to SHA-256 or SHA-384 (MGF1 with the same hash,
// a minimum salt the TPM's digest-length salt meets) and unrestricted (bound to SHA-256 in the TPM),
// each then signing PSS in the TPM (through openssl in this test's provider order), verified with
// the original key; what the TPM cannot honour is refused before any TPM command, and nothing is
// written.
TEST_P(RsaPssTest, ImportsSoftwarePssKeys) {
  struct Case {
    const char* name;
    std::vector<std::string> opts;
    const char* digest;
  };
  for (const Case& c : {Case{"r256",
                             {"-pkeyopt", "rsa_pss_keygen_md:sha256", "-pkeyopt", "rsa_pss_keygen_mgf1_md:sha256",
                              "-pkeyopt", "rsa_pss_keygen_saltlen:32"},
                             "sha256"},
                        Case{"r384",
                             {"-pkeyopt", "rsa_pss_keygen_md:sha384", "-pkeyopt", "rsa_pss_keygen_mgf1_md:sha384",
                              "-pkeyopt", "rsa_pss_keygen_saltlen:20"},
                             "sha384"},
                        Case{"open", {}, "sha256"}}) {
    SCOPED_TRACE(c.name);
    const std::string file = path(std::string(c.name) + ".key"), pub = path(std::string(c.name) + ".pub");
    std::vector<std::string> gen = {"genpkey", "-algorithm", "RSA-PSS", "-out", file};
    gen.insert(gen.end(), c.opts.begin(), c.opts.end());
    ASSERT_OK(plain_openssl(gen));
    ASSERT_OK(plain_openssl({"pkey", "-in", file, "-pubout", "-out", pub}));
    auto r = cli({"import", c.name, file, "--no-password"});
    ASSERT_OK(r);
    EXPECT_TRUE(contains(r.out, std::string("imported tpm2:") + c.name + " (rsa-pss2048, imported)")) << r.out;
    const TPMT_PUBLIC area = public_area(c.name);
    EXPECT_EQ(area.parameters.rsaDetail.scheme.scheme, TPM2_ALG_RSAPSS);
    EXPECT_EQ(area.parameters.rsaDetail.scheme.details.rsapss.hashAlg,
              std::string(c.digest) == "sha384" ? TPM2_ALG_SHA384 : TPM2_ALG_SHA256);
    expect_signs(std::string("tpm2:") + c.name, pub, c.digest);
    // Restricted as the TPM key is, the original's public key is the same SubjectPublicKeyInfo.
    if (std::string(c.name) == "r256") {
      EXPECT_EQ(cli({"pubkey", c.name}).out, read_file(pub));
    }
  }
  bus_.clear();
  for (const Case& c : {Case{"mgf1", {"-pkeyopt", "rsa_pss_keygen_md:sha256"}, "MGF1 over SHA1"},
                        Case{"salt",
                             {"-pkeyopt", "rsa_pss_keygen_md:sha256", "-pkeyopt", "rsa_pss_keygen_mgf1_md:sha256",
                              "-pkeyopt", "rsa_pss_keygen_saltlen:40"},
                             "salt is at least 40 bytes"},
                        Case{"sha1", {"-pkeyopt", "rsa_pss_keygen_md:sha1"}, "restricted to SHA1"}}) {
    SCOPED_TRACE(c.name);
    const std::string file = path(std::string(c.name) + ".key");
    std::vector<std::string> gen = {"genpkey", "-algorithm", "RSA-PSS", "-out", file};
    gen.insert(gen.end(), c.opts.begin(), c.opts.end());
    ASSERT_OK(plain_openssl(gen));
    EXPECT_FAILS_WITH(cli({"import", c.name, file, "--no-password"}), c.digest);
    EXPECT_FALSE(std::filesystem::exists(entry(c.name)));
  }
  EXPECT_EQ(bus_.take_commands_without_proofs(), std::vector<uint32_t>{});
}

// In process: a generated key and the same key loaded from the keystore are RSA-PSS keys; a warm
// signature is one TPM2_Sign; PKCS#1 v1.5 padding is refused when it is set.
TEST_P(RsaPssTest, InProcessKeysAreRsaPss) {
  OSSL_LIB_CTX* l = lib(bus_.tcti(), "", tpmkey_first());
  EVP_PKEY_CTX* g = EVP_PKEY_CTX_new_from_name(l, "RSA-PSS", "provider=tpmkey");
  ASSERT_TRUE(g) << drain_errors();
  EVP_PKEY* raw = nullptr;
  ASSERT_EQ(EVP_PKEY_keygen_init(g), 1) << drain_errors();
  ASSERT_EQ(EVP_PKEY_generate(g, &raw), 1) << drain_errors();
  EVP_PKEY_CTX_free(g);
  PkeyPtr key(raw, EVP_PKEY_free);
  EXPECT_TRUE(EVP_PKEY_is_a(key.get(), "RSA-PSS"));
  EXPECT_EQ(EVP_PKEY_get_bits(key.get()), 2048);
  char md[32] = "";
  EXPECT_GT(EVP_PKEY_get_default_digest_name(key.get(), md, sizeof md), 0);
  EXPECT_EQ(hash_from_name(md), TPM2_ALG_SHA256) << md;
  ASSERT_TRUE(store_key(key.get(), entry("k"))) << drain_errors();

  PkeyPtr loaded = load_key(l, "tpm2:k");
  ASSERT_TRUE(loaded) << drain_errors();
  EXPECT_TRUE(EVP_PKEY_is_a(loaded.get(), "RSA-PSS"));
  PkeyPtr pub = public_copy(loaded.get());
  ASSERT_TRUE(pub);
  EXPECT_TRUE(EVP_PKEY_is_a(pub.get(), "RSA-PSS"));

  SignOpts o{"SHA256", RSA_PKCS1_PSS_PADDING};
  auto sig = digest_sign(l, loaded.get(), "cold", o);  // loads the key
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EXPECT_TRUE(digest_verify(pub.get(), "cold", sig, o)) << drain_errors();
  bus_.clear();
  sig = digest_sign(l, loaded.get(), "warm", o);
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EXPECT_TRUE(digest_verify(pub.get(), "warm", sig, o)) << drain_errors();
  EXPECT_EQ(bus_.take_commands_without_proofs(), std::vector<uint32_t>{TPM2_CC_Sign});

  // Without setting a padding, the key signs PSS (what it is bound to).
  sig = digest_sign(l, loaded.get(), "default", SignOpts{"SHA256", 0});
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EXPECT_TRUE(digest_verify(pub.get(), "default", sig, o)) << drain_errors();

  EVP_MD_CTX* m = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  ASSERT_EQ(EVP_DigestSignInit_ex(m, &pctx, "SHA256", l, nullptr, loaded.get(), nullptr), 1) << drain_errors();
  EXPECT_LE(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING), 0);
  EXPECT_TRUE(contains(drain_errors(), "signs only with PSS"));
  EVP_MD_CTX_free(m);
  EXPECT_EQ(bus_.take_commands_without_proofs(), std::vector<uint32_t>{TPM2_CC_Sign});
}

// TLS with the RSA-PSS key and a self-signed RSASSA-PSS certificate from it, TLS 1.3 and 1.2:
// as s_server's key, verified by plain s_client (the default provider alone), and as s_client's
// client key against a plain s_server that requires a client certificate. The TPM signs the
// handshake with rsa_pss_pss_sha256. Each server serves one connection and exits.
TEST_P(RsaPssTest, TlsServerAndClientKey) {
  genpkey("tls");
  ASSERT_OK(openssl({"req", "-new", "-x509", "-key", "tpm2:tls", "-subj", "/CN=localhost", "-days", "1", "-out",
                     path("tls.crt")}));
  ASSERT_OK(plain_openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                           path("sw.key"), "-subj", "/CN=localhost", "-days", "1", "-out", path("sw.crt")}));
  int servers = 0;
  // One s_server (with `server_env`) and one s_client (with `client_env`) handshake.
  auto handshake = [&](const std::vector<std::string>& server_env, std::vector<std::string> server_args,
                       const std::vector<std::string>& client_env, std::vector<std::string> client_args) {
    int port = -1;
    for (int i = 0; i < 200 && port < 0; ++i) {
      int p = kPortBase + 2 * int(std::rand() % kPortPairs);
      if (port_free(p)) port = p;
    }
    ASSERT_GT(port, 0);
    const std::string log = path("server-" + std::to_string(++servers) + ".log");
    std::vector<std::string> a = {"/usr/bin/env"};
    a.insert(a.end(), server_env.begin(), server_env.end());
    if (const char* rt = std::getenv("TPMKEY_SUBPROCESS_PRELOAD"); rt && *rt)  // as test/process.cc does
      a.insert(a.end(), {std::string("LD_PRELOAD=") + rt, "ASAN_OPTIONS=detect_leaks=0"});
    a.insert(a.end(), {"openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(port), "-www", "-naccept", "1"});
    a.insert(a.end(), server_args.begin(), server_args.end());
    pid_t pid = spawn(a, log);
    for (int i = 0; i < 400 && !contains(read_file(log), "ACCEPT"); ++i) usleep(25000);
    ASSERT_TRUE(contains(read_file(log), "ACCEPT")) << read_file(log);
    client_args.insert(client_args.begin(),
                       {"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(port), "-ign_eof"});
    auto r = run(client_args, client_env, "GET / HTTP/1.0\r\n\r\n", 60);
    EXPECT_TRUE(contains(r.out, "HTTP/1.0 200 ok")) << r.out << r.err << read_file(log);
    int status = 0;
    bool exited = false;
    for (int i = 0; i < 400 && !exited; ++i) {
      if (waitpid(pid, &status, WNOHANG) == pid) exited = true;
      else usleep(25000);
    }
    if (!exited) stop_child(pid);
    EXPECT_TRUE(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(log);
    EXPECT_FALSE(contains(read_file(log), "error")) << read_file(log);
  };
  // A key bound to SHA-384: rsa_pss_pss_sha384.
  genpkey("tls384", {"-pkeyopt", "rsa_pss_keygen_md:sha384"});
  ASSERT_OK(openssl({"req", "-new", "-x509", "-key", "tpm2:tls384", "-subj", "/CN=localhost", "-days", "1", "-out",
                     path("tls384.crt")}));
  bus_.clear();
  handshake(cnf_env_, {"-cert", path("tls384.crt"), "-key", "tpm2:tls384"}, env_,
            {"-CAfile", path("tls384.crt"), "-verify_return_error", "-tls1_3"});
  {
    auto sent = bus_.take_commands_without_proofs();
    EXPECT_EQ(std::count(sent.begin(), sent.end(), TPM2_CC_Sign), 1);
  }
  for (const std::string version : {"-tls1_3", "-tls1_2"}) {
    SCOPED_TRACE(version);
    {
      SCOPED_TRACE("server key in the TPM");
      bus_.clear();
      handshake(cnf_env_, {"-cert", path("tls.crt"), "-key", "tpm2:tls"}, env_,
                {"-CAfile", path("tls.crt"), "-verify_return_error", version});
      auto sent = bus_.take_commands_without_proofs();
      EXPECT_EQ(std::count(sent.begin(), sent.end(), TPM2_CC_Sign), 1);
    }
    {
      SCOPED_TRACE("client key in the TPM");
      bus_.clear();
      handshake(env_, {"-cert", path("sw.crt"), "-key", path("sw.key"), "-Verify", "1", "-CAfile", path("tls.crt"),
                       "-verify_return_error"},
                cnf_env_, {"-cert", path("tls.crt"), "-key", "tpm2:tls", "-CAfile", path("sw.crt"),
                           "-verify_return_error", version});
      auto sent = bus_.take_commands_without_proofs();
      EXPECT_EQ(std::count(sent.begin(), sent.end(), TPM2_CC_Sign), 1);
    }
  }
}

}  // namespace
}  // namespace tpmkey::test
