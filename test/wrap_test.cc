// `tpmkey srk`, `tpmkey wrap` and `tpmkey import` of a wrapped file, across two TPMs: this
// binary's swtpm is the target (it exports its SRK and imports), a second Swtpm is another
// machine's TPM. Wrapping runs with a TCTI that points nowhere. Every signature of an imported key
// is verified with the ORIGINAL key by the default provider alone. Also: the other TPM refuses the
// file naming both SRKs (its keystore and its TPM left as they were), a file without its SRK-Name
// line refused there by TPM2_Import's integrity check, a password given at wrap time, a tampered
// duplicate (TPM_RC_INTEGRITY), an SRK file of an SRK the pin does not name, an edited SRK file,
// and tpm2-tools both ways (tpm2_duplicate's files imported by tpmkey, tpmkey's file by
// tpm2_import).
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <sstream>

#include <openssl/pem.h>

#include "keystore/keyfile.h"
#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

CommandResult plain_openssl(std::vector<std::string> args) {
  args.insert(args.begin(), "openssl");
  return run(args, {"OPENSSL_CONF=/dev/null"});
}

PkeyPtr read_original(const std::string& path) { return read_pem_private_key(path); }

unsigned mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

// The line "SRK-Name: HEX" of an SRK or wrapped file, without its prefix.
std::string srk_name_in(const std::string& text) {
  const size_t at = text.find("SRK-Name: ");
  if (at == std::string::npos) return "";
  return text.substr(at + 10, text.find('\n', at) - at - 10);
}

class WrapTest : public TpmTest {
 protected:
  WrapTest() : TpmTest("tpmkey-wrap-test") {}

  static void SetUpTestSuite() {
    keys_ = make_temp_dir("tpmkey-wrap-keys");
    other_ = new Swtpm();
    ASSERT_OK(plain_openssl({"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                             keys_ + "/ec.pem"}));
    ASSERT_OK(plain_openssl({"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
                             keys_ + "/rsa.pem"}));
    ASSERT_OK(plain_openssl({"pkey", "-in", keys_ + "/ec.pem", "-aes256", "-passout", "pass:wrap pass", "-out",
                             keys_ + "/ec-enc.pem"}));
  }
  static void TearDownTestSuite() {
    delete other_;
    other_ = nullptr;
    remove_tree(keys_);
  }

  void SetUp() override {
    TpmTest::SetUp();
    std::filesystem::create_directories(dir_);
    other_keystore_ = dir_ + "/other-keystore";
  }

  // The CLI with no TPM reachable: a TCTI to a closed loopback port, and no keystore.
  CommandResult offline(std::vector<std::string> args) {
    args.insert(args.begin(), {tpmkey_bin(), "--tcti", "swtpm:host=127.0.0.1,port=1", "--keystore",
                               dir_ + "/no-keystore"});
    return run(args, {"TSS2_LOG=all+none", "TPMKEY_TCTI="}, "", 60);
  }
  // The CLI on the other TPM with its own keystore.
  CommandResult on_other(std::vector<std::string> args) {
    args.insert(args.begin(), {tpmkey_bin(), "--tcti", other_->tcti(), "--keystore", other_keystore_});
    return run(args, {"TSS2_LOG=all+none"}, "", 60);
  }

  // This TPM's SRK file, and the key wrapped for it.
  std::string export_srk() {
    const std::string srk = dir_ + "/srk.pem";
    auto r = tpmkey({"srk", "--out", srk});
    EXPECT_OK(r);
    EXPECT_NE(r.out.find("SRK name: " + srk_name_in(read_file(srk))), std::string::npos) << r.out;
    return srk;
  }
  std::string wrap(const std::string& srk, const std::string& key, const std::string& out,
                   std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"wrap", "--parent", srk, "--from", key, "--out", out};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = offline(args);
    EXPECT_OK(r);
    return r.out;
  }

  bool signs(const std::string& uri, const std::string& orig) {
    OSSL_LIB_CTX* l = lib(tcti_);
    PkeyPtr key = load_key(l, uri);
    if (!key) {
      ADD_FAILURE() << "cannot load " << uri << ": " << drain_errors();
      return false;
    }
    const std::string msg = "signed with the wrapped key " + uri;
    auto sig = digest_sign(l, key.get(), msg, {});
    PkeyPtr original = read_original(orig);
    return !sig.empty() && original && digest_verify(original.get(), msg, sig, {});
  }

  std::map<std::string, std::string> files_in(const std::string& dir) const {
    std::map<std::string, std::string> out;
    if (!std::filesystem::exists(dir)) return out;
    for (const auto& e : std::filesystem::directory_iterator(dir)) out[e.path().filename()] = read_file(e.path());
    return out;
  }

  static std::string keys_;
  static Swtpm* other_;
  std::string other_keystore_;
};

std::string WrapTest::keys_;
Swtpm* WrapTest::other_ = nullptr;

// The whole way: srk --out on the target, wrap with no TPM, import on the target, signatures
// through the provider verified with the original keys.
TEST_F(WrapTest, WrappedKeysImportOnTheTargetAndSignAsTheOriginal) {
  const std::string srk = export_srk();
  EXPECT_EQ(mode_of(srk), 0600u);
  const std::string text = read_file(srk);
  EXPECT_NE(text.find("-----BEGIN PUBLIC KEY-----"), std::string::npos) << text;
  EXPECT_EQ(srk_name_in(text).size(), 68u) << text;  // 000b + SHA-256
  // openssl reads it as it is; and the SRK is never overwritten.
  EXPECT_OK(plain_openssl({"pkey", "-pubin", "-in", srk, "-noout"}));
  EXPECT_FAILS_WITH(tpmkey({"srk", "--out", srk}), "exists");
  auto printed = tpmkey({"srk"});
  ASSERT_OK(printed);
  EXPECT_EQ(printed.out, text);

  for (const std::string kind : {"ec", "rsa"}) {
    SCOPED_TRACE(kind);
    const std::string wrapped = dir_ + "/" + kind + ".wrapped.pem";
    const std::string out = wrap(srk, keys_ + "/" + kind + ".pem", wrapped, {"--description", kind + " wrapped"});
    EXPECT_NE(out.find("for the TPM whose SRK name is " + srk_name_in(text)), std::string::npos) << out;
    EXPECT_EQ(mode_of(wrapped), 0600u);
    const std::string w = read_file(wrapped);
    EXPECT_NE(w.find("-----BEGIN TSS2 PRIVATE KEY-----"), std::string::npos);
    EXPECT_EQ(srk_name_in(w), srk_name_in(text));
    // Never overwritten.
    EXPECT_FAILS_WITH(offline({"wrap", "--parent", srk, "--from", keys_ + "/" + kind + ".pem", "--out", wrapped}),
                      "exists");
    // An importable file is not a loadable key: import-file says what to do.
    EXPECT_FAILS_WITH(tpmkey({"import-file", "x" + kind, wrapped}), "tpmkey import NAME FILE");

    auto r = tpmkey({"import", kind, wrapped});
    ASSERT_OK(r);
    EXPECT_NE(r.out.find("wrapped for this TPM"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("self-test signature verified"), std::string::npos) << r.out;
    EXPECT_TRUE(signs("tpm2:" + kind, keys_ + "/" + kind + ".pem"));
    // The entry is an ordinary loadable key file.
    const std::string entry = read_file(keystore_ + "/" + kind + ".pem");
    auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(entry.data()), entry.size());
    ASSERT_TRUE(kf) << kf.error().text();
    EXPECT_EQ(kf->description, kind + " wrapped");
  }
  auto list = tpmkey({"list"});
  EXPECT_NE(list.out.find("imported"), std::string::npos) << list.out;
}

// An encrypted source key (encrypted PKCS#8, and OpenSSH's format with a passphrase): its passphrase
// from a file.
TEST_F(WrapTest, EncryptedSourceKey) {
  const std::string srk = export_srk();
  write_file(dir_ + "/pass", "wrap pass\n");
  EXPECT_FAILS_WITH(offline({"wrap", "--parent", srk, "--from", keys_ + "/ec-enc.pem", "--out", dir_ + "/x.pem"}),
                    "--passphrase-file");
  wrap(srk, keys_ + "/ec-enc.pem", dir_ + "/enc.wrapped.pem", {"--passphrase-file", dir_ + "/pass"});
  ASSERT_OK(tpmkey({"import", "enc", dir_ + "/enc.wrapped.pem"}));
  EXPECT_TRUE(signs("tpm2:enc", keys_ + "/ec.pem"));

  // A passphrase-protected OpenSSH key, decrypted by ssh-keygen as import does; verified with a
  // PEM copy that ssh-keygen writes.
  const std::string id = dir_ + "/id_ecdsa";
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ecdsa", "-N", "wrap pass", "-C", "", "-f", id}));
  const std::string out = wrap(srk, id, dir_ + "/ossh.wrapped.pem", {"--passphrase-file", dir_ + "/pass"});
  EXPECT_NE(out.find("(ec-p256, encrypted OpenSSH format, aes256-ctr with bcrypt, decrypted by ssh-keygen)"),
            std::string::npos)
      << out;
  ASSERT_OK(tpmkey({"import", "ossh", dir_ + "/ossh.wrapped.pem"}));
  ASSERT_OK(run({"cp", id, id + ".pem"}));
  ASSERT_OK(run({"ssh-keygen", "-q", "-p", "-m", "PEM", "-P", "wrap pass", "-N", "", "-f", id + ".pem"}));
  EXPECT_TRUE(signs("tpm2:ossh", id + ".pem"));
}

// The other TPM refuses the file with both SRK names; its keystore and TPM are as they were.
TEST_F(WrapTest, AnotherTpmRefusesTheFileNamingBothSrks) {
  const std::string srk = export_srk();
  const std::string this_name = srk_name_in(read_file(srk));
  const std::string wrapped = dir_ + "/ec.wrapped.pem";
  wrap(srk, keys_ + "/ec.pem", wrapped);

  // A pinned keystore: refused before anything is sent.
  ASSERT_OK(on_other({"init"}));
  auto other_srk = on_other({"srk"});
  ASSERT_OK(other_srk);
  const std::string other_name = srk_name_in(other_srk.out);
  ASSERT_NE(other_name, this_name);
  const auto before = files_in(other_keystore_);
  auto r = on_other({"import", "ec", wrapped});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("this file was wrapped for another TPM: its SRK name is " + this_name + ", this TPM's is " +
                       other_name),
            std::string::npos)
      << r.err;
  EXPECT_EQ(files_in(other_keystore_), before);
  EXPECT_TRUE(tpm_handles(other_->tcti()).clean()) << tpm_handles(other_->tcti()).describe();

  // A keystore without a pin: the TPM's SRK is read and compared, TPM2_Import is not sent.
  other_keystore_ = dir_ + "/other-fresh";
  r = on_other({"import", "ec", wrapped});
  EXPECT_NE(r.err.find("this file was wrapped for another TPM: its SRK name is " + this_name + ", this TPM's is " +
                       other_name),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(other_keystore_ + "/ec.pem"));
  EXPECT_TRUE(tpm_handles(other_->tcti()).clean());

  // Without the SRK-Name line (as other tools write the file), TPM2_Import's integrity check
  // refuses it.
  std::string w = read_file(wrapped);
  const std::string bare = dir_ + "/bare.pem";
  write_file(bare, w.substr(w.find("-----BEGIN ")));
  r = on_other({"import", "ec", bare});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("wrapped for another TPM, or is damaged, this TPM's SRK name is " + other_name),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("TPM_RC_INTEGRITY"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(other_keystore_ + "/ec.pem"));
  EXPECT_TRUE(tpm_handles(other_->tcti()).clean());
  // The target still takes the bare file.
  ASSERT_OK(tpmkey({"import", "ec", bare}));
  EXPECT_TRUE(signs("tpm2:ec", keys_ + "/ec.pem"));
}

// --password-file at wrap time: the imported key needs that password.
TEST_F(WrapTest, PasswordGivenAtWrapTime) {
  const std::string srk = export_srk();
  write_file(dir_ + "/pw", "wrapped secret\n");
  const std::string wrapped = dir_ + "/pw.wrapped.pem";
  const std::string out = wrap(srk, keys_ + "/ec.pem", wrapped, {"--password-file", dir_ + "/pw"});
  EXPECT_NE(out.find(", password)"), std::string::npos) << out;
  EXPECT_FAILS_WITH(tpmkey({"import", "pw", wrapped}), "--password-file");
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/pw.pem"));
  auto r = tpmkey({"import", "pw", wrapped, "--password-file", dir_ + "/pw"});
  ASSERT_OK(r);
  EXPECT_NE(r.out.find("(ec-p256, password, imported)"), std::string::npos) << r.out;
  EXPECT_TRUE(signs("tpm2:pw?pin-value=wrapped%20secret", keys_ + "/ec.pem"));
  OSSL_LIB_CTX* l = lib(tcti_);
  PkeyPtr key = load_key(l, "tpm2:pw?pin-value=wrong");
  EXPECT_TRUE(!key || digest_sign(l, key.get(), "m", {}).empty());
  drain_errors();
}

// One byte of the duplicate flipped: TPM2_Import's integrity check, said so.
TEST_F(WrapTest, TamperedDuplicateIsRefusedByTheTpm) {
  const std::string srk = export_srk();
  const std::string wrapped = dir_ + "/ec.wrapped.pem";
  wrap(srk, keys_ + "/ec.pem", wrapped);
  const std::string w = read_file(wrapped);
  auto kf = parse_importable_keyfile(reinterpret_cast<const uint8_t*>(w.data()), w.size());
  ASSERT_TRUE(kf) << kf.error().text();
  kf->key.priv.buffer[kf->key.priv.size - 5] ^= 0x01;
  const std::string tampered = dir_ + "/tampered.pem";
  write_file(tampered, w.substr(0, w.find("-----BEGIN ")) + importable_keyfile_pem(*kf));
  auto r = tpmkey({"import", "ec", tampered});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("the wrapped key is damaged or was altered"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("TPM_RC_INTEGRITY"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/ec.pem"));
}

// `srk` refuses a TPM whose SRK is not the pinned one; wrap refuses an edited SRK file.
TEST_F(WrapTest, SrkOfAnotherTpmThanThePinAndEditedSrkFiles) {
  ASSERT_OK(tpmkey({"init"}));
  EXPECT_FAILS_WITH(tpmkey({"srk", "--out", dir_ + "/wrong.pem"}, other_->tcti()), "the keystore pinned");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/wrong.pem"));

  const std::string srk = export_srk();
  std::string text = read_file(srk);
  const std::string name = srk_name_in(text);
  std::string edited = text;
  edited.replace(edited.find(name) + 10, 1, name[10] == '0' ? "1" : "0");
  write_file(dir_ + "/edited.pem", edited);
  EXPECT_FAILS_WITH(offline({"wrap", "--parent", dir_ + "/edited.pem", "--from", keys_ + "/ec.pem", "--out",
                             dir_ + "/x.pem"}),
                    "the SRK-Name line says");
  write_file(dir_ + "/noname.pem", text.substr(text.find("-----BEGIN ")));
  EXPECT_FAILS_WITH(offline({"wrap", "--parent", dir_ + "/noname.pem", "--from", keys_ + "/ec.pem", "--out",
                             dir_ + "/x.pem"}),
                    "SRK-Name");
  // Not an SRK at all: a P-256 key of another template has another name.
  auto pub = plain_openssl({"pkey", "-in", keys_ + "/ec.pem", "-pubout"});
  ASSERT_OK(pub);
  write_file(dir_ + "/other-key.pem", "SRK-Name: " + name + "\n" + pub.out);
  EXPECT_FAILS_WITH(offline({"wrap", "--parent", dir_ + "/other-key.pem", "--from", keys_ + "/ec.pem", "--out",
                             dir_ + "/x.pem"}),
                    "the SRK-Name line says");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/x.pem"));
}

// tpm2-tools and importable keys, both ways (docs/keys.md, "tpm2-tools and wrapped keys"). tpm2-tools
// keep a duplicate in three files (-u TPM2B_PUBLIC, -r TPM2B_PRIVATE, -s TPM2B_ENCRYPTED_SECRET);
// tpmkey's file holds the same three in one TSS2 PRIVATE KEY (importableKey): pubkey and privkey
// are the first two as they are, [2] secret the third's contents (without its size). So:
// (a) tpm2_duplicate -U SRK.pub -k KEY.pem wraps a software key for this TPM's SRK; its three
//     files, put into a TSS2 file with openssl asn1parse -genconf, are imported by tpmkey import;
// (b) a tpmkey wrap file, taken apart with openssl asn1parse -strparse, is imported by tpm2_import
//     under the owner primary tpm2_createprimary makes from the same template, then tpm2_load and
//     tpm2_sign sign.
// Every signature is verified with the ORIGINAL key. tpm2-tools leave their objects loaded on a TPM
// without a resource manager: each tool run is followed by flushing them.
TEST_F(WrapTest, Tpm2ToolsDuplicatesImportAndTpmkeyWrappedFilesImportIntoTpm2Tools) {
  const std::vector<std::string> tools_env = {"TSS2_LOG=all+none", "TPM2TOOLS_TCTI=" + tcti_};
  auto tool = [&](const std::vector<std::string>& args) {
    auto r = run(args, tools_env);
    for (const char* what : {"-t", "-l"}) run({"tpm2_flushcontext", what}, tools_env);
    return r;
  };
  auto hex_of = [](const std::string& bytes) {
    static const char* d = "0123456789abcdef";
    std::string h;
    for (unsigned char ch : bytes) h += {d[ch >> 4], d[ch & 15]};
    return h;
  };
  // The owner primary from the standard ECC P-256 storage template: tpmkey's SRK (the same name).
  const std::string srk = export_srk(), prim = dir_ + "/prim.ctx";
  ASSERT_OK(tool({"tpm2_createprimary", "-C", "o", "-G", "ecc256:aes128cfb", "-g", "sha256", "-a",
                  "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda", "-c", prim}));
  ASSERT_OK(tool({"tpm2_readpublic", "-c", prim, "-o", dir_ + "/srk.pub", "-n", dir_ + "/srk.name"}));
  ASSERT_EQ(hex_of(read_file(dir_ + "/srk.name")), srk_name_in(read_file(srk)));
  write_file(dir_ + "/msg", "signed after crossing between tpm2-tools and tpmkey\n");

  for (const std::string kind : {"ec", "rsa"}) {
    SCOPED_TRACE(kind);
    const std::string key = keys_ + "/" + kind + ".pem", d = dir_ + "/" + kind;
    // (a) tpm2-tools wrap (tpm2_duplicate -k: computed in software, though the tool opens its TCTI),
    // tpmkey imports.
    ASSERT_OK(tool({"tpm2_duplicate", "-U", dir_ + "/srk.pub", "-k", key, "-G", kind == "ec" ? "ecc" : "rsa", "-u",
                    d + ".dup.pub", "-r", d + ".dup.dpriv", "-s", d + ".dup.seed"}));
    const std::string seed = read_file(d + ".dup.seed");
    ASSERT_GT(seed.size(), 2u);
    write_file(d + ".genconf", "asn1=SEQUENCE:key\n[key]\ntype=OID:2.23.133.10.1.4\n"
                               "emptyAuth=EXPLICIT:0,BOOLEAN:TRUE\n"
                               "secret=EXPLICIT:2,FORMAT:HEX,OCTETSTRING:" + hex_of(seed.substr(2)) + "\n"
                               "parent=INTEGER:0x40000001\n"
                               "pub=FORMAT:HEX,OCTETSTRING:" + hex_of(read_file(d + ".dup.pub")) + "\n"
                               "priv=FORMAT:HEX,OCTETSTRING:" + hex_of(read_file(d + ".dup.dpriv")) + "\n");
    ASSERT_OK(plain_openssl({"asn1parse", "-genconf", d + ".genconf", "-noout", "-out", d + ".dup.der"}));
    const std::string der = read_file(d + ".dup.der");
    BIO* bio = BIO_new_file((d + ".dup.pem").c_str(), "w");
    ASSERT_TRUE(bio);
    PEM_write_bio(bio, "TSS2 PRIVATE KEY", "", reinterpret_cast<const unsigned char*>(der.data()), long(der.size()));
    BIO_free(bio);
    auto r = tpmkey({"import", "tools-" + kind, d + ".dup.pem"});
    ASSERT_OK(r);
    EXPECT_NE(r.out.find("wrapped for this TPM"), std::string::npos) << r.out;
    EXPECT_TRUE(signs("tpm2:tools-" + kind, key));

    // (b) tpmkey wraps (no TPM), tpm2-tools import, load and sign.
    const std::string wrapped = d + ".wrapped.pem";
    wrap(srk, key, wrapped);
    const std::string text = read_file(wrapped);
    write_file(d + ".wrapped.b64", text.substr(text.find("-----BEGIN ")));
    ASSERT_OK(plain_openssl({"asn1parse", "-in", d + ".wrapped.b64", "-noout", "-out", d + ".wrapped.der"}));
    auto parsed = plain_openssl({"asn1parse", "-inform", "DER", "-in", d + ".wrapped.der"});
    ASSERT_OK(parsed);
    // The OCTET STRINGs, in order: the seed (in [2], depth 2), pubkey and privkey (depth 1).
    std::vector<std::string> offsets;
    std::istringstream lines(parsed.out);
    for (std::string line; std::getline(lines, line);)
      if (line.find("OCTET STRING") != std::string::npos) offsets.push_back(line.substr(0, line.find(':')));
    ASSERT_EQ(offsets.size(), 3u) << parsed.out;
    const char* parts[] = {".w.seedraw", ".w.pub", ".w.dpriv"};
    for (size_t i = 0; i < 3; ++i)
      ASSERT_OK(plain_openssl({"asn1parse", "-inform", "DER", "-in", d + ".wrapped.der", "-strparse",
                               offsets[i].substr(offsets[i].find_first_not_of(' ')), "-noout", "-out", d + parts[i]}));
    const std::string raw = read_file(d + ".w.seedraw");
    write_file(d + ".w.seed", std::string{char(raw.size() >> 8), char(raw.size() & 0xff)} + raw);
    ASSERT_OK(tool({"tpm2_import", "-C", prim, "-u", d + ".w.pub", "-i", d + ".w.dpriv", "-s", d + ".w.seed", "-r",
                    d + ".w.priv"}));
    ASSERT_OK(tool({"tpm2_load", "-C", prim, "-u", d + ".w.pub", "-r", d + ".w.priv", "-c", d + ".w.ctx"}));
    std::vector<std::string> sign = {"tpm2_sign", "-c", d + ".w.ctx", "-g", "sha256", "-f", "plain", "-o",
                                     d + ".sig", dir_ + "/msg"};
    if (kind == "rsa") sign.insert(sign.end() - 1, {"-s", "rsassa"});
    ASSERT_OK(tool(sign));
    auto v = plain_openssl({"pkeyutl", "-verify", "-inkey", key, "-rawin", "-digest", "sha256", "-in", dir_ + "/msg",
                            "-sigfile", d + ".sig"});
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out << v.err;
  }
}

TEST_F(WrapTest, UsageAndHelp) {
  EXPECT_EQ(offline({"wrap", "--parent", "a", "--out", "b"}).exit_code, 2);
  EXPECT_EQ(offline({"wrap", "x", "--parent", "a", "--from", "c", "--out", "b"}).exit_code, 2);
  EXPECT_EQ(tpmkey({"srk", "extra"}).exit_code, 2);
  auto h = offline({"wrap", "--help"});
  ASSERT_OK(h);
  EXPECT_NE(h.out.find("importableKey"), std::string::npos);
  ASSERT_OK(offline({"srk", "--help"}));
}

}  // namespace
}  // namespace tpmkey::test
