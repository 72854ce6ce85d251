#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "keystore/keyfile.h"
#include "keystore/keystore.h"
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
