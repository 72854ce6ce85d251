// Key passwords ([keys.md](../docs/keys.md), "Passwords"): `tpmkey passwd` (set, change, remove
// with TPM2_ObjectChangeAuth; a wrong current password costs one strike and writes nothing; the
// new blob signs with the new password only, the old blob still with the old one; over-long
// passwords refused before any TPM command; persistent keys refused), the dictionary-attack
// lockout message, new keys' passwords without a terminal (`create --no-password`, no prompt), and
// password files ending in "\n" or "\r\n".
#include <gtest/gtest.h>

#include <dirent.h>

#include <algorithm>
#include <filesystem>

#include "keystore/files.h"
#include "keystore/key.h"
#include "test/bus_proxy.h"
#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

class PasswdTest : public TpmTest {
 protected:
  PasswdTest() : TpmTest("tpmkey-passwd-test") {}

  // A file holding `text` (a password file), named after `name`.
  std::string pwfile(const std::string& name, const std::string& text) {
    const std::string p = dir_ + "/" + name + ".pw";
    write_file(p, text);
    return p;
  }
  std::string key_path(const std::string& name) { return keystore_ + "/" + name + ".pem"; }
  // Signs through the provider with `uri` in a fresh library context; the default provider verifies.
  bool signs(const std::string& uri) {
    OSSL_LIB_CTX* l = lib(tcti_);
    const bool ok = sign_and_verify(l, uri, "passwd test message");
    release(l);
    return ok;
  }
  // The keystore directory's entries (to see that no temporary file was left).
  std::vector<std::string> entries() {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(keystore_)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }
};

TEST_F(PasswdTest, SetChangeRemove) {
  ASSERT_OK(tpmkey({"create", "k", "--no-password"}));
  ASSERT_TRUE(signs("tpm2:k"));

  auto set = tpmkey({"passwd", "k", "--password-file", pwfile("one", "first-password\n")});
  ASSERT_OK(set);
  EXPECT_NE(set.out.find("set a password for tpm2:k"), std::string::npos) << set.out;
  EXPECT_NE(set.out.find("delete backups and copies"), std::string::npos) << set.out;
  EXPECT_NE(set.err.find("noDA"), std::string::npos) << "a key made without a password is noDA: " << set.err;
  EXPECT_NE(tpmkey({"list"}).out.find("yes"), std::string::npos);
  EXPECT_EQ(std::filesystem::status(key_path("k")).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  EXPECT_TRUE(signs("tpm2:k?pin-value=first-password"));
  EXPECT_FALSE(signs("tpm2:k")) << "the key needs its password now";

  auto change = tpmkey({"passwd", "k", "--old-password-file", pwfile("one", "first-password\n"), "--password-file",
                        pwfile("two", "second-password\n")});
  ASSERT_OK(change);
  EXPECT_NE(change.out.find("changed the password of tpm2:k"), std::string::npos) << change.out;
  EXPECT_TRUE(signs("tpm2:k?pin-source=" + pwfile("two", "second-password\n")));
  EXPECT_FALSE(signs("tpm2:k?pin-value=first-password"));

  auto removed = tpmkey({"passwd", "k", "--old-password-file", pwfile("two", "second-password\n"), "--no-password"});
  ASSERT_OK(removed);
  EXPECT_NE(removed.out.find("removed the password of tpm2:k"), std::string::npos) << removed.out;
  EXPECT_TRUE(signs("tpm2:k"));
  EXPECT_EQ(entries(), (std::vector<std::string>{"k.pem", "srk.pin"})) << "no temporary file is left";

  auto again = tpmkey({"passwd", "k", "--no-password"});
  ASSERT_OK(again);
  EXPECT_NE(again.out.find("nothing changed"), std::string::npos) << again.out;
}

TEST_F(PasswdTest, NewBlobSignsWithNewPasswordOnlyOldBlobWithOldOne) {
  ASSERT_OK(tpmkey({"create", "k", "--password-file", pwfile("old", "old-password\n")}));
  const std::string old_copy = dir_ + "/old-copy.pem";
  write_file(old_copy, read_file(key_path("k")));
  ASSERT_OK(tpmkey({"passwd", "k", "--old-password-file", pwfile("old", "old-password\n"), "--password-file",
                    pwfile("new", "new-password\n")}));
  EXPECT_NE(read_file(key_path("k")), read_file(old_copy)) << "the blob was replaced";
  EXPECT_TRUE(signs("tpm2:k?pin-value=new-password"));
  EXPECT_FALSE(signs("tpm2:k?pin-value=old-password"));
  // The TPM's semantics, as documented: the old blob is another blob of the same key.
  EXPECT_TRUE(signs("tpm2:file=" + old_copy + "?pin-value=old-password"));
  EXPECT_FALSE(signs("tpm2:file=" + old_copy + "?pin-value=new-password"));
}

TEST_F(PasswdTest, WrongOldPasswordCostsOneStrikeAndWritesNothing) {
  ASSERT_OK(tpmkey({"create", "k", "--password-file", pwfile("right", "right-password\n")}));
  const std::string before = read_file(key_path("k"));
  const auto listing = entries();
  const uint32_t strikes = lockout_counter(tcti_);
  auto r = tpmkey({"passwd", "k", "--old-password-file", pwfile("wrong", "wrong-password\n"), "--password-file",
                   pwfile("new", "new-password\n")});
  EXPECT_FAILS_WITH(r, "the password is not the key's");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1) << "a wrong password costs exactly one strike";
  EXPECT_EQ(read_file(key_path("k")), before) << "nothing was written";
  EXPECT_EQ(entries(), listing);
  EXPECT_TRUE(signs("tpm2:k?pin-value=right-password"));
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1);

  // Without a terminal, a key with a password needs --old-password-file: no TPM command.
  EXPECT_FAILS_WITH(tpmkey({"passwd", "k", "--no-password"}), "--old-password-file");
  EXPECT_EQ(lockout_counter(tcti_), strikes + 1);
}

TEST_F(PasswdTest, OverLongPasswordRefusedBeforeAnyTpmCommand) {
  ASSERT_OK(tpmkey({"create", "k", "--password-file", pwfile("right", "right-password\n")}));
  const std::string before = read_file(key_path("k"));
  BusProxy bus(shared_swtpm().port());
  const std::string long_pw(33, 'x');
  auto r = tpmkey({"passwd", "k", "--old-password-file", pwfile("right", "right-password\n"), "--password-file",
                   pwfile("long", long_pw + "\n")},
                  bus.tcti());
  EXPECT_FAILS_WITH(r, "at most 32 bytes");
  EXPECT_TRUE(bus.command_codes().empty()) << "the TPM was asked something";
  EXPECT_EQ(read_file(key_path("k")), before);
  // 32 bytes are fine. Neither password crosses the bus in clear: the old one authorizes through
  // the session's HMAC, the new one is parameter 1, encrypted by the session.
  bus.clear();
  ASSERT_OK(tpmkey({"passwd", "k", "--old-password-file", pwfile("right", "right-password\n"), "--password-file",
                    pwfile("max", std::string(32, 'y') + "\n")},
                   bus.tcti()));
  const auto codes = bus.command_codes();
  EXPECT_EQ(std::count(codes.begin(), codes.end(), uint32_t(0x150)), 1) << "one TPM2_ObjectChangeAuth";
  EXPECT_FALSE(bus.saw(std::string(32, 'y')));
  EXPECT_FALSE(bus.saw("right-password"));
  EXPECT_TRUE(signs("tpm2:k?pin-value=" + std::string(32, 'y')));
  // An empty password file is refused (--no-password removes a password), and so is a conflict.
  EXPECT_FAILS_WITH(tpmkey({"passwd", "k", "--old-password-file", pwfile("max", std::string(32, 'y')),
                            "--password-file", pwfile("empty", "\n")}),
                    "--no-password");
  EXPECT_EQ(tpmkey({"passwd", "k", "--password-file", pwfile("x", "x"), "--no-password"}).exit_code, 2);
  EXPECT_FAILS_WITH(tpmkey({"passwd", "missing", "--no-password"}), "no key named");
}

TEST_F(PasswdTest, PersistentKeysRefused) {
  ASSERT_OK(tpmkey({"create", "p", "--password-file", pwfile("p", "persistent-pw\n"), "--persistent", "0x81000123"}));
  const std::string before = read_file(key_path("p"));
  auto r = tpmkey({"passwd", "p", "--old-password-file", pwfile("p", "persistent-pw\n"), "--no-password"});
  EXPECT_FAILS_WITH(r, "persistent object in the TPM would keep the old password");
  EXPECT_EQ(read_file(key_path("p")), before);
  EXPECT_FAILS_WITH(tpmkey({"passwd", "tpm2:handle=0x81000123", "--no-password"}),
                    "persistent object in the TPM would keep the old password");
  ASSERT_OK(tpmkey({"delete", "p", "--yes"}));  // evicts it
}

TEST_F(PasswdTest, LockoutSaysWhatToDo) {
  ASSERT_OK(tpmkey({"create", "k", "--password-file", pwfile("right", "right-password\n")}));
  // Restores the binary's relaxed settings (and clears the lockout) however the test ends.
  struct Restore {
    std::string tcti;
    ~Restore() {
      run({"tpm2_dictionarylockout", "-T", tcti, "-c"}, {"TSS2_LOG=all+none"});
      set_dictionary_attack(tcti, 1000, 1);
    }
  } restore{tcti_};
  set_dictionary_attack(tcti_, 2, 30);
  const std::string wrong = pwfile("wrong", "wrong-password\n"), fresh = pwfile("new", "new-password\n");
  for (int i = 0; i < 2; ++i)
    EXPECT_FAILS_WITH(tpmkey({"passwd", "k", "--old-password-file", wrong, "--password-file", fresh}),
                      "the password is not the key's");
  auto r = tpmkey({"passwd", "k", "--old-password-file", wrong, "--password-file", fresh});
  EXPECT_FAILS_WITH(r, "dictionary-attack lockout");
  EXPECT_FAILS_WITH(r, "every 30 s");
  EXPECT_FAILS_WITH(r, "tpm2_dictionarylockout --clear-lockout");
  // The right password does not help during the lockout, and signing says the same.
  EXPECT_FAILS_WITH(tpmkey({"passwd", "k", "--old-password-file", pwfile("right", "right-password\n"),
                            "--password-file", fresh}),
                    "every 30 s");
  ASSERT_OK(run({"tpm2_dictionarylockout", "-T", tcti_, "-c"}, {"TSS2_LOG=all+none"}));
  EXPECT_TRUE(signs("tpm2:k?pin-value=right-password")) << "cleared";
}

TEST_F(PasswdTest, NewKeyPasswordsWithoutTerminal) {
  // No controlling terminal here: no prompt, and no password unless one is given.
  auto none = tpmkey({"create", "plain"});
  ASSERT_OK(none);
  EXPECT_EQ(none.out.find("password"), std::string::npos) << none.out;
  ASSERT_OK(tpmkey({"create", "skipped", "--no-password"}));
  auto list = tpmkey({"list"});
  EXPECT_EQ(list.out.find("yes"), std::string::npos) << list.out;
  EXPECT_TRUE(signs("tpm2:skipped"));
  EXPECT_FAILS_WITH(tpmkey({"create", "asked", "--password"}), "no terminal");
  EXPECT_EQ(tpmkey({"create", "both", "--password", "--no-password"}).exit_code, 2);
  EXPECT_EQ(tpmkey({"create", "both", "--password-file", pwfile("x", "x"), "--no-password"}).exit_code, 2);
  EXPECT_FAILS_WITH(tpmkey({"create", "long", "--password-file", pwfile("long", std::string(33, 'z'))}),
                    "at most 32 bytes");
}

TEST_F(PasswdTest, PasswordFilesEndingInCrLf) {
  ASSERT_OK(tpmkey({"create", "k", "--password-file", pwfile("crlf", "crlf-password\r\n")}));
  EXPECT_TRUE(signs("tpm2:k?pin-value=crlf-password"));
  EXPECT_TRUE(signs("tpm2:k?pin-source=" + pwfile("lf", "crlf-password\n")));
  EXPECT_TRUE(signs("tpm2:k?pin-source=" + pwfile("crlf2", "crlf-password\r\n")));
  ASSERT_OK(tpmkey({"passwd", "k", "--old-password-file", pwfile("lf", "crlf-password\n"), "--password-file",
                    pwfile("next", "next-password\r\n")}));
  EXPECT_TRUE(signs("tpm2:k?pin-value=next-password"));
}

// No TPM: the pin-source reader every password file goes through.
TEST(PinSource, StripsLfAndCrLf) {
  const std::string dir = make_temp_dir("tpmkey-pin-source");
  auto read = [&](const std::string& text) {
    write_file(dir + "/pin", text);
    chmod((dir + "/pin").c_str(), 0600);
    auto pin = read_secret_file(dir + "/pin");
    EXPECT_TRUE(pin) << pin.error().text();
    return pin ? std::string(reinterpret_cast<const char*>(pin->data()), pin->size()) : std::string("<error>");
  };
  EXPECT_EQ(read("secret\n"), "secret");
  EXPECT_EQ(read("secret\r\n"), "secret");
  EXPECT_EQ(read("secret"), "secret");
  EXPECT_EQ(read("secret\nsecond line\n"), "secret");
  EXPECT_EQ(read("\r\n"), "");
  EXPECT_EQ(read(""), "");
  remove_tree(dir);
}

}  // namespace
}  // namespace tpmkey::test
