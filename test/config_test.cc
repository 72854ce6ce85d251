// Settings and small files (no TPM): timeouts are validated, the keystore's files are read only
// when they are regular files, and errors never repeat what a file or a URI query holds.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "keystore/config.h"
#include "keystore/files.h"
#include "keystore/keystore.h"
#include "keystore/uri.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

TEST(Settings, TimeoutsHaveDefaultsAndAreValidated) {
  unsetenv(kEnvTimeout);
  unsetenv(kEnvKeygenTimeout);
  unsetenv(kEnvBusyTimeout);
  auto d = resolve_settings({});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->timeouts.command, std::chrono::seconds(30));
  EXPECT_EQ(d->timeouts.keygen, std::chrono::seconds(300));
  EXPECT_EQ(d->timeouts.busy, std::chrono::seconds(5));
  SettingsInput in;
  in.timeout = "0.5";
  in.busy_timeout = "2";
  auto s = resolve_settings(in);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->timeouts.command, std::chrono::milliseconds(500));
  EXPECT_EQ(s->timeouts.busy, std::chrono::seconds(2));
  setenv(kEnvKeygenTimeout, "60", 1);
  auto e = resolve_settings({});
  unsetenv(kEnvKeygenTimeout);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->timeouts.keygen, std::chrono::seconds(60));
  for (const char* bad : {"soon", "0", "-1", "1e9", "nan", "3s", ""}) {
    SettingsInput b;
    b.timeout = bad;
    auto r = resolve_settings(b);
    if (!*bad) {  // "" means "not given"
      EXPECT_TRUE(r);
      continue;
    }
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().text().find("timeout (or TPMKEY_TIMEOUT) must be a number of seconds"), std::string::npos)
        << r.error().text();
  }
  SettingsInput a;
  a.authorization = "cleartext";
  EXPECT_FALSE(resolve_settings(a));
}

// The agent setting (keystore/broker.h): "auto" by default, the config value before TPMKEY_AGENT,
// "off" or an absolute path; anything else is an error that names the setting.
TEST(Settings, AgentIsAutoOffOrAPath) {
  unsetenv(kEnvAgent);
  auto d = resolve_settings({});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->agent, "auto");
  setenv(kEnvAgent, "/run/user/1000/tpmkey/agent.sock", 1);
  auto e = resolve_settings({});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->agent, "/run/user/1000/tpmkey/agent.sock");
  SettingsInput off;
  off.agent = "off";
  auto o = resolve_settings(off);
  unsetenv(kEnvAgent);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->agent, "off");
  for (const char* bad : {"on", "Auto", "agent.sock", "./agent.sock"}) {
    SettingsInput b;
    b.agent = bad;
    auto r = resolve_settings(b);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().text().find("agent (or TPMKEY_AGENT) must be \"auto\", \"off\" or the absolute path"),
              std::string::npos)
        << r.error().text();
  }
}

// agent-required: "no" by default, "yes" or "no" from the config value before
// TPMKEY_AGENT_REQUIRED; anything else, or "yes" with agent = off, is an error that says so.
TEST(Settings, AgentRequiredIsYesOrNo) {
  unsetenv(kEnvAgent);
  unsetenv(kEnvAgentRequired);
  auto d = resolve_settings({});
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->agent_required);
  setenv(kEnvAgentRequired, "yes", 1);
  auto e = resolve_settings({});
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->agent_required);
  SettingsInput no;
  no.agent_required = "no";
  auto n = resolve_settings(no);
  ASSERT_TRUE(n);
  EXPECT_FALSE(n->agent_required);
  SettingsInput off;
  off.agent = "off";
  auto o = resolve_settings(off);
  unsetenv(kEnvAgentRequired);
  ASSERT_FALSE(o);
  EXPECT_NE(o.error().text().find("agent-required = yes needs an agent: agent (or TPMKEY_AGENT) is \"off\""),
            std::string::npos)
      << o.error().text();
  for (const char* bad : {"1", "true", "Yes", "on", "yes "}) {
    SettingsInput b;
    b.agent_required = bad;
    auto r = resolve_settings(b);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().text().find("agent-required (or TPMKEY_AGENT_REQUIRED) must be \"yes\" or \"no\""),
              std::string::npos)
        << r.error().text();
  }
}

// A URI's query may hold a password: no message repeats any part of it.
TEST(UriSecrets, QueryNeverAppearsInMessages) {
  for (const char* uri : {"tpm2:k?hunter2", "tpm2:k?pin-value=a&hunter2", "tpm2:k?hunter2=x", "tpm2:k?pin-value=x&hunter2=y",
                          "tpm2:k?pin-value=%zzhunter2"}) {
    auto r = parse_uri(uri);
    ASSERT_FALSE(r) << uri;
    EXPECT_EQ(r.error().text().find("hunter2"), std::string::npos) << uri << ": " << r.error().text();
  }
}

class KeystoreFiles : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir("tpmkey-files-test"); }
  void TearDown() override { remove_tree(dir_); }
  std::string dir_;
};

// srk.pin is read only as the regular file it should be, and its contents are never echoed.
TEST_F(KeystoreFiles, PinFileIsReadSafely) {
  Keystore ks(dir_);
  write_file(dir_ + "/srk.pin", "hunter2 is not a pin line\n");
  auto bad = ks.read_pin();
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().text().find("hunter2"), std::string::npos) << bad.error().text();
  std::filesystem::remove(dir_ + "/srk.pin");
  write_file(dir_ + "/secret", "name 000b00\nhandle none\n");
  std::filesystem::create_symlink(dir_ + "/secret", dir_ + "/srk.pin");
  auto link = ks.read_pin();
  ASSERT_FALSE(link);
  EXPECT_NE(link.error().text().find("symbolic link"), std::string::npos) << link.error().text();
  std::filesystem::remove(dir_ + "/srk.pin");
  std::filesystem::create_symlink(dir_ + "/nonexistent", dir_ + "/srk.pin");  // dangling: not "no pin"
  EXPECT_FALSE(ks.read_pin());
  std::filesystem::remove(dir_ + "/srk.pin");
  ASSERT_EQ(mkfifo((dir_ + "/srk.pin").c_str(), 0600), 0);  // would block a reader forever
  auto fifo = ks.read_pin();
  ASSERT_FALSE(fifo);
  EXPECT_NE(fifo.error().text().find("not a regular file (it is a FIFO)"), std::string::npos) << fifo.error().text();
  std::filesystem::remove(dir_ + "/srk.pin");
  auto none = ks.read_pin();
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
}

// The keystore's permission rule (files.h, docs/configuration.md#who-may-write-the-keystore).
// make_temp_dir's directories are 0700 under /tmp (1777, root's): that layout is accepted.
std::string real(const std::string& path) { return std::filesystem::canonical(path).string(); }
const SrkPin kPin{Bytes{0x00, 0x0b, 0x01, 0x02, 0x03}, 0};

TEST_F(KeystoreFiles, PrivateKeystoreUnderTmpIsAccepted) {
  Keystore ks(dir_ + "/ks");
  ASSERT_TRUE(ks.write_pin(kPin, false));
  struct stat st{};
  ASSERT_EQ(stat(ks.dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);  // the directory tpmkey makes
  auto pin = ks.read_pin();
  ASSERT_TRUE(pin) << pin.error().text();
  ASSERT_TRUE(*pin);
  EXPECT_EQ((*pin)->name, kPin.name);
  EXPECT_TRUE(ks.list());
}

TEST_F(KeystoreFiles, WorldWritableKeystoreIsRefused) {
  Keystore ks(dir_ + "/ks");
  ASSERT_TRUE(ks.write_pin(kPin, false));
  ASSERT_EQ(chmod(ks.dir().c_str(), 0777), 0);
  const std::string fix = "`chmod go-w " + real(ks.dir()) + "`";
  auto read = ks.read_pin();
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().reason, Reason::kUnsafePermissions);
  EXPECT_NE(read.error().text().find("the keystore directory " + real(ks.dir()) +
                                     " is writable by its group and others (mode 0777)"),
            std::string::npos)
      << read.error().text();
  EXPECT_NE(read.error().text().find(fix), std::string::npos) << read.error().text();
  for (Status st : {ks.write_pin(kPin, true), ks.remove("k")}) {
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().reason, Reason::kUnsafePermissions) << st.error().text();
    EXPECT_NE(st.error().text().find(fix), std::string::npos) << st.error().text();
  }
  EXPECT_FALSE(ks.list());
  EXPECT_EQ(ks.read("k").error().reason, Reason::kUnsafePermissions);
  // A pin planted in a fresh world-writable keystore is never read, and none is written.
  Keystore fresh(dir_ + "/fresh");
  ASSERT_EQ(mkdir(fresh.dir().c_str(), 0700), 0);
  ASSERT_EQ(chmod(fresh.dir().c_str(), 0703), 0);  // other-write alone is enough
  EXPECT_EQ(fresh.read_pin().error().reason, Reason::kUnsafePermissions);
  EXPECT_FALSE(fresh.write_pin(kPin, false));
  EXPECT_FALSE(std::filesystem::exists(fresh.pin_path()));
  ASSERT_EQ(chmod(ks.dir().c_str(), 0755), 0);  // readable by others is fine
  EXPECT_TRUE(ks.read_pin());
}

TEST_F(KeystoreFiles, GroupWritablePinIsRefused) {
  Keystore ks(dir_ + "/ks");
  ASSERT_TRUE(ks.write_pin(kPin, false));
  ASSERT_EQ(chmod(ks.pin_path().c_str(), 0620), 0);
  auto read = ks.read_pin();
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().reason, Reason::kUnsafePermissions);
  EXPECT_NE(read.error().text().find(ks.pin_path() + " is writable by its group (mode 0620), so another user could "
                                                     "have written it: check it, then `chmod go-w " +
                                     ks.pin_path() + "`"),
            std::string::npos)
      << read.error().text();
  ASSERT_EQ(chmod(ks.pin_path().c_str(), 0602), 0);
  EXPECT_NE(ks.read_pin().error().text().find("is writable by others (mode 0602)"), std::string::npos);
  ASSERT_EQ(chmod(ks.pin_path().c_str(), 0644), 0);
  EXPECT_TRUE(ks.read_pin());
}

// OpenSSH's rule for the directories above: owned by the user or root, not group- or
// other-writable, except that a sticky one (as /tmp) is accepted.
TEST_F(KeystoreFiles, WritableParentIsRefusedUnlessSticky) {
  const std::string parent = dir_ + "/shared";
  Keystore ks(parent + "/ks");
  ASSERT_TRUE(ks.write_pin(kPin, false));
  for (mode_t mode : {0777, 0775, 0757}) {
    ASSERT_EQ(chmod(parent.c_str(), mode), 0);
    auto read = ks.read_pin();
    ASSERT_FALSE(read) << std::oct << mode;
    EXPECT_EQ(read.error().reason, Reason::kUnsafePermissions);
    EXPECT_NE(read.error().text().find(real(parent) + ", a directory above the keystore directory " + real(ks.dir()) +
                                       ", is writable by"),
              std::string::npos)
        << read.error().text();
    EXPECT_NE(read.error().text().find("and not sticky"), std::string::npos) << read.error().text();
    EXPECT_NE(read.error().text().find("`chmod go-w " + real(parent) + "`"), std::string::npos) << read.error().text();
    EXPECT_FALSE(ks.write_pin(kPin, true));
  }
  ASSERT_EQ(chmod(parent.c_str(), 01777), 0);
  EXPECT_TRUE(ks.read_pin());
  // Two levels up: the check goes on past the first parent.
  ASSERT_EQ(chmod(parent.c_str(), 0700), 0);
  ASSERT_EQ(chmod(dir_.c_str(), 0770), 0);
  auto up = ks.read_pin();
  ASSERT_FALSE(up);
  EXPECT_NE(up.error().text().find(real(dir_) + ", a directory above"), std::string::npos) << up.error().text();
  ASSERT_EQ(chmod(dir_.c_str(), 0700), 0);
  // A symbolic link to the keystore is checked where it leads.
  const std::string link = dir_ + "/link";
  std::filesystem::create_symlink(ks.dir(), link);
  ASSERT_EQ(chmod(parent.c_str(), 0777), 0);
  EXPECT_EQ(Keystore(link).read_pin().error().reason, Reason::kUnsafePermissions);
  ASSERT_EQ(chmod(parent.c_str(), 0700), 0);
  EXPECT_TRUE(Keystore(link).read_pin());
}

// Files and directories of another user (root's tests only: chown needs root).
TEST_F(KeystoreFiles, AnotherUsersFilesAreRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "chown to another user needs root";
  Keystore ks(dir_ + "/ks");
  ASSERT_TRUE(ks.write_pin(kPin, false));
  ASSERT_EQ(chown(ks.pin_path().c_str(), 65534, 65534), 0);
  auto pin = ks.read_pin();
  ASSERT_FALSE(pin);
  EXPECT_EQ(pin.error().reason, Reason::kUnsafePermissions);
  EXPECT_NE(pin.error().text().find(ks.pin_path() + " is owned by uid 65534, not by you (uid 0) or root"),
            std::string::npos)
      << pin.error().text();
  ASSERT_EQ(chown(ks.pin_path().c_str(), 0, 0), 0);
  ASSERT_TRUE(ks.read_pin());
  ASSERT_EQ(chown(ks.dir().c_str(), 65534, 65534), 0);
  auto dir = ks.read_pin();
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.error().text().find("the keystore directory " + real(ks.dir()) + " is owned by uid 65534"),
            std::string::npos)
      << dir.error().text();
  EXPECT_FALSE(ks.write_pin(kPin, true));
}

TEST_F(KeystoreFiles, TemporaryNames) {
  EXPECT_TRUE(is_temporary_name(".k.pem.tmp-0123456789abcdef"));
  EXPECT_TRUE(is_temporary_name(".srk.pin.tmp-0123456789ABCDEF"));
  EXPECT_FALSE(is_temporary_name("k.pem"));
  EXPECT_FALSE(is_temporary_name(".k.pem.tmp-0123"));
  EXPECT_FALSE(is_temporary_name("k.pem.tmp-0123456789abcdef"));
  EXPECT_FALSE(is_temporary_name(".k.pem.tmp-0123456789abcdeg"));
}

// Password files are checked as OpenSSH checks private key files: private to the user (or
// root). Pipes are the user's own and read as they are.
TEST(SecretFiles, OnlyPrivateFilesAreRead) {
  const std::string dir = make_temp_dir("tpmkey-secret-files");
  const std::string f = dir + "/pw";
  write_file(f, "first line\r\nsecond line\n");
  chmod(f.c_str(), 0600);
  auto ok = read_secret_file(f);
  ASSERT_TRUE(ok) << ok.error().text();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ok->data()), ok->size()), "first line");
  chmod(f.c_str(), 0400);
  EXPECT_TRUE(read_secret_file(f));
  for (mode_t m : {0640, 0604, 0644, 0660, 0606}) {
    chmod(f.c_str(), m);
    auto r = read_secret_file(f);
    ASSERT_FALSE(r) << std::oct << m;
    EXPECT_EQ(r.error().reason, Reason::kUnsafePermissions);
    EXPECT_NE(r.error().text().find("a password file must be private: `chmod 600 " + f + "`"), std::string::npos)
        << r.error().text();
    EXPECT_EQ(r.error().text().find("first line"), std::string::npos) << "the password was echoed";
  }
  chmod(f.c_str(), 0600);
  if (geteuid() == 0) {  // another owner: only root can make the file
    ASSERT_EQ(chown(f.c_str(), 4242, 4242), 0);
    auto r = read_secret_file(f);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().text().find("is owned by uid 4242, not by you"), std::string::npos) << r.error().text();
    ASSERT_EQ(chown(f.c_str(), geteuid(), getegid()), 0);
  }
  // A pipe (what `--password-file <(...)` gives) is read as it is.
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(write(p[1], "piped\n", 6), 6);
  close(p[1]);
  auto piped = read_secret_file("/proc/self/fd/" + std::to_string(p[0]));
  close(p[0]);
  ASSERT_TRUE(piped) << piped.error().text();
  EXPECT_EQ(piped->size(), 5u);
  // A missing file, a directory, an over-long first line.
  // A missing password file is a file system error, not a missing key.
  EXPECT_EQ(read_secret_file(dir + "/nope").error().reason, Reason::kIo);
  EXPECT_FALSE(read_secret_file(dir));
  write_file(f, std::string(300, 'x'));
  EXPECT_NE(read_secret_file(f).error().text().find("longer than 255 bytes"), std::string::npos);
  remove_tree(dir);
}

}  // namespace
}  // namespace tpmkey::test
