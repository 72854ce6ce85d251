// Bad input through the real programs (docs/testing.md#bad-input-through-the-real-programs):
// malformed URIs, key files, keystore states, TCTI strings and options given to the real `openssl`
// and `tpmkey` command lines. Each case must fail cleanly: a non-zero exit code, no signal, no hang
// (a time limit), a message on stderr naming the problem, the keystore exactly as it was, and a key
// that was there before still signing (verified by the default provider alone). openssl cases run
// in both provider orders.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>

#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

namespace fs = std::filesystem;

constexpr int kTimeLimit = 30;  // seconds: every case ends long before, or it hangs

class BadInputTest;

struct BadInput {
  const char* name;
  bool openssl;  // an openssl command line: run in both provider orders
  // Plants the bad state and runs the command.
  std::function<CommandResult(BadInputTest&, bool tpmkey_first)> run;
  const char* says;  // what stderr must say
  // Undoes what run() planted, so that the key made before signs again (may be empty).
  std::function<void(BadInputTest&)> undo = {};
};

// What the keystore directory holds, entry by entry: type, mode and contents (regular files),
// or the link target (symbolic links).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  struct stat st{};
  if (lstat(dir.c_str(), &st) != 0) return {{"", "missing"}};
  if (!S_ISDIR(st.st_mode)) return {{"", "not a directory: " + read_file(dir)}};
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string path = e.path().string();
    if (lstat(path.c_str(), &st) != 0) continue;
    std::string v = std::to_string(st.st_mode) + " ";
    if (S_ISREG(st.st_mode)) v += read_file(path);
    else if (S_ISLNK(st.st_mode)) v += "-> " + fs::read_symlink(e.path()).string();
    out[e.path().filename().string()] = v;
  }
  return out;
}

class BadInputTest : public TpmTest, public ::testing::WithParamInterface<BadInput> {
 public:
  BadInputTest() : TpmTest("tpmkey-bad-input-test") {}
  // The table's functions (cases() below) use them.
  using TpmTest::dir_;
  using TpmTest::keystore_;

  void SetUp() override {
    TpmTest::SetUp();
    write_file(dir_ + "/msg", "a message that the key made before still signs\n");
    write_file(dir_ + "/pw", "a password\n");  // 0600
    // The same keys for every case: made once, copied into each case's fresh keystore, removed
    // at exit.
    static struct MadeKeys {
      std::string dir;
      ~MadeKeys() {
        if (!dir.empty()) remove_tree(dir);
      }
    } keys;
    std::string& made = keys.dir;
    if (made.empty()) {
      made = make_temp_dir("tpmkey-bad-input-keys");
      std::string ks = made + "/keystore";
      auto r = run({tpmkey_bin(), "--tcti", tcti_, "--keystore", ks, "create", "good", "--no-password"},
                   {"TSS2_LOG=all+none"});
      ASSERT_OK(r);
      r = run({tpmkey_bin(), "--tcti", tcti_, "--keystore", ks, "create", "pw", "--password-file", dir_ + "/pw"},
              {"TSS2_LOG=all+none"});
      ASSERT_OK(r);
      r = run({tpmkey_bin(), "--tcti", tcti_, "--keystore", ks, "pubkey", "good"}, {"TSS2_LOG=all+none"});
      ASSERT_OK(r);
      write_file(made + "/good.pub", r.out);
    }
    fs::create_directory(keystore_);
    chmod(keystore_.c_str(), 0700);
    for (const auto& e : fs::directory_iterator(made + "/keystore"))
      fs::copy_file(e.path(), keystore_ + "/" + e.path().filename().string());
    fs::copy_file(made + "/good.pub", dir_ + "/good.pub");
    env_ = {"TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_, "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none"};
  }

  void TearDown() override {
    // Whatever a case left (modes, FIFOs) must not stop the directory's removal.
    chmod(keystore_.c_str(), 0700);
    TpmTest::TearDown();
  }

  // openssl with the provider on the command line, in the given order; `extra_env` after env_.
  CommandResult openssl(std::vector<std::string> args, bool tpmkey_first, std::vector<std::string> extra_env = {}) {
    std::vector<std::string> a = {"openssl", args[0], "-provider-path", provider_dir()};
    for (const char* p : tpmkey_first ? std::vector<const char*>{"tpmkey", "default"}
                                      : std::vector<const char*>{"default", "tpmkey"})
      a.insert(a.end(), {"-provider", p});
    a.insert(a.end(), args.begin() + 1, args.end());
    std::vector<std::string> env = env_;
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    return ::tpmkey::test::run(a, env, "", kTimeLimit);
  }
  // Signs the message with `key` (what most cases give a bad key to).
  CommandResult sign(const std::string& key, bool tpmkey_first, std::vector<std::string> extra_env = {}) {
    return openssl({"pkeyutl", "-sign", "-inkey", key, "-rawin", "-digest", "sha256", "-in", dir_ + "/msg", "-out",
                    dir_ + "/sig"},
                   tpmkey_first, std::move(extra_env));
  }
  // The tpmkey CLI with exactly `args`, the TPM and keystore from the environment.
  CommandResult tpmkey_cli(std::vector<std::string> args, std::vector<std::string> extra_env = {}) {
    args.insert(args.begin(), tpmkey_bin());
    std::vector<std::string> env = env_;
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    return ::tpmkey::test::run(args, env, "", kTimeLimit);
  }
  // A file in the test's directory (not the keystore).
  std::string file(const std::string& name, const std::string& data, mode_t mode = 0600) {
    const std::string p = dir_ + "/" + name;
    write_file(p, data);
    chmod(p.c_str(), mode);
    return p;
  }
  std::string entry(const std::string& name) const { return keystore_ + "/" + name; }
  std::string good_pem() const { return read_file(keystore_ + "/good.pem"); }
  std::string good_der() {
    auto r = openssl({"pkey", "-in", entry("good.pem"), "-outform", "DER", "-out", dir_ + "/good.der"}, true);
    EXPECT_OK(r);
    return read_file(dir_ + "/good.der");
  }
  void expect_good_still_signs() {
    auto r = sign("tpm2:good", true);
    ASSERT_OK(r);
    auto v = ::tpmkey::test::run({"openssl", "pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/good.pub", "-rawin",
                                  "-digest", "sha256", "-in", dir_ + "/msg", "-sigfile", dir_ + "/sig"},
                                 {"OPENSSL_CONF=/dev/null"});
    EXPECT_OK(v);
  }

  std::vector<std::string> env_;
};

TEST_P(BadInputTest, FailsCleanly) {
  const BadInput& c = GetParam();
  for (bool tpmkey_first : c.openssl ? std::vector<bool>{true, false} : std::vector<bool>{true}) {
    SCOPED_TRACE(c.openssl ? (tpmkey_first ? "-provider tpmkey -provider default" : "-provider default -provider tpmkey")
                           : "tpmkey");
    const auto before = snapshot(keystore_);
    const std::string good = read_file(entry("good.pem")), pw = read_file(entry("pw.pem"));
    CommandResult r = c.run(*this, tpmkey_first);
    const auto planted = snapshot(keystore_);
    EXPECT_FALSE(r.timed_out) << "hung";
    EXPECT_NE(r.exit_code, 0) << "succeeded: " << r.out << r.err;
    EXPECT_LT(r.exit_code, 128) << "ended by a signal: " << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << "stderr does not say \"" << c.says << "\":\n" << r.err;
    // In the sanitizer builds a report exits with a plain error code: it must not be there.
    EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("runtime error:"), std::string::npos) << r.err;
    // Nothing is lost: every entry that was there is still there, the keys made before are
    // byte for byte what they were, and the same command again (run() plants idempotently)
    // leaves the keystore exactly as the first left it.
    for (const auto& [name, v] : before) EXPECT_TRUE(planted.count(name)) << name << " was removed from the keystore";
    EXPECT_EQ(read_file(entry("good.pem")), good);
    EXPECT_EQ(read_file(entry("pw.pem")), pw);
    CommandResult again = c.run(*this, tpmkey_first);
    EXPECT_EQ(snapshot(keystore_), planted) << "the keystore changed";
    EXPECT_EQ(again.exit_code, r.exit_code);
    if (c.undo) c.undo(*this);
    expect_good_still_signs();
  }
}

using B = BadInputTest;

// A key file damaged in one byte at `at` (from the end when negative).
std::string flipped(std::string s, long at) {
  size_t i = at < 0 ? s.size() - size_t(-at) : size_t(at);
  s[i] = char(s[i] ^ 0x55);
  return s;
}

void restore_mode(const std::string& path, mode_t mode) { chmod(path.c_str(), mode); }

// gtest prints a case by its name.
void PrintTo(const BadInput& c, std::ostream* os) { *os << c.name; }

std::vector<BadInput> cases() {
  const std::string long_name(1500, 'k');
  return {
      // ---- tpm2: URIs ----
      {"UriNoSuchKey", true, [](B& t, bool f) { return t.sign("tpm2:nosuch", f); }, "nosuch"},
      {"UriWholeKeystore", true, [](B& t, bool f) { return t.sign("tpm2:", f); }, "names the whole keystore, not a key"},
      {"UriUnknownAttribute", true, [](B& t, bool f) { return t.sign("tpm2:colour=red", f); }, "unknown attribute"},
      {"UriBadPercent", true, [](B& t, bool f) { return t.sign("tpm2:file=%zz", f); }, "percent"},
      {"UriShortHandle", true, [](B& t, bool f) { return t.sign("tpm2:handle=0x8100001", f); }, "8 hex"},
      {"UriNotPersistentHandle", true, [](B& t, bool f) { return t.sign("tpm2:handle=0x01000001", f); }, "persistent"},
      {"UriEmptyHandle", true, [](B& t, bool f) { return t.sign("tpm2:handle=0x81000099", f); },
       "no persistent object at 0x81000099"},
      {"UriNameWithSlash", true, [](B& t, bool f) { return t.sign("tpm2:../good", f); }, "name"},
      {"UriBothPins", true, [](B& t, bool f) { return t.sign("tpm2:pw?pin-value=a&pin-source=/x", f); },
       "mutually exclusive"},
      {"UriMissingPinSource", true, [](B& t, bool f) { return t.sign("tpm2:pw?pin-source=" + t.dir_ + "/nope", f); },
       "No such file"},
      {"UriMissingFile", true, [](B& t, bool f) { return t.sign("tpm2:file=" + t.dir_ + "/nope.pem", f); }, "No such file"},
      {"UriLongName", true, [long_name](B& t, bool f) { return t.sign("tpm2:" + long_name, f); },
       "key name is longer than 128 characters"},
      // A message over 1 KiB would reach the user as an empty line (OpenSSL drops it): shortened.
      {"UriLongMissingPath", true,
       [](B& t, bool f) {
         std::string path = t.dir_;
         for (int i = 0; i < 8; ++i) path += "/" + std::string(200, 'd');
         return t.sign("tpm2:file=" + path, f);
       },
       "No such file"},
      // ---- key files ----
      {"PemTruncated", true,
       [](B& t, bool f) {
         std::string pem = t.good_pem();
         return t.sign(t.file("k.pem", pem.substr(0, pem.size() / 2)), f);
       },
       "unreadable PEM (truncated or damaged)"},
      {"PemDamagedBase64", true, [](B& t, bool f) { return t.sign(t.file("k.pem", flipped(t.good_pem(), 80)), f); },
       "TSS2"},
      {"PemEmptyBody", true,
       [](B& t, bool f) {
         return t.sign(t.file("k.pem", "-----BEGIN TSS2 PRIVATE KEY-----\n-----END TSS2 PRIVATE KEY-----\n"), f);
       },
       "TSS2"},
      {"DerTruncated", true,
       [](B& t, bool f) {
         std::string der = t.good_der();
         return t.sign(t.file("k.der", der.substr(0, der.size() - 20)), f);
       },
       "malformed or unusable key file"},
      {"DerDamaged", true, [](B& t, bool f) { return t.sign(t.file("k.der", flipped(t.good_der(), 12)), f); },
       "malformed or unusable key file"},
      {"FileByUriTruncated", true,
       [](B& t, bool f) {
         std::string pem = t.good_pem();
         return t.sign("tpm2:file=" + t.file("k.pem", pem.substr(0, pem.size() - 40)), f);
       },
       "malformed or unusable key file"},
      {"FileEmpty", true, [](B& t, bool f) { return t.sign("tpm2:file=" + t.file("k.pem", ""), f); },
       "malformed or unusable key file"},
      {"FileHuge", true,
       [](B& t, bool f) { return t.sign("tpm2:file=" + t.file("k.pem", std::string(3 << 20, 'A')), f); },
       "larger than 64 KiB"},
      // Over the 64 KiB limit, but small: OpenSSL's own file store reads a PEM file without an END
      // line in quadratic time (a minute for 1 MiB, with or without tpmkey). tpmkey's decoders
      // pass over it; OpenSSL says that the file holds no key.
      {"FileHugeByPath", true,
       [](B& t, bool f) {
         std::string body;
         for (int i = 0; i < 1600; ++i) body += std::string(64, 'A') + "\n";
         return t.sign(t.file("k.pem", "-----BEGIN TSS2 PRIVATE KEY-----\n" + body), f);
       },
       "Could not read private key from"},
      {"FileIsACertificateRequest", true,
       [](B& t, bool f) {
         return t.sign("tpm2:file=" + t.file("k.pem", "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE "
                                                      "REQUEST-----\n"),
                       f);
       },
       "malformed or unusable key file"},
      {"FileIsAPublicKey", true, [](B& t, bool f) { return t.sign("tpm2:file=" + t.dir_ + "/good.pub", f); },
       "malformed or unusable key file"},
      {"FileIsADirectory", true, [](B& t, bool f) { return t.sign("tpm2:file=" + t.dir_, f); }, "a directory"},
      {"FileIsAFifo", true,
       [](B& t, bool f) {
         const std::string p = t.dir_ + "/k.fifo";
         mkfifo(p.c_str(), 0600);
         return t.sign("tpm2:file=" + p, f);
       },
       "a FIFO"},
      {"FileIsADevice", true, [](B& t, bool f) { return t.sign("tpm2:file=/dev/zero", f); }, "a device"},
      {"FileWorldWritable", true,
       [](B& t, bool f) { return t.sign("tpm2:file=" + t.file("k.pem", t.good_pem(), 0666), f); }, "writable by others"},
      // ---- keystore states ----
      {"EntryDanglingSymlink", true,
       [](B& t, bool f) {
         symlink("/nonexistent/k.pem", t.entry("dangling.pem").c_str());
         return t.sign("tpm2:dangling", f);
       },
       "symbolic link"},
      {"EntrySymlinkToAKey", true,
       [](B& t, bool f) {
         symlink(t.entry("good.pem").c_str(), t.entry("linked.pem").c_str());
         return t.sign("tpm2:linked", f);
       },
       "symbolic link"},
      {"EntryFifo", true,
       [](B& t, bool f) {
         mkfifo(t.entry("fifo.pem").c_str(), 0600);
         return t.sign("tpm2:fifo", f);
       },
       "a FIFO"},
      {"EntryGarbage", true,
       [](B& t, bool f) {
         if (!fs::exists(t.entry("junk.pem"))) t.file("keystore/junk.pem", "not a key at all\n");
         return t.sign("tpm2:junk", f);
       },
       "malformed or unusable key file"},
      {"EntryGroupWritable", true,
       [](B& t, bool f) {
         chmod(t.entry("good.pem").c_str(), 0620);
         return t.sign("tpm2:good", f);
       },
       "writable by its group", [](B& t) { restore_mode(t.entry("good.pem"), 0600); }},
      {"KeystoreWorldWritable", true,
       [](B& t, bool f) {
         chmod(t.keystore_.c_str(), 0777);
         return t.sign("tpm2:good", f);
       },
       "writable by its group and others", [](B& t) { restore_mode(t.keystore_, 0700); }},
      {"SrkPinGarbage", true,
       [](B& t, bool f) {
         if (!fs::exists(t.dir_ + "/srk.pin.saved")) fs::rename(t.entry("srk.pin"), t.dir_ + "/srk.pin.saved");
         t.file("keystore/srk.pin", "this is not a pin\n");
         return t.sign("tpm2:good", f);
       },
       "srk.pin",
       [](B& t) {
         fs::remove(t.entry("srk.pin"));
         fs::rename(t.dir_ + "/srk.pin.saved", t.entry("srk.pin"));
       }},
      {"SrkPinFifo", true,
       [](B& t, bool f) {
         if (!fs::exists(t.dir_ + "/srk.pin.saved")) fs::rename(t.entry("srk.pin"), t.dir_ + "/srk.pin.saved");
         mkfifo(t.entry("srk.pin").c_str(), 0600);
         return t.sign("tpm2:good", f);
       },
       "a FIFO",
       [](B& t) {
         fs::remove(t.entry("srk.pin"));
         fs::rename(t.dir_ + "/srk.pin.saved", t.entry("srk.pin"));
       }},
      {"SrkPinDanglingSymlink", true,
       [](B& t, bool f) {
         if (!fs::exists(t.dir_ + "/srk.pin.saved")) fs::rename(t.entry("srk.pin"), t.dir_ + "/srk.pin.saved");
         symlink("/nonexistent/srk.pin", t.entry("srk.pin").c_str());
         return t.sign("tpm2:good", f);
       },
       "symbolic link",
       [](B& t) {
         fs::remove(t.entry("srk.pin"));
         fs::rename(t.dir_ + "/srk.pin.saved", t.entry("srk.pin"));
       }},
      {"SrkPinGroupWritable", true,
       [](B& t, bool f) {
         chmod(t.entry("srk.pin").c_str(), 0660);
         return t.sign("tpm2:good", f);
       },
       "writable by its group", [](B& t) { restore_mode(t.entry("srk.pin"), 0600); }},
      {"HandleFileGarbage", true,
       [](B& t, bool f) {
         t.file("keystore/good.handle", "0xnothing\n");
         return t.sign("tpm2:good", f);
       },
       "bad persistent handle", [](B& t) { fs::remove(t.entry("good.handle")); }},
      {"HandleFileNotPersistent", false,
       [](B& t, bool) {
         t.file("keystore/good.handle", "0x40000001\n");
         return t.tpmkey_cli({"pubkey", "good"});
       },
       "bad persistent handle", [](B& t) { fs::remove(t.entry("good.handle")); }},
      {"KeystoreIsAFile", false,
       [](B& t, bool) { return t.tpmkey_cli({"list"}, {"TPMKEY_KEYSTORE=" + t.file("not-a-dir", "x")}); },
       "not a directory"},
      // ---- TCTI strings and settings ----
      {"TctiRefused", true, [](B& t, bool f) { return t.sign("tpm2:good", f, {"TPMKEY_TCTI=swtpm:host=127.0.0.1,port=1"}); },
       "TPM unreachable"},
      {"TctiUnknownModule", true, [](B& t, bool f) { return t.sign("tpm2:good", f, {"TPMKEY_TCTI=nosuchtcti"}); },
       "nosuchtcti"},
      {"TctiBadPort", true, [](B& t, bool f) { return t.sign("tpm2:good", f, {"TPMKEY_TCTI=swtpm:host=127.0.0.1,port=x"}); },
       "port"},
      {"TctiMissingSocket", true,
       [](B& t, bool f) { return t.sign("tpm2:good", f, {"TPMKEY_TCTI=swtpm:path=" + t.dir_ + "/no.sock"}); },
       "no.sock"},
      {"TctiMissingDevice", false,
       [](B& t, bool) { return t.tpmkey_cli({"--tcti", "device:" + t.dir_ + "/tpm0", "create", "x", "--no-password"}); },
       "tpm0"},
      {"TimeoutNotANumber", true, [](B& t, bool f) { return t.sign("tpm2:good", f, {"TPMKEY_TIMEOUT=soon"}); }, "timeout"},
      {"AuthorizationUnknown", true, [](B& t, bool f) { return t.sign("tpm2:good", f, {"TPMKEY_AUTHORIZATION=maybe"}); },
       "authorization"},
      // ---- options ----
      {"CreateExisting", false, [](B& t, bool) { return t.tpmkey_cli({"create", "good", "--no-password"}); },
       "already exists"},
      {"CreateNoName", false, [](B& t, bool) { return t.tpmkey_cli({"create"}); }, "missing NAME"},
      {"CreateBadName", false, [](B& t, bool) { return t.tpmkey_cli({"create", "a/b", "--no-password"}); }, "name"},
      {"CreateUnknownAlgorithm", false,
       [](B& t, bool) { return t.tpmkey_cli({"create", "x", "--algorithm", "dsa1024", "--no-password"}); }, "dsa1024"},
      {"CreateNotPersistent", false,
       [](B& t, bool) { return t.tpmkey_cli({"create", "x", "--persistent", "0x40000001", "--no-password"}); },
       "0x40000001"},
      {"CreateMissingPasswordFile", false,
       [](B& t, bool) { return t.tpmkey_cli({"create", "x", "--password-file", t.dir_ + "/nope"}); }, "No such file"},
      {"CreatePasswordFileReadableByOthers", false,
       [](B& t, bool) { return t.tpmkey_cli({"create", "x", "--password-file", t.file("pw-open", "pw\n", 0644)}); },
       "accessible by its group and others (mode 0644)"},
      {"CreatePasswordFileIsADirectory", false,
       [](B& t, bool) { return t.tpmkey_cli({"create", "x", "--password-file", t.dir_}); }, "directory"},
      {"DeleteNoSuchKey", false, [](B& t, bool) { return t.tpmkey_cli({"delete", "nosuch", "--yes"}); }, "nosuch"},
      {"PasswdNoSuchKey", false,
       [](B& t, bool) { return t.tpmkey_cli({"passwd", "nosuch", "--no-password"}); }, "nosuch"},
      {"ImportMissingFile", false, [](B& t, bool) { return t.tpmkey_cli({"import", "x", t.dir_ + "/nope.pem"}); },
       "nope.pem"},
      {"ImportGarbage", false,
       [](B& t, bool) { return t.tpmkey_cli({"import", "x", t.file("junk.pem", "junk"), "--no-password"}); }, "junk.pem"},
      {"UnknownOption", false, [](B& t, bool) { return t.tpmkey_cli({"list", "--frobnicate"}); }, "--frobnicate"},
      {"UnknownCommand", false, [](B& t, bool) { return t.tpmkey_cli({"frobnicate"}); }, "frobnicate"},
      {"StoreutlNoSuchKey", true, [](B& t, bool f) { return t.openssl({"storeutl", "tpm2:nosuch"}, f); }, "nosuch"},
      {"PkeyPassphraseEncrypted", true,
       [](B& t, bool f) {
         return t.openssl({"pkey", "-in", "tpm2:good", "-aes256", "-passout", "pass:x", "-out", t.dir_ + "/enc.pem"}, f);
       },
       "cannot be passphrase-encrypted"},
      {"GenpkeyUnknownGroup", true,
       [](B& t, bool f) {
         return t.openssl({"genpkey", "-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt", "group:P-999",
                           "-out", t.dir_ + "/new.pem"},
                          f);
       },
       "P-999"},
      {"PinSourceReadableByOthers", true,
       [](B& t, bool f) { return t.sign("tpm2:pw?pin-source=" + t.file("pin-open", "a password\n", 0644), f); },
       "accessible by its group and others (mode 0644)"},
  };
}

INSTANTIATE_TEST_SUITE_P(Matrix, BadInputTest, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<BadInput>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace tpmkey::test
