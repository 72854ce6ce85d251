// Mutual TLS 1.3 handshakes with the libssl example (tpmkey-tls-example, docs/tls.md): the client
// key is a software key or a tpmkey key; the server is `openssl s_server` on
// 127.0.0.1 with a software key and the default provider alone, requiring a client certificate.
//   tls/ALG/KIND/T (ALG: ecdsa-p256, rsa2048; KIND: software, tpmkey; T: 1 or 4 client threads)
// tpm2-openssl 1.1.1 has no row: on swtpm it fails these handshakes in every configuration tried
// (docs/performance.md, "TLS handshakes").
// An iteration is one run of the example with 1 or 4 threads sharing its SSL_CTX; the time is its
// own handshake loop (key loading and process start excluded), the items its handshakes, and the
// counter tpm_cmds its TPM commands per handshake (tpmkey's; 0 for the others, not counted). The
// certificates are made on first use, in the workdir.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include <benchmark/benchmark.h>

#include "bench/benchmarks.h"
#include "bench/common.h"

namespace tpmkey::bench {
namespace {

enum class Kind { kSoftware, kTpmkey };
const char* kind_name(Kind k) { return k == Kind::kSoftware ? "software" : "tpmkey"; }
constexpr int kHandshakesPerThread = 10;

std::string work(const std::string& name) { return options().workdir + "/tls-" + name; }
std::string example() { return (std::filesystem::path(options().tpmkey_program).parent_path() / "tpmkey-tls-example").string(); }

// openssl.cnf files: the software key's (default alone) and tpmkey's with default first (the
// order does not matter, docs/tls.md).
std::string conf(Kind k) {
  const std::string path = work(std::string(kind_name(k)) + ".cnf");
  if (std::filesystem::exists(path)) return path;
  std::string c = "openssl_conf = init\n[init]\nproviders = provs\n[provs]\ndefault = default_sect\n";
  if (k == Kind::kTpmkey)
    c += "tpmkey = tpmkey_sect\n[tpmkey_sect]\nmodule = " + options().provider_dir + "/tpmkey.so\ntcti = " +
         options().tcti + "\nkeystore = " + options().keystore + "\nactivate = 1\n";
  c += "[default_sect]\nactivate = 1\n";
  if (FILE* f = std::fopen(path.c_str(), "w")) {
    std::fputs(c.c_str(), f);
    std::fclose(f);
  }
  return path;
}

std::string key(Kind k, Alg a) {
  return k == Kind::kSoftware ? software_key_file(a) : tpmkey_uri(a);
}
std::vector<std::string> env(Kind k) {
  return {"OPENSSL_CONF=" + conf(k), "TPMKEY_TCTI", "TPMKEY_BENCH_COUNT_FILE", "OPENSSL_MODULES", "TPM2OPENSSL_TCTI"};
}

bool openssl(std::vector<std::string> args, Kind k, const std::string& what) {
  Command c{{"openssl"}, env(k)};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  const std::string log = work("setup.log");
  if (run(c, log) == 0) return true;
  record_problem("tls: " + what + ": " + read_all(log));
  return false;
}

// The CA, the server's certificate and a client certificate for each client key, once.
bool certificates() {
  static const bool ok = [] {
    if (!openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                  work("ca.key"), "-subj", "/CN=bench ca", "-days", "2", "-out", work("ca.pem")},
                 Kind::kSoftware, "the CA") ||
        !openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", work("srv.key"),
                  "-subj", "/CN=localhost", "-days", "2", "-x509", "-CA", work("ca.pem"), "-CAkey", work("ca.key"),
                  "-out", work("srv.pem")},
                 Kind::kSoftware, "the server certificate"))
      return false;
    for (Kind k : {Kind::kSoftware, Kind::kTpmkey})
      for (Alg a : {Alg::kEcdsaP256, Alg::kRsaPkcs1}) {
        const std::string tag = std::string(kind_name(k)) + "-" + (is_rsa(a) ? "rsa" : "ec");
        if (!openssl({"req", "-new", "-key", key(k, a), "-subj", "/CN=" + tag, "-out", work(tag + ".csr")}, k,
                     "the CSR for " + tag) ||
            !openssl({"x509", "-req", "-in", work(tag + ".csr"), "-CA", work("ca.pem"), "-CAkey", work("ca.key"),
                      "-days", "2", "-out", work(tag + ".pem")},
                     Kind::kSoftware, "the certificate for " + tag))
          return false;
      }
    return true;
  }();
  return ok;
}

// s_server for the whole benchmark: software key, default provider only, client certificate
// required; a free port of the loopback range the other benchmarks do not use.
class Server {
 public:
  Server() {
    for (port_ = 23000 + int(getpid() % 1000); port_ < 23000 + int(getpid() % 1000) + 20; ++port_) {
      Command c{{"openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(port_), "-cert", work("srv.pem"),
                 "-key", work("srv.key"), "-Verify", "1", "-verify_return_error", "-CAfile", work("ca.pem"), "-www",
                 "-tls1_3"},
                {"OPENSSL_CONF=/dev/null"}};
      pid_ = spawn(c, work("server.log"));
      for (int i = 0; i < 200 && read_all(work("server.log")).find("ACCEPT") == std::string::npos; ++i) usleep(10000);
      if (read_all(work("server.log")).find("ACCEPT") != std::string::npos) return;
      kill(pid_, SIGKILL);
      wait_for(pid_);
      pid_ = -1;
    }
  }
  ~Server() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      wait_for(pid_);
    }
  }
  bool up() const { return pid_ > 0; }
  int port() const { return port_; }

 private:
  int port_ = 0;
  pid_t pid_ = -1;
};

void handshakes(benchmark::State& state, Alg a, Kind k, int threads) {
  const std::string row = tls_row(a, kind_name(k), threads);
  if (!certificates()) {
    state.SkipWithError("certificates could not be made");
    return;
  }
  Server server;
  if (!server.up()) {
    record_problem(row + ": s_server did not start: " + read_all(work("server.log")));
    state.SkipWithError("s_server did not start");
    return;
  }
  const std::string tag = std::string(kind_name(k)) + "-" + (is_rsa(a) ? "rsa" : "ec");
  Command c{{example(), "--connect", "127.0.0.1:" + std::to_string(server.port()), "--cert", work(tag + ".pem"),
             "--key", key(k, a), "--CAfile", work("ca.pem"), "--tls1_3", "--quiet", "--handshakes",
             std::to_string(kHandshakesPerThread), "--threads", std::to_string(threads)},
            env(k)};
  const std::string log = work(tag + ".log");
  int64_t total = 0;
  double commands = 0;
  for (auto _ : state) {
    int ok = 0, failed = 0;
    double seconds = 0, rate = 0, per = 0;
    unsigned long long cmds = 0;
    const int status = run(c, log);
    if (status != 0 || std::sscanf(read_all(log).c_str(), "handshakes %d ok %d failed %lf seconds %lf per second %llu TPM commands (%lf",
                                   &ok, &failed, &seconds, &rate, &cmds, &per) != 6 || failed) {
      std::string msg = row + ": exit status " + std::to_string(status) + ": " + read_all(log);
      record_problem(msg);
      state.SkipWithError(msg.c_str());
      break;
    }
    state.SetIterationTime(seconds);
    total += ok;
    commands += double(cmds);
  }
  state.SetItemsProcessed(total);
  state.counters["tpm_cmds"] = total ? commands / double(total) : 0;
  check_tpm_clean(row);
}

}  // namespace

void register_tls() {
  for (Alg a : {Alg::kEcdsaP256, Alg::kRsaPkcs1})
    for (Kind k : {Kind::kSoftware, Kind::kTpmkey})
      for (int threads : {1, 4}) {
        const std::string name = tls_row(a, kind_name(k), threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { handshakes(s, a, k, threads); })
            ->UseManualTime()
            ->Iterations(std::max(1, options().process_iterations / 4))
            ->Repetitions(options().repetitions)
            ->Unit(benchmark::kMillisecond);
      }
}

}  // namespace tpmkey::bench
