// Secure sessions against a real swtpm: what crosses the bus (seen by a real interposer), response
// tampering, the SRK pin, `tpmkey init` and the persistent SRK, recovery from a TPM restart and
// from a flushed session, threads, fork, and other programs holding the TPM's slots.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include "keystore/context.h"
#include "keystore/key.h"
#include "keystore/keystore.h"
#include "keystore/tpm/transport.h"
#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

constexpr uint32_t kSignCC = TPM2_CC_Sign;

class SessionTest : public TpmTest {
 protected:
  SessionTest() : TpmTest("tpmkey-session-test") {}
};

// A man in the middle sees the commands: no password and no digest in clear, even for a key
// made and used with a password; with the documented opt-out the password is visible.
TEST_F(SessionTest, SecretsNeverCrossTheBusInClear) {
  BusProxy bus(shared_swtpm().port());
  const std::string password = "correct horse battery staple";
  OSSL_LIB_CTX* l = lib(bus.tcti());
  make_key(l, "pw", password.c_str());
  PkeyPtr k = load_key(l, "tpm2:pw?pin-value=correct%20horse%20battery%20staple");
  ASSERT_TRUE(k) << drain_errors();
  const std::string msg = "a message whose digest must not be seen";
  auto sig = digest_sign(l, k.get(), msg, {});
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EXPECT_TRUE(digest_verify(public_copy(k.get()).get(), msg, sig, {}));
  auto d = sha("SHA256", msg);
  EXPECT_FALSE(bus.saw(password)) << "the password crossed the bus in clear";
  EXPECT_FALSE(bus.saw(std::string(d.begin(), d.end()))) << "the digest crossed the bus in clear";
  EXPECT_FALSE(bus.saw(std::string("\x40\x00\x00\x09", 4))) << "a TPM_RS_PW authorization was sent";
  k.reset();
  release(l);

  // The same with `authorization = password`: the test sees what it is looking for.
  bus.clear();
  OSSL_LIB_CTX* plain = lib(bus.tcti(), "authorization = password\n");
  PkeyPtr k2 = load_key(plain, "tpm2:pw?pin-value=correct%20horse%20battery%20staple");
  ASSERT_TRUE(k2);
  ASSERT_FALSE(digest_sign(plain, k2.get(), msg, {}).empty()) << drain_errors();
  EXPECT_TRUE(bus.saw(password));
  EXPECT_TRUE(bus.saw(std::string(d.begin(), d.end())));
  k2.reset();
  release(plain);
}

// A response changed on the way back fails its HMAC check: no signature comes out of it, and the
// next signature works again (a new session).
TEST_F(SessionTest, TamperedResponseIsRejected) {
  BusProxy bus(shared_swtpm().port());
  OSSL_LIB_CTX* l = lib(bus.tcti());
  make_key(l, "k");
  PkeyPtr k = load_key(l, "tpm2:k");
  ASSERT_TRUE(k);
  ASSERT_FALSE(digest_sign(l, k.get(), "warm up", {}).empty()) << drain_errors();
  bus.corrupt_next_response(kSignCC);
  EXPECT_TRUE(digest_sign(l, k.get(), "tampered", {}).empty());
  EXPECT_EQ(bus.corrupted(), 1);
  std::string err = drain_errors();
  EXPECT_NE(err.find("TPM2_Sign: TPM identity check failed: the TPM's response failed its HMAC check"), std::string::npos)
      << err;
  auto sig = digest_sign(l, k.get(), "after", {});
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EXPECT_TRUE(digest_verify(public_copy(k.get()).get(), "after", sig, {}));
  k.reset();
  release(l);  // while the proxy still forwards the flushes
}

// A keystore pinned to another SRK refuses this TPM before any key is loaded.
// A keystore that has no pin and cannot record one refuses to go on: without a pin, every later
// process would trust whatever SRK it meets.
TEST_F(SessionTest, AKeystoreThatCannotRecordThePinRefuses) {
  OSSL_LIB_CTX* l = lib(tcti_);
  make_key(l, "k");
  release(l);
  const std::string key_file = dir_ + "/k.pem";
  std::filesystem::copy_file(keystore_ + "/k.pem", key_file);
  write_file(dir_ + "/not-a-dir", "a file where the keystore's parent directory should be");
  keystore_ = dir_ + "/not-a-dir/keystore";
  OSSL_LIB_CTX* nopin = lib(tcti_);
  EXPECT_FALSE(sign_and_verify(nopin, "tpm2:file=" + key_file, "m"));
  std::string err = drain_errors();
  EXPECT_NE(err.find("the keystore has no SRK pin and tpmkey cannot record one"), std::string::npos) << err;
}

// `tpmkey init` compares the SRK with the pin before it makes anything persistent: a TPM that
// presents another SRK gets no persistent key from it.
TEST_F(SessionTest, InitChecksThePinBeforeMakingTheSrkPersistent) {
  ASSERT_OK(tpmkey({"init", "--transient"}));
  auto pin = Keystore(keystore_).read_pin();
  ASSERT_TRUE(pin && *pin);
  SrkPin wrong = **pin;
  wrong.name.back() ^= 0xff;
  ASSERT_TRUE(Keystore(keystore_).write_pin(wrong, true));
  EXPECT_FAILS_WITH(tpmkey({"init"}), "run again with --repin");
  auto r = run({"tpm2_getcap", "-T", tcti_, "handles-persistent"}, {"TSS2_LOG=all+none"});
  EXPECT_EQ(r.out.find("0x81000001"), std::string::npos) << "init made the SRK persistent for a TPM it refused";
  EXPECT_OK(tpmkey({"init", "--repin"}));
  evict_persistent_srk();
}

// A restricted key's hash sequence gets a random password, sent encrypted in the session.
TEST_F(SessionTest, HashSequenceStartsInTheSession) {
  BusProxy bus(shared_swtpm().port());
  // A restricted signing primary, made persistent (as persistent_test.cc makes them).
  ASSERT_OK(run({"tpm2_createprimary", "-T", tcti_, "-C", "o", "-G", "ecc256:ecdsa-sha256:null", "-a",
                 "restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth", "-c", dir_ + "/r.ctx"},
                {"TSS2_LOG=all+none"}));
  ASSERT_OK(run({"tpm2_evictcontrol", "-T", tcti_, "-C", "o", "-c", dir_ + "/r.ctx", "0x81000031"}, {"TSS2_LOG=all+none"}));
  release_others();
  OSSL_LIB_CTX* l = lib(bus.tcti());
  PkeyPtr k = load_key(l, "tpm2:handle=0x81000031");
  ASSERT_TRUE(k) << drain_errors();
  bus.clear();
  EXPECT_TRUE(sign_verifies(l, k.get(), std::string(3000, 'm'))) << drain_errors();
  const std::string sent = bus.sent();
  bool seen = false;
  for (size_t at = 0; at + 10 <= sent.size();) {
    auto be = [&](size_t i, int n) {
      uint32_t v = 0;
      for (int j = 0; j < n; ++j) v = v << 8 | uint8_t(sent[i + j]);
      return v;
    };
    const uint32_t size = be(at + 2, 4);
    if (size < 10) break;
    if (be(at + 6, 4) == TPM2_CC_HashSequenceStart) {
      seen = true;
      EXPECT_EQ(be(at, 2), uint32_t(TPM2_ST_SESSIONS)) << "HashSequenceStart was sent outside the session";
    }
    at += size;
  }
  EXPECT_TRUE(seen);
  k.reset();
  release(l);
  run({"tpm2_evictcontrol", "-T", tcti_, "-C", "o", "-c", "0x81000031"}, {"TSS2_LOG=all+none"});
}

uint32_t be_at(const std::vector<uint8_t>& m, size_t at, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | m[at + size_t(i)];
  return v;
}

// Whether `command` is TPM2_ReadPublic of `handle`, and `response` its successful answer with the
// given tag (TPM2_ST_NO_SESSIONS for a plain read, TPM2_ST_SESSIONS for the audited one).
bool is_read_public(const std::vector<uint8_t>& command, const std::vector<uint8_t>& response, uint32_t handle,
                    uint16_t tag) {
  return command.size() >= 14 && be_at(command, 6, 4) == TPM2_CC_ReadPublic && be_at(command, 10, 4) == handle &&
         response.size() > 30 && be_at(response, 0, 2) == tag && be_at(response, 6, 4) == 0;
}

// A tpm2:handle= key's public key comes from the TPM. An interposer that answers the plain
// TPM2_ReadPublic with another key's public area and the matching name (so the name check of the
// plain read passes) is caught by the audited read in the salted session, and so is one that
// alters the audited read: the key is refused, not used.
TEST_F(SessionTest, HandleKeyWithAPublicAreaChangedOnTheBusIsRefused) {
  constexpr uint32_t kHandle = 0x81000032;
  const std::string uri = "tpm2:handle=0x81000032";
  BusProxy bus(shared_swtpm().port());
  ASSERT_OK(run({"tpm2_createprimary", "-T", tcti_, "-C", "o", "-G", "ecc256:null", "-a",
                 "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign", "-c", dir_ + "/k.ctx"},
                {"TSS2_LOG=all+none"}));
  ASSERT_OK(run({"tpm2_evictcontrol", "-T", tcti_, "-C", "o", "-c", dir_ + "/k.ctx", "0x81000032"}, {"TSS2_LOG=all+none"}));
  release_others();
  OSSL_LIB_CTX* l = lib(bus.tcti());
  make_key(l, "attacker");  // the key whose public half an interposer would rather hand out
  auto attacker = Keystore(keystore_).read("attacker");
  ASSERT_TRUE(attacker) << attacker.error().text();
  const TPMT_PUBLIC fake = attacker->pub.publicArea;
  uint8_t area[sizeof(TPMT_PUBLIC)];
  size_t area_len = 0;
  ASSERT_EQ(Tss2_MU_TPMT_PUBLIC_Marshal(&fake, area, sizeof area, &area_len), TSS2_RC_SUCCESS);
  TPM2B_NAME fake_name{};
  fake_name.name[0] = uint8_t(fake.nameAlg >> 8);
  fake_name.name[1] = uint8_t(fake.nameAlg);
  unsigned int md_len = 0;
  ASSERT_EQ(EVP_Digest(area, area_len, fake_name.name + 2, &md_len, EVP_sha256(), nullptr), 1);
  fake_name.size = uint16_t(2 + md_len);

  // 1. The plain read answered with the attacker's public area and its name.
  bus.rewrite_responses([&](const std::vector<uint8_t>& cmd, std::vector<uint8_t>& rsp) {
    if (!is_read_public(cmd, rsp, kHandle, TPM2_ST_NO_SESSIONS)) return false;
    size_t off = 10;
    TPM2B_PUBLIC real{};
    TPM2B_NAME name{}, qualified{};
    if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(rsp.data(), rsp.size(), &off, &real) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_NAME_Unmarshal(rsp.data(), rsp.size(), &off, &name) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_NAME_Unmarshal(rsp.data(), rsp.size(), &off, &qualified) != TSS2_RC_SUCCESS)
      return false;
    TPM2B_PUBLIC out{};
    out.publicArea = fake;
    std::vector<uint8_t> forged(rsp.begin(), rsp.begin() + 10);
    forged.resize(10 + sizeof(TPM2B_PUBLIC) + 2 * sizeof(TPM2B_NAME));
    size_t at = 10;
    if (Tss2_MU_TPM2B_PUBLIC_Marshal(&out, forged.data(), forged.size(), &at) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_NAME_Marshal(&fake_name, forged.data(), forged.size(), &at) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_NAME_Marshal(&qualified, forged.data(), forged.size(), &at) != TSS2_RC_SUCCESS)
      return false;
    forged.resize(at);
    rsp = std::move(forged);
    return true;
  });
  EXPECT_FALSE(load_key(l, uri)) << "a public key substituted on the bus was used";
  EXPECT_GE(bus.corrupted(), 1);
  std::string err = drain_errors();
  EXPECT_NE(err.find("read the public key at 0x81000032: TPM identity check failed: the TPM does not vouch for the "
                     "public area it returned"),
            std::string::npos)
      << err;

  // 2. The audited read altered: its response HMAC does not check out.
  const int before = bus.corrupted();
  bus.rewrite_responses([&](const std::vector<uint8_t>& cmd, std::vector<uint8_t>& rsp) {
    if (!is_read_public(cmd, rsp, kHandle, TPM2_ST_SESSIONS)) return false;
    rsp[30] ^= 0x01;  // inside outPublic (after the header and parameterSize)
    return true;
  });
  EXPECT_FALSE(load_key(l, uri)) << "an altered audited answer was used";
  EXPECT_EQ(bus.corrupted(), before + 1);
  err = drain_errors();
  EXPECT_NE(err.find("TPM identity check failed: the TPM's response failed its HMAC check"), std::string::npos) << err;

  // Untouched answers: the key loads, and its public key is the one that verifies its signatures.
  bus.rewrite_responses({});
  PkeyPtr k = load_key(l, uri);
  ASSERT_TRUE(k) << drain_errors();
  PkeyPtr substituted = load_key(l, "tpm2:attacker");
  ASSERT_TRUE(substituted);
  EXPECT_NE(EVP_PKEY_eq(k.get(), substituted.get()), 1);
  EXPECT_TRUE(sign_verifies(l, k.get(), "signed by the key at the handle")) << drain_errors();
  k.reset();
  substituted.reset();
  release(l);
  run({"tpm2_evictcontrol", "-T", tcti_, "-C", "o", "-c", "0x81000032"}, {"TSS2_LOG=all+none"});
}

TEST_F(SessionTest, SrkPinMismatchIsAHardError) {
  OSSL_LIB_CTX* l = lib(tcti_);
  make_key(l, "k");
  auto pin = Keystore(keystore_).read_pin();
  ASSERT_TRUE(pin && *pin) << "the pin was not recorded on first use";
  release(l);
  SrkPin wrong = **pin;
  wrong.name.back() ^= 0xff;
  ASSERT_TRUE(Keystore(keystore_).write_pin(wrong, true));
  OSSL_LIB_CTX* l2 = lib(tcti_);
  EXPECT_FALSE(sign_and_verify(l2, "tpm2:k", "m"));
  std::string err = drain_errors();
  EXPECT_NE(err.find("TPM identity check failed: the storage root key's name is"), std::string::npos) << err;
  EXPECT_NE(err.find("tpmkey init --repin"), std::string::npos) << err;
  // `tpmkey init` refuses too, and --repin replaces the pin.
  EXPECT_FAILS_WITH(tpmkey({"init", "--transient"}), "run again with --repin");
  EXPECT_OK(tpmkey({"init", "--transient", "--repin"}));
  OSSL_LIB_CTX* l3 = lib(tcti_);
  EXPECT_TRUE(sign_and_verify(l3, "tpm2:k", "m")) << drain_errors();
}

// `tpmkey init` makes the SRK persistent: a cold signature then needs no primary key.
TEST_F(SessionTest, InitMakesTheSrkPersistent) {
  auto made = tpmkey({"init"});
  ASSERT_OK(made);
  ASSERT_NE(made.out.find("made the storage root key persistent at 0x81000001"), std::string::npos) << made.out;
  auto again = tpmkey({"init"});
  EXPECT_OK(again);
  EXPECT_NE(again.out.find("already persistent"), std::string::npos) << again.out;
  auto pin = Keystore(keystore_).read_pin();
  ASSERT_TRUE(pin && *pin);
  EXPECT_EQ((*pin)->handle, 0x81000001u);
  OSSL_LIB_CTX* l = lib(tcti_);
  make_key(l, "k");
  make_key(l, "k2");
  release(l);
  OSSL_LIB_CTX* cold = lib(tcti_);
  PkeyPtr k = load_key(cold, "tpm2:k"), k2 = load_key(cold, "tpm2:k2");
  ASSERT_TRUE(k && k2);
  ASSERT_FALSE(digest_sign(cold, k.get(), "m", {}).empty()) << drain_errors();
  // ReadPublic(0x81000001) (its name is compared with the pin), StartAuthSession (salted to it),
  // Load, Sign. The slot limits are not read: a process holding one key has nothing to evict.
  EXPECT_EQ(tpm_commands(cold), 4u);
  // A second key: now there is something to evict, so GetCapability (once), Load, Sign.
  ASSERT_FALSE(digest_sign(cold, k2.get(), "m", {}).empty()) << drain_errors();
  EXPECT_EQ(tpm_commands(cold), 7u);
  ASSERT_FALSE(digest_sign(cold, k.get(), "m", {}).empty()) << drain_errors();
  EXPECT_EQ(tpm_commands(cold), 8u);
  k.reset();
  k2.reset();
  release(cold);
  evict_persistent_srk();
}

// The TPM restarts under a running process: the next signature still succeeds.
TEST_F(SessionTest, SurvivesATpmRestart) {
  OSSL_LIB_CTX* l = lib(tcti_);
  make_key(l, "k");
  PkeyPtr k = load_key(l, "tpm2:k");
  ASSERT_TRUE(k);
  ASSERT_FALSE(digest_sign(l, k.get(), "before", {}).empty()) << drain_errors();
  shared_swtpm().restart();
  auto sig = digest_sign(l, k.get(), "after", {});
  ASSERT_FALSE(sig.empty()) << drain_errors();
  EXPECT_TRUE(digest_verify(public_copy(k.get()).get(), "after", sig, {}));
}

// Our session flushed behind our back (by a resource manager, say): re-established transparently.
TEST_F(SessionTest, SurvivesALostSession) {
  {
    OSSL_LIB_CTX* l = lib(tcti_);
    make_key(l, "k");
    release(l);
  }
  SettingsInput in;
  in.tcti = tcti_.c_str();
  in.keystore = keystore_.c_str();
  Context ctx(resolve_settings(in));
  auto uri = parse_uri("tpm2:k");
  ASSERT_TRUE(uri);
  auto key = Key::open(ctx, *uri);
  ASSERT_TRUE(key) << key.error().text();
  auto d = sha("SHA256", "m");
  const SignScheme scheme{SigAlg::kEcdsa, TPM2_ALG_SHA256};
  ASSERT_TRUE((*key)->sign(scheme, d.data(), d.size()));
  Tpm* tpm = ctx.tpm_if_connected();
  ASSERT_TRUE(tpm);
  const uint32_t old = tpm->session_handle();
  ASSERT_NE(old, 0u);
  auto listed = [&](uint32_t h) {
    for (uint32_t s : tpm_handles(tcti_).loaded_sessions)
      if (s == h) return true;
    return false;
  };
  // The precondition: the session was in the TPM, and the flush behind tpmkey's back removed it.
  ASSERT_TRUE(listed(old));
  ASSERT_EQ(tpm->test_flush_handle(old), TSS2_RC_SUCCESS);
  ASSERT_FALSE(listed(old));
  auto sig = (*key)->sign(scheme, d.data(), d.size());
  ASSERT_TRUE(sig) << sig.error().text();
  EXPECT_NE(tpm->session_handle(), 0u);
  EXPECT_TRUE(listed(tpm->session_handle()));
}

// Several threads on one key and on more keys than the TPM has slots: every signature verifies.
TEST_F(SessionTest, ThreadsSignCorrectly) {
  OSSL_LIB_CTX* l = lib(tcti_);
  for (int i = 0; i < 4; ++i) make_key(l, numbered("k", i), nullptr, i == 3 ? 2048 : 0);
  std::vector<PkeyPtr> keys;
  for (int i = 0; i < 4; ++i) keys.push_back(load_key(l, numbered("tpm2:k", i)));
  for (auto& k : keys) ASSERT_TRUE(k);
  std::atomic<int> good{0}, bad{0};
  auto worker = [&](int t, bool same_key) {
    EVP_PKEY* k = keys[same_key ? 0 : size_t(t)].get();
    PkeyPtr pub = public_copy(k);
    for (int i = 0; i < 15; ++i) {
      std::string msg = "thread " + std::to_string(t) + " message " + std::to_string(i);
      auto sig = digest_sign(l, k, msg, {});
      (!sig.empty() && digest_verify(pub.get(), msg, sig, {}) ? good : bad)++;
    }
  };
  for (bool same : {true, false}) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) threads.emplace_back(worker, t, same);
    for (auto& th : threads) th.join();
  }
  EXPECT_EQ(bad.load(), 0) << drain_errors();
  EXPECT_EQ(good.load(), 2 * 4 * 15);
}

// A forked child never uses the parent's session: it connects and starts its own.
TEST_F(SessionTest, ForkedChildUsesItsOwnSession) {
  OSSL_LIB_CTX* l = lib(tcti_);
  make_key(l, "k");
  PkeyPtr k = load_key(l, "tpm2:k");
  ASSERT_TRUE(k);
  ASSERT_FALSE(digest_sign(l, k.get(), "parent", {}).empty());
  const uint64_t parent_commands = tpm_commands(l);
  pid_t pid = fork();
  if (pid == 0) {
    // swtpm serves one connection at a time: this waits until the parent lets go of its own.
    auto sig = digest_sign(l, k.get(), "child", {});
    bool ok = !sig.empty() && digest_verify(public_copy(k.get()).get(), "child", sig, {});
    // A fresh connection: the child's counter restarted, with its own session and load.
    ok = ok && tpm_commands(l) >= 4 && tpm_commands(l) < parent_commands + 4;
    k.reset();
    OSSL_LIB_CTX_free(l);  // flushes what the child loaded (_exit skips the atexit flush)
    _exit(ok ? 0 : 1);
  }
  k.reset();
  release(l);  // the parent's connection closes; its objects and session are flushed
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// Behind tpm2-abrmd: two connections at once, more keys than the TPM has slots, every signature
// verifies and a warm signature is still one command.
TEST_F(SessionTest, WorksBehindTpm2Abrmd) {
  {
    OSSL_LIB_CTX* l = lib(tcti_);
    for (int i = 0; i < 4; ++i) make_key(l, numbered("k", i));
    release(l);
  }
  Abrmd rm(tcti_);
  OSSL_LIB_CTX* a = lib(rm.tcti());
  OSSL_LIB_CTX* b = lib(rm.tcti());
  std::atomic<int> bad{0};
  auto worker = [&](OSSL_LIB_CTX* l) {
    std::vector<PkeyPtr> keys;
    for (int i = 0; i < 4; ++i) keys.push_back(load_key(l, numbered("tpm2:k", i)));
    for (int round = 0; round < 5; ++round)
      for (auto& k : keys) {
        std::string msg = "round " + std::to_string(round);
        auto sig = k ? digest_sign(l, k.get(), msg, {}) : std::vector<unsigned char>{};
        if (sig.empty() || !digest_verify(public_copy(k.get()).get(), msg, sig, {})) ++bad;
      }
  };
  std::thread ta(worker, a), tb(worker, b);
  ta.join();
  tb.join();
  EXPECT_EQ(bad.load(), 0) << drain_errors();
  PkeyPtr k = load_key(a, "tpm2:k0");
  ASSERT_TRUE(k);
  ASSERT_FALSE(digest_sign(a, k.get(), "warm", {}).empty());
  const uint64_t before = tpm_commands(a);
  ASSERT_FALSE(digest_sign(a, k.get(), "warm", {}).empty());
  EXPECT_EQ(tpm_commands(a), before + 1);
  k.reset();
  release(a);
  release(b);
}

// swtpm serves one client at a time and nobody else while it stays connected: an operation keeps
// one connection for its commands, and none is kept between operations, so that another program
// (tpm2-tools here) reaches the TPM while the provider holds its session and key.
TEST_F(SessionTest, OneConnectionPerOperation) {
  {
    OSSL_LIB_CTX* l = lib(tcti_);
    make_key(l, "k");
    release(l);
  }
  BusProxy bus(shared_swtpm().port());
  OSSL_LIB_CTX* l = lib(bus.tcti());
  PkeyPtr k = load_key(l, "tpm2:k");
  ASSERT_TRUE(k);
  EXPECT_EQ(bus.connections(), 0);
  // The first signature: StartAuthSession, Load of the SRK and the key, Sign: one operation.
  ASSERT_FALSE(digest_sign(l, k.get(), "cold", {}).empty()) << drain_errors();
  EXPECT_GE(tpm_commands(l), 3u);
  EXPECT_EQ(bus.connections(), 1);
  const auto others = [&] {
    return run({"tpm2_getcap", "-T", bus.tcti(), "handles-transient"}, {"TSS2_LOG=all+none"}, "", 20);
  };
  // Between operations the TPM is anyone's.
  auto r = others();
  EXPECT_OK(r);
  const int after_others = bus.connections();
  EXPECT_GT(after_others, 1);
  // A warm signature (and the proof of its key after the pause): again one connection.
  ASSERT_FALSE(digest_sign(l, k.get(), "warm", {}).empty()) << drain_errors();
  EXPECT_EQ(bus.connections(), after_others + 1);
  EXPECT_OK(others());
  // Freeing the key after a pause: the key is proven before it is flushed, on one connection, so
  // that no other program can come to hold its handle number in between.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int before_free = bus.connections();
  const uint64_t commands_before_free = tpm_commands(l);
  k.reset();
  EXPECT_EQ(tpm_commands(l), commands_before_free + 2) << "TPM2_ReadPublic and TPM2_FlushContext";
  EXPECT_EQ(bus.connections(), before_free + 1);
  const int before_release = bus.connections();
  release(l);  // the flush of the session (and the SRK): one operation too
  EXPECT_EQ(bus.connections(), before_release + 1);
}

// The swtpm link itself, held and not: a held connection carries the next command only after the
// last one's whole response (a command whose response was never read is not answered by the next
// one's), a response is read only for a command sent, and an unheld link connects per command.
TEST_F(SessionTest, SwtpmLinkNeverTakesOneCommandsResponseForAnother) {
  BusProxy bus(shared_swtpm().port());
  auto link = open_link(bus.tcti());
  ASSERT_TRUE(link) << link.error().text();
  const auto deadline = [] { return std::chrono::steady_clock::now() + std::chrono::seconds(20); };
  // TPM2_GetRandom(n): its response is 12 + n bytes.
  auto get_random = [](uint8_t n) {
    return std::vector<uint8_t>{0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, n};
  };
  auto answer_size = [&](Link& l) {
    size_t size = 0;
    if (l.receive(&size, nullptr, deadline()) != TSS2_RC_SUCCESS) return size_t(0);
    std::vector<uint8_t> rsp(size);
    return l.receive(&size, rsp.data(), deadline()) == TSS2_RC_SUCCESS ? size : size_t(0);
  };
  Link& l = **link;
  size_t size = 0;
  EXPECT_EQ(l.receive(&size, nullptr, deadline()), TSS2_TCTI_RC_BAD_SEQUENCE) << "nothing was sent";

  l.hold(true);
  const auto c8 = get_random(8), c16 = get_random(16), c24 = get_random(24);
  ASSERT_EQ(l.transmit(c8.data(), c8.size(), deadline()), TSS2_RC_SUCCESS);
  ASSERT_EQ(l.transmit(c16.data(), c16.size(), deadline()), TSS2_RC_SUCCESS);  // 8's answer never read
  EXPECT_EQ(answer_size(l), 12u + 16);
  ASSERT_EQ(l.transmit(c24.data(), c24.size(), deadline()), TSS2_RC_SUCCESS);
  EXPECT_EQ(answer_size(l), 12u + 24);
  EXPECT_EQ(l.receive(&size, nullptr, deadline()), TSS2_TCTI_RC_BAD_SEQUENCE) << "the answer was read";
  EXPECT_EQ(bus.connections(), 2) << "the abandoned command's connection, then one for the rest";
  l.hold(false);

  ASSERT_EQ(l.transmit(c8.data(), c8.size(), deadline()), TSS2_RC_SUCCESS);
  EXPECT_EQ(answer_size(l), 12u + 8);
  ASSERT_EQ(l.transmit(c8.data(), c8.size(), deadline()), TSS2_RC_SUCCESS);
  EXPECT_EQ(answer_size(l), 12u + 8);
  EXPECT_EQ(bus.connections(), 4) << "unheld: a connection per command";
}

// Other programs hold object slots on a bare TPM (tpm2-tools leave their objects loaded):
// tpmkey works in what is left, and says clearly when nothing is left.
TEST_F(SessionTest, SharesTheTpmWithOtherPrograms) {
  OSSL_LIB_CTX* l = lib(tcti_);
  for (int i = 0; i < 3; ++i) make_key(l, numbered("k", i));
  release(l);

  hold_slot();  // one of three slots taken: SRK + one key at a time, keys evicted in turn
  OSSL_LIB_CTX* l2 = lib(tcti_);
  for (int round = 0; round < 2; ++round)
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(sign_and_verify(l2, numbered("tpm2:k", i), "m")) << drain_errors();
  release(l2);

  hold_slot();
  hold_slot();  // all three taken
  OSSL_LIB_CTX* l3 = lib(tcti_, "busy-timeout = 0.3\n");  // it waits, then says so
  EXPECT_FALSE(sign_and_verify(l3, "tpm2:k0", "m"));
  std::string err = drain_errors();
  EXPECT_NE(err.find("TPM busy or out of resources"), std::string::npos) << err;
  EXPECT_NE(err.find("held by other programs"), std::string::npos) << err;
  release(l3);
  release_others();
}

}  // namespace
}  // namespace tpmkey::test
