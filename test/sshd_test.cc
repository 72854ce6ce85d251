// The sshd test support against OpenSSH's own agent and a software key (no TPM): a login with
// the agent's key, no login without it, git clone and push over ssh, a host key kept by an agent.
#include <sys/stat.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "test/process.h"
#include "test/sshd.h"

namespace tpmkey::test {
namespace {

// OpenSSH's ssh-agent on a socket in a temporary directory, holding ed25519 keys made by ssh-keygen.
class SshdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir("tpmkey-sshd-test");
    sock_ = dir_ + "/agent.sock";
    agent_ = spawn({"ssh-agent", "-D", "-a", sock_}, dir_ + "/agent.log");
    struct stat st;
    for (int i = 0; i < 500 && stat(sock_.c_str(), &st) != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(stat(sock_.c_str(), &st), 0) << "ssh-agent did not start: " << read_file(dir_ + "/agent.log");
    pub_ = add_key("user");
  }
  void TearDown() override {
    stop_child(agent_);
    remove_tree(dir_);
  }
  // Makes a key, adds it to the agent, returns its public key line.
  std::string add_key(const std::string& name) {
    const std::string key = dir_ + "/" + name;
    CommandResult made = run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tpmkey-test-" + name, "-f", key});
    EXPECT_OK(made);
    EXPECT_OK(run({"ssh-add", key}, {"SSH_AUTH_SOCK=" + sock_}));
    return read_file(key + ".pub");
  }
  std::string dir_, sock_, pub_;
  pid_t agent_ = -1;
};

TEST_F(SshdTest, LogsInWithTheAgentsKey) {
  Sshd sshd({.authorized_keys = {pub_}});
  CommandResult r = run(sshd.ssh(sock_, {}, {"echo", "logged", "in"}));
  EXPECT_OK(r);
  EXPECT_EQ(r.out, "logged in\n");
  const std::string log = sshd.log();
  EXPECT_NE(log.find("Accepted publickey for " + sshd.user() + " from 127.0.0.1"), std::string::npos) << log;
  EXPECT_NE(log.find("ED25519 " + ssh_fingerprint(pub_)), std::string::npos) << log;
}

// No agent and no key file: no key of the machine's ~/.ssh or anywhere else gets the login.
TEST_F(SshdTest, NoAgentNoLogin) {
  Sshd sshd({.authorized_keys = {pub_}});
  CommandResult r = run(sshd.ssh("none", {}, {"true"}));
  EXPECT_EQ(r.exit_code, 255) << r.err;
  EXPECT_NE(r.err.find("Permission denied (publickey)"), std::string::npos) << r.err;
  EXPECT_EQ(sshd.log().find("Accepted"), std::string::npos) << sshd.log();
}

TEST_F(SshdTest, GitCloneAndPush) {
  Sshd sshd({.authorized_keys = {pub_}});
  const std::string bare = dir_ + "/repo.git", work = dir_ + "/work";
  ASSERT_OK(run({"git", "init", "-q", "--bare", bare}));
  const std::vector<std::string> env = {"GIT_SSH_COMMAND=" + sshd.git_ssh_command(sock_),
                                        "GIT_CONFIG_NOSYSTEM=1", "HOME=" + dir_};
  ASSERT_OK(run({"git", "clone", "-q", sshd.git_url(bare), work}, env));
  write_file(work + "/hello.txt", "hello over ssh\n");
  ASSERT_OK(run({"git", "-C", work, "add", "hello.txt"}, env));
  ASSERT_OK(run({"git", "-C", work, "-c", "user.name=tpmkey test", "-c", "user.email=test@tpmkey.invalid", "commit",
                 "-q", "-m", "hello over ssh"},
                env));
  ASSERT_OK(run({"git", "-C", work, "push", "-q", "origin", "HEAD"}, env));
  CommandResult log = run({"git", "--git-dir=" + bare, "log", "--format=%s", "--all"}, env);
  EXPECT_OK(log);
  EXPECT_EQ(log.out, "hello over ssh\n");
}

// The host key in the agent: the client, trusting only that key, logs in.
TEST_F(SshdTest, HostKeyFromAgent) {
  const std::string host_pub = add_key("host");
  Sshd sshd({.authorized_keys = {pub_}, .host_key_agent = sock_, .host_key_pub = host_pub});
  EXPECT_NE(read_file(sshd.known_hosts()).find(host_pub.substr(0, host_pub.rfind(' '))), std::string::npos);
  EXPECT_OK(run(sshd.ssh(sock_, {"-o", "HostKeyAlgorithms=ssh-ed25519"}, {"true"})));
}

}  // namespace
}  // namespace tpmkey::test
