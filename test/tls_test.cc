// TLS with TPM keys, in both provider orders (docs/tls.md): openssl s_client, curl and the libssl
// example (tpmkey-tls-example) authenticate with TPM client keys against openssl s_server on
// 127.0.0.1 that requires a client certificate, with ECDSA and RSA server certificates, TLS 1.2
// and 1.3, servers restricted to one group; s_server itself with a TPM key. The providers come from
// openssl.cnf (both orders) or the command line, never with -propquery or default_properties. The
// servers with software keys run with the default provider alone.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "test/fixture.h"
#include "test/loopback.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string example_bin() { return std::filesystem::path(tpmkey_bin()).parent_path() / "tpmkey-tls-example"; }

// A free loopback port (bound and released: nothing else on this machine picks ports there).
int free_port() {
  for (int i = 0; i < 200; ++i) {
    int port = kPortBase + 2 * int(std::rand() % kPortPairs);
    if (port_free(port)) return port;
  }
  return -1;
}

// `openssl s_server -www` in the background until stopped (or, with `naccept`, until it has served
// that many connections). Ready once it prints ACCEPT: no probe connection is needed.
class Server {
 public:
  Server(const std::string& log, const std::string& conf, std::vector<std::string> args, int naccept = 0) : log_(log) {
    port_ = free_port();
    std::vector<std::string> a = {"/usr/bin/env", "OPENSSL_CONF=" + conf, "TSS2_LOG=all+none", "openssl", "s_server",
                                  "-accept", "127.0.0.1:" + std::to_string(port_), "-www"};
    // Sanitizer builds: as run() does for openssl (test/process.cc), a server that loads the
    // instrumented provider needs the sanitizer runtime first.
    if (const char* rt = std::getenv("TPMKEY_SUBPROCESS_PRELOAD"); rt && *rt && conf != "/dev/null")
      a.insert(a.begin() + 1, {std::string("LD_PRELOAD=") + rt, "ASAN_OPTIONS=detect_leaks=0"});
    if (naccept) a.insert(a.end(), {"-naccept", std::to_string(naccept)});
    a.insert(a.end(), args.begin(), args.end());
    pid_ = spawn(a, log_);
    for (int i = 0; i < 400 && !contains(read_log(), "ACCEPT"); ++i) usleep(25000);
  }
  ~Server() { stop_child(pid_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  std::string read_log() const {
    std::ifstream f(log_);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  // Waits for a server started with `naccept` to exit by itself (it ends its TPM use cleanly).
  bool wait_exit() {
    for (int i = 0; i < 400; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status);
      }
      usleep(25000);
    }
    return false;
  }

 private:
  std::string log_;
  int port_ = -1;
  pid_t pid_ = -1;
};

// Keys and certificates are made once for the binary: a software CA, software ECDSA and RSA server
// certificates, TPM client keys (EC P-256/384/521, RSA-2048) with CA-issued certificates, a TSS2
// key file, and a software client key for comparison.
class TlsTest : public TpmTest {
 protected:
  TlsTest() : TpmTest("tpmkey-tls-test") {}

  static std::string s(const std::string& name) { return suite_dir_ + "/" + name; }

  static void SetUpTestSuite() {
    const std::string tcti = shared_swtpm().tcti();
    suite_dir_ = make_temp_dir("tpmkey-tls-keys");
    const std::vector<std::string> plain = {"OPENSSL_CONF=/dev/null"};
    auto openssl = [&](std::vector<std::string> a) {
      a.insert(a.begin(), "openssl");
      ASSERT_OK(run(a, plain));
    };
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", s("ca.key"),
             "-subj", "/CN=tls test ca", "-days", "2", "-out", s("ca.pem")});
    for (const char* kind : {"ec", "rsa"}) {
      std::vector<std::string> a = {"req", "-x509", "-newkey", kind == std::string("ec") ? "ec" : "rsa:2048"};
      if (kind == std::string("ec")) a.insert(a.end(), {"-pkeyopt", "ec_paramgen_curve:P-256"});
      a.insert(a.end(), {"-nodes", "-keyout", s(std::string("srv-") + kind + ".key"), "-subj", "/CN=localhost",
                         "-days", "2", "-CA", s("ca.pem"), "-CAkey", s("ca.key"), "-out",
                         s(std::string("srv-") + kind + ".pem")});
      openssl(a);
    }
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             s("soft.key"), "-subj", "/CN=software client", "-days", "2", "-CA", s("ca.pem"), "-CAkey", s("ca.key"),
             "-out", s("soft.pem")});
    const std::string keystore = s("keystore");
    const std::string cnf = write_openssl_cnf(suite_dir_, false, tcti, keystore);
    for (const char* name : {"ec256", "ec384", "ec521", "rsa"}) {
      const std::string alg = name == std::string("ec256")   ? "ec-p256"
                              : name == std::string("ec384") ? "ec-p384"
                              : name == std::string("ec521") ? "ec-p521"
                                                             : "rsa2048";
      ASSERT_OK(run({tpmkey_bin(), "--tcti", tcti, "--keystore", keystore, "create", name, "--algorithm", alg},
                    {"TSS2_LOG=all+none"}));
      // The client certificate: a CSR signed by the TPM key, issued by the software CA.
      ASSERT_OK(run({"openssl", "req", "-new", "-key", std::string("tpm2:") + name, "-subj", std::string("/CN=") + name,
                     "-out", s(std::string(name) + ".csr")},
                    {"OPENSSL_CONF=" + cnf, "TSS2_LOG=all+none"}));
      openssl({"x509", "-req", "-in", s(std::string(name) + ".csr"), "-CA", s("ca.pem"), "-CAkey", s("ca.key"), "-days",
               "2", "-out", s(std::string(name) + ".pem")});
    }
    // A TSS2 key file outside the keystore, as curl and other programs take key files.
    std::filesystem::copy_file(keystore + "/ec256.pem", s("ec256.tss2"));
    std::filesystem::permissions(s("ec256.tss2"), std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  static void TearDownTestSuite() { remove_tree(suite_dir_); }

  void SetUp() override {
    TpmTest::SetUp();
    keystore_ = s("keystore");
  }

  // openssl.cnf activating tpmkey and default in that order (or the other).
  std::string conf(bool tpmkey_first) { return write_openssl_cnf(dir_, tpmkey_first, tcti_, keystore_); }
  std::vector<std::string> env(bool tpmkey_first) {
    return {"OPENSSL_CONF=" + conf(tpmkey_first), "TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_,
            "TSS2_LOG=all+none"};
  }
  // A server with a software key that requires a client certificate from the CA.
  std::unique_ptr<Server> server(const std::string& kind, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"-cert", s("srv-" + kind + ".pem"), "-key", s("srv-" + kind + ".key"), "-Verify", "1",
                                  "-verify_return_error", "-CAfile", s("ca.pem")};
    a.insert(a.end(), extra.begin(), extra.end());
    auto srv = std::make_unique<Server>(dir_ + "/server-" + std::to_string(++servers_) + ".log", "/dev/null", a);
    EXPECT_TRUE(contains(srv->read_log(), "ACCEPT")) << srv->read_log();
    return srv;
  }
  // openssl s_client with a client certificate and key; true when the server answered 200.
  bool s_client(const Server& srv, const std::string& cert, const std::string& key, const std::string& version,
                const std::vector<std::string>& penv, std::string* out = nullptr,
                std::vector<std::string> providers = {}) {
    std::vector<std::string> a = {"openssl", "s_client"};
    a.insert(a.end(), providers.begin(), providers.end());
    a.insert(a.end(), {"-connect", srv.address(), "-cert", cert, "-key", key, "-CAfile", s("ca.pem"),
                       "-verify_return_error", "-" + version, "-ign_eof"});
    auto r = run(a, penv, "GET / HTTP/1.0\r\n\r\n", 60);
    if (out) *out = r.out + r.err;
    return contains(r.out, "HTTP/1.0 200 ok");
  }

  static std::string suite_dir_;
  int servers_ = 0;
};
std::string TlsTest::suite_dir_;

const char* order_name(bool tpmkey_first) { return tpmkey_first ? "tpmkey first" : "default first"; }

// The whole client-authentication matrix: every TPM client key against an ECDSA and an RSA server,
// TLS 1.2 (RSA keys sign PKCS#1 v1.5) and 1.3 (RSA-PSS), both provider orders by openssl.cnf.
TEST_F(TlsTest, ClientAuthenticationMatrixInBothOrders) {
  for (const char* kind : {"ec", "rsa"}) {
    auto srv = server(kind);
    for (bool first : {true, false}) {
      for (const char* version : {"tls1_2", "tls1_3"}) {
        for (const char* key : {"ec256", "ec384", "ec521", "rsa"}) {
          SCOPED_TRACE(std::string(kind) + " server, " + version + ", " + key + ", " + order_name(first));
          std::string out;
          EXPECT_TRUE(s_client(*srv, s(std::string(key) + ".pem"), std::string("tpm2:") + key, version, env(first), &out))
              << out;
        }
      }
    }
  }
  // The check is real: without the right key the server refuses.
  auto srv = server("ec");
  EXPECT_FALSE(s_client(*srv, s("ec256.pem"), "tpm2:ec384", "tls1_3", env(true)));
}

// The providers on the command line instead of openssl.cnf, in both orders.
TEST_F(TlsTest, ProvidersOnTheCommandLine) {
  auto srv = server("ec");
  std::vector<std::string> e = env(true);
  e[0] = "OPENSSL_CONF=/dev/null";
  for (bool first : {true, false}) {
    std::vector<std::string> p = {"-provider-path", provider_dir()};
    for (const char* name : first ? std::vector<const char*>{"tpmkey", "default"} : std::vector<const char*>{"default", "tpmkey"})
      p.insert(p.end(), {"-provider", name});
    for (const char* version : {"tls1_2", "tls1_3"})
      for (const char* key : {"ec256", "rsa"}) {
        SCOPED_TRACE(std::string(version) + ", " + key + ", " + order_name(first));
        std::string out;
        EXPECT_TRUE(s_client(*srv, s(std::string(key) + ".pem"), std::string("tpm2:") + key, version, e, &out, p)) << out;
      }
  }
}

// Servers restricted to one group: the TPM key does exactly what a software key does. TLS 1.2
// with an EC client certificate needs the certificate's curve among the server's groups, so an
// X25519-only TLS 1.2 server refuses every P-256 client certificate, software or TPM.
TEST_F(TlsTest, ServersLimitedToOneGroup) {
  for (const char* group : {"P-256", "X25519"}) {
    auto srv = server("ec", {"-groups", group});
    for (const char* version : {"tls1_2", "tls1_3"}) {
      const bool software = s_client(*srv, s("soft.pem"), s("soft.key"), version, {"OPENSSL_CONF=/dev/null"});
      const bool must_work = std::string(group) == "P-256" || std::string(version) == "tls1_3";
      EXPECT_EQ(software, must_work) << group << " " << version;
      for (bool first : {true, false}) {
        SCOPED_TRACE(std::string(group) + ", " + version + ", " + order_name(first));
        std::string out;
        EXPECT_EQ(s_client(*srv, s("ec256.pem"), "tpm2:ec256", version, env(first), &out), software) << out;
        EXPECT_TRUE(s_client(*srv, s("rsa.pem"), "tpm2:rsa", version, env(first), &out)) << out;
      }
    }
  }
}

// curl takes a TSS2 key file (SSL_CTX_use_PrivateKey_file), tpmkey through OPENSSL_CONF.
TEST_F(TlsTest, CurlWithATss2KeyFile) {
#ifdef TPMKEY_SANITIZED
  GTEST_SKIP() << "curl deadlocks at start with the sanitizer runtime preloaded";
#endif
  auto srv = server("ec");
  for (bool first : {true, false})
    for (const char* version : {"1.2", "1.3"}) {
      SCOPED_TRACE(std::string("TLS ") + version + ", " + order_name(first));
      auto r = run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--tlsv" + std::string(version), "--tls-max",
                    version, "--cacert", s("ca.pem"), "--cert", s("ec256.pem"), "--key", s("ec256.tss2"), "--resolve",
                    "localhost:" + std::to_string(srv->port()) + ":127.0.0.1",
                    "https://localhost:" + std::to_string(srv->port()) + "/"},
                   env(first));
      EXPECT_EQ(r.out, "200") << r.err;
    }
}

// s_server with its own key in the TPM (EC and RSA), both versions, both orders; the client is
// plain openssl. The server serves one connection and exits, ending its TPM use cleanly.
TEST_F(TlsTest, ServerKeyInTheTpm) {
  for (const char* key : {"ec256", "rsa"}) {
    const std::string cert = dir_ + "/" + key + "-server.pem";
    ASSERT_OK(run({"openssl", "req", "-new", "-key", std::string("tpm2:") + key, "-subj", "/CN=localhost", "-out",
                   dir_ + "/server.csr"},
                  env(false)));
    ASSERT_OK(run({"openssl", "x509", "-req", "-in", dir_ + "/server.csr", "-CA", s("ca.pem"), "-CAkey", s("ca.key"),
                   "-days", "1", "-out", cert},
                  {"OPENSSL_CONF=/dev/null"}));
    for (bool first : {true, false})
      for (const char* version : {"tls1_2", "tls1_3"}) {
        SCOPED_TRACE(std::string(key) + ", " + version + ", " + order_name(first));
        Server srv(dir_ + "/tpm-server-" + std::to_string(++servers_) + ".log", conf(first), {"-cert", cert, "-key", std::string("tpm2:") + key}, 1);
        ASSERT_TRUE(contains(srv.read_log(), "ACCEPT")) << srv.read_log();
        auto r = run({"openssl", "s_client", "-connect", srv.address(), "-CAfile", s("ca.pem"), "-verify_return_error",
                      "-" + std::string(version), "-ign_eof"},
                     {"OPENSSL_CONF=/dev/null"}, "GET / HTTP/1.0\r\n\r\n", 60);
        EXPECT_TRUE(contains(r.out, "HTTP/1.0 200 ok")) << r.out << r.err << srv.read_log();
        EXPECT_TRUE(srv.wait_exit()) << srv.read_log();
      }
  }
}

// The libssl example: OSSL_STORE_open("tpm2:NAME"), SSL_CTX_use_PrivateKey, N sequential
// handshakes and T threads sharing the SSL_CTX. Each full handshake costs the TPM one TPM2_Sign,
// and on this bare simulator socket one TPM2_ReadPublic more when the key was idle for over 1 ms
// (docs/sessions.md, "Restarts and handle numbers"), plus the session and the key's load once per
// process: the ephemeral ECDHE keys are made in software, never in the TPM (that would be a
// TPM2_CreateLoaded and a TPM2_ECDH_ZGen per handshake at least).
TEST_F(TlsTest, LibsslExampleSequentialAndThreaded) {
  auto srv = server("ec");
  const std::regex summary(R"(handshakes (\d+) ok (\d+) failed .* (\d+) TPM commands)");
  for (bool first : {true, false})
    for (const char* key : {"ec256", "rsa"})
      for (const char* version : {"--tls1_2", "--tls1_3"})
        for (int threads : {1, 4}) {
          SCOPED_TRACE(std::string(key) + " " + version + " threads " + std::to_string(threads) + ", " + order_name(first));
          const int per_thread = threads == 1 ? 10 : 3, total = per_thread * threads;
          auto r = run({example_bin(), "--connect", srv->address(), "--cert", s(std::string(key) + ".pem"), "--key",
                        std::string("tpm2:") + key, "--CAfile", s("ca.pem"), "--handshakes", std::to_string(per_thread),
                        "--threads", std::to_string(threads), version},
                       env(first), "", 120);
          EXPECT_OK(r);
          std::smatch m;
          ASSERT_TRUE(std::regex_search(r.out, m, summary)) << r.out << r.err;
          EXPECT_EQ(std::stoi(m[1]), total);
          EXPECT_EQ(std::stoi(m[2]), 0);
          const int commands = std::stoi(m[3]);
          EXPECT_GE(commands, total);
          EXPECT_LE(commands, 2 * total + 12) << "more TPM commands per handshake than the signature";
        }
}

// A key the server does not trust: the example reports the failure and exits 1.
TEST_F(TlsTest, LibsslExampleReportsFailures) {
  auto srv = server("ec", {"-tls1_3"});
  auto r = run({example_bin(), "--connect", srv->address(), "--cert", s("ec384.pem"), "--key", "tpm2:ec256", "--CAfile",
                s("ca.pem")},
               env(true));
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  r = run({example_bin(), "--connect", srv->address(), "--cert", s("ec256.pem"), "--key", "tpm2:ec256", "--CAfile",
           s("ca.pem"), "--handshakes", "0"},
          env(true));
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, "--handshakes")) << r.err;
  r = run({example_bin(), "--help"});
  EXPECT_OK(r);
  EXPECT_TRUE(contains(r.out, "OSSL_STORE_open"));
}

}  // namespace
}  // namespace tpmkey::test
