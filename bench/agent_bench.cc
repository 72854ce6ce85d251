// `tpmkey agent` (tools/agent/) as an ssh-agent, measured from outside: a real agent process per
// benchmark run, on a unix socket in the workdir, serving the keystore's bench-ec and bench-rsa.
//   agent-sign/ALG/threads:N  SIGN_REQUEST round trips of a 64-byte message (the in-process rows'
//                             message) over one persistent connection per client thread, N = 1
//                             or 4 clients at once; ALG: ecdsa-p256, rsa2048-pkcs1 (rsa-sha2-256)
//   login/ALG                 `ssh ... true` against the private sshd run.sh started on 127.0.0.1:
//                             the TPM key through tpmkey agent, a software key of the same type
//                             in OpenSSH's ssh-agent, the same software key as a key file (-i),
//                             side by side in each iteration; ALG: ecdsa-p256, rsa2048
// TPM commands: the agent is another process, so neither the provider's counter nor an in-process
// TCTI count reaches it. The timed agent uses the plain swtpm TCTI, like the in-process rows it is
// compared with; a second, untimed agent (started just before the timed one for agent-sign, just
// after it for login) goes through the counting TCTI module (counting_tcti.cc) with
// TPMKEY_BENCH_COUNT_MAP, a shared 8-byte counter this process reads between requests, and gets
// the same requests after its own warm-up.
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <openssl/bn.h>
#include <openssl/ec.h>

#include "bench/benchmarks.h"
#include "bench/common.h"
#include "keystore/ssh_wire.h"

namespace tpmkey::bench {
namespace {

// The agent protocol's message numbers (draft-miller-ssh-agent) and the flag for rsa-sha2-256.
constexpr uint8_t kRequestIdentities = 11, kIdentitiesAnswer = 12, kSignRequest = 13, kSignResponse = 14;
constexpr uint32_t kRsaSha2_256 = 2;

// Signatures in the counted run of an agent-sign row (after its warm-up), shared by the clients.
constexpr int kCountedSignatures = 48;
// Logins in the counted run of a login row (after its warm-up).
constexpr int kCountedLogins = 3;

// One persistent connection to an agent; every read and write bounded by 10 s.
class AgentClient {
 public:
  explicit AgentClient(const std::string& socket) : fd_(connect_unix(socket)) {
    if (fd_ < 0) throw std::runtime_error("cannot connect to the agent at " + socket + ": " + std::strerror(errno));
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  ~AgentClient() { close(fd_); }
  AgentClient(const AgentClient&) = delete;
  AgentClient& operator=(const AgentClient&) = delete;

  // Sends one request (its type byte first) and returns the response (type byte first), or
  // nothing if the agent closed the connection or did not answer in time.
  Bytes request(const Bytes& message) {
    SshWriter w;
    w.string(message);  // uint32 length, then the message: the agent protocol's framing
    if (!send_all(w.bytes().data(), w.bytes().size())) return {};
    uint8_t len[4];
    if (!recv_all(len, 4)) return {};
    const uint32_t n = uint32_t(len[0]) << 24 | uint32_t(len[1]) << 16 | uint32_t(len[2]) << 8 | len[3];
    if (n == 0 || n > 256 * 1024) return {};
    Bytes out(n);
    if (!recv_all(out.data(), n)) return {};
    return out;
  }

 private:
  bool send_all(const uint8_t* p, size_t n) {
    while (n) {
      ssize_t k = send(fd_, p, n, MSG_NOSIGNAL);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      p += k;
      n -= size_t(k);
    }
    return true;
  }
  bool recv_all(uint8_t* p, size_t n) {
    while (n) {
      ssize_t k = recv(fd_, p, n, 0);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      p += k;
      n -= size_t(k);
    }
    return true;
  }
  int fd_;
};

std::string keystore_name(Alg a) { return is_rsa(a) ? "bench-rsa" : "bench-ec"; }

// The public key blob the agent lists for the keystore key of `a` (its comment is the key's name).
Bytes find_blob(AgentClient& c, Alg a) {
  const Bytes answer = c.request(Bytes{kRequestIdentities});
  if (answer.empty() || answer[0] != kIdentitiesAnswer) throw std::runtime_error("the agent listed no identities");
  SshReader r(answer.data() + 1, answer.size() - 1);
  uint32_t n = 0;
  if (!r.u32(&n)) throw std::runtime_error("malformed IDENTITIES_ANSWER");
  for (uint32_t i = 0; i < n; ++i) {
    SshView blob, comment;
    if (!r.string(&blob) || !r.string(&comment)) break;
    if (comment.text() == keystore_name(a)) return blob.bytes();
  }
  throw std::runtime_error("the agent does not serve tpm2:" + keystore_name(a));
}

// SIGN_REQUEST for message(): ECDSA P-256 signs with SHA-256 anyway, RSA is asked for rsa-sha2-256,
// so both match the in-process rows' EVP_DigestSign with SHA-256.
Bytes sign_request(const Bytes& blob, Alg a) {
  SshWriter w;
  w.u8(kSignRequest);
  w.string(blob);
  w.string(message(), message_size());
  w.u32(is_rsa(a) ? kRsaSha2_256 : 0);
  return w.take();
}

// Checks a SIGN_RESPONSE: the right signature algorithm, and a signature over message() that
// verifies with the key's public half (bench-ec.pub / bench-rsa.pub, written by run.sh) in software.
void check_signature(const Bytes& response, Alg a) {
  if (response.empty() || response[0] != kSignResponse) throw std::runtime_error("the agent refused to sign");
  SshReader r(response.data() + 1, response.size() - 1);
  SshView blob, name, sig;
  if (!r.string(&blob)) throw std::runtime_error("malformed SIGN_RESPONSE");
  SshReader inner(blob);
  if (!inner.string(&name) || !inner.string(&sig)) throw std::runtime_error("malformed SSH signature");
  const char* want = is_rsa(a) ? "rsa-sha2-256" : "ecdsa-sha2-nistp256";
  if (name.text() != want) throw std::runtime_error("the agent signed " + std::string(name.text()) + ", not " + want);
  std::vector<unsigned char> der;
  if (is_rsa(a)) {
    der.assign(sig.data, sig.data + sig.size);
  } else {
    // SSH carries mpint r, mpint s; verify() takes DER.
    SshReader rs(sig);
    SshView rv, sv;
    if (!rs.mpint(&rv) || !rs.mpint(&sv)) throw std::runtime_error("malformed ECDSA signature");
    ECDSA_SIG* es = ECDSA_SIG_new();
    BIGNUM* rb = BN_bin2bn(rv.data, int(rv.size), nullptr);
    BIGNUM* sb = BN_bin2bn(sv.data, int(sv.size), nullptr);
    if (!es || !rb || !sb || !ECDSA_SIG_set0(es, rb, sb)) {
      BN_free(rb);
      BN_free(sb);
      ECDSA_SIG_free(es);
      throw std::runtime_error("cannot rebuild the ECDSA signature");
    }
    unsigned char* p = nullptr;
    int len = i2d_ECDSA_SIG(es, &p);
    ECDSA_SIG_free(es);
    if (len <= 0) throw std::runtime_error("cannot encode the ECDSA signature");
    der.assign(p, p + len);
    OPENSSL_free(p);
  }
  PkeyPtr pub = read_public_key(options().workdir + (is_rsa(a) ? "/bench-rsa.pub" : "/bench-ec.pub"));
  if (!pub || !verify(pub.get(), a, der)) throw std::runtime_error("the agent's signature does not verify");
}

// --- agent-sign: round trips over the socket ---

// What the threads of one agent-sign run share: set up before they start, by the Setup hook.
struct SignRun {
  std::optional<AgentProcess> agent;
  Bytes request;
  double cmds = -1;
  std::string error;
};
SignRun g_sign;

std::string sign_name(Alg a, int clients) {
  return std::string("agent-sign/") + alg_name(a) + "/threads:" + std::to_string(clients);
}

// TPM commands per signature of a counted agent, in the steady state the timed loop measures: a
// warm-up signature (the agent opens the key and starts its session), then `clients` connections
// that each sign once and, once all have, kCountedSignatures between them at once. Only those are
// counted: the first signature after the agent sat idle for more than 1 ms also proves the key's
// handle with a ReadPublic on a bare swtpm socket (docs/sessions.md), which the login rows count.
double count_sign_commands(Alg a, int clients) {
  AgentProcess agent(true);
  Bytes request;
  {
    AgentClient c(agent.socket());
    request = sign_request(find_blob(c, a), a);
    check_signature(c.request(request), a);
  }
  auto signed_ok = [](const Bytes& r) { return !r.empty() && r[0] == kSignResponse; };
  std::atomic<uint64_t> before{0};
  std::atomic<int> failures{0};
  std::barrier primed(clients, [&]() noexcept { before = agent.commands(); });
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&] {
      std::optional<AgentClient> c;
      bool ok = false;
      try {
        c.emplace(agent.socket());
        ok = signed_ok(c->request(request));
      } catch (const std::exception&) {
      }
      primed.arrive_and_wait();
      if (!ok) {
        ++failures;
        return;
      }
      for (int k = 0; k < kCountedSignatures / clients; ++k)
        if (!signed_ok(c->request(request))) ++failures;
    });
  for (auto& t : threads) t.join();
  const uint64_t n = agent.commands() - before;
  agent.stop();
  if (failures) throw std::runtime_error("the counted agent failed " + std::to_string(failures.load()) + " signatures");
  return double(n) / double(clients * (kCountedSignatures / clients));
}

template <Alg A>
void sign_setup(const benchmark::State& state) {
  g_sign.agent.reset();
  g_sign.error.clear();
  g_sign.cmds = -1;
  try {
    g_sign.cmds = count_sign_commands(A, state.threads());
    g_sign.agent.emplace(false);
    AgentClient c(g_sign.agent->socket());
    g_sign.request = sign_request(find_blob(c, A), A);
    // Warm-up, untimed: the agent opens the key and starts its session; the signature must verify.
    check_signature(c.request(g_sign.request), A);
  } catch (const std::exception& e) {
    g_sign.error = e.what();
    record_problem(sign_name(A, state.threads()) + ": " + g_sign.error);
  }
}

template <Alg A>
void sign_teardown(const benchmark::State& state) {
  g_sign.agent.reset();  // stops it: its objects are flushed before the check
  check_tpm_clean(sign_name(A, state.threads()));
}

void agent_sign(benchmark::State& state, Alg a) {
  if (!g_sign.error.empty()) {
    state.SkipWithError(g_sign.error.c_str());
    return;
  }
  std::optional<AgentClient> c;
  try {
    c.emplace(g_sign.agent->socket());  // connected before the timed loop
  } catch (const std::exception& e) {
    record_problem(sign_name(a, state.threads()) + ": " + e.what());
    state.SkipWithError(e.what());
    return;
  }
  int64_t failures = 0;
  for (auto _ : state) {
    const Bytes r = c->request(g_sign.request);
    if (r.empty() || r[0] != kSignResponse) {
      ++failures;
      record_problem(sign_name(a, state.threads()) + ": a SIGN_REQUEST failed");
      state.SkipWithError("a SIGN_REQUEST failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());  // summed over threads: aggregate signatures/s
  state.counters["failures"] = double(failures);  // summed over threads
  if (state.thread_index() == 0) state.counters["tpm_cmds/op"] = g_sign.cmds;  // only thread 0 reports it
}

// --- login: ssh ... true ---

enum class Login { kTpmkeyAgent, kSshAgent, kKeyFile };
constexpr Login kLogins[] = {Login::kTpmkeyAgent, Login::kSshAgent, Login::kKeyFile};

const char* login_name(Login k) {
  switch (k) {
    case Login::kTpmkeyAgent: return "tpmkey-agent";
    case Login::kSshAgent: return "ssh-agent";
    case Login::kKeyFile: return "key-file";
  }
  return "?";
}

std::string login_row(Alg a) { return is_rsa(a) ? "login/rsa2048" : "login/ecdsa-p256"; }

std::string login_user() {
  const passwd* pw = getpwuid(geteuid());
  if (!pw) throw std::runtime_error("this user has no passwd entry");
  return pw->pw_name;
}

// `ssh ... USER@127.0.0.1 true` with one key and nothing else: no ssh_config, this sshd's host key
// only, and IdentitiesOnly with one IdentityFile. For the two agents that file is a public key
// with no private key next to it (run.sh), so the login can only succeed if that agent signs.
// The key exchange is pinned to curve25519-sha256: OpenSSH 9.2's default,
// sntrup761x25519-sha512, costs about 130 ms more per login on the 2-vCPU VM, the same for every
// key, and would only bury the differences measured here in its noise.
Command ssh_login(Login k, Alg a, const std::string& tpmkey_agent_socket) {
  static const std::string user = login_user();
  const std::string dir = options().workdir + "/ssh/";
  const std::string t = is_rsa(a) ? "rsa" : "ec";
  std::string agent, identity;
  switch (k) {
    case Login::kTpmkeyAgent: agent = tpmkey_agent_socket, identity = dir + "tpm-" + t + ".pub"; break;
    case Login::kSshAgent: agent = dir + "ssh-agent.sock", identity = dir + "agent-soft-" + t + ".pub"; break;
    case Login::kKeyFile: agent = "none", identity = dir + "soft-" + t; break;
  }
  Command c;
  c.argv = {"ssh", "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=" + dir + "known_hosts",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", "KexAlgorithms=curve25519-sha256",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=" + agent,
            "-o", "IdentityFile=" + identity,
            "-o", "ConnectTimeout=30",
            "-p", std::to_string(options().sshd_port),
            user + "@127.0.0.1", "true"};
  c.env = {"SSH_AUTH_SOCK", "SSH_AGENT_PID"};
  return c;
}

std::string login_log(Login k, Alg a) {
  return options().workdir + "/" + login_row(a).substr(6) + "-" + login_name(k) + ".log";
}

// TPM commands per login of a counted tpmkey agent: a warm-up login, then kCountedLogins.
double count_login_commands(Alg a) {
  AgentProcess agent(true);
  const Command c = ssh_login(Login::kTpmkeyAgent, a, agent.socket());
  const std::string log = login_log(Login::kTpmkeyAgent, a);
  if (run(c, log) != 0) throw std::runtime_error("the counted agent's login failed: " + read_all(log));
  const uint64_t before = agent.commands();
  for (int i = 0; i < kCountedLogins; ++i)
    if (run(c, log) != 0) throw std::runtime_error("the counted agent's login failed: " + read_all(log));
  const uint64_t n = agent.commands() - before;
  agent.stop();
  return double(n) / kCountedLogins;
}

// An iteration logs in once with each kind, back to back in an order that rotates (as the
// one-shot pkeyutl rows do, for the same reason: on a shared machine only times taken side by side
// give steady differences). The iteration time is the sum; each kind's mean time per login is a
// counter (<kind>_ms), and so is the median over the iterations of each paired difference
// (<a>-minus-<b>_ms, the same iteration's two logins), which the machine's drift cancels out of.
void login(benchmark::State& state, Alg a) {
  const std::string name = login_row(a);
  constexpr int kN = 3;
  std::vector<double> mean_ms(kN, 0.0), tpm_ssh, tpm_file, ssh_file;
  int64_t failures = 0;
  {
    std::optional<AgentProcess> agent;
    Command cmds[kN];
    try {
      agent.emplace(false);
      for (int i = 0; i < kN; ++i) cmds[i] = ssh_login(kLogins[i], a, agent->socket());
    } catch (const std::exception& e) {
      agent.reset();
      record_problem(name + ": " + e.what());
      state.SkipWithError(e.what());
      check_tpm_clean(name);
      return;
    }
    auto why = [&](int i, int status) {
      return name + " (" + login_name(kLogins[i]) + "): ssh exit status " + std::to_string(status) + ": " +
             read_all(login_log(kLogins[i], a));
    };
    // Warm-up, untimed: the agent opens the key and starts its session; ssh, sshd and the key
    // files are in the page cache.
    for (int i = 0; i < kN && !failures; ++i)
      if (int status = run(cmds[i], login_log(kLogins[i], a)); status != 0) {
        ++failures;
        record_problem(why(i, status));
        state.SkipWithError(why(i, status).c_str());
      }
    const Interleaved r = interleave(
        state, kN,
        [&](int i) -> std::string {
          const int status = run(cmds[i], login_log(kLogins[i], a));
          return status == 0 ? "" : why(i, status);
        },
        [&](const std::vector<double>& ms) {
          tpm_ssh.push_back(ms[0] - ms[1]);
          tpm_file.push_back(ms[0] - ms[2]);
          ssh_file.push_back(ms[1] - ms[2]);
        });
    if (r.failed) ++failures;
    mean_ms = r.mean_ms;
  }  // stops the agent
  state.SetItemsProcessed(state.iterations());
  for (int i = 0; i < kN; ++i) state.counters[std::string(login_name(kLogins[i])) + "_ms"] = mean_ms[size_t(i)];
  state.counters["tpmkey-agent-minus-ssh-agent_ms"] = median(tpm_ssh);
  state.counters["tpmkey-agent-minus-key-file_ms"] = median(tpm_file);
  state.counters["ssh-agent-minus-key-file_ms"] = median(ssh_file);
  if (!failures) {
    try {
      state.counters["tpmkey-agent_cmds"] = count_login_commands(a);
    } catch (const std::exception& e) {
      ++failures;
      record_problem(name + ": " + e.what());
    }
  }
  state.counters["failures"] = double(failures);
  check_tpm_clean(name);
}

}  // namespace

void register_agent() {
  for (Alg a : {Alg::kEcdsaP256, Alg::kRsaPkcs1}) {
    const bool rsa = is_rsa(a);
    std::string name = std::string("agent-sign/") + alg_name(a);
    benchmark::RegisterBenchmark(name.c_str(), [a](benchmark::State& s) { agent_sign(s, a); })
        ->Setup(rsa ? sign_setup<Alg::kRsaPkcs1> : sign_setup<Alg::kEcdsaP256>)
        ->Teardown(rsa ? sign_teardown<Alg::kRsaPkcs1> : sign_teardown<Alg::kEcdsaP256>)
        ->Threads(1)
        ->Threads(4)
        ->UseRealTime()
        ->MinTime(options().min_time)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMicrosecond);
  }
  if (options().sshd_port <= 0) return;  // no sshd: the login rows show "not run"
  for (Alg a : {Alg::kEcdsaP256, Alg::kRsaPkcs1}) {
    benchmark::RegisterBenchmark(login_row(a).c_str(), [a](benchmark::State& s) { login(s, a); })
        ->UseManualTime()
        ->Iterations(options().login_iterations)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace tpmkey::bench
