// The real command line: the tpmkey CLI and openssl, against this binary's own swtpm.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <sstream>

#include "keystore/algorithm.h"
#include "keystore/keyfile.h"
#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

class CliTest : public TpmTest {
 protected:
  CliTest() : TpmTest("tpmkey-cli-test") {}
  void SetUp() override {
    TpmTest::SetUp();
    env_ = {"TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_, "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none"};
    write_file(dir_ + "/msg", "a file to sign\n");
  }

  // The tpmkey CLI with exactly `args`: the TPM and keystore come from the environment (env_), so
  // the tests see where the CLI takes its options.
  CommandResult tpmkey(std::vector<std::string> args) {
    args.insert(args.begin(), tpmkey_bin());
    return run(args, env_);
  }
  // openssl with the provider on the command line, in the given order.
  CommandResult openssl(const std::string& cmd, std::vector<std::string> args, bool tpmkey_first = true) {
    std::vector<std::string> a = {"openssl", cmd, "-provider-path", provider_dir()};
    for (const char* p : tpmkey_first ? std::vector<const char*>{"tpmkey", "default"}
                                      : std::vector<const char*>{"default", "tpmkey"}) {
      a.push_back("-provider");
      a.push_back(p);
    }
    a.insert(a.end(), args.begin(), args.end());
    return run(a, env_);
  }
  // openssl with nothing but the default provider: the independent verifier.
  CommandResult plain_openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    return run(args, env_);
  }
  // openssl with both providers activated by an openssl.cnf, in the given order.
  CommandResult openssl_cnf(std::vector<std::string> args, bool tpmkey_first) {
    std::vector<std::string> env = env_;
    env[2] = "OPENSSL_CONF=" + write_openssl_cnf(dir_, tpmkey_first, tcti_, keystore_);
    args.insert(args.begin(), "openssl");
    return run(args, env);
  }
  // The DER form of a TSS2 PEM key file, written next to it as NAME.der.
  std::string der_copy(const std::string& pem_path, const std::string& name) {
    std::string pem = read_file(pem_path);
    auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
    EXPECT_TRUE(kf) << kf.error().text();
    Bytes der = keyfile_der(*kf);
    std::string out = dir_ + "/" + name + ".der";
    write_file(out, std::string(der.begin(), der.end()));
    return out;
  }
  // Signs msg with `key` through the config-file providers; the default provider alone verifies
  // the signature with the PEM public key `pub`.
  void expect_signs(const std::string& key, const std::string& pub, bool tpmkey_first,
                    std::vector<std::string> extra = {}) {
    std::vector<std::string> sign = {"pkeyutl", "-sign", "-inkey", key, "-rawin", "-digest", "sha256",
                                     "-in", dir_ + "/msg", "-out", dir_ + "/sig"};
    sign.insert(sign.end(), extra.begin(), extra.end());
    auto r = openssl_cnf(sign, tpmkey_first);
    EXPECT_OK(r);
    auto v = plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sha256", "-in",
                            dir_ + "/msg", "-sigfile", dir_ + "/sig"});
    EXPECT_OK(v);
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out;
  }
  bool supported(const std::string& alg) {
    auto r = tpmkey({"algorithms"});
    return r.out.find(alg + std::string(10 - alg.size(), ' ') + "supported") != std::string::npos;
  }

  std::vector<std::string> env_;
};

TEST_F(CliTest, CreateListPubkeyDelete) {
  EXPECT_OK(tpmkey({"create", "ssh"}));
  EXPECT_OK(tpmkey({"create", "web", "--algorithm", "rsa2048", "--description", "web client"}));
  struct stat st{};
  ASSERT_EQ(stat((keystore_ + "/ssh.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto list = tpmkey({"list"});
  EXPECT_OK(list);
  EXPECT_NE(list.out.find("ssh                      ec-p256    256    no        0x40000001"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("web                      rsa2048    2048   no        0x40000001"), std::string::npos) << list.out;

  // Refuses to overwrite, and the stored key is unchanged.
  std::string before = read_file(keystore_ + "/ssh.pem");
  EXPECT_FAILS_WITH(tpmkey({"create", "ssh", "--algorithm", "rsa2048"}), "already exists");
  EXPECT_EQ(read_file(keystore_ + "/ssh.pem"), before);

  auto ossh = tpmkey({"pubkey", "ssh", "--format", "openssh"});
  EXPECT_OK(ossh);
  EXPECT_EQ(ossh.out.rfind("ecdsa-sha2-nistp256 AAAA", 0), 0u) << ossh.out;
  write_file(dir_ + "/ssh.pub", ossh.out);
  auto fp = run({"ssh-keygen", "-l", "-f", dir_ + "/ssh.pub"});
  EXPECT_OK(fp);
  EXPECT_NE(fp.out.find("(ECDSA)"), std::string::npos) << fp.out;
  auto rsa_ssh = tpmkey({"pubkey", "web", "--format", "openssh"});
  write_file(dir_ + "/web.pub", rsa_ssh.out);
  EXPECT_NE(run({"ssh-keygen", "-l", "-f", dir_ + "/web.pub"}).out.find("2048"), std::string::npos);

  // The PEM public key equals what openssl derives from the key itself.
  auto pem = tpmkey({"pubkey", "ssh"});
  EXPECT_OK(pem);
  auto derived = openssl("pkey", {"-in", "tpm2:ssh", "-pubout"});
  EXPECT_OK(derived);
  EXPECT_EQ(pem.out, derived.out);

  // Without a terminal, delete needs --yes; nothing is lost by the refusal.
  EXPECT_FAILS_WITH(tpmkey({"delete", "ssh"}), "add --yes");
  EXPECT_TRUE(std::filesystem::exists(keystore_ + "/ssh.pem"));
  EXPECT_OK(tpmkey({"delete", "ssh", "--yes"}));
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/ssh.pem"));
  EXPECT_FAILS_WITH(tpmkey({"delete", "ssh", "--yes"}), "no key named \"ssh\"");
}

// create --persistent and delete from the CLI's side: what is printed, and a handle that was
// evicted behind tpmkey's back (the keystore entry is still deleted).
// RSA-1024 is made only when asked for by name or size, each time with the warning, and signs;
// the defaults stay RSA-2048 and say nothing.
// The walk up from the keystore ends at the home directory, which comes from the password
// database as OpenSSH takes it: a directory above the home directory that others could write does
// not make a keystore in it unsafe, the home directory itself does, and so does such a directory
// above a keystore outside the home directory. A private mount namespace gives this user a home
// of the test's making (/etc/passwd bind-mounted over).
TEST_F(CliTest, DirectoryWalkEndsAtTheHomeDirectory) {
  if (geteuid() != 0 || run({"unshare", "-m", "true"}).exit_code != 0) GTEST_SKIP() << "no mount namespaces here";
  const std::string shared = dir_ + "/shared", home = shared + "/home";
  const std::string inside = home + "/ks", outside = shared + "/elsewhere/ks";
  std::filesystem::create_directories(inside);
  std::filesystem::create_directories(outside);
  for (const std::string& d : {home, inside, outside, shared + "/elsewhere"}) chmod(d.c_str(), 0700);
  chmod(shared.c_str(), 0775);  // group-writable, not sticky
  std::string passwd;
  for (std::istringstream in(read_file("/etc/passwd")); std::getline(in, passwd);)
    if (passwd.rfind("root:", 0) == 0) break;
  ASSERT_EQ(passwd.rfind("root:", 0), 0u);
  std::vector<std::string> fields;
  for (std::istringstream f(passwd); std::getline(f, fields.emplace_back(), ':');) {}
  fields.pop_back();
  ASSERT_GE(fields.size(), 7u);
  fields[5] = home;
  std::string line;
  for (const std::string& f : fields) line += (line.empty() ? "" : ":") + f;
  write_file(dir_ + "/passwd", line + "\n");
  chmod((dir_ + "/passwd").c_str(), 0644);
  auto list = [&](const std::string& keystore) {
    return run({"unshare", "-m", "sh", "-c", "mount --bind \"$0\" /etc/passwd || exit 99; exec \"$@\"",
                dir_ + "/passwd", tpmkey_bin(), "list", "--keystore", keystore},
               env_);
  };
  auto in_home = list(inside);
  EXPECT_OK(in_home);
  EXPECT_NE(in_home.out.find("no keys in " + inside), std::string::npos) << in_home.out;
  EXPECT_FAILS_WITH(list(outside), shared + ", a directory above the keystore directory " + outside +
                                       ", is writable by its group");
  chmod(home.c_str(), 0770);
  EXPECT_FAILS_WITH(list(inside),
                    home + ", a directory above the keystore directory " + inside + ", is writable by its group");
  chmod(shared.c_str(), 0700);
}

TEST_F(CliTest, Rsa1024OnlyWhenAskedForAndWithAWarning) {
  if (!supported("rsa1024")) GTEST_SKIP() << "this TPM has no RSA-1024";
  const std::string warning = std::string("tpmkey: warning: ") + kWeakWarning;
  auto created = tpmkey({"create", "legacy", "--algorithm", "rsa1024", "--no-password"});
  EXPECT_OK(created);
  EXPECT_NE(created.err.find(warning), std::string::npos) << created.err;
  EXPECT_NE(tpmkey({"list"}).out.find("rsa1024    1024"), std::string::npos) << tpmkey({"list"}).out;
  auto pub = tpmkey({"pubkey", "legacy"});
  ASSERT_OK(pub);
  write_file(dir_ + "/legacy.pub", pub.out);
  expect_signs("tpm2:legacy", dir_ + "/legacy.pub", true);

  auto by_size = openssl("genpkey", {"-propquery", "provider=tpmkey", "-algorithm", "RSA", "-pkeyopt",
                                     "rsa_keygen_bits:1024", "-out", dir_ + "/small.pem"});
  EXPECT_OK(by_size);
  EXPECT_NE(by_size.err.find(warning), std::string::npos) << by_size.err;
  auto shown = openssl("pkey", {"-in", dir_ + "/small.pem", "-noout", "-text"});
  EXPECT_NE(shown.out.find("(1024 bit, in the TPM)"), std::string::npos) << shown.out << shown.err;

  // Unasked: RSA-2048, no warning, in the CLI and in genpkey.
  auto plain = openssl("genpkey", {"-propquery", "provider=tpmkey", "-algorithm", "RSA", "-out", dir_ + "/d.pem"});
  EXPECT_OK(plain);
  EXPECT_EQ(plain.err.find("warning"), std::string::npos) << plain.err;
  EXPECT_NE(openssl("pkey", {"-in", dir_ + "/d.pem", "-noout", "-text"}).out.find("(2048 bit, in the TPM)"), std::string::npos);
  auto rsa = tpmkey({"create", "normal", "--algorithm", "rsa2048", "--no-password"});
  EXPECT_OK(rsa);
  EXPECT_EQ(rsa.err.find("warning"), std::string::npos) << rsa.err;
}

TEST_F(CliTest, PersistentKeyWhoseHandleIsGone) {
  constexpr const char* kHandle = "0x81000030";
  auto made = tpmkey({"create", "pk", "--persistent", kHandle, "--description", "persistent"});
  EXPECT_OK(made);
  EXPECT_NE(made.out.find("created tpm2:pk (ec-p256) in " + keystore_ + "/pk.pem"), std::string::npos) << made.out;
  EXPECT_NE(made.out.find("persistent at 0x81000030 (also tpm2:handle=0x81000030)"), std::string::npos) << made.out;
  EXPECT_FAILS_WITH(tpmkey({"create", "pk2", "--persistent", kHandle}), "the persistent handle is already in use");
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/pk2.pem"));
  ASSERT_OK(run({"tpm2_evictcontrol", "-T", tcti_, "-C", "o", "-c", kHandle}, {"TSS2_LOG=all+none"}));
  auto del = tpmkey({"delete", "pk", "-y"});
  EXPECT_OK(del);
  EXPECT_NE(del.out.find("0x81000030 was no longer in the TPM\ndeleted tpm2:pk\n"), std::string::npos) << del.out;
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/pk.pem"));
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/pk.handle"));
}

// The case: in a world-writable keystore another user plants srk.pin naming an impostor
// SRK. `tpmkey create --password-file` refuses before any TPM use, naming the directory and the
// fix; a pin others can write is refused the same way (docs/configuration.md).
TEST_F(CliTest, CreateRefusesAKeystoreOthersCanWrite) {
  std::filesystem::create_directories(keystore_);
  ASSERT_EQ(chmod(keystore_.c_str(), 0777), 0);
  write_file(keystore_ + "/srk.pin", "name 000b" + std::string(64, 'a') + "\nhandle none\n");
  write_file(dir_ + "/pw", "new password\n");
  const std::string real_ks = std::filesystem::canonical(keystore_).string();
  auto r = tpmkey({"create", "k", "--password-file", dir_ + "/pw"});
  EXPECT_FAILS_WITH(r, "unsafe ownership or permissions: the keystore directory " + real_ks +
                           " is writable by its group and others (mode 0777)");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("`chmod go-w " + real_ks + "`"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/k.pem"));
  ASSERT_EQ(chmod(keystore_.c_str(), 0700), 0);
  ASSERT_EQ(chmod((keystore_ + "/srk.pin").c_str(), 0662), 0);
  EXPECT_FAILS_WITH(tpmkey({"create", "k", "--password-file", dir_ + "/pw"}),
                    keystore_ + "/srk.pin is writable by its group and others (mode 0662)");
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/k.pem"));
  std::filesystem::remove(keystore_ + "/srk.pin");  // the planted pin, once found
  EXPECT_OK(tpmkey({"create", "k", "--password-file", dir_ + "/pw"}));
  EXPECT_OK(tpmkey({"list"}));
}

// The TPM takes a key's password only up to its name algorithm's digest size (32 bytes for
// SHA-256): a longer one is refused before the TPM is asked anything, in words that say the limit.
TEST_F(CliTest, CreateRefusesAnOverlongPassword) {
  write_file(dir_ + "/pw33", std::string(33, 'x') + "\n");
  EXPECT_FAILS_WITH(tpmkey({"create", "long", "--password-file", dir_ + "/pw33"}), "can be at most 32 bytes");
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/long.pem"));
  write_file(dir_ + "/pw32", std::string(32, 'x') + "\n");
  EXPECT_OK(tpmkey({"create", "long", "--password-file", dir_ + "/pw32"}));
}

TEST_F(CliTest, HelpForEveryCommand) {
  for (const char* cmd : {"init", "create", "list", "pubkey", "delete", "import", "import-file", "algorithms", "agent"}) {
    SCOPED_TRACE(cmd);
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {cmd, "--help"}, {cmd, "-h"}, {"help", cmd}, {"--help", cmd}}) {
      auto r = tpmkey(args);
      EXPECT_OK(r);
      EXPECT_NE(r.out.find(std::string("Usage: tpmkey ") + cmd), std::string::npos) << r.out;
    }
  }
  auto r = tpmkey({"--help"});
  EXPECT_OK(r);
  EXPECT_NE(r.out.find("--tcti"), std::string::npos);
  EXPECT_OK(tpmkey({"help"}));
  auto none = tpmkey({});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("Usage: tpmkey"), std::string::npos) << none.err;
  auto version = tpmkey({"list", "--version"});
  EXPECT_OK(version);
  EXPECT_EQ(version.out.rfind("tpmkey ", 0), 0u) << version.out;
  EXPECT_FAILS_WITH(tpmkey({"frobnicate"}), "unknown command");
  EXPECT_FAILS_WITH(tpmkey({"list", "--bogus"}), "unknown option --bogus");
}

// Each command takes only its own options (and the global ones) and its own number of arguments;
// everything else is a usage error: exit 2, a message that says what is wrong and where to look,
// and nothing done.
TEST_F(CliTest, UsageErrorsExitTwo) {
  struct Case {
    std::vector<std::string> args;
    std::string says, command;
  };
  write_file(dir_ + "/pw", "a secret\n");
  for (const Case& c : std::vector<Case>{
           {{"list", "--algorithm", "x"}, "unknown option --algorithm for \"tpmkey list\"", "list"},
           {{"create", "k", "--yes"}, "unknown option --yes for \"tpmkey create\"", "create"},
           {{"create", "k", "-y"}, "unknown option -y for \"tpmkey create\"", "create"},
           {{"pubkey", "k", "--persistent", "0x81000010"}, "unknown option --persistent for \"tpmkey pubkey\"", "pubkey"},
           {{"delete", "k", "--format", "pem"}, "unknown option --format for \"tpmkey delete\"", "delete"},
           {{"init", "--password"}, "unknown option --password for \"tpmkey init\"", "init"},
           {{"import-file", "k", "f", "--algorithm", "ec-p256"}, "unknown option --algorithm for \"tpmkey import-file\"",
            "import-file"},
           {{"algorithms", "--repin"}, "unknown option --repin for \"tpmkey algorithms\"", "algorithms"},
           {{"--algorithm", "rsa2048", "list"}, "unknown option --algorithm for \"tpmkey list\"", "list"},
           {{"create", "k", "-x"}, "unknown option -x for \"tpmkey create\"", "create"},
           {{"pubkey", "a", "b"}, "unexpected argument \"b\" for \"tpmkey pubkey\" (it takes NAME)", "pubkey"},
           {{"list", "x"}, "unexpected argument \"x\" for \"tpmkey list\" (it takes no arguments)", "list"},
           {{"init", "now"}, "unexpected argument \"now\" for \"tpmkey init\"", "init"},
           {{"algorithms", "ec-p256"}, "unexpected argument \"ec-p256\" for \"tpmkey algorithms\"", "algorithms"},
           {{"create", "a", "b", "--algorithm", "rsa2048"}, "unexpected argument \"b\" for \"tpmkey create\"", "create"},
           {{"delete", "a", "b", "--yes"}, "unexpected argument \"b\" for \"tpmkey delete\"", "delete"},
           {{"import-file", "k", "f", "g"}, "unexpected argument \"g\" for \"tpmkey import-file\" (it takes NAME and PATH)",
            "import-file"},
           {{"create"}, "missing NAME for \"tpmkey create\"", "create"},
           {{"pubkey"}, "missing NAME for \"tpmkey pubkey\"", "pubkey"},
           {{"delete", "--yes"}, "missing NAME for \"tpmkey delete\"", "delete"},
           {{"import-file", "onlyname"}, "missing PATH for \"tpmkey import-file\"", "import-file"},
           {{"pubkey", "k", "--format"}, "--format needs a value", "pubkey"},
           {{"create", "k", "--algorithm"}, "--algorithm needs a value", "create"},
           {{"import-file", "k", "f", "--password-file"}, "--password-file needs a value", "import-file"},
           {{"list", "--keystore"}, "--keystore needs a value", "list"},
           {{"delete", "k", "--yes=1"}, "--yes takes no value", "delete"},
           {{"create", "k", "--password", "--password-file", dir_ + "/pw"},
            "--password and --password-file exclude each other", "create"},
           {{"create", "k", "--persistent", "0x40000001"}, "--persistent needs a handle 0x81000000-0x81ffffff", "create"},
           {{"pubkey", "k", "--format", "der"}, "--format must be pem or openssh", "pubkey"},
       }) {
    std::string line;
    for (const auto& a : c.args) line += " " + a;
    SCOPED_TRACE("tpmkey" + line);
    auto r = tpmkey(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("tpmkey: " + c.says), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("Try \"tpmkey " + c.command + " --help\"."), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
  }
  // Before any command: only "tpmkey --help" can help.
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--bogus"}, {"--tcti"}, {"frobnicate", "--help"}, {"help", "a", "b"}}) {
    auto r = tpmkey(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << r.out << r.err;
    EXPECT_NE(r.err.find("Try \"tpmkey --help\"."), std::string::npos) << r.err;
  }
  // Nothing was done by any of them: no key, not even a keystore directory.
  EXPECT_FALSE(std::filesystem::exists(keystore_)) << "a usage error touched the keystore";
}

// Global options go before or after the command, "--opt=value" works as "--opt value", options of
// the command may come first too, and "--" ends the options.
TEST_F(CliTest, OptionPlacementAndTheEndOfOptions) {
  std::vector<std::string> env = {"TPMKEY_TCTI=" + tcti_, "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none",
                                  "TPMKEY_KEYSTORE=" + dir_ + "/unused"};
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin(), tpmkey_bin());
    return run(args, env);
  };
  EXPECT_OK(cli({"create", "k", "--keystore", keystore_, "--algorithm=ec-p384"}));
  auto list = cli({"--keystore=" + keystore_, "list"});
  EXPECT_OK(list);
  EXPECT_NE(list.out.find("k                        ec-p384    384    no        0x40000001"), std::string::npos)
      << list.out;
  EXPECT_OK(cli({"--keystore", keystore_, "--format", "openssh", "pubkey", "k", "--comment=laptop key"}));
  EXPECT_NE(cli({"pubkey", "--keystore", keystore_, "k", "--format=openssh", "--comment", "laptop key"})
                .out.find(" laptop key\n"),
            std::string::npos);
  // After "--", "--format" is a key name, not an option: the key is looked for (exit 1, not 2).
  auto dashes = cli({"--keystore", keystore_, "pubkey", "--", "--format"});
  EXPECT_FAILS_WITH(dashes, "pubkey(tpm2:--format): key not found");
  EXPECT_EQ(dashes.exit_code, 1);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/unused"));
  auto del = cli({"-y", "--keystore", keystore_, "delete", "k"});
  EXPECT_OK(del);
  EXPECT_NE(del.out.find("deleted tpm2:k"), std::string::npos) << del.out;
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/k.pem"));
}

// openssl pkeyutl -sign with every algorithm and padding, both provider orders; the default
// provider alone verifies.
TEST_F(CliTest, OpensslPkeyutlSignsWithEveryAlgorithmInBothOrders) {
  struct Variant {
    std::string alg, digest, padding;
  };
  std::vector<Variant> variants = {{"ec-p256", "sha256", ""},  {"ec-p384", "sha384", ""},
                                   {"ec-p521", "sha512", ""},  {"rsa2048", "sha256", "pkcs1"},
                                   {"rsa2048", "sha256", "pss"}, {"rsa3072", "sha384", "pss"},
                                   {"rsa3072", "sha512", "pkcs1"}, {"rsa4096", "sha256", "pss"}};
  for (const auto& v : variants) {
    SCOPED_TRACE(v.alg + " " + v.digest + " " + v.padding);
    if (!std::filesystem::exists(keystore_ + "/" + v.alg + ".pem")) {
      if (!supported(v.alg)) {
        EXPECT_FAILS_WITH(tpmkey({"create", v.alg, "--algorithm", v.alg}), "does not support");
        continue;
      }
      EXPECT_OK(tpmkey({"create", v.alg, "--algorithm", v.alg}));
      EXPECT_OK(tpmkey({"pubkey", v.alg, }));
      write_file(dir_ + "/" + v.alg + ".pub", tpmkey({"pubkey", v.alg}).out);
    }
    for (bool first : {true, false}) {
      std::string sig = dir_ + "/sig";
      std::vector<std::string> sign = {"-sign", "-inkey", "tpm2:" + v.alg, "-rawin", "-digest", v.digest,
                                       "-in", dir_ + "/msg", "-out", sig};
      std::vector<std::string> verify = {"pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/" + v.alg + ".pub",
                                         "-rawin", "-digest", v.digest, "-in", dir_ + "/msg", "-sigfile", sig};
      if (!v.padding.empty()) {
        for (auto* args : {&sign, &verify}) {
          args->push_back("-pkeyopt");
          args->push_back("rsa_padding_mode:" + v.padding);
        }
      }
      if (v.padding == "pss") {
        verify.push_back("-pkeyopt");
        verify.push_back("rsa_pss_saltlen:digest");
      }
      EXPECT_OK(openssl("pkeyutl", sign, first));
      auto ok = plain_openssl(verify);
      EXPECT_OK(ok);
      EXPECT_NE(ok.out.find("Signature Verified Successfully"), std::string::npos);
    }
  }
}

// One openssl process, one signature: what a script pays. With the SRK persistent (`tpmkey init`)
// the process sends ReadPublic (the SRK's name against the pin), StartAuthSession (salted to it),
// Load and Sign, and at exit flushes the key and the session: nothing else, not even the slot
// limits (nothing of its own to evict).
TEST_F(CliTest, OneShotProcessSendsTheFewestCommands) {
  EXPECT_OK(tpmkey({"init"}));
  EXPECT_OK(tpmkey({"create", "k"}));
  write_file(dir_ + "/k.pub", tpmkey({"pubkey", "k"}).out);
  {
    BusProxy bus(shared_swtpm().port());
    std::vector<std::string> env = env_;
    env[2] = "OPENSSL_CONF=" + write_openssl_cnf(dir_, true, bus.tcti(), keystore_);
    EXPECT_OK(run({"openssl", "pkeyutl", "-sign", "-inkey", "tpm2:k", "-rawin", "-digest", "sha256", "-in",
                   dir_ + "/msg", "-out", dir_ + "/sig"},
                  env));
    const std::vector<uint32_t> expected = {TPM2_CC_ReadPublic, TPM2_CC_StartAuthSession, TPM2_CC_Load,
                                            TPM2_CC_Sign,       TPM2_CC_FlushContext,     TPM2_CC_FlushContext};
    EXPECT_EQ(bus.command_codes(), expected);
  }
  auto v = plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/k.pub", "-rawin", "-digest", "sha256",
                          "-in", dir_ + "/msg", "-sigfile", dir_ + "/sig"});
  EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out << v.err;
  EXPECT_OK(evict_persistent_srk());
}

#ifndef TPMKEY_SANITIZED
// Every program that activates tpmkey loads tpmkey.so, TPM key or not, and every program that uses
// a key also loads tpmkey-core.so: neither may bring a shared libstdc++, whose binding alone costs
// the dynamic loader ~2 ms per process (docs/architecture.md). The front needs libc alone (the
// sanitizer build links them differently).
TEST_F(CliTest, ModulesDoNotLoadASharedLibstdcxx) {
  auto needed = [](const std::string& module) {
    auto r = run({"readelf", "-d", provider_dir() + "/" + module});
    EXPECT_OK(r);
    std::vector<std::string> libs;
    for (size_t at = r.out.find("Shared library: ["); at != std::string::npos;
         at = r.out.find("Shared library: [", at + 1)) {
      const size_t from = at + 17;
      libs.push_back(r.out.substr(from, r.out.find(']', from) - from));
    }
    return libs;
  };
  EXPECT_EQ(needed("tpmkey.so"), std::vector<std::string>{"libc.so.6"});
  const auto core = needed("tpmkey-core.so");
  EXPECT_NE(std::find(core.begin(), core.end(), "libcrypto.so.3"), core.end());  // the dependencies are listed
  for (const std::string& lib : core) {
    EXPECT_EQ(lib.find("libstdc++"), std::string::npos) << lib;
    EXPECT_EQ(lib.find("libgcc_s"), std::string::npos) << lib;
  }
}
#endif

// tpmkey.so without the provider proper next to it (a copy made by hand): activation fails and
// says which file is missing.
TEST_F(CliTest, FrontWithoutItsCoreFailsClearly) {
  const std::string lone = dir_ + "/lone";
  std::filesystem::create_directories(lone);
  std::filesystem::copy_file(provider_dir() + "/tpmkey.so", lone + "/tpmkey.so");
  auto r = run({"openssl", "list", "-providers", "-provider-path", lone, "-provider", "tpmkey"}, env_);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("tpmkey-core.so is missing"), std::string::npos) << r.err;
}

// tpmkey speaks swtpm's protocol itself and loads the TCTI module any other TCTI string names
// (keystore/tpm/transport.cc): a one-shot process maps neither libtss2-tctildr nor libtss2-rc, and
// for "swtpm:" no TCTI module at all. A module named by its file is loaded as such, a name with no
// module is a clear error, and only the default TCTI (none configured) loads tctildr.
TEST_F(CliTest, OneShotLoadsOnlyTheLibrariesItUses) {
  EXPECT_OK(tpmkey({"create", "k"}));
  std::vector<std::string> env = env_;
  env.push_back("LD_DEBUG=files");  // the dynamic loader lists every library it loads on stderr
  auto sign = [&](const std::string& tcti) {
    env[0] = "TPMKEY_TCTI=" + tcti;
    return run({"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey", "-provider", "default",
                "-sign", "-inkey", "tpm2:k", "-rawin", "-in", dir_ + "/msg", "-out", dir_ + "/s"},
               env);
  };
  ASSERT_EQ(tcti_.rfind("swtpm:", 0), 0u) << tcti_;
  const std::string config = tcti_.substr(tcti_.find(':') + 1);
  for (const std::string& tcti : {tcti_, "libtss2-tcti-swtpm.so.0:" + config}) {
    auto r = sign(tcti);
    EXPECT_OK(r);
    EXPECT_EQ(r.err.find("file=libtss2-tcti-swtpm.so.0") != std::string::npos, tcti != tcti_) << tcti;
    EXPECT_EQ(r.err.find("libtss2-tctildr"), std::string::npos) << tcti;
    EXPECT_EQ(r.err.find("libtss2-rc"), std::string::npos) << tcti;
  }
  EXPECT_FAILS_WITH(sign("nosuch:x"), "connect(nosuch:x): TPM unreachable: cannot load libtss2-tcti-nosuch.so.0: cannot open shared object file");
  EXPECT_FAILS_WITH(sign("/nonexistent/tcti.so:x"), "cannot load /nonexistent/tcti.so: cannot open shared object file");
  // A library that is no TCTI module.
  EXPECT_FAILS_WITH(sign("libtss2-mu.so.0"), "libtss2-mu.so.0 is not a TCTI module (no Tss2_Tcti_Info)");

  // No TCTI configured: tctildr's default search (tpm2-abrmd, /dev/tpmrm0, /dev/tpm0, mssim on
  // 127.0.0.1:2321), none of which this test's machine is expected to have.
  env.erase(env.begin());
  auto dflt = run({"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey", "-provider",
                   "default", "-sign", "-inkey", "tpm2:k", "-rawin", "-in", dir_ + "/msg", "-out", dir_ + "/s"},
                  env);
  EXPECT_NE(dflt.err.find("file=libtss2-tctildr.so.0"), std::string::npos);
  if (dflt.exit_code != 0) {
    EXPECT_FAILS_WITH(dflt, "sign(tpm2:k): connect(default TCTI): TPM unreachable: ");
  }
}

TEST_F(CliTest, OpensslConfigFileAndPrehashedSign) {
  EXPECT_OK(tpmkey({"create", "k"}));
  std::string cnf = write_openssl_cnf(dir_, false, tcti_, keystore_);
  std::vector<std::string> env = env_;
  env[2] = "OPENSSL_CONF=" + cnf;
  auto dgst = run({"openssl", "dgst", "-sha256", "-binary", "-out", dir_ + "/d", dir_ + "/msg"}, env);
  EXPECT_OK(dgst);
  EXPECT_OK(run({"openssl", "pkeyutl", "-sign", "-inkey", "tpm2:k", "-in", dir_ + "/d", "-out", dir_ + "/s"}, env));
  write_file(dir_ + "/k.pub", tpmkey({"pubkey", "k"}).out);
  EXPECT_OK(plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/k.pub", "-in", dir_ + "/d", "-sigfile",
                           dir_ + "/s"}));
}

TEST_F(CliTest, GenpkeyStoreutlAndCertificates) {
  // genpkey generates inside the TPM when asked for tpmkey by property, and writes the TSS2 key
  // file; without the property it makes a software key, whichever provider comes first
  // (docs/architecture.md, "Either provider order").
  std::filesystem::create_directories(keystore_);
  for (bool tpmkey_first : {true, false}) {
    const std::string soft = dir_ + "/soft.pem";
    EXPECT_OK(openssl("genpkey", {"-algorithm", "EC", "-pkeyopt", "group:P-256", "-out", soft}, tpmkey_first));
    EXPECT_EQ(read_file(soft).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u) << tpmkey_first;
    EXPECT_OK(openssl("genpkey", {"-algorithm", "RSA", "-pkeyopt", "bits:2048", "-out", soft}, tpmkey_first));
    EXPECT_EQ(read_file(soft).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u) << tpmkey_first;
  }
  EXPECT_OK(openssl("genpkey", {"-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt", "group:P-384", "-out",
                                keystore_ + "/gen.pem"}));
  EXPECT_EQ(read_file(keystore_ + "/gen.pem").rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0), 0u);
  EXPECT_OK(openssl("genpkey", {"-propquery", "provider=tpmkey", "-algorithm", "RSA", "-pkeyopt", "bits:2048", "-out",
                                keystore_ + "/genrsa.pem"},
                    false));
  EXPECT_EQ(read_file(keystore_ + "/genrsa.pem").rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0), 0u);

  // `openssl ecparam -genkey -name CURVE` asks tpmkey's key management for the parameters and
  // then for the key from them: a TPM key. `genpkey -paramfile` cannot: OpenSSL 3.0 decodes the
  // file with the default provider and generates with the parameters' own key management,
  // whatever -propquery says (docs/keys.md, "Parameter files"), so the key is a software key.
  const std::string ec_key = dir_ + "/ecparam.pem";
  EXPECT_OK(openssl("ecparam", {"-genkey", "-noout", "-name", "prime256v1", "-propquery", "provider=tpmkey", "-out",
                                ec_key}));
  EXPECT_EQ(read_file(ec_key).rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0), 0u) << read_file(ec_key);
  EXPECT_OK(openssl("pkey", {"-in", ec_key, "-noout"}));
  const std::string params = dir_ + "/p256.params";
  EXPECT_OK(plain_openssl({"ecparam", "-name", "prime256v1", "-out", params}));
  EXPECT_OK(openssl("genpkey", {"-paramfile", params, "-propquery", "provider=tpmkey", "-out", ec_key}));
  EXPECT_EQ(read_file(ec_key).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u) << read_file(ec_key);

  auto list = openssl("storeutl", {"tpm2:"});
  EXPECT_OK(list);
  EXPECT_NE(list.out.find("0: Name: tpm2:gen\nec-p384"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("1: Name: tpm2:genrsa\nrsa2048"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("Total found: 2"), std::string::npos) << list.out;

  for (const char* name : {"gen", "genrsa"}) {
    std::string cert = dir_ + "/" + name + ".crt";
    std::vector<std::string> req = {"-new", "-x509", "-key", std::string("tpm2:") + name, "-subj", "/CN=tpmkey test",
                                    "-days", "1", "-out", cert};
    if (std::string(name) == "genrsa") req.insert(req.end(), {"-sigopt", "rsa_padding_mode:pss"});
    EXPECT_OK(openssl("req", req, false));
    EXPECT_OK(plain_openssl({"verify", "-CAfile", cert, cert}));
  }
}

// TSS2 key files are shared with tpm2-openssl (Debian's tpm2-openssl provider, "tpm2").
TEST_F(CliTest, KeyFilesInteroperateWithTpm2Openssl) {
  std::vector<std::string> env = env_;
  env.push_back("TPM2OPENSSL_TCTI=" + tcti_);
  // tpmkey's key signs in tpm2-openssl.
  EXPECT_OK(tpmkey({"create", "mine"}));
  write_file(dir_ + "/mine.pub", tpmkey({"pubkey", "mine"}).out);
  auto r = run({"openssl", "pkeyutl", "-provider", "tpm2", "-provider", "default", "-sign", "-inkey",
                keystore_ + "/mine.pem", "-rawin", "-digest", "sha256", "-in", dir_ + "/msg", "-out", dir_ + "/s1"},
               env);
  EXPECT_OK(r);
  EXPECT_OK(plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/mine.pub", "-rawin", "-digest",
                           "sha256", "-in", dir_ + "/msg", "-sigfile", dir_ + "/s1"}));
  // tpm2-openssl's key signs in tpmkey.
  EXPECT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC", "-pkeyopt",
                 "group:P-256", "-out", dir_ + "/theirs.pem"},
                env));
  EXPECT_OK(openssl("pkeyutl", {"-sign", "-inkey", "tpm2:file=" + dir_ + "/theirs.pem", "-rawin", "-digest", "sha256",
                                "-in", dir_ + "/msg", "-out", dir_ + "/s2"}));
  EXPECT_OK(openssl("pkey", {"-in", "tpm2:file=" + dir_ + "/theirs.pem", "-pubout", "-out", dir_ + "/theirs.pub"}));
  EXPECT_OK(plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/theirs.pub", "-rawin", "-digest",
                           "sha256", "-in", dir_ + "/msg", "-sigfile", dir_ + "/s2"}));
}

// With tpmkey in openssl.cnf, a key file path works wherever openssl takes a private key.
TEST_F(CliTest, KeyFilesByPlainPathInBothOrders) {
  EXPECT_OK(tpmkey({"create", "ec"}));
  EXPECT_OK(tpmkey({"create", "rsa", "--algorithm", "rsa2048"}));
  for (const std::string name : {"ec", "rsa"}) {
    SCOPED_TRACE(name);
    std::string pem = keystore_ + "/" + name + ".pem", der = der_copy(pem, name), pub = dir_ + "/" + name + ".pub";
    auto expected_pub = tpmkey({"pubkey", name});
    write_file(pub, expected_pub.out);
    auto expected_der = plain_openssl({"pkey", "-pubin", "-in", pub, "-outform", "DER"});
    for (bool first : {true, false}) {
      SCOPED_TRACE(first ? "tpmkey first" : "default first");
      expect_signs(pem, pub, first);
      expect_signs(der, pub, first);
      expect_signs("file:" + pem, pub, first);
      // SubjectPublicKeyInfo, PEM and DER, from the key file.
      auto pem_out = openssl_cnf({"pkey", "-in", pem, "-pubout"}, first);
      EXPECT_OK(pem_out);
      EXPECT_EQ(pem_out.out, expected_pub.out);
      auto der_out = openssl_cnf({"pkey", "-in", der, "-pubout", "-outform", "DER"}, first);
      EXPECT_OK(der_out);
      EXPECT_EQ(der_out.out, expected_der.out);
      // A self-signed certificate made with the key file, checked by the default provider.
      std::string cert = dir_ + "/" + name + ".crt";
      EXPECT_OK(openssl_cnf({"req", "-new", "-x509", "-key", pem, "-subj", "/CN=key file", "-days", "1", "-out", cert},
                            first));
      EXPECT_OK(plain_openssl({"verify", "-CAfile", cert, cert}));
      auto store = openssl_cnf({"storeutl", "-keys", der}, first);
      EXPECT_OK(store);
      EXPECT_NE(store.out.find("0: Pkey"), std::string::npos) << store.out;
    }
  }
  // Also with the providers given on the command line.
  write_file(dir_ + "/ec.pub", tpmkey({"pubkey", "ec"}).out);
  EXPECT_OK(openssl("pkeyutl", {"-sign", "-inkey", keystore_ + "/ec.pem", "-rawin", "-in", dir_ + "/msg", "-out",
                                dir_ + "/sig"}, false));
  EXPECT_OK(plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/ec.pub", "-rawin", "-in",
                           dir_ + "/msg", "-sigfile", dir_ + "/sig"}));
}

// Key files made by tpm2-openssl load by plain path through tpmkey (tpm2-openssl not loaded).
TEST_F(CliTest, Tpm2OpensslKeyFilesByPlainPath) {
  std::vector<std::string> env = env_;
  env.push_back("TPM2OPENSSL_TCTI=" + tcti_);
  std::string ec = dir_ + "/theirs-ec.pem", rsa = dir_ + "/theirs-rsa.pem";
  EXPECT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC", "-pkeyopt",
                 "group:P-256", "-out", ec},
                env));
  EXPECT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "RSA", "-pkeyopt",
                 "bits:2048", "-pkeyopt", "user-auth:their secret", "-out", rsa},
                env));
  ASSERT_EQ(read_file(rsa).rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0), 0u);
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    EXPECT_OK(openssl_cnf({"pkey", "-in", ec, "-pubout", "-out", dir_ + "/ec.pub"}, first));
    expect_signs(ec, dir_ + "/ec.pub", first);
    EXPECT_OK(openssl_cnf({"pkey", "-in", rsa, "-passin", "pass:their secret", "-pubout", "-out", dir_ + "/rsa.pub"},
                          first));
    expect_signs(rsa, dir_ + "/rsa.pub", first, {"-passin", "pass:their secret"});
    auto text = openssl_cnf({"pkey", "-in", rsa, "-passin", "pass:their secret", "-text", "-noout"}, first);
    EXPECT_OK(text);
    EXPECT_NE(text.out.find("TPM password: needed"), std::string::npos) << text.out;
  }
}

TEST_F(CliTest, PasswordKeyFileByPlainPath) {
  write_file(dir_ + "/pw", "file secret\n");
  EXPECT_OK(tpmkey({"create", "pw", "--password-file", dir_ + "/pw"}));
  std::string key = keystore_ + "/pw.pem", pub = dir_ + "/pw.pub";
  write_file(pub, tpmkey({"pubkey", "pw"}).out);
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    expect_signs(key, pub, first, {"-passin", "file:" + dir_ + "/pw"});
    expect_signs(key, pub, first, {"-passin", "pass:file secret"});
    std::vector<std::string> sign = {"pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", dir_ + "/msg", "-out",
                                     dir_ + "/sig"};
    auto wrong = sign;
    wrong.insert(wrong.end(), {"-passin", "pass:wrong guess"});
    auto r = openssl_cnf(wrong, first);
    EXPECT_FAILS_WITH(r, "sign(TSS2 key file): TPM2_Sign: authorization failed");
    EXPECT_EQ(r.err.find("wrong guess"), std::string::npos) << "the password leaked: " << r.err;
    // No -passin and no terminal: the public half still loads, signing says what is missing.
    EXPECT_FAILS_WITH(openssl_cnf(sign, first), "the key needs a password and none was given");
    auto pubout = openssl_cnf({"pkey", "-in", key, "-pubout"}, first);
    EXPECT_OK(pubout);
    EXPECT_EQ(pubout.out, read_file(pub));
  }
}

TEST_F(CliTest, DamagedKeyFilesGiveClearErrors) {
  EXPECT_OK(tpmkey({"create", "k"}));
  std::string pem = read_file(keystore_ + "/k.pem");
  std::string der = read_file(der_copy(keystore_ + "/k.pem", "k"));
  write_file(dir_ + "/trunc.der", der.substr(0, der.size() - 30));
  write_file(dir_ + "/cut.pem", pem.substr(0, pem.size() / 2));
  write_file(dir_ + "/corrupt.pem",
             "-----BEGIN TSS2 PRIVATE KEY-----\nMAMCAQA=\n-----END TSS2 PRIVATE KEY-----\n");
  struct Case {
    std::string file, says;
  };
  for (const Case& c : std::vector<Case>{
           {"trunc.der", "open(TSS2 key file): malformed or unusable key file: truncated TSS2 PRIVATE KEY"},
           {"cut.pem", "open(TSS2 key file): malformed or unusable key file: unreadable PEM (truncated or damaged)"},
           {"corrupt.pem", "open(TSS2 key file): malformed or unusable key file: missing key type OID"}}) {
    for (bool first : {true, false}) {
      SCOPED_TRACE(c.file + (first ? " tpmkey first" : " default first"));
      EXPECT_FAILS_WITH(openssl_cnf({"pkeyutl", "-sign", "-inkey", dir_ + "/" + c.file, "-rawin", "-in",
                                     dir_ + "/msg", "-out", dir_ + "/sig"},
                                    first),
                        c.says);
    }
  }
}

TEST_F(CliTest, PkeyTextShowsTheKey) {
  write_file(dir_ + "/pw", "text secret\n");
  EXPECT_OK(tpmkey({"create", "ec", "--password-file", dir_ + "/pw", "--description", "laptop"}));
  EXPECT_OK(tpmkey({"create", "rsa", "--algorithm", "rsa2048"}));
  for (bool first : {true, false}) {
    SCOPED_TRACE(first ? "tpmkey first" : "default first");
    // The tpm2: store asks for the password when it opens the key, so it is given here.
    auto ec = openssl_cnf({"pkey", "-in", "tpm2:ec", "-passin", "file:" + dir_ + "/pw", "-text", "-noout"}, first);
    EXPECT_OK(ec);
    EXPECT_EQ(ec.out.rfind("Private-Key: (256 bit, in the TPM)\npub:\n    04:", 0), 0u) << ec.out;
    for (const char* line : {"ASN1 OID: prime256v1\n", "NIST CURVE: P-256\n", "TPM algorithm: ec-p256\n",
                             "TPM parent: 0x40000001 (owner hierarchy, standard ECC P-256 storage primary)\n",
                             "TPM password: needed\n", "Description: laptop\n"})
      EXPECT_NE(ec.out.find(line), std::string::npos) << line << " in\n" << ec.out;
    EXPECT_EQ(ec.out.find("priv:"), std::string::npos) << ec.out;
    EXPECT_EQ(ec.out.find("text secret"), std::string::npos) << ec.out;
    // The same from the key file itself (no password is needed to print it).
    auto file = openssl_cnf({"pkey", "-in", keystore_ + "/ec.pem", "-text", "-noout"}, first);
    EXPECT_OK(file);
    EXPECT_EQ(file.out, ec.out);

    auto rsa = openssl_cnf({"pkey", "-in", keystore_ + "/rsa.pem", "-text", "-noout"}, first);
    EXPECT_OK(rsa);
    EXPECT_EQ(rsa.out.rfind("Private-Key: (2048 bit, in the TPM)\nModulus:\n", 0), 0u) << rsa.out;
    EXPECT_NE(rsa.out.find("Exponent: 65537 (0x10001)\nTPM algorithm: rsa2048\n"), std::string::npos) << rsa.out;
    EXPECT_NE(rsa.out.find("TPM password: not needed\n"), std::string::npos) << rsa.out;
    // The public modulus is the one the default provider prints for the public key.
    write_file(dir_ + "/rsa.pub", tpmkey({"pubkey", "rsa"}).out);
    auto pub = plain_openssl({"pkey", "-pubin", "-in", dir_ + "/rsa.pub", "-text", "-noout"});
    EXPECT_NE(rsa.out.find(pub.out.substr(pub.out.find('\n') + 1)), std::string::npos) << rsa.out << pub.out;
  }
}

TEST_F(CliTest, ErrorsSayWhatWhichAndWhy) {
  EXPECT_OK(tpmkey({"create", "good"}));
  write_file(keystore_ + "/corrupt.pem", "-----BEGIN TSS2 PRIVATE KEY-----\nMAMCAQA=\n-----END TSS2 PRIVATE KEY-----\n");
  auto sign = [&](const std::string& uri) {
    return openssl("pkeyutl", {"-sign", "-inkey", uri, "-rawin", "-in", dir_ + "/msg", "-out", dir_ + "/s"});
  };
  EXPECT_FAILS_WITH(sign("tpm2:bad/name"), "malformed tpm2: URI: key name \"bad/name\"");
  EXPECT_FAILS_WITH(sign("tpm2:name=x;colour=red"), "unknown attribute \"colour\"");
  EXPECT_FAILS_WITH(sign("tpm2:nosuchkey"), "open(tpm2:nosuchkey): key not found");
  EXPECT_FAILS_WITH(sign("tpm2:corrupt"), "open(tpm2:corrupt): read(" + keystore_ + "/corrupt.pem): malformed");
  EXPECT_FAILS_WITH(tpmkey({"create", "d", "--algorithm", "dsa1024"}), "unknown algorithm \"dsa1024\"");
  EXPECT_FAILS_WITH(openssl("genpkey", {"-propquery", "provider=tpmkey", "-algorithm", "EC", "-pkeyopt", "group:P-192"}),
                    "EC group \"P-192\"");
  EXPECT_FAILS_WITH(tpmkey({"create", "../x"}), "key name \"../x\"");
  EXPECT_FAILS_WITH(tpmkey({"pubkey", "corrupt"}), "malformed or unusable key file");

  // No TPM: the provider loads, listing works, signing fails with the decoded TCTI error.
  std::vector<std::string> dead_env = env_;
  dead_env[0] = "TPMKEY_TCTI=swtpm:host=127.0.0.1,port=1";
  auto dead = run({"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey", "-provider", "default",
                   "-sign", "-inkey", "tpm2:good", "-rawin", "-in", dir_ + "/msg", "-out", dir_ + "/s"},
                  dead_env);
  EXPECT_FAILS_WITH(dead, "sign(tpm2:good): connect(swtpm:host=127.0.0.1,port=1): TPM unreachable: "
                          "connect(127.0.0.1:1): Connection refused");
  auto list = run({tpmkey_bin(), "list"}, dead_env);  // no TPM needed; exits 1 for the corrupt file
  EXPECT_EQ(list.exit_code, 1);
  EXPECT_NE(list.out.find("good                     ec-p256"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("corrupt                  read("), std::string::npos) << list.out;
  EXPECT_FAILS_WITH(run({tpmkey_bin(), "create", "k2"}, dead_env), "TPM unreachable");
  EXPECT_OK(run({"openssl", "list", "-provider-path", provider_dir(), "-provider", "tpmkey", "-signature-algorithms"},
                dead_env));
}


// Keys made by tpm2-tools (tpm2_createprimary, tpm2_create, tpm2_encodeobject), and
// `tpmkey import-file`. tpm2-tools leave their transient objects and (tpm2_encodeobject) a
// session loaded on a TPM without a resource manager: every tool run is followed by flushing them,
// so tpmkey has the TPM's slots and the TPM check in TearDown holds.
class Tpm2ToolsTest : public CliTest {
 protected:
  static constexpr const char* kSrkAttributes =
      "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda";

  CommandResult tool(std::vector<std::string> args, const std::string& tcti = "") {
    std::vector<std::string> env = env_;
    env.push_back("TPM2TOOLS_TCTI=" + (tcti.empty() ? tcti_ : tcti));
    auto r = run(args, env);
    for (const char* what : {"-t", "-l"}) run({"tpm2_flushcontext", what}, env);
    return r;
  }
  // The owner primary made from tpmkey's SRK template (srk_template(): ECC P-256, AES-128-CFB,
  // empty unique), saved as a context file.
  void create_primary(const std::string& ctx, const std::string& tcti = "") {
    ASSERT_OK(tool({"tpm2_createprimary", "-C", "o", "-G", "ecc256:aes128cfb", "-g", "sha256", "-a", kSrkAttributes,
                    "-c", ctx},
                   tcti));
  }
  // tpm2_create + tpm2_encodeobject: a signing key under `parent` (a context file or a
  // persistent handle), written as a TSS2 key file at `out`. tpm2-tools 5.4 (Debian 12) writes
  // emptyAuth inverted (tpm2-tools issue #3458: "-p" gives emptyAuth TRUE); whichever way the
  // installed version does it, the file must say what the key is.
  void create_key(const std::string& parent, const std::string& alg, const std::string& out,
                  const std::string& password = "", const std::string& tcti = "") {
    std::vector<std::string> create = {"tpm2_create", "-C", parent, "-G", alg, "-u", out + ".pub", "-r", out + ".priv"};
    if (!password.empty()) create.insert(create.end(), {"-p", password});
    ASSERT_OK(tool(create, tcti));
    for (bool flag : {false, true}) {
      std::vector<std::string> encode = {"tpm2_encodeobject", "-C", parent, "-u", out + ".pub", "-r", out + ".priv",
                                         "-o", out};
      if (flag) encode.push_back("-p");
      ASSERT_OK(tool(encode, tcti));
      if (file_says_password(out) == !password.empty()) return;
    }
    FAIL() << "tpm2_encodeobject cannot record whether the key has a password";
  }
  bool file_says_password(const std::string& path) {
    std::string pem = read_file(path);
    auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
    EXPECT_TRUE(kf) << kf.error().text();
    return kf && !kf->empty_auth;
  }
  uint32_t parent_of(const std::string& path) {
    std::string pem = read_file(path);
    auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
    return kf ? kf->parent : 0;
  }
  // The public key as tpm2-tools print it from the TPM2B_PUBLIC (no tpmkey involved).
  std::string tools_pubkey(const std::string& key) {
    std::string pub = key + ".spki.pem";
    auto r = run({"tpm2_print", "-t", "TPM2B_PUBLIC", "-f", "pem", key + ".pub"}, env_);
    EXPECT_OK(r);
    write_file(pub, r.out);
    return pub;
  }
  // Signs msg with `key` (a URI or a path) through tpmkey on the command line; verifies with the
  // default provider alone.
  void expect_signs_uri(const std::string& key, const std::string& pub, std::vector<std::string> extra = {}) {
    std::vector<std::string> sign = {"-sign", "-inkey", key, "-rawin", "-digest", "sha256", "-in", dir_ + "/msg",
                                     "-out", dir_ + "/sig"};
    sign.insert(sign.end(), extra.begin(), extra.end());
    EXPECT_OK(openssl("pkeyutl", sign));
    auto v = plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sha256", "-in",
                            dir_ + "/msg", "-sigfile", dir_ + "/sig"});
    EXPECT_OK(v);
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out;
  }
};

// Evicts a persistent handle at the end of a test, also when it fails: the swtpm is shared.
struct EvictAtExit {
  std::function<void()> evict;
  ~EvictAtExit() { evict(); }
};

TEST_F(Tpm2ToolsTest, KeysUnderTheOwnerParent) {
  create_primary(dir_ + "/p.ctx");
  create_key(dir_ + "/p.ctx", "ecc256", dir_ + "/ec.pem");
  create_key(dir_ + "/p.ctx", "rsa2048", dir_ + "/rsa.pem");
  create_key(dir_ + "/p.ctx", "ecc256", dir_ + "/pw.pem", "tools secret");
  // A transient parent is recorded as 0x40000001: the primary from the standard template.
  EXPECT_EQ(parent_of(dir_ + "/ec.pem"), 0x40000001u);
  for (const std::string name : {"ec", "rsa"}) {
    SCOPED_TRACE(name);
    std::string key = dir_ + "/" + name + ".pem", pub = tools_pubkey(key);
    expect_signs_uri("tpm2:file=" + key, pub);
    expect_signs_uri(key, pub);
    for (bool first : {true, false}) expect_signs(key, pub, first);
  }
  write_file(dir_ + "/pw", "tools secret\n");
  std::string pw = dir_ + "/pw.pem", pw_pub = tools_pubkey(pw);
  expect_signs_uri("tpm2:file=" + pw + "?pin-source=" + dir_ + "/pw", pw_pub);
  expect_signs_uri(pw, pw_pub, {"-passin", "file:" + dir_ + "/pw"});
}

// A key that tpm2-tools binds to RSASSA-PSS (scheme rsapss-sha256 in its public area) is an
// RSA-PSS key to tpmkey: it signs PSS with SHA-256 and refuses PKCS#1 v1.5, by path and through
// import-file, whose self-test signs with the key's own scheme; `list` shows rsa-pss2048.
TEST_F(Tpm2ToolsTest, PssBoundKeyIsAnRsaPssKey) {
  create_primary(dir_ + "/p.ctx");
  create_key(dir_ + "/p.ctx", "rsa2048:rsapss-sha256:null", dir_ + "/pss.pem");
  const std::string key = dir_ + "/pss.pem", pub = tools_pubkey(key);  // rsaEncryption, as tpm2-tools write it
  const std::vector<std::string> pss = {"-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"};
  for (const std::string& uri : {"tpm2:file=" + key, key}) {
    SCOPED_TRACE(uri);
    EXPECT_OK(openssl("pkeyutl", {"-sign", "-inkey", uri, "-rawin", "-digest", "sha256", "-in", dir_ + "/msg", "-out",
                                  dir_ + "/sig"}));
    std::vector<std::string> verify = {"pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sha256",
                                       "-in", dir_ + "/msg", "-sigfile", dir_ + "/sig"};
    verify.insert(verify.end(), pss.begin(), pss.end());
    auto v = plain_openssl(verify);
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out << v.err;
    EXPECT_FAILS_WITH(openssl("pkeyutl", {"-sign", "-inkey", uri, "-rawin", "-digest", "sha256", "-pkeyopt",
                                          "rsa_padding_mode:pkcs1", "-in", dir_ + "/msg", "-out", dir_ + "/bad"}),
                      "signs only with PSS");
  }
  EXPECT_OK(tpmkey({"import-file", "toolspss", key}));
  auto list = tpmkey({"list"});
  EXPECT_NE(list.out.find("rsa-pss2048"), std::string::npos) << list.out;
  auto spki = tpmkey({"pubkey", "toolspss"});
  EXPECT_OK(spki);
  write_file(dir_ + "/toolspss.pub", spki.out);
  auto asn1 = plain_openssl({"asn1parse", "-in", dir_ + "/toolspss.pub"});
  EXPECT_NE(asn1.out.find("rsassaPss"), std::string::npos) << asn1.out;
  expect_signs("tpm2:toolspss", dir_ + "/toolspss.pub", true);
  // Bound to RSA-PSS with SHA-1, which tpmkey does not sign: refused by name, nothing imported.
  create_key(dir_ + "/p.ctx", "rsa2048:rsapss-sha1:null", dir_ + "/sha1.pem");
  EXPECT_FAILS_WITH(openssl("pkeyutl", {"-sign", "-inkey", "tpm2:file=" + dir_ + "/sha1.pem", "-rawin", "-digest",
                                        "sha256", "-in", dir_ + "/msg", "-out", dir_ + "/bad"}),
                    "the key is bound to RSA-PSS with SHA1");
  EXPECT_FAILS_WITH(tpmkey({"import-file", "sha1", dir_ + "/sha1.pem"}), "the key is bound to RSA-PSS with SHA1");
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/sha1.pem"));
}

TEST_F(Tpm2ToolsTest, KeysUnderAPersistentParent) {
  constexpr const char* kParent = "0x81000002";
  create_primary(dir_ + "/p.ctx");
  ASSERT_OK(tool({"tpm2_evictcontrol", "-C", "o", "-c", dir_ + "/p.ctx", kParent}));
  EvictAtExit evict{[&] { tool({"tpm2_evictcontrol", "-C", "o", "-c", kParent}); }};
  create_key(kParent, "ecc256", dir_ + "/ec.pem");
  create_key(kParent, "rsa2048", dir_ + "/rsa.pem", "persistent secret");
  EXPECT_EQ(parent_of(dir_ + "/ec.pem"), 0x81000002u);
  EXPECT_EQ(parent_of(dir_ + "/rsa.pem"), 0x81000002u);
  std::string ec = dir_ + "/ec.pem", ec_pub = tools_pubkey(ec);
  expect_signs_uri("tpm2:file=" + ec, ec_pub);
  for (bool first : {true, false}) expect_signs(ec, ec_pub, first);
  write_file(dir_ + "/pw", "persistent secret\n");
  std::string rsa = dir_ + "/rsa.pem", rsa_pub = tools_pubkey(rsa);
  expect_signs_uri("tpm2:file=" + rsa + "?pin-source=" + dir_ + "/pw", rsa_pub);
  expect_signs_uri(rsa, rsa_pub, {"-passin", "file:" + dir_ + "/pw"});
  auto text = openssl("pkey", {"-in", ec, "-text", "-noout"});
  EXPECT_NE(text.out.find("TPM parent: 0x81000002"), std::string::npos) << text.out;
  // import-file takes it too, and the keystore copy signs.
  auto imp = tpmkey({"import-file", "persistent", ec});
  EXPECT_OK(imp);
  EXPECT_NE(imp.out.find("loaded it under persistent parent 0x81000002"), std::string::npos) << imp.out;
  expect_signs_uri("tpm2:persistent", ec_pub);
}

TEST_F(Tpm2ToolsTest, ImportFile) {
  std::vector<std::string> env = env_;
  env.push_back("TPM2OPENSSL_TCTI=" + tcti_);
  // A tpm2-openssl key, EC, PEM.
  std::string theirs = dir_ + "/theirs.pem";
  ASSERT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC", "-pkeyopt",
                 "group:P-256", "-out", theirs},
                env));
  auto imp = tpmkey({"import-file", "theirs", theirs, "--description", "from tpm2-openssl"});
  EXPECT_OK(imp);
  EXPECT_NE(imp.out.find("imported tpm2:theirs (ec-p256) from " + theirs + " into " + keystore_ + "/theirs.pem"),
            std::string::npos)
      << imp.out;
  EXPECT_NE(imp.out.find("checked: this TPM loaded it under 0x40000001 (owner SRK), and its self-test signature "
                         "verified"),
            std::string::npos)
      << imp.out;
  struct stat st{};
  ASSERT_EQ(stat((keystore_ + "/theirs.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  write_file(dir_ + "/theirs.pub", tpmkey({"pubkey", "theirs"}).out);
  EXPECT_OK(openssl("pkey", {"-in", theirs, "-pubout", "-out", dir_ + "/theirs.file.pub"}));
  EXPECT_EQ(read_file(dir_ + "/theirs.pub"), read_file(dir_ + "/theirs.file.pub"));
  expect_signs_uri("tpm2:theirs", dir_ + "/theirs.pub");
  auto text = openssl("pkey", {"-in", "tpm2:theirs", "-text", "-noout"});
  EXPECT_NE(text.out.find("Description: from tpm2-openssl"), std::string::npos) << text.out;

  // A tpm2-openssl RSA key with a password, as DER: the password comes from --password-file.
  std::string rsa = dir_ + "/theirs-rsa.der";
  ASSERT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "RSA", "-pkeyopt",
                 "bits:2048", "-pkeyopt", "user-auth:their secret", "-outform", "DER", "-out", rsa},
                env));
  write_file(dir_ + "/pw", "their secret\n");
  EXPECT_FAILS_WITH(tpmkey({"import-file", "rsa", rsa}),
                    "says the key has a password, which the check needs: give it with --password-file");
  EXPECT_OK(tpmkey({"import-file", "rsa", rsa, "--password-file", dir_ + "/pw"}));
  write_file(dir_ + "/rsa.pub", tpmkey({"pubkey", "rsa"}).out);
  expect_signs_uri("tpm2:rsa?pin-source=" + dir_ + "/pw", dir_ + "/rsa.pub");
  EXPECT_NE(tpmkey({"list"}).out.find("rsa                      rsa2048    2048   yes       0x40000001"),
            std::string::npos);

  // A tpm2-tools key under the owner parent.
  create_primary(dir_ + "/p.ctx");
  create_key(dir_ + "/p.ctx", "rsa2048", dir_ + "/tools.pem");
  EXPECT_OK(tpmkey({"import-file", "tools", dir_ + "/tools.pem"}));
  expect_signs_uri("tpm2:tools", tools_pubkey(dir_ + "/tools.pem"));

  // A file that says the key has a password although it has none (what tpm2-tools 5.4's
  // tpm2_encodeobject writes without -p): an empty password passes the check, and the keystore
  // copy is corrected.
  std::string pem = read_file(dir_ + "/tools.pem");
  auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(pem.data()), pem.size());
  ASSERT_TRUE(kf);
  kf->empty_auth = false;
  write_file(dir_ + "/claims-password.pem", keyfile_pem(*kf));
  write_file(dir_ + "/empty", "");
  auto fixed = tpmkey({"import-file", "fixed", dir_ + "/claims-password.pem", "--password-file", dir_ + "/empty"});
  EXPECT_OK(fixed);
  EXPECT_NE(fixed.err.find("the TPM accepted an empty one: stored as a key without a password"), std::string::npos)
      << fixed.err;
  EXPECT_FALSE(file_says_password(keystore_ + "/fixed.pem"));
  expect_signs_uri("tpm2:fixed", tools_pubkey(dir_ + "/tools.pem"));
}

TEST_F(Tpm2ToolsTest, ImportFileRefuses) {
  EXPECT_OK(tpmkey({"create", "taken"}));
  std::string before = read_file(keystore_ + "/taken.pem");
  std::vector<std::string> env = env_;
  env.push_back("TPM2OPENSSL_TCTI=" + tcti_);
  std::string good = dir_ + "/good.pem";
  ASSERT_OK(run({"openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC", "-out", good,
                 "-pkeyopt", "group:P-256"},
                env));
  write_file(dir_ + "/garbage.pem", "this is not a key\n");
  write_file(dir_ + "/cert.pem", "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n");

  EXPECT_FAILS_WITH(tpmkey({"import-file", "taken", good}),
                    "import-file(tpm2:taken): invalid argument: a key named \"taken\" already exists in " + keystore_);
  EXPECT_EQ(read_file(keystore_ + "/taken.pem"), before);
  EXPECT_FAILS_WITH(tpmkey({"import-file", "g", dir_ + "/garbage.pem"}),
                    "import-file(tpm2:g): read(" + dir_ + "/garbage.pem): malformed or unusable key file: not a TSS2 "
                    "PRIVATE KEY structure");
  EXPECT_FAILS_WITH(tpmkey({"import-file", "c", dir_ + "/cert.pem"}),
                    "read(" + dir_ + "/cert.pem): malformed or unusable key file: PEM label is \"CERTIFICATE\"");
  EXPECT_FAILS_WITH(tpmkey({"import-file", "n", dir_ + "/nonexistent.pem"}), "read(" + dir_ + "/nonexistent.pem): ");
  EXPECT_FAILS_WITH(tpmkey({"import-file", "../x", good}), "key name \"../x\"");
  EXPECT_EQ(tpmkey({"import-file", "onlyname"}).exit_code, 2);

  // Made on another TPM: the test data file, and a key from a second swtpm started here.
  std::string other = std::string(TPMKEY_TEST_DATA) + "/tpm2-openssl-ec-p256.pem";
  EXPECT_FAILS_WITH(tpmkey({"import-file", "other", other}),
                    "the key was not made by this TPM under parent 0x40000001: tpm:parameter(1):integrity check failed");
  // The TPM's TPM_RC_INTEGRITY (Error::rc, not the message text) gets the explanation.
  EXPECT_FAILS_WITH(tpmkey({"import-file", "other", other}),
                    "(made on another TPM, or under an owner primary that is not the standard ECC P-256 storage key");
  {
    Swtpm second;
    std::vector<std::string> env2 = {"TPMKEY_TCTI=" + second.tcti(), "TPMKEY_KEYSTORE=" + dir_ + "/second-keystore",
                                     "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none"};
    ASSERT_OK(run({tpmkey_bin(), "create", "k", "--algorithm", "rsa2048"}, env2));
    EXPECT_FAILS_WITH(tpmkey({"import-file", "second", dir_ + "/second-keystore/k.pem"}),
                      "the key was not made by this TPM under parent 0x40000001");
    EXPECT_TRUE(tpm_handles(second.tcti()).clean());
  }
  // Under a persistent parent this TPM does not have (any more).
  create_primary(dir_ + "/p.ctx");
  ASSERT_OK(tool({"tpm2_evictcontrol", "-C", "o", "-c", dir_ + "/p.ctx", "0x81000002"}));
  {
    EvictAtExit evict{[&] { tool({"tpm2_evictcontrol", "-C", "o", "-c", "0x81000002"}); }};
    create_key("0x81000002", "ecc256", dir_ + "/orphan.pem");
  }
  EXPECT_FAILS_WITH(tpmkey({"import-file", "orphan", dir_ + "/orphan.pem"}),
                    "this TPM has no persistent parent 0x81000002 (the key file comes from another TPM, or its parent "
                    "was evicted)");
  // A wrong password fails in the TPM and is not echoed.
  create_key(dir_ + "/p.ctx", "ecc256", dir_ + "/pw.pem", "right one");
  write_file(dir_ + "/wrong", "wrong guess\n");
  auto wrong = tpmkey({"import-file", "pw", dir_ + "/pw.pem", "--password-file", dir_ + "/wrong"});
  EXPECT_FAILS_WITH(wrong, "import-file(tpm2:pw): sign(" + dir_ + "/pw.pem): TPM2_Sign: authorization failed");
  EXPECT_EQ(wrong.err.find("wrong guess"), std::string::npos) << wrong.err;
  // Nothing was written by any refusal.
  auto names = run({tpmkey_bin(), "list"}, env_);
  EXPECT_EQ(names.out.find("\ng"), std::string::npos) << names.out;
  for (const char* n : {"g", "c", "n", "other", "second", "orphan", "pw"})
    EXPECT_FALSE(std::filesystem::exists(keystore_ + "/" + n + ".pem")) << n;
}

}  // namespace
}  // namespace tpmkey::test
