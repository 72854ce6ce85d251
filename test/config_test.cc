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

TEST_F(KeystoreFiles, TemporaryNames) {
  EXPECT_TRUE(is_temporary_name(".k.pem.tmp-0123456789abcdef"));
  EXPECT_TRUE(is_temporary_name(".srk.pin.tmp-0123456789ABCDEF"));
  EXPECT_FALSE(is_temporary_name("k.pem"));
  EXPECT_FALSE(is_temporary_name(".k.pem.tmp-0123"));
  EXPECT_FALSE(is_temporary_name("k.pem.tmp-0123456789abcdef"));
  EXPECT_FALSE(is_temporary_name(".k.pem.tmp-0123456789abcdeg"));
}

}  // namespace
}  // namespace tpmkey::test
