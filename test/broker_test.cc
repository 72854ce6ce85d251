// The broker (keystore/broker.h, docs/sessions.md#when-an-agent-runs): one-shot `openssl pkeyutl
// -sign` processes sign through a real running `tpmkey agent`. Each client and the agent talk to
// this binary's swtpm through a bus proxy of their own, so the TPM commands of each are counted
// apart: a client served by the agent sends none, the agent one TPM2_Sign per signature. Every
// signature is verified by the default provider alone. Fallbacks to the direct TPM path: no agent,
// `agent = off`, a socket or directory others could write, a key the agent does not hold, a
// locked agent, and a signature that does not verify (a fake agent in this file, the one fault a
// real agent cannot be made to show). Password keys added with `ssh-add -s`; 16 concurrent
// clients on a bare TPM; clients killed mid-request (TearDown checks the TPM is left clean).
#include <gtest/gtest.h>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

using Buf = std::vector<uint8_t>;
constexpr uint32_t kTpmCcSign = 0x0000015D;
const std::string kMessage = "a message signed by a one-shot process";

size_t signs(const BusProxy& bus) {
  auto codes = bus.command_codes();
  return size_t(std::count(codes.begin(), codes.end(), kTpmCcSign));
}

// The SSH wire encoding, written out here from the specification (RFC 4251 section 5).
void put_u32(Buf& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}
void put_str(Buf& b, const Buf& v) {
  put_u32(b, uint32_t(v.size()));
  b.insert(b.end(), v.begin(), v.end());
}

// An agent that answers every request on its socket (0600, in a 0700 directory) with a
// sign-digest response whose signature is valid DER but not the key's signature.
class FakeAgent {
 public:
  explicit FakeAgent(const std::string& dir) : path_(dir + "/agent.sock") {
    mkdir(dir.c_str(), 0700);
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd_, 16) != 0)
      throw std::runtime_error("cannot listen on " + path_);
    chmod(path_.c_str(), 0600);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeAgent() {
    stop_ = true;
    thread_.join();
    close(fd_);
    unlink(path_.c_str());
  }
  const std::string& socket_path() const { return path_; }
  int answered() const { return answered_; }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      uint8_t len[4];
      if (recv(c, len, 4, MSG_WAITALL) == 4) {
        Buf body(uint32_t(len[0]) << 24 | uint32_t(len[1]) << 16 | uint32_t(len[2]) << 8 | len[3]);
        if (recv(c, body.data(), body.size(), MSG_WAITALL) == ssize_t(body.size())) {
          Buf answer{29};  // SSH_AGENT_EXTENSION_RESPONSE
          const std::string name = "sign-digest@tpmkey";
          put_str(answer, Buf(name.begin(), name.end()));
          put_str(answer, Buf{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01});  // ECDSA-Sig-Value r = s = 1
          Buf frame;
          put_str(frame, answer);
          if (send(c, frame.data(), frame.size(), MSG_NOSIGNAL) == ssize_t(frame.size())) ++answered_;
        }
      }
      close(c);
    }
  }
  std::string path_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> answered_{0};
  std::thread thread_;
};

class BrokerTest : public TpmTest {
 protected:
  BrokerTest() : TpmTest("tpmkey-broker") {}

  void SetUp() override {
    TpmTest::SetUp();
    write_file(dir_ + "/msg", kMessage);
  }

  // A real `tpmkey agent` on TCTI `tcti`, serving this test's keystore, in a fresh 0700 directory
  // (or in `dir`).
  std::unique_ptr<AgentProcess> start_agent(const std::string& tcti, const std::vector<std::string>& extra = {},
                                            std::string dir = "") {
    if (dir.empty()) dir = dir_ + "/agent" + std::to_string(agents_++);
    std::filesystem::create_directories(dir);
    chmod(dir.c_str(), 0700);
    return std::make_unique<AgentProcess>(dir, tcti, keystore_, extra);
  }

  // One `openssl pkeyutl -sign -rawin -digest sha256` process with `key`, its openssl.cnf
  // activating tpmkey on `tcti` with the lines `cnf_extra`; the signature goes to `out`.
  // TPMKEY_DEBUG=1: its stderr says whether the agent signed, or why not.
  CommandResult one_shot(const std::string& key, const std::string& tcti, const std::string& cnf_extra,
                         const std::string& padding = "", std::vector<std::string> env = {},
                         const std::vector<std::string>& more = {}, const std::string& out = "") {
    std::vector<std::string> argv = {"openssl", "pkeyutl", "-sign", "-inkey", key, "-rawin", "-digest", "sha256",
                                     "-in", dir_ + "/msg", "-out", out.empty() ? dir_ + "/sig" : out};
    if (!padding.empty()) argv.insert(argv.end(), {"-pkeyopt", "rsa_padding_mode:" + padding});
    if (padding == "pss") argv.insert(argv.end(), {"-pkeyopt", "rsa_pss_saltlen:digest"});
    argv.insert(argv.end(), more.begin(), more.end());
    env.insert(env.end(), {"OPENSSL_CONF=" + cnf(tcti, cnf_extra), "TSS2_LOG=all+none", "TPMKEY_DEBUG=1"});
    return run(argv, env, "", 60);
  }

  // Whether `sig` (default: the last one_shot's) is the key's signature over the message, checked
  // by the default provider alone with the key's public half.
  bool verifies(const std::string& name, const std::string& padding = "", const std::string& sig = "") {
    if (!pubs_.count(name)) {
      auto pem = tpmkey({"pubkey", name});
      BIO* bio = BIO_new_mem_buf(pem.out.data(), int(pem.out.size()));
      PkeyPtr pub(PEM_read_bio_PUBKEY_ex(bio, nullptr, nullptr, nullptr, default_only(), nullptr), EVP_PKEY_free);
      BIO_free(bio);
      if (!pub) {
        ADD_FAILURE() << "no public key for " << name << ": " << pem.err;
        return false;
      }
      pubs_.emplace(name, std::move(pub));
    }
    std::string s = read_file(sig.empty() ? dir_ + "/sig" : sig);
    SignOpts o;
    o.padding = padding == "pss" ? RSA_PKCS1_PSS_PADDING : padding == "pkcs1" ? RSA_PKCS1_PADDING : 0;
    return digest_verify(pubs_.at(name).get(), kMessage, std::vector<unsigned char>(s.begin(), s.end()), o);
  }

  static std::string agent_line(const std::string& socket) { return "agent = " + socket + "\n"; }

  std::map<std::string, PkeyPtr> pubs_;
  int agents_ = 0;
};

// ECDSA P-256, RSA PKCS#1 v1.5 and RSA-PSS: each one-shot process sends no TPM command itself, the
// agent exactly one TPM2_Sign per signature, and the signature verifies.
TEST_F(BrokerTest, OneShotProcessesSignThroughTheAgent) {
  make_key(lib(tcti_), "ec");
  make_key(lib(tcti_), "rsa", nullptr, 2048);
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  auto agent = start_agent(agent_bus.tcti());
  struct Variant {
    std::string key, padding;
  };
  for (const Variant& v : {Variant{"ec", ""}, Variant{"rsa", "pkcs1"}, Variant{"rsa", "pss"}}) {
    for (int i = 0; i < 2; ++i) {
      SCOPED_TRACE(v.key + " " + v.padding + " #" + std::to_string(i));
      agent_bus.clear();
      client_bus.clear();
      auto r = one_shot("tpm2:" + v.key, client_bus.tcti(), agent_line(agent->socket()), v.padding);
      EXPECT_OK(r);
      EXPECT_NE(r.err.find("signed by the agent"), std::string::npos) << r.err;
      EXPECT_TRUE(verifies(v.key, v.padding));
      EXPECT_EQ(client_bus.command_codes().size(), 0u);
      EXPECT_EQ(signs(agent_bus), 1u);
    }
  }
  // A key file by plain path is the same key file: the agent serves it too. The process loads
  // no tpm2-tss library at all (the dynamic loader's own account, LD_DEBUG=files).
  client_bus.clear();
  auto r = one_shot(keystore_ + "/ec.pem", client_bus.tcti(), agent_line(agent->socket()), "", {"LD_DEBUG=files"});
  EXPECT_OK(r);
  EXPECT_NE(r.err.find("signed by the agent"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tpmkey-core.so"), std::string::npos) << r.err;  // LD_DEBUG did report the loads
  EXPECT_EQ(r.err.find("libtss2"), std::string::npos) << r.err;
  EXPECT_TRUE(verifies("ec"));
  EXPECT_EQ(client_bus.command_codes().size(), 0u);
  EXPECT_EQ(agent->stop(), 0) << agent->log();
}

// `agent = auto` (the default) finds the agent's default socket, $XDG_RUNTIME_DIR/tpmkey/agent.sock.
TEST_F(BrokerTest, DefaultSocketIsFound) {
  make_key(lib(tcti_), "ec");
  BusProxy client_bus(shared_swtpm().port());
  const std::string runtime = dir_ + "/run";
  std::filesystem::create_directories(runtime);
  chmod(runtime.c_str(), 0700);
  auto agent = start_agent(tcti_, {}, runtime + "/tpmkey");
  auto r = one_shot("tpm2:ec", client_bus.tcti(), "", "", {"XDG_RUNTIME_DIR=" + runtime});
  EXPECT_OK(r);
  EXPECT_NE(r.err.find(runtime + "/tpmkey/agent.sock: signed by the agent"), std::string::npos) << r.err;
  EXPECT_TRUE(verifies("ec"));
  EXPECT_EQ(client_bus.command_codes().size(), 0u);
  EXPECT_EQ(agent->stop(), 0) << agent->log();
}

// agent = off (or TPMKEY_AGENT=off) signs directly with an agent running; the config key wins
// over the variable; an agent that stopped is not missed; a wrong value is a clear error.
TEST_F(BrokerTest, OffStoppedAndMisconfigured) {
  make_key(lib(tcti_), "ec");
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  auto agent = start_agent(agent_bus.tcti());
  const std::string sock = agent->socket();
  struct Case {
    std::string what, cnf_line;
    std::vector<std::string> env;
    bool via_agent;
  };
  const std::vector<Case> cases = {
      {"agent = off", "agent = off\n", {}, false},
      {"TPMKEY_AGENT=off", "", {"TPMKEY_AGENT=off"}, false},
      {"TPMKEY_AGENT=socket", "", {"TPMKEY_AGENT=" + sock}, true},
      {"the config key wins", agent_line(sock), {"TPMKEY_AGENT=off"}, true},
      {"the config key wins (off)", "agent = off\n", {"TPMKEY_AGENT=" + sock}, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot("tpm2:ec", client_bus.tcti(), c.cnf_line, "", c.env);
    EXPECT_OK(r);
    EXPECT_TRUE(verifies("ec"));
    EXPECT_EQ(signs(agent_bus), c.via_agent ? 1u : 0u);
    EXPECT_EQ(signs(client_bus), c.via_agent ? 0u : 1u);
  }
  EXPECT_EQ(agent->stop(), 0) << agent->log();
  client_bus.clear();
  auto r = one_shot("tpm2:ec", client_bus.tcti(), agent_line(sock));
  EXPECT_OK(r);
  EXPECT_NE(r.err.find("No such file or directory; signing with the TPM directly"), std::string::npos) << r.err;
  EXPECT_TRUE(verifies("ec"));
  EXPECT_EQ(signs(client_bus), 1u);

  // Settings that do not resolve are reported at the first use (the key file by path: the
  // keystore setting is not used then).
  EXPECT_FAILS_WITH(one_shot(keystore_ + "/ec.pem", client_bus.tcti(), "agent = sometimes\n"),
                    "agent (or TPMKEY_AGENT) must be \"auto\", \"off\" or the absolute path");
  EXPECT_FAILS_WITH(one_shot(keystore_ + "/ec.pem", client_bus.tcti(), "", "", {"TPMKEY_AGENT=relative/agent.sock"}),
                    "not \"relative/agent.sock\"");
}

// agent-required = yes (or TPMKEY_AGENT_REQUIRED=yes): every signature is the agent's or an
// error that says why; the process never signs with the TPM itself, whatever stops the agent.
// The agent, started with the variable set too, still signs (it is the agent).
TEST_F(BrokerTest, AgentRequiredNeverSignsDirectly) {
  make_key(lib(tcti_), "ec");
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  std::filesystem::create_directories(dir_ + "/agent-required");
  chmod((dir_ + "/agent-required").c_str(), 0700);
  auto agent = std::make_unique<AgentProcess>(dir_ + "/agent-required", agent_bus.tcti(), keystore_,
                                              std::vector<std::string>{},
                                              std::vector<std::string>{"TPMKEY_AGENT_REQUIRED=yes"});
  const std::string sock = agent->socket();
  auto via_agent = [&](const std::string& cnf_line, const std::vector<std::string>& env) {
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot("tpm2:ec", client_bus.tcti(), cnf_line, "", env);
    EXPECT_OK(r);
    EXPECT_NE(r.err.find("signed by the agent"), std::string::npos) << r.err;
    EXPECT_TRUE(verifies("ec"));
    EXPECT_EQ(signs(agent_bus), 1u);
    EXPECT_EQ(client_bus.command_codes().size(), 0u);
  };
  auto refused = [&](const std::string& cnf_line, const std::vector<std::string>& env, const std::string& why) {
    client_bus.clear();
    auto r = one_shot("tpm2:ec", client_bus.tcti(), cnf_line, "", env);
    EXPECT_FAILS_WITH(r, "agent-required is set, so this process does not sign with the TPM itself");
    EXPECT_NE(r.err.find(why), std::string::npos) << r.err;
    EXPECT_EQ(client_bus.command_codes().size(), 0u);
  };
  {
    SCOPED_TRACE("config key");
    via_agent(agent_line(sock) + "agent-required = yes\n", {});
  }
  {
    SCOPED_TRACE("environment");
    via_agent("", {"TPMKEY_AGENT=" + sock, "TPMKEY_AGENT_REQUIRED=yes"});
  }
  {
    SCOPED_TRACE("a socket others could write");
    ASSERT_EQ(chmod(sock.c_str(), 0666), 0);
    refused(agent_line(sock) + "agent-required = yes\n", {}, "writable by others");
    ASSERT_EQ(chmod(sock.c_str(), 0600), 0);
  }
  EXPECT_EQ(agent->stop(), 0) << agent->log();
  {
    SCOPED_TRACE("no agent");
    refused(agent_line(sock) + "agent-required = yes\n", {}, "No such file or directory");
  }
  {
    SCOPED_TRACE("agent-required = no, the variable's yes overridden: signs directly");
    client_bus.clear();
    auto r = one_shot("tpm2:ec", client_bus.tcti(), agent_line(sock) + "agent-required = no\n", "",
                      {"TPMKEY_AGENT_REQUIRED=yes"});
    EXPECT_OK(r);
    EXPECT_TRUE(verifies("ec"));
    EXPECT_EQ(signs(client_bus), 1u);
  }
  EXPECT_FAILS_WITH(one_shot(keystore_ + "/ec.pem", client_bus.tcti(), "agent = off\nagent-required = yes\n"),
                    "agent-required = yes needs an agent");
  EXPECT_FAILS_WITH(one_shot(keystore_ + "/ec.pem", client_bus.tcti(), "", "", {"TPMKEY_AGENT_REQUIRED=maybe"}),
                    "agent-required (or TPMKEY_AGENT_REQUIRED) must be \"yes\" or \"no\", not \"maybe\"");
}

// A socket others could write, one of another owner, or a directory others could write in: the
// agent is not asked (nothing reaches it), and the direct path signs.
TEST_F(BrokerTest, UnsafeSocketIsNotUsed) {
  make_key(lib(tcti_), "ec");
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  auto agent = start_agent(agent_bus.tcti());
  const std::string sock = agent->socket(), dir = sock.substr(0, sock.rfind('/'));
  auto direct = [&](const std::string& why) {
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot("tpm2:ec", client_bus.tcti(), agent_line(sock));
    EXPECT_OK(r);
    EXPECT_NE(r.err.find(why), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("signed by the agent"), std::string::npos) << r.err;
    EXPECT_TRUE(verifies("ec"));
    EXPECT_EQ(agent_bus.command_codes().size(), 0u);
    EXPECT_EQ(signs(client_bus), 1u);
  };
  auto served = [&] {
    agent_bus.clear();
    auto r = one_shot("tpm2:ec", client_bus.tcti(), agent_line(sock));
    EXPECT_NE(r.err.find("signed by the agent"), std::string::npos) << r.err;
    EXPECT_EQ(signs(agent_bus), 1u);
  };
  served();  // the same socket is used when it is safe: each case below is refused for its reason
  {
    SCOPED_TRACE("socket 0666");
    ASSERT_EQ(chmod(sock.c_str(), 0666), 0);
    direct("writable by others; signing with the TPM directly");
    ASSERT_EQ(chmod(sock.c_str(), 0620), 0);
    direct("writable by others; signing with the TPM directly");
    ASSERT_EQ(chmod(sock.c_str(), 0600), 0);
    served();
  }
  if (geteuid() == 0) {
    SCOPED_TRACE("socket of another user");
    ASSERT_EQ(chown(sock.c_str(), 65534, 65534), 0);
    direct("owned by uid 65534");
    ASSERT_EQ(chown(sock.c_str(), 0, 0), 0);
    served();
  }
  {
    SCOPED_TRACE("directory 0770");
    ASSERT_EQ(chmod(dir.c_str(), 0770), 0);
    direct("the agent's socket directory " + dir + " is writable by");
    ASSERT_EQ(chmod(dir.c_str(), 0703), 0);
    direct("the agent's socket directory " + dir + " is writable by");
    ASSERT_EQ(chmod(dir.c_str(), 0700), 0);
    served();
  }
  {
    SCOPED_TRACE("a symbolic link to the socket");
    const std::string link = dir + "/link.sock";
    ASSERT_EQ(symlink(sock.c_str(), link.c_str()), 0);
    agent_bus.clear();
    auto r = one_shot("tpm2:ec", client_bus.tcti(), agent_line(link));
    EXPECT_OK(r);
    EXPECT_NE(r.err.find("not a socket"), std::string::npos) << r.err;
    EXPECT_EQ(agent_bus.command_codes().size(), 0u);
    unlink(link.c_str());
  }
  EXPECT_EQ(agent->stop(), 0) << agent->log();
}

// An agent whose signature does not verify with the key's public half: the client notices, and
// signs directly; what it writes verifies.
TEST_F(BrokerTest, WrongSignatureFromTheAgentIsCaught) {
  make_key(lib(tcti_), "ec");
  make_key(lib(tcti_), "rsa", nullptr, 2048);
  BusProxy client_bus(shared_swtpm().port());
  FakeAgent fake(dir_ + "/fake");
  for (const std::string padding : {"", "pkcs1", "pss"}) {
    const std::string key = padding.empty() ? "ec" : "rsa";
    SCOPED_TRACE(key + " " + padding);
    const int before = fake.answered();
    client_bus.clear();
    auto r = one_shot("tpm2:" + key, client_bus.tcti(), agent_line(fake.socket_path()), padding);
    EXPECT_OK(r);
    EXPECT_EQ(fake.answered(), before + 1);
    EXPECT_NE(r.err.find("the agent's signature does not verify with the key's public half; signing with the TPM "
                         "directly"),
              std::string::npos)
        << r.err;
    EXPECT_TRUE(verifies(key, padding));
    EXPECT_EQ(signs(client_bus), 1u);
  }
}

// Keys the agent does not hold: with --no-keystore, a key file outside its keystore, a key
// removed with ssh-add -d. The direct path signs.
TEST_F(BrokerTest, KeyNotHeldSignsDirectly) {
  make_key(lib(tcti_), "ec");
  {
    PkeyPtr other = generate_key(lib(tcti_), "EC", "P-256", 0);
    ASSERT_TRUE(other && store_key(other.get(), dir_ + "/other.pem")) << drain_errors();
  }
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  auto not_held = [&](const AgentProcess& agent, const std::string& key) {
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot(key, client_bus.tcti(), agent_line(agent.socket()));
    EXPECT_OK(r);
    EXPECT_NE(r.err.find("the agent does not hold this key or did not sign"), std::string::npos) << r.err;
    EXPECT_EQ(signs(agent_bus), 0u);
    EXPECT_EQ(signs(client_bus), 1u);
  };
  {
    SCOPED_TRACE("--no-keystore");
    auto agent = start_agent(agent_bus.tcti(), {"--no-keystore"});
    not_held(*agent, "tpm2:ec");
    EXPECT_TRUE(verifies("ec"));
    EXPECT_EQ(agent->stop(), 0) << agent->log();
  }
  {
    SCOPED_TRACE("outside the keystore, then removed with ssh-add -d");
    auto agent = start_agent(agent_bus.tcti());
    not_held(*agent, "tpm2:file=" + dir_ + "/other.pem");
    auto pub = tpmkey({"pubkey", "ec", "--format", "openssh"});
    ASSERT_OK(pub);
    write_file(dir_ + "/ec.pub", pub.out);
    ASSERT_OK(agent->ssh_add({"-d", dir_ + "/ec.pub"}));
    not_held(*agent, "tpm2:ec");
    EXPECT_TRUE(verifies("ec"));
    EXPECT_EQ(agent->stop(), 0) << agent->log();
  }
}

// A password key added with ssh-add -s: one-shot processes sign with it through the agent without
// a password, and loading it by name asks for none. Given a password in the URI, a process signs
// directly (the password never goes to the agent). Locked, the agent does not sign: the direct
// path needs the password, and loading by name asks for it; unlocked, it signs again; removed
// with ssh-add -e, it is not held.
TEST_F(BrokerTest, PasswordKeyAddedWithSshAdd) {
  make_key(lib(tcti_), "pk", "correct horse");
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  auto agent = start_agent(agent_bus.tcti());
  const std::string sock = agent->socket(), key = keystore_ + "/pk.pem";
  auto askpass = [&](const std::string& name, const std::string& answer) {
    return std::vector<std::string>{"SSH_ASKPASS=" + askpass_script(dir_, name, answer), "SSH_ASKPASS_REQUIRE=force",
                                    "DISPLAY=:0"};
  };
  ASSERT_OK(agent->ssh_add({"-s", "tpm2:pk"}, askpass("pin", "correct horse")));
  // `openssl pkeyutl -sign -inkey tpm2:pk`: the store, which asks OpenSSL's passphrase UI for a
  // password the key needs (here it reads `input`: the process has no terminal).
  auto by_name = [&](const std::string& input) {
    return run({"openssl", "pkeyutl", "-sign", "-inkey", "tpm2:pk", "-rawin", "-digest", "sha256", "-in",
                dir_ + "/msg", "-out", dir_ + "/sig"},
               {"OPENSSL_CONF=" + cnf(client_bus.tcti(), agent_line(sock)), "TSS2_LOG=all+none", "TPMKEY_DEBUG=1"},
               input, 60);
  };
  auto via_agent = [&] {
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot(key, client_bus.tcti(), agent_line(sock));
    EXPECT_OK(r);
    EXPECT_NE(r.err.find("signed by the agent"), std::string::npos) << r.err;
    EXPECT_TRUE(verifies("pk"));
    EXPECT_EQ(client_bus.command_codes().size(), 0u);
    EXPECT_EQ(signs(agent_bus), 1u);
    // By name from the store: no password is asked for (a prompt would read this stdin, and the
    // wrong password would fail in the TPM), and the probe costs the agent no TPM command.
    agent_bus.clear();
    r = by_name("not the password\n");
    EXPECT_OK(r);
    EXPECT_NE(r.err.find("the agent holds this key: no password asked"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("signed by the agent"), std::string::npos) << r.err;
    EXPECT_TRUE(verifies("pk"));
    EXPECT_EQ(client_bus.command_codes().size(), 0u);
    EXPECT_EQ(agent_bus.take_commands_without_proofs(), std::vector<uint32_t>{kTpmCcSign});
  };
  // The password in the URI (pin-source=): the process signs directly.
  write_file(dir_ + "/pin", "correct horse\n");
  chmod((dir_ + "/pin").c_str(), 0600);
  auto with_password = [&] {
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot("tpm2:pk?pin-source=" + dir_ + "/pin", client_bus.tcti(), agent_line(sock));
    EXPECT_OK(r);
    EXPECT_TRUE(verifies("pk"));
    EXPECT_EQ(signs(agent_bus), 0u);
    EXPECT_EQ(signs(client_bus), 1u);
    EXPECT_EQ(agent_bus.sent().find("correct horse"), std::string::npos);
  };
  {
    SCOPED_TRACE("added");
    via_agent();
    with_password();
    // -passin is OpenSSL's passphrase callback, asked only when the agent does not hold the key:
    // here the agent signs, and the password goes nowhere.
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot(key, client_bus.tcti(), agent_line(sock), "", {}, {"-passin", "pass:correct horse"});
    EXPECT_OK(r);
    EXPECT_TRUE(verifies("pk"));
    EXPECT_EQ(signs(agent_bus), 1u);
    EXPECT_EQ(client_bus.command_codes().size(), 0u);
    EXPECT_EQ(agent_bus.sent().find("correct horse"), std::string::npos);
  }
  {
    SCOPED_TRACE("locked");
    ASSERT_OK(agent->ssh_add({"-x"}, askpass("lock", "hunter2")));
    agent_bus.clear();
    client_bus.clear();
    auto r = one_shot(key, client_bus.tcti(), agent_line(sock));
    EXPECT_FAILS_WITH(r, "the key needs a password and none was given");
    EXPECT_EQ(signs(agent_bus), 0u);
    // By name, the password is asked for again, and the process signs with it itself.
    client_bus.clear();
    r = by_name("correct horse\n");
    EXPECT_OK(r);
    EXPECT_NE(r.err.find("the agent does not hold this key"), std::string::npos) << r.err;
    EXPECT_TRUE(verifies("pk"));
    EXPECT_EQ(signs(client_bus), 1u);
    EXPECT_EQ(signs(agent_bus), 0u);
    with_password();
    ASSERT_OK(agent->ssh_add({"-X"}, askpass("unlock", "hunter2")));
  }
  {
    SCOPED_TRACE("unlocked");
    via_agent();
  }
  {
    SCOPED_TRACE("removed");
    ASSERT_OK(agent->ssh_add({"-e", "tpm2:pk"}));
    agent_bus.clear();
    auto r = one_shot(key, client_bus.tcti(), agent_line(sock));
    EXPECT_FAILS_WITH(r, "the key needs a password and none was given");
    EXPECT_NE(r.err.find("the agent does not hold this key"), std::string::npos) << r.err;
    EXPECT_EQ(signs(agent_bus), 0u);
  }
  EXPECT_EQ(agent->stop(), 0) << agent->log();
}

// 16 one-shot processes at once, 3 signatures each, on a bare swtpm (no resource manager, 3
// object and 3 session slots): none fails, none sends a TPM command, the agent signs each once.
TEST_F(BrokerTest, SixteenConcurrentOneShotClients) {
  make_key(lib(tcti_), "ec");
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  auto agent = start_agent(agent_bus.tcti());
  const std::string cnf_line = agent_line(agent->socket());
  constexpr int kClients = 16, kEach = 3;
  std::atomic<int> failures{0};
  std::mutex mu;
  std::string first_error;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < kEach; ++i) {
        const std::string out = dir_ + "/sig." + std::to_string(c) + "." + std::to_string(i);
        auto r = one_shot("tpm2:ec", client_bus.tcti(), cnf_line, "", {}, {}, out);
        if (r.exit_code == 0 && r.err.find("signed by the agent") != std::string::npos) continue;
        ++failures;
        std::lock_guard lock(mu);
        if (first_error.empty()) first_error = r.err;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failures.load(), 0) << first_error;
  for (int c = 0; c < kClients; ++c)
    for (int i = 0; i < kEach; ++i)
      EXPECT_TRUE(verifies("ec", "", dir_ + "/sig." + std::to_string(c) + "." + std::to_string(i)));
  EXPECT_EQ(client_bus.command_codes().size(), 0u);
  EXPECT_EQ(signs(agent_bus), size_t(kClients * kEach));
  EXPECT_EQ(agent->stop(), 0) << agent->log();
}

// Clients killed at every point of their life, during their request to the agent too: the agent
// goes on serving, no client touched the TPM, and once the agent exits the TPM holds nothing of
// theirs or its own (TearDown).
TEST_F(BrokerTest, KilledClientsLeaveNothingInTheTpm) {
  make_key(lib(tcti_), "ec");
  BusProxy agent_bus(shared_swtpm().port()), client_bus(shared_swtpm().port());
  auto agent = start_agent(agent_bus.tcti());
  const std::string cnf_path = cnf(client_bus.tcti(), agent_line(agent->socket()));
  // How long one client takes, to spread the kills over it.
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_OK(one_shot("tpm2:ec", client_bus.tcti(), agent_line(agent->socket())));
  const auto took = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
  std::vector<std::string> argv = {"env", "OPENSSL_CONF=" + cnf_path, "TSS2_LOG=all+none"};
  // Sanitizer builds: openssl loads the instrumented provider only after the runtime (as run() does).
  if (const char* rt = std::getenv("TPMKEY_SUBPROCESS_PRELOAD"); rt && *rt)
    argv.insert(argv.end(), {std::string("LD_PRELOAD=") + rt, "ASAN_OPTIONS=detect_leaks=0"});
  argv.insert(argv.end(), {"openssl", "pkeyutl", "-sign", "-inkey", "tpm2:ec", "-rawin", "-digest", "sha256", "-in",
                           dir_ + "/msg", "-out", dir_ + "/killed.sig"});
  constexpr int kKilled = 24;
  for (int i = 0; i < kKilled; ++i) {
    pid_t pid = spawn(argv, dir_ + "/killed.log");
    std::this_thread::sleep_for(took * i / kKilled);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  EXPECT_EQ(client_bus.command_codes().size(), 0u);
  agent_bus.clear();
  auto r = one_shot("tpm2:ec", client_bus.tcti(), agent_line(agent->socket()));
  EXPECT_OK(r);
  EXPECT_NE(r.err.find("signed by the agent"), std::string::npos) << r.err << agent->log();
  EXPECT_TRUE(verifies("ec"));
  EXPECT_EQ(client_bus.command_codes().size(), 0u);
  EXPECT_EQ(signs(agent_bus), 1u);
  EXPECT_EQ(agent->stop(), 0) << agent->log();
}

}  // namespace
}  // namespace tpmkey::test
