// tpmkey agent with the real OpenSSH programs: logins to a private sshd on 127.0.0.1 with TPM keys
// (EC P-256/384/521, RSA with rsa-sha2-256 and -512) through IdentityAgent and SSH_AUTH_SOCK, a
// password key added with ssh-add -s and its PIN, confirmation through SSH_ASKPASS, software keys
// added with ssh-add, keys of another agent (-A), git over ssh, a TPM host key for sshd, the
// ssh-add operations, running as a daemon and with a command, and a TPM restart under the agent.
// Each test leaves the TPM clean (TpmTest), the agent's own objects included once it exits.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "test/fixture.h"

namespace tpmkey::test {
namespace {

constexpr uint32_t kTpmSign = 0x15D;

class AgentTest : public TpmTest {
 protected:
  AgentTest() : TpmTest("tpmkey-agent-test") {}

  // Creates a TPM key NAME in the keystore with the CLI; its authorized_keys line.
  std::string create(const std::string& name, const std::string& algorithm = "ec-p256",
                     const std::string& password = "") {
    std::vector<std::string> args = {"create", name, "--algorithm", algorithm};
    if (!password.empty()) {
      write_file(dir_ + "/" + name + ".password", password + "\n");
      args.insert(args.end(), {"--password-file", dir_ + "/" + name + ".password"});
    }
    EXPECT_OK(tpmkey(args));
    CommandResult pub = tpmkey({"pubkey", name, "--format", "openssh"});
    EXPECT_OK(pub);
    return pub.out;
  }
  // An Ed25519 software key made by ssh-keygen: its path (the public key is PATH.pub).
  std::string software_key(const std::string& name, const std::string& type = "ed25519") {
    const std::string path = dir_ + "/" + name;
    EXPECT_OK(run({"ssh-keygen", "-q", "-t", type, "-N", "", "-C", name, "-f", path}));
    return path;
  }
  std::unique_ptr<AgentProcess> agent(const std::vector<std::string>& extra = {},
                                      const std::vector<std::string>& env = {}, const std::string& tcti = "") {
    const std::string d = make_temp_dir("tpmkey-agent");
    agent_dirs_.push_back(d);
    return std::make_unique<AgentProcess>(d, tcti.empty() ? tcti_ : tcti, keystore_, extra, env);
  }
  void TearDown() override {
    for (const auto& d : agent_dirs_) remove_tree(d);
    TpmTest::TearDown();
  }
  // Logs in and runs `true`; the result, and whether sshd accepted exactly the key `pub`.
  static CommandResult login(const Sshd& sshd, const std::string& socket, const std::vector<std::string>& opts = {},
                             const std::vector<std::string>& env = {}) {
    return run(sshd.ssh(socket, opts, {"echo", "in"}), env, "", 60);
  }
  static bool accepted(const Sshd& sshd, const std::string& pub) {
    return sshd.log().find(ssh_fingerprint(pub)) != std::string::npos &&
           sshd.log().find("Accepted publickey") != std::string::npos;
  }
  std::vector<std::string> agent_dirs_;
};

class AgentLoginTest : public AgentTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(AgentLoginTest, LogsInWithATpmKey) {
  const std::string pub = create("login", GetParam());
  auto a = agent();
  Sshd sshd({.authorized_keys = {pub}});
  CommandResult r = login(sshd, a->socket());
  ASSERT_OK(r) << a->log() << sshd.log();
  EXPECT_EQ(r.out, "in\n");
  EXPECT_TRUE(accepted(sshd, pub)) << sshd.log();
  // And through SSH_AUTH_SOCK, as ssh finds an agent by default.
  EXPECT_OK(login(sshd, "", {}, {"SSH_AUTH_SOCK=" + a->socket()}));
  EXPECT_EQ(a->stop(), 0) << a->log();
}

INSTANTIATE_TEST_SUITE_P(Algorithms, AgentLoginTest, ::testing::Values("ec-p256", "ec-p384", "ec-p521", "rsa2048"),
                         [](const auto& info) {
                           std::string n = info.param;
                           n.erase(std::remove(n.begin(), n.end(), '-'), n.end());
                           return n;
                         });

TEST_F(AgentTest, RsaSignsWithTheHashTheServerAsksFor) {
  const std::string pub = create("rsa", "rsa2048");
  auto a = agent();
  for (const char* alg : {"rsa-sha2-256", "rsa-sha2-512"}) {
    Sshd sshd({.authorized_keys = {pub}, .config = {std::string("PubkeyAcceptedAlgorithms ") + alg}});
    EXPECT_OK(login(sshd, a->socket(), {"-o", std::string("PubkeyAcceptedAlgorithms=") + alg})) << alg << a->log();
    EXPECT_TRUE(accepted(sshd, pub)) << alg;
  }
  // ssh-rsa (SHA-1) only when the agent was started with --allow-sha1.
  Sshd sha1({.authorized_keys = {pub}, .config = {"PubkeyAcceptedAlgorithms ssh-rsa"}});
  EXPECT_NE(login(sha1, a->socket(), {"-o", "PubkeyAcceptedAlgorithms=ssh-rsa"}).exit_code, 0);
  EXPECT_NE(a->log().find("ssh-rsa (SHA-1)"), std::string::npos) << a->log();
  EXPECT_EQ(a->stop(), 0) << a->log();
  auto allowing = agent({"--allow-sha1"});
  EXPECT_OK(login(sha1, allowing->socket(), {"-o", "PubkeyAcceptedAlgorithms=ssh-rsa"})) << allowing->log();
  EXPECT_EQ(allowing->stop(), 0) << allowing->log();
}

TEST_F(AgentTest, OneTpmSignPerLogin) {
  const std::string pub = create("counted");
  BusProxy bus(shared_swtpm().port());
  auto a = agent({}, {}, bus.tcti());
  Sshd sshd({.authorized_keys = {pub}});
  ASSERT_OK(login(sshd, a->socket()));  // loads the key and starts the session
  for (int i = 0; i < 3; ++i) {
    bus.clear();
    ASSERT_OK(login(sshd, a->socket()));
    const auto codes = bus.command_codes();
    EXPECT_EQ(std::count(codes.begin(), codes.end(), kTpmSign), 1);
    // Besides the signature, at most the continuity proof (TPM2_ReadPublic: logins are far apart
    // for a bare swtpm socket, docs/sessions.md) and, when a login took over a second (a loaded
    // machine), the idle agent's park and the key's return (ContextSave, FlushContext,
    // ContextLoad, ReadClock). Never a new session or a new load of the key file.
    constexpr uint32_t kParkAndProof[] = {0x173 /* ReadPublic */, 0x162 /* ContextSave */, 0x165 /* FlushContext */,
                                          0x161 /* ContextLoad */, 0x181 /* ReadClock */};
    for (uint32_t c : codes)
      EXPECT_TRUE(c == kTpmSign || std::count(std::begin(kParkAndProof), std::end(kParkAndProof), c))
          << std::hex << c << " in " << ::testing::PrintToString(codes);
    EXPECT_LE(codes.size(), 7u) << ::testing::PrintToString(codes);
  }
  EXPECT_EQ(a->stop(), 0) << a->log();
}

// On a TPM without a resource manager (swtpm here has 3 object slots for every program), an idle
// agent gives its slots back: after a quiet second its keys are saved and flushed, and the next
// login loads them back (TPM2_ContextLoad) and signs.
TEST_F(AgentTest, IdleAgentGivesTpmSlotsBack) {
  const std::string pub = create("parked");
  const std::string other = create("parked-rsa", "rsa2048");
  auto a = agent();
  Sshd sshd({.authorized_keys = {pub, other}});
  ASSERT_OK(login(sshd, a->socket()));
  for (int round = 0; round < 2; ++round) {
    TpmHandles held;
    for (int i = 0; i < 60; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      held = tpm_handles(tcti_);
      if (held.transient.empty() && i > 25) break;
    }
    EXPECT_TRUE(held.transient.empty()) << "an idle agent holds " << held.describe();
    // Another program can use every slot meanwhile.
    EXPECT_OK(tpmkey({"create", numbered("meanwhile", round), "--algorithm", "rsa2048"}));
    EXPECT_OK(login(sshd, a->socket())) << a->log();
  }
  EXPECT_EQ(a->stop(), 0) << a->log();
}

TEST_F(AgentTest, PasswordKeyAddedWithItsPin) {
  const std::string pub = create("locked", "ec-p256", "correct horse");
  auto a = agent();
  Sshd sshd({.authorized_keys = {pub}});
  // Not served without its PIN.
  CommandResult listed = a->ssh_add({"-l"});
  EXPECT_EQ(listed.out.find(ssh_fingerprint(pub)), std::string::npos) << listed.out;
  EXPECT_NE(login(sshd, a->socket()).exit_code, 0);

  const std::vector<std::string> wrong = {"SSH_ASKPASS=" + askpass_script(dir_, "wrong", "battery staple"),
                                          "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0"};
  const uint32_t strikes = lockout_counter(tcti_);
  CommandResult bad = a->ssh_add({"-s", "tpm2:locked"}, wrong);
  EXPECT_NE(bad.exit_code, 0) << bad.out << bad.err;
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1) << "a wrong PIN costs exactly one strike";
  EXPECT_NE(a->log().find("does not sign with this PIN"), std::string::npos) << a->log();

  const std::vector<std::string> right = {"SSH_ASKPASS=" + askpass_script(dir_, "right", "correct horse"),
                                          "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0"};
  ASSERT_OK(a->ssh_add({"-s", "tpm2:locked"}, right));
  EXPECT_NE(a->ssh_add({"-l"}).out.find(ssh_fingerprint(pub)), std::string::npos);
  EXPECT_OK(login(sshd, a->socket())) << a->log();
  EXPECT_TRUE(accepted(sshd, pub));
  EXPECT_EQ(a->log().find("correct horse"), std::string::npos) << "the log must never hold a PIN";

  // ssh-add -e removes it again.
  EXPECT_OK(a->ssh_add({"-e", "tpm2:locked"}));
  EXPECT_EQ(a->ssh_add({"-l"}).out.find(ssh_fingerprint(pub)), std::string::npos);
  EXPECT_EQ(a->stop(), 0) << a->log();
}

TEST_F(AgentTest, KeyFileByPathWithSshAddS) {
  create("byfile");
  auto a = agent({"--no-keystore"});
  const std::string path = keystore_ + "/byfile.pem";
  const std::vector<std::string> empty = {"SSH_ASKPASS=" + askpass_script(dir_, "empty", ""), "SSH_ASKPASS_REQUIRE=force",
                                          "DISPLAY=:0"};
  ASSERT_OK(a->ssh_add({"-s", path}, empty)) << a->log();
  CommandResult l = a->ssh_add({"-l"});
  EXPECT_NE(l.out.find(path), std::string::npos) << l.out;
  // A relative path is refused (the agent does not run in the client's directory).
  EXPECT_NE(a->ssh_add({"-s", "byfile.pem"}, empty).exit_code, 0);
  EXPECT_EQ(a->stop(), 0) << a->log();
}

TEST_F(AgentTest, ConfirmationAsksBeforeEachUse) {
  const std::string key = software_key("confirmed");
  const std::string pub = read_file(key + ".pub");
  Sshd sshd({.authorized_keys = {pub}});
  {
    auto a = agent({"--no-keystore", "--askpass", askpass_script(dir_, "yes", "")});
    ASSERT_OK(a->ssh_add({"-c", key}));
    EXPECT_OK(login(sshd, a->socket())) << a->log();
    EXPECT_NE(read_file(dir_ + "/yes.prompts").find("Allow use of key"), std::string::npos);
    EXPECT_EQ(a->stop(), 0) << a->log();
  }
  {
    auto a = agent({"--no-keystore", "--askpass", askpass_script(dir_, "no", "", 1)});
    ASSERT_OK(a->ssh_add({"-c", key}));
    EXPECT_NE(login(sshd, a->socket()).exit_code, 0);
    EXPECT_NE(read_file(dir_ + "/no.prompts").find("Allow use of key"), std::string::npos);
    EXPECT_NE(a->log().find("denied"), std::string::npos) << a->log();
    EXPECT_EQ(a->stop(), 0) << a->log();
  }
}

TEST_F(AgentTest, SoftwareKeysLikeSshAgent) {
  auto a = agent({"--no-keystore"});
  for (const char* type : {"ed25519", "ecdsa", "rsa"}) {
    const std::string key = software_key(std::string("soft-") + type, type);
    const std::string pub = read_file(key + ".pub");
    ASSERT_OK(a->ssh_add({key}));
    Sshd sshd({.authorized_keys = {pub}});
    EXPECT_OK(login(sshd, a->socket())) << type << a->log();
    EXPECT_TRUE(accepted(sshd, pub)) << type;
  }
  // The lifetime constraint (-t): gone after it. Three seconds, so that a loaded machine still
  // lists the key before it expires.
  const std::string brief = software_key("brief");
  ASSERT_OK(a->ssh_add({"-t", "3", brief}));
  EXPECT_NE(a->ssh_add({"-l"}).out.find("brief"), std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(4200));
  EXPECT_EQ(a->ssh_add({"-l"}).out.find("brief"), std::string::npos);
  EXPECT_EQ(a->stop(), 0) << a->log();
}

TEST_F(AgentTest, SshAddOperations) {
  const std::string pub = create("ops");
  const std::string soft = software_key("ops-soft");
  auto a = agent();
  ASSERT_OK(a->ssh_add({soft}));
  // -L: the same key lines as tpmkey pubkey and the key file.
  CommandResult big_l = a->ssh_add({"-L"});
  ASSERT_OK(big_l);
  auto key_part = [](const std::string& line) { return line.substr(0, line.find(' ', line.find(' ') + 1)); };
  EXPECT_NE(big_l.out.find(key_part(pub)), std::string::npos) << big_l.out;
  EXPECT_NE(big_l.out.find(key_part(read_file(soft + ".pub"))), std::string::npos);
  // -l: fingerprints with comments (the key name for a keystore key).
  CommandResult l = a->ssh_add({"-l"});
  EXPECT_NE(l.out.find(ssh_fingerprint(pub) + " ops (ECDSA)"), std::string::npos) << l.out;

  // -d: one key.
  write_file(dir_ + "/ops.pub", pub);
  EXPECT_OK(a->ssh_add({"-d", dir_ + "/ops.pub"}));
  EXPECT_EQ(a->ssh_add({"-l"}).out.find(ssh_fingerprint(pub)), std::string::npos);

  // -x / -X: locked, nothing is listed; a wrong passphrase does not unlock.
  const std::vector<std::string> lockpw = {"SSH_ASKPASS=" + askpass_script(dir_, "lockpw", "hunter2"),
                                           "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0"};
  const std::vector<std::string> wrongpw = {"SSH_ASKPASS=" + askpass_script(dir_, "wrongpw", "hunter3"),
                                            "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0"};
  ASSERT_OK(a->ssh_add({"-x"}, lockpw));
  EXPECT_EQ(a->ssh_add({"-l"}).exit_code, 1);
  EXPECT_NE(a->ssh_add({"-X"}, wrongpw).exit_code, 0);
  EXPECT_EQ(a->ssh_add({"-l"}).exit_code, 1);
  ASSERT_OK(a->ssh_add({"-X"}, lockpw));
  EXPECT_NE(a->ssh_add({"-l"}).out.find("ops-soft"), std::string::npos);

  // -D: everything, the keystore's keys included.
  EXPECT_OK(a->ssh_add({"-D"}));
  CommandResult none = a->ssh_add({"-l"});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.out.find("no identities"), std::string::npos) << none.out;
  EXPECT_EQ(a->stop(), 0) << a->log();
}

TEST_F(AgentTest, KeysOfAnotherAgent) {
  const std::string upstream_dir = make_temp_dir("tpmkey-upstream");
  agent_dirs_.push_back(upstream_dir);
  const std::string upstream_sock = upstream_dir + "/ssh-agent.sock";
  pid_t upstream = spawn({"ssh-agent", "-D", "-a", upstream_sock}, upstream_dir + "/log");
  for (int i = 0; i < 500 && access(upstream_sock.c_str(), F_OK) != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const std::string key = software_key("upstream-key");
  ASSERT_OK(run({"ssh-add", key}, {"SSH_AUTH_SOCK=" + upstream_sock}));
  const std::string tpm_pub = create("local");

  auto a = agent({"-A", upstream_sock});
  CommandResult l = a->ssh_add({"-l"});
  EXPECT_NE(l.out.find("upstream-key"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find(ssh_fingerprint(tpm_pub)), std::string::npos) << l.out;
  Sshd sshd({.authorized_keys = {read_file(key + ".pub")}});
  EXPECT_OK(login(sshd, a->socket())) << a->log();
  EXPECT_TRUE(accepted(sshd, read_file(key + ".pub")));
  EXPECT_EQ(a->stop(), 0) << a->log();
  stop_child(upstream);
}

// A key that lived in a file, imported into the TPM (tpmkey import): the authorized_keys line
// made from the original file (PEM, or ssh-keygen's own format and its .pub, with and without a
// passphrase) still logs in, now signed by the TPM through the agent.
TEST_F(AgentTest, ImportedKeyLogsInWithTheOriginalPublicKey) {
  for (const char* type : {"EC", "RSA"}) {
    SCOPED_TRACE(type);
    const std::string file = dir_ + "/original-" + type + ".pem";
    std::vector<std::string> gen = {"openssl", "genpkey", "-algorithm", type, "-out", file};
    if (std::string(type) == "EC") gen.insert(gen.end(), {"-pkeyopt", "ec_paramgen_curve:P-256"});
    ASSERT_OK(run(gen));
    chmod(file.c_str(), 0600);
    CommandResult original_pub = run({"ssh-keygen", "-y", "-f", file});
    ASSERT_OK(original_pub);
    const std::string name = std::string("imported-") + type;
    ASSERT_OK(tpmkey({"import", name, file}));
    auto a = agent();
    Sshd sshd({.authorized_keys = {original_pub.out}});
    EXPECT_OK(login(sshd, a->socket())) << a->log() << sshd.log();
    EXPECT_TRUE(accepted(sshd, original_pub.out));
    EXPECT_EQ(a->stop(), 0) << a->log();
  }
  // A key ssh-keygen wrote in OpenSSH's own format: its .pub line logs in.
  const std::string id = dir_ + "/id_ecdsa";
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-C", "ssh-keygen's", "-f", id}));
  ASSERT_OK(tpmkey({"import", "imported-openssh", id}));
  // And one protected by a passphrase (decrypted by ssh-keygen during the import).
  const std::string enc = dir_ + "/id_ecdsa_enc";
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "an ssh passphrase", "-C", "", "-f", enc}));
  write_file(dir_ + "/ssh-pass", "an ssh passphrase\n");
  ASSERT_OK(tpmkey({"import", "imported-openssh-enc", enc, "--passphrase-file", dir_ + "/ssh-pass"}));
  for (const std::string& line : {read_file(id + ".pub"), read_file(enc + ".pub")}) {
    SCOPED_TRACE(line);
    auto a = agent();
    Sshd sshd({.authorized_keys = {line}});
    EXPECT_OK(login(sshd, a->socket())) << a->log() << sshd.log();
    EXPECT_TRUE(accepted(sshd, line));
    EXPECT_EQ(a->stop(), 0) << a->log();
  }
}

TEST_F(AgentTest, GitCloneAndPushOverSsh) {
  const std::string pub = create("git");
  auto a = agent();
  Sshd sshd({.authorized_keys = {pub}});
  const std::string bare = dir_ + "/repo.git", work = dir_ + "/work";
  ASSERT_OK(run({"git", "init", "-q", "--bare", bare}));
  const std::vector<std::string> env = {"GIT_SSH_COMMAND=" + sshd.git_ssh_command(a->socket()), "HOME=" + dir_};
  ASSERT_OK(run({"git", "clone", "-q", sshd.git_url(bare), work}, env)) << a->log();
  write_file(work + "/README", "signed in the TPM\n");
  const std::vector<std::string> id = {"-c", "user.name=tpmkey", "-c", "user.email=tpmkey@example.invalid"};
  ASSERT_OK(run({"git", "-C", work, "add", "README"}, env));
  std::vector<std::string> commit = {"git", "-C", work};
  commit.insert(commit.end(), id.begin(), id.end());
  commit.insert(commit.end(), {"commit", "-q", "-m", "first"});
  ASSERT_OK(run(commit, env));
  ASSERT_OK(run({"git", "-C", work, "push", "-q", "origin", "HEAD"}, env)) << a->log();
  CommandResult log = run({"git", "--git-dir=" + bare, "log", "--oneline"});
  EXPECT_NE(log.out.find("first"), std::string::npos) << log.out << log.err;
  EXPECT_EQ(a->stop(), 0) << a->log();
}

TEST_F(AgentTest, TpmHostKeyForSshd) {
  const std::string host_pub = create("host");
  const std::string user_pub = create("user");
  auto a = agent();
  Sshd sshd({.authorized_keys = {user_pub}, .host_key_agent = a->socket(), .host_key_pub = host_pub});
  // known_hosts holds only the TPM host key and checking is strict: the login proves sshd signed
  // its key exchange with the TPM key through the agent.
  CommandResult r = login(sshd, a->socket(), {"-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256"});
  EXPECT_OK(r) << a->log() << sshd.log();
  EXPECT_EQ(a->stop(), 0) << a->log();
}

TEST_F(AgentTest, SurvivesATpmRestart) {
  const std::string pub = create("restart");
  auto a = agent({}, {"TPMKEY_TIMEOUT=2"});
  Sshd sshd({.authorized_keys = {pub}});
  ASSERT_OK(login(sshd, a->socket()));
  shared_swtpm().kill_hard();
  EXPECT_NE(login(sshd, a->socket()).exit_code, 0);
  shared_swtpm().start();
  EXPECT_OK(login(sshd, a->socket())) << a->log();
  EXPECT_OK(a->ssh_add({"-l"}));
  EXPECT_EQ(a->stop(), 0) << a->log();
}

// ---- running it like ssh-agent ----

// The value of NAME in sh output ("NAME=value; export NAME;").
std::string sh_value(const std::string& out, const std::string& name) {
  size_t at = out.find(name + "=");
  if (at == std::string::npos) return "";
  at += name.size() + 1;
  return out.substr(at, out.find(';', at) - at);
}

TEST_F(AgentTest, DaemonPrintsItsEnvironmentAndStopsWithK) {
  create("daemon");
  const std::string sock = dir_ + "/daemon.sock";
  CommandResult started = run({tpmkey_bin(), "agent", "-s", "-a", sock, "--tcti", tcti_, "--keystore", keystore_});
  ASSERT_OK(started);
  EXPECT_EQ(sh_value(started.out, "SSH_AUTH_SOCK"), sock) << started.out;
  const std::string pid = sh_value(started.out, "SSH_AGENT_PID");
  ASSERT_FALSE(pid.empty()) << started.out;
  struct stat st{};
  ASSERT_EQ(stat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  CommandResult l = run({"ssh-add", "-l"}, {"SSH_AUTH_SOCK=" + sock});
  EXPECT_NE(l.out.find("daemon"), std::string::npos) << l.out;
  // A second agent on the same socket is refused while the first lives.
  EXPECT_FAILS_WITH(run({tpmkey_bin(), "agent", "-a", sock, "--tcti", tcti_, "--keystore", keystore_}),
                    "already listening");

  CommandResult killed = run({tpmkey_bin(), "agent", "-k"}, {"SSH_AGENT_PID=" + pid, "SHELL=/bin/sh"});
  EXPECT_OK(killed);
  EXPECT_NE(killed.out.find("unset SSH_AUTH_SOCK;"), std::string::npos) << killed.out;
  for (int i = 0; i < 200 && kill(std::stoi(pid), 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(kill(std::stoi(pid), 0), 0) << "the agent did not stop";
  EXPECT_NE(stat(sock.c_str(), &st), 0) << "the socket was left behind";

  // csh syntax with -c.
  CommandResult csh = run({tpmkey_bin(), "agent", "-c", "-a", sock, "--tcti", tcti_, "--keystore", keystore_});
  ASSERT_OK(csh);
  EXPECT_NE(csh.out.find("setenv SSH_AUTH_SOCK " + sock + ";"), std::string::npos) << csh.out;
  size_t at = csh.out.find("setenv SSH_AGENT_PID ");
  ASSERT_NE(at, std::string::npos);
  pid_t cpid = std::stoi(csh.out.substr(at + 21));
  kill(cpid, SIGTERM);
  for (int i = 0; i < 200 && kill(cpid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

TEST_F(AgentTest, RunsACommandAndExitsWithIt) {
  create("cmd");
  const std::string sock = dir_ + "/cmd.sock";
  CommandResult r = run({tpmkey_bin(), "agent", "-a", sock, "--tcti", tcti_, "--keystore", keystore_, "sh", "-c",
                         "ssh-add -l && test -n \"$SSH_AGENT_PID\" && exit 7"});
  EXPECT_EQ(r.exit_code, 7) << r.out << r.err;
  EXPECT_NE(r.out.find("cmd (ECDSA)"), std::string::npos) << r.out;
  struct stat st{};
  for (int i = 0; i < 200 && stat(sock.c_str(), &st) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(stat(sock.c_str(), &st), 0) << "the agent outlived its command";
}

TEST_F(AgentTest, UsageErrors) {
  EXPECT_EQ(run({tpmkey_bin(), "agent", "--bogus"}).exit_code, 2);
  EXPECT_EQ(run({tpmkey_bin(), "agent", "-t", "forever"}).exit_code, 2);
  EXPECT_EQ(run({tpmkey_bin(), "agent", "-a"}).exit_code, 2);
  CommandResult help = run({tpmkey_bin(), "agent", "--help"});
  EXPECT_OK(help);
  EXPECT_NE(help.out.find("ssh-add -s tpm2:NAME"), std::string::npos);
  EXPECT_EQ(run({tpmkey_bin(), "help", "agent"}).out, help.out);
  CommandResult where = run({tpmkey_bin(), "agent", "--print-socket"}, {"XDG_RUNTIME_DIR=" + dir_});
  EXPECT_EQ(where.out, dir_ + "/tpmkey/agent.sock\n");
}

}  // namespace
}  // namespace tpmkey::test
