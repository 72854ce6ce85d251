#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <vector>

#include <tss2/tss2_mu.h>

#include "keystore/algorithm.h"
#include "keystore/keyfile.h"
#include "keystore/keystore.h"
#include "keystore/tpm/tss_loader.h"
#include "keystore/tpm_wire.h"
#include "test/support.h"

namespace tpmkey {
namespace {

std::string data_file(const char* name) { return std::string(TPMKEY_TEST_DATA) + "/" + name; }

TEST(KeyFile, ParsesAFileMadeByTpm2Openssl) {
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf) << kf.error().text();
  EXPECT_TRUE(kf->empty_auth);
  EXPECT_EQ(kf->parent, 0x40000001u);
  EXPECT_EQ(kf->pub.publicArea.type, TPM2_ALG_ECC);
  EXPECT_EQ(kf->pub.publicArea.parameters.eccDetail.curveID, TPM2_ECC_NIST_P256);
  EXPECT_GT(kf->priv.size, 0);
}

// DER is recognised by its first byte: text that looks like PEM inside it (here in the
// description) does not make the parser read it as PEM.
TEST(KeyFile, DerWithPemLikeTextStaysDer) {
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf);
  kf->description = "-----BEGIN TSS2 PRIVATE KEY----- is how the PEM form starts";
  Bytes der = keyfile_der(*kf);
  auto back = parse_keyfile(der.data(), der.size());
  ASSERT_TRUE(back) << back.error().text();
  EXPECT_EQ(back->description, kf->description);
  // PEM after explanatory lines still reads as PEM.
  std::string pem = "A key made by tpmkey.\n" + keyfile_pem(*kf);
  auto from_pem = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
  ASSERT_TRUE(from_pem) << from_pem.error().text();
  EXPECT_EQ(from_pem->description, kf->description);
}

TEST(KeyFile, FormatParseRoundTripPemAndDer) {
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf);
  kf->description = "laptop ssh key";
  kf->parent = 0x81000001;
  kf->empty_auth = false;
  std::string pem = keyfile_pem(*kf);
  EXPECT_EQ(pem.rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0), 0u);
  for (const Bytes& enc : {Bytes(pem.begin(), pem.end()), keyfile_der(*kf)}) {
    auto back = parse_keyfile(enc.data(), enc.size());
    ASSERT_TRUE(back) << back.error().text();
    EXPECT_EQ(back->description, "laptop ssh key");
    EXPECT_EQ(back->parent, 0x81000001u);
    EXPECT_FALSE(back->empty_auth);
    EXPECT_EQ(keyfile_der(*back), keyfile_der(*kf));
  }
}

TEST(KeyFile, RejectsGarbageWithClearErrors) {
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf);
  Bytes der = keyfile_der(*kf);
  // Every truncation fails cleanly.
  for (size_t n = 0; n < der.size(); ++n) {
    auto r = parse_keyfile(der.data(), n);
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(r.error().reason, Reason::kMalformedKey);
  }
  // Every single-byte corruption either fails cleanly or still parses; never crashes.
  for (size_t i = 0; i < der.size(); ++i) {
    Bytes c = der;
    c[i] ^= 0x5A;
    (void)parse_keyfile(c.data(), c.size());
  }
  std::string other = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
  auto r = parse_keyfile(reinterpret_cast<const uint8_t*>(other.data()), other.size());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().text().find("\"PRIVATE KEY\""), std::string::npos) << r.error().text();
}

TEST(KeyFile, PolicyAndImportableKeysAreUnsupported) {
  // SEQUENCE { OID importableKey, INTEGER 0x40000001, OCTET STRING {}, OCTET STRING {} }
  const uint8_t importable[] = {0x30, 0x12, 0x06, 0x06, 0x67, 0x81, 0x05, 0x0A, 0x01, 0x04, 0x02,
                                0x04, 0x40, 0x00, 0x00, 0x01, 0x04, 0x00, 0x04, 0x00};
  auto r = parse_keyfile(importable, sizeof importable);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::kUnsupported);
}

// The decoders use this to tell a TPM key file (even a damaged one) from any other DER.
TEST(KeyFile, RecognisesTpmKeyFilesByTheirFirstBytes) {
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf);
  Bytes der = keyfile_der(*kf);
  ASSERT_GT(der.size(), 128u);  // long-form outer length
  EXPECT_TRUE(looks_like_tss2_der(der.data(), der.size()));
  EXPECT_TRUE(looks_like_tss2_der(der.data(), 10));  // SEQUENCE header, OID header, 2.23.133.10.1
  EXPECT_FALSE(looks_like_tss2_der(der.data(), 9));
  for (size_t n = 10; n < der.size(); ++n) {
    auto r = parse_keyfile(der.data(), n);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().detail.find("truncated TSS2 PRIVATE KEY"), std::string::npos) << n << ": " << r.error().detail;
  }
  Bytes trailing = der;
  trailing.push_back(0);
  EXPECT_EQ(parse_keyfile(trailing.data(), trailing.size()).error().detail, "data after the TSS2 PRIVATE KEY structure");
  // PKCS#8 (SEQUENCE { INTEGER 0, ... }) and SubjectPublicKeyInfo (SEQUENCE { SEQUENCE { OID ...
  const uint8_t pkcs8[] = {0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D};
  const uint8_t spki[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01};
  EXPECT_FALSE(looks_like_tss2_der(pkcs8, sizeof pkcs8));
  EXPECT_FALSE(looks_like_tss2_der(spki, sizeof spki));
  const uint8_t other_oid[] = {0x30, 0x10, 0x06, 0x06, 0x67, 0x81, 0x05, 0x0A, 0x02, 0x03, 0x00, 0x00, 0x00};
  EXPECT_FALSE(looks_like_tss2_der(other_oid, sizeof other_oid));
  EXPECT_FALSE(looks_like_tss2_der(nullptr, 0));
}

// Public areas of every kind a key file can hold, for the reader's comparison with tss2-mu:
// tpmkey's own templates (EC, RSA, RSA-PSS, both usages, imported), the SRK's, and selectors
// tpmkey does not make (ECDAA, OAEP, a KDF, AES symmetric parameters, keyed-hash and symmetric
// objects), with unique fields filled.
std::vector<TPM2B_PUBLIC> sample_public_areas() {
  std::vector<TPM2B_PUBLIC> out;
  for (const char* name : {"ec-p256", "ec-p384", "rsa2048", "rsa-pss2048"}) {
    const AlgorithmSpec* spec = find_algorithm(name);
    if (!spec) continue;
    for (unsigned usage : {kUsageSign, kUsageSign | kUsageDecrypt}) {
      KeyOptions o;
      o.spec = spec;
      o.usage = spec->kind == KeyKind::kRsaPss ? kUsageSign : usage;
      o.with_auth = usage != kUsageSign;
      out.push_back(key_template(o));
      out.push_back(import_template(o));
    }
  }
  out.push_back(srk_template());
  for (TPM2B_PUBLIC& t : out) {
    TPMT_PUBLIC& p = t.publicArea;
    if (p.type == TPM2_ALG_RSA) {
      p.unique.rsa.size = 256;
      std::memset(p.unique.rsa.buffer, 0xA5, 256);
    } else {
      p.unique.ecc.x.size = p.unique.ecc.y.size = 32;
      std::memset(p.unique.ecc.x.buffer, 0x11, 32);
      std::memset(p.unique.ecc.y.buffer, 0x22, 32);
    }
  }
  TPM2B_PUBLIC ecdaa = out.front();
  ecdaa.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDAA;
  ecdaa.publicArea.parameters.eccDetail.scheme.details.ecdaa = {TPM2_ALG_SHA256, 7};
  ecdaa.publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_KDF1_SP800_56A;
  ecdaa.publicArea.parameters.eccDetail.kdf.details.kdf1_sp800_56a.hashAlg = TPM2_ALG_SHA384;
  ecdaa.publicArea.authPolicy.size = 32;
  std::memset(ecdaa.publicArea.authPolicy.buffer, 0x5A, 32);
  out.push_back(ecdaa);
  TPM2B_PUBLIC oaep = *std::find_if(out.begin(), out.end(), [](const TPM2B_PUBLIC& t) {
    return t.publicArea.type == TPM2_ALG_RSA && t.publicArea.parameters.rsaDetail.scheme.scheme == TPM2_ALG_NULL;
  });
  oaep.publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_OAEP;
  oaep.publicArea.parameters.rsaDetail.scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
  oaep.publicArea.parameters.rsaDetail.symmetric = {TPM2_ALG_AES, {128}, {TPM2_ALG_CFB}};
  out.push_back(oaep);
  TPM2B_PUBLIC hmac{};
  hmac.publicArea.type = TPM2_ALG_KEYEDHASH;
  hmac.publicArea.nameAlg = TPM2_ALG_SHA256;
  hmac.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_XOR;
  hmac.publicArea.parameters.keyedHashDetail.scheme.details.exclusiveOr = {TPM2_ALG_SHA256, TPM2_ALG_KDF1_SP800_108};
  hmac.publicArea.unique.keyedHash.size = 32;
  out.push_back(hmac);
  TPM2B_PUBLIC sym{};
  sym.publicArea.type = TPM2_ALG_SYMCIPHER;
  sym.publicArea.nameAlg = TPM2_ALG_SHA256;
  sym.publicArea.parameters.symDetail.sym = {TPM2_ALG_AES, {256}, {TPM2_ALG_CBC}};
  out.push_back(sym);
  return out;
}

// What tss2-mu makes of `blob`: whether it reads all of it as a TPM2B_PUBLIC, and into what.
bool mu_reads(const std::vector<uint8_t>& blob, TPM2B_PUBLIC* out) {
  size_t off = 0;
  return Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob.data(), blob.size(), &off, out) == TSS2_RC_SUCCESS && off == blob.size();
}

// Key files are read without tpm2-tss (keystore/tpm_wire.h). Every public area tss2-mu writes
// reads back to the same structure; and over every one-byte change, truncation and extension of
// those blobs, whatever the reader accepts tss2-mu reads identically, so it accepts nothing that
// tss2-mu would refuse or read otherwise.
TEST(TpmWire, ReadsWhatTss2MuReadsAndNothingElse) {
  ASSERT_TRUE(tss::load());
  size_t accepted = 0, mutations = 0;
  const std::vector<TPM2B_PUBLIC> samples = sample_public_areas();
  for (size_t n = 0; n < samples.size(); ++n) {
    SCOPED_TRACE("sample " + std::to_string(n));
    const TPM2B_PUBLIC& t = samples[n];
    std::vector<uint8_t> blob(sizeof(TPM2B_PUBLIC));
    size_t len = 0;
    ASSERT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&t, blob.data(), blob.size(), &len), TSS2_RC_SUCCESS) << "type " << t.publicArea.type;
    blob.resize(len);
    TPM2B_PUBLIC mine{}, theirs{};
    ASSERT_TRUE(read_tpm2b_public(blob.data(), blob.size(), &mine)) << "type " << t.publicArea.type;
    ASSERT_TRUE(mu_reads(blob, &theirs));
    EXPECT_EQ(std::memcmp(&mine, &theirs, sizeof mine), 0) << "type " << t.publicArea.type;
    auto compare = [&](const std::vector<uint8_t>& b) {
      ++mutations;
      TPM2B_PUBLIC m{}, u{};
      if (!read_tpm2b_public(b.data(), b.size(), &m)) return;
      ++accepted;
      ASSERT_TRUE(mu_reads(b, &u)) << "accepted what tss2-mu refuses (type " << t.publicArea.type << "): "
                                   << to_hex(b);
      ASSERT_EQ(std::memcmp(&m, &u, sizeof m), 0) << "read otherwise than tss2-mu (type " << t.publicArea.type << ")";
    };
    for (size_t i = 0; i < blob.size(); ++i) {
      for (uint8_t v : {uint8_t(0x00), uint8_t(0x01), uint8_t(0xFF), uint8_t(blob[i] ^ 0x80), uint8_t(blob[i] + 1)}) {
        std::vector<uint8_t> b = blob;
        b[i] = v;
        compare(b);
      }
      compare(std::vector<uint8_t>(blob.begin(), blob.begin() + long(i)));
    }
    std::vector<uint8_t> longer = blob;
    longer.push_back(0);
    compare(longer);
  }
  EXPECT_GT(accepted, 0u);
  std::printf("%zu changed blobs, %zu read (each as tss2-mu reads it)\n", mutations, accepted);
  // The private blob: a size and that many bytes, no more and no less.
  TPM2B_PRIVATE priv{};
  const uint8_t ok[] = {0x00, 0x03, 1, 2, 3};
  ASSERT_TRUE(read_tpm2b_private(ok, sizeof ok, &priv));
  EXPECT_EQ(priv.size, 3);
  EXPECT_EQ(priv.buffer[2], 3);
  EXPECT_FALSE(read_tpm2b_private(ok, sizeof ok - 1, &priv));
  const uint8_t extra[] = {0x00, 0x01, 1, 2};
  EXPECT_FALSE(read_tpm2b_private(extra, sizeof extra, &priv));
  const uint8_t huge[] = {0xFF, 0xFF};
  EXPECT_FALSE(read_tpm2b_private(huge, sizeof huge, &priv));
}

TEST(Keystore, AddIsAtomicPrivateAndNeverOverwrites) {
  std::string dir = test::make_temp_dir("tpmkey-ks") + "/nested/ks";
  Keystore ks(dir);
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf);
  ASSERT_TRUE(ks.add("k1", *kf));
  struct stat st{};
  ASSERT_EQ(stat(ks.path_of("k1").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  std::string before = test::read_file(ks.path_of("k1"));
  kf->description = "other";
  auto again = ks.add("k1", *kf);
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().text().find("already exists"), std::string::npos);
  EXPECT_EQ(test::read_file(ks.path_of("k1")), before);
  EXPECT_FALSE(ks.add("../escape", *kf));
  auto names = ks.list();
  ASSERT_TRUE(names);
  EXPECT_EQ(*names, std::vector<std::string>{"k1"});  // no temporary files left behind
  EXPECT_TRUE(ks.remove("k1"));
  EXPECT_EQ(ks.remove("k1").error().reason, Reason::kKeyNotFound);
  test::remove_tree(dir.substr(0, dir.size() - std::string("/nested/ks").size()));
}

// The keystore's permission rule (files.h) for key files: nothing is added to a directory
// others can write, and an entry is trusted only when the user or root could have written it.
TEST(Keystore, UnsafeKeystoreAndEntriesAreRefused) {
  const std::string top = test::make_temp_dir("tpmkey-ks");
  const std::string real_top = std::filesystem::canonical(top).string();
  Keystore ks(top + "/ks");
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf);
  ASSERT_TRUE(ks.add("k1", *kf));
  ASSERT_EQ(chmod(ks.dir().c_str(), 0777), 0);
  auto add = ks.add("k2", *kf);
  ASSERT_FALSE(add);
  EXPECT_EQ(add.error().reason, Reason::kUnsafePermissions);
  EXPECT_NE(add.error().text().find("add(tpm2:k2): unsafe ownership or permissions: the keystore directory " +
                                    real_top + "/ks is writable by its group and others (mode 0777)"),
            std::string::npos)
      << add.error().text();
  EXPECT_NE(add.error().text().find("`chmod go-w " + real_top + "/ks`"), std::string::npos) << add.error().text();
  EXPECT_FALSE(ks.exists("k2"));
  EXPECT_EQ(ks.replace("k1", *kf).error().reason, Reason::kUnsafePermissions);
  EXPECT_EQ(ks.read("k1").error().reason, Reason::kUnsafePermissions);
  ASSERT_EQ(chmod(ks.dir().c_str(), 0700), 0);
  ASSERT_TRUE(ks.read("k1"));

  ASSERT_EQ(chmod(ks.path_of("k1").c_str(), 0660), 0);
  auto entry = ks.read("k1");
  ASSERT_FALSE(entry);
  EXPECT_EQ(entry.error().reason, Reason::kUnsafePermissions);
  EXPECT_NE(entry.error().text().find(ks.path_of("k1") + " is writable by its group (mode 0660)"), std::string::npos)
      << entry.error().text();
  ASSERT_EQ(chmod(ks.path_of("k1").c_str(), 0600), 0);
  test::write_file(ks.handle_path_of("k1"), "0x81000002\n");
  ASSERT_EQ(chmod(ks.handle_path_of("k1").c_str(), 0606), 0);
  auto handle = ks.read("k1");
  ASSERT_FALSE(handle);
  EXPECT_NE(handle.error().text().find(ks.handle_path_of("k1") + " is writable by others (mode 0606)"),
            std::string::npos)
      << handle.error().text();
  ASSERT_EQ(chmod(ks.handle_path_of("k1").c_str(), 0600), 0);
  auto persistent = ks.read("k1");
  ASSERT_TRUE(persistent) << persistent.error().text();
  EXPECT_EQ(persistent->persistent, 0x81000002u);

  // A key file by path (tpm2:file=): the file's owner and other-write bit only; its directory
  // (here world-writable) and its group (tpm2-tools writes 0660) are the user's choice.
  const std::string loose = top + "/loose";
  ASSERT_EQ(mkdir(loose.c_str(), 0777), 0);
  ASSERT_EQ(chmod(loose.c_str(), 0777), 0);
  test::write_file(loose + "/k.pem", test::read_file(ks.path_of("k1")));
  ASSERT_EQ(chmod((loose + "/k.pem").c_str(), 0660), 0);
  EXPECT_TRUE(read_keyfile(loose + "/k.pem", Symlinks::kFollow, Writers::kUserOrRootAndGroup));
  EXPECT_FALSE(read_keyfile(loose + "/k.pem", Symlinks::kFollow, Writers::kUserOrRoot));
  ASSERT_EQ(chmod((loose + "/k.pem").c_str(), 0666), 0);
  auto by_path = read_keyfile(loose + "/k.pem", Symlinks::kFollow, Writers::kUserOrRootAndGroup);
  ASSERT_FALSE(by_path);
  EXPECT_EQ(by_path.error().reason, Reason::kUnsafePermissions);
  EXPECT_NE(by_path.error().text().find(loose + "/k.pem is writable by others (mode 0666), so another user could "
                                                "have written it: check it, then `chmod o-w " + loose + "/k.pem`"),
            std::string::npos)
      << by_path.error().text();
  EXPECT_TRUE(read_keyfile(loose + "/k.pem"));  // kAnyone: what import-file reads, and checks itself

  test::remove_tree(top);
}

TEST(Keystore, AnotherUsersKeyFileIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "chown to another user needs root";
  const std::string top = test::make_temp_dir("tpmkey-ks");
  Keystore ks(top + "/ks");
  auto kf = read_keyfile(data_file("tpm2-openssl-ec-p256.pem"));
  ASSERT_TRUE(kf);
  ASSERT_TRUE(ks.add("k", *kf));
  ASSERT_EQ(chown(ks.path_of("k").c_str(), 65534, 65534), 0);
  auto r = ks.read("k");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::kUnsafePermissions);
  EXPECT_NE(r.error().text().find(ks.path_of("k") + " is owned by uid 65534, not by you (uid 0) or root"),
            std::string::npos)
      << r.error().text();
  // By path, the same file.
  EXPECT_EQ(read_keyfile(ks.path_of("k"), Symlinks::kFollow, Writers::kUserOrRootAndGroup).error().reason,
            Reason::kUnsafePermissions);
  test::remove_tree(top);
}

}  // namespace
}  // namespace tpmkey
