// One-shot whole-process signing: `openssl pkeyutl -sign -rawin -digest sha256` (posix_spawn and
// wait) with a software key, a tpmkey key signing directly (agent = off), the same tpmkey key with
// a tpmkey agent running (the broker, keystore/broker.h) and a tpm2-openssl key, and that agent's
// answer alone (the request the process sends, from this process), side by side in each
// iteration. This is what a script or a short-lived tool pays: process start, provider load,
// TPM connection, parent, key load, one signature, teardown; or with the agent, one round trip
// over its socket, in which the agent sends one TPM2_Sign (after a pause of over 1 ms, a
// TPM2_ReadPublic first: docs/sessions.md).
//   pkeyutl/ALG (ALG: ecdsa-p256, rsa2048-pkcs1), counters <kind>_ms and <kind>_cmds (the
//   process's own TPM commands: 0 for tpmkey-agent; none for agent-answer, which is no process)
//   tss-floor   what tpm2-tss and the transport alone cost a process (tss_floor.cc)
//   idle-provider  `openssl dgst -sha256` with tpmkey activated in its openssl.cnf and without,
//               side by side: what tpmkey costs a process that uses no TPM key
// The timed runs use the plain swtpm TCTI. One more run per kind after the timed loop goes through
// the counting TCTI (commands per process, written by the module at exit); its signature is verified.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench/benchmarks.h"
#include "bench/common.h"
#include "keystore/broker.h"
#include "keystore/keyfile.h"
#include "keystore/public_key.h"
#include "keystore/ssh_wire.h"

namespace tpmkey::bench {
namespace {

enum class Kind { kSoftware, kTpmkey, kTpmkeyAgent, kTpm2Openssl, kAgentAnswer };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kSoftware: return "software";
    case Kind::kTpmkey: return "tpmkey";
    case Kind::kTpmkeyAgent: return "tpmkey-agent";
    case Kind::kTpm2Openssl: return "tpm2-openssl";
    case Kind::kAgentAnswer: return "agent-answer";
  }
  return "?";
}

std::string message_file() {
  static const std::string path = [] {
    std::string p = options().workdir + "/message.bin";
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(message()), std::streamsize(message_size()));
    return p;
  }();
  return path;
}

// `agent`: the socket of the agent the tpmkey-agent kind signs through.
Command pkeyutl(Kind k, Alg a, const std::string& tcti, const std::string& sig_out, const std::string& agent) {
  Command c;
  c.argv = {"openssl", "pkeyutl"};
  // The TPM variables are set only for the provider that reads them.
  for (const char* drop : {"TPMKEY_TCTI", "TPM2OPENSSL_TCTI", "TPMKEY_BENCH_COUNT_FILE", "OPENSSL_MODULES", "TPMKEY_AGENT"})
    c.env.push_back(drop);
  switch (k) {
    case Kind::kSoftware:
      c.argv.insert(c.argv.end(), {"-inkey", software_key_file(a)});
      break;
    case Kind::kTpmkey:
    case Kind::kTpmkeyAgent:
      // The module is found the way an installed one is: by name, in the modules directory.
      c.argv.insert(c.argv.end(), {"-provider", "tpmkey", "-provider", "default", "-inkey", tpmkey_uri(a)});
      c.env.push_back("OPENSSL_MODULES=" + options().provider_dir);
      c.env.push_back("TPMKEY_TCTI=" + tcti);
      c.env.push_back("TPMKEY_KEYSTORE=" + options().keystore);
      c.env.push_back("TPMKEY_AGENT=" + (k == Kind::kTpmkey ? std::string("off") : agent));
      break;
    case Kind::kTpm2Openssl:
      c.argv.insert(c.argv.end(), {"-provider", "tpm2", "-provider", "default", "-propquery", kTpm2OpensslPropq,
                                   "-inkey", tpm2_openssl_key_file(a)});
      c.env.push_back("TPM2OPENSSL_TCTI=" + tcti);
      break;
    case Kind::kAgentAnswer: break;  // no process: AgentAnswer below
  }
  c.argv.insert(c.argv.end(), {"-sign", "-rawin", "-digest", "sha256", "-in", message_file(), "-out", sig_out});
  if (a == Alg::kRsaPkcs1) c.argv.insert(c.argv.end(), {"-pkeyopt", "rsa_padding_mode:pkcs1"});
  return c;
}

PkeyPtr public_key(Kind k, Alg a) {
  // run.sh wrote the public halves next to the keys: soft-ec.pub, bench-ec.pub, tpm2-openssl-ec.pub, ...
  std::string base = k == Kind::kSoftware ? "soft" : k == Kind::kTpm2Openssl ? "tpm2-openssl" : "bench";
  return read_public_key(options().workdir + "/" + base + (is_rsa(a) ? "-rsa.pub" : "-ec.pub"));
}

// One kind's untimed check after the timed loop: a run through the counting TCTI (TPM commands
// per process, written by the module at exit) whose signature is verified. Returns the count
// (0 for the software key), or -1 after recording a problem.
double counted_run(Kind k, Alg a, const std::string& agent) {
  const std::string tag = std::string(kind_name(k)) + "-" + alg_name(a);
  const std::string log = options().workdir + "/pkeyutl-" + tag + ".log";
  const std::string sig_file = options().workdir + "/pkeyutl-" + tag + ".sig";
  const std::string count_file = options().workdir + "/pkeyutl-" + tag + ".count";
  std::remove(count_file.c_str());
  Command counted = pkeyutl(k, a, counting_tcti(), sig_file, agent);
  if (k != Kind::kSoftware) counted.env.push_back("TPMKEY_BENCH_COUNT_FILE=" + count_file);
  int status = run(counted, log);
  const std::string s = read_all(sig_file);
  const std::vector<unsigned char> sig(s.begin(), s.end());
  PkeyPtr pub = public_key(k, a);
  if (status != 0 || !pub || !verify(pub.get(), a, sig)) {
    record_problem("pkeyutl-" + tag + ": the counted run's signature " +
                   (status ? "failed: " + read_all(log) : "does not verify"));
    return -1;
  }
  uint64_t total = 0;
  std::istringstream in(read_all(count_file));
  for (uint64_t n; in >> n;) total += n;
  return double(total);
}

// The agent's answer alone: the sign-digest@tpmkey request a tpmkey process sends for the key
// (keystore/broker.h), built once from its key file, over a new connection per signature as the
// process makes it. No process starts and no provider loads: this is what is left of the
// tpmkey-agent kind's time once process start, OpenSSL and the provider are taken away, the
// least a one-shot process that signs through the agent can take here.
class AgentAnswer {
 public:
  AgentAnswer(Alg a, std::string socket) : socket_(std::move(socket)) {
    const std::string path = options().keystore + "/" + tpmkey_uri(a).substr(std::strlen("tpm2:")) + ".pem";
    const std::string file = read_all(path);
    auto kf = parse_keyfile(reinterpret_cast<const uint8_t*>(file.data()), file.size());
    if (!kf) throw std::runtime_error("agent-answer: " + path + ": " + kf.error().text());
    auto blob = openssh_blob(kf->pub.publicArea);
    const Bytes id = key_file_id(*kf, nullptr);
    if (!blob || id.empty()) throw std::runtime_error("agent-answer: no OpenSSH blob or file id for " + path);
    SignScheme scheme;
    scheme.alg = is_rsa(a) ? SigAlg::kRsaPkcs1 : SigAlg::kEcdsa;
    request_ = sign_digest_request(*blob, id, scheme, message_digest(), 32);
  }

  // One request and its answer; "" or what went wrong. The signature is kept for the check.
  std::string sign() {
    auto answer = agent_exchange(socket_, request_, std::chrono::seconds(10));
    if (!answer) return "agent-answer: " + answer.error().text();
    SshReader r(answer->data(), answer->size());
    uint8_t type = 0;
    SshView name, sig;
    if (!r.u8(&type) || type != kExtensionResponse || !r.string(&name) || !r.string(&sig) || !r.done())
      return "agent-answer: the agent did not sign (answer type " + std::to_string(type) + ")";
    signature_ = sig.bytes();
    return "";
  }
  const Bytes& signature() const { return signature_; }

 private:
  static constexpr uint8_t kExtensionResponse = 29;  // SSH_AGENT_EXTENSION_RESPONSE
  std::string socket_;
  Bytes request_, signature_;
};

// An iteration runs the software key, tpmkey (direct), tpmkey with the agent and tpm2-openssl
// processes and the agent's answer alone back to back, in an order that rotates, so the five see
// the same machine: on a shared
// machine the speed of everything drifts by 10-30% within minutes, and only times taken side by
// side give steady ratios. The iteration time is the sum; each kind's mean time per process is a
// counter (<kind>_ms), as are its TPM commands per process (<kind>_cmds). The agent runs for the
// whole row (a warm-up signature first, untimed) and is stopped before the TPM clean check; the
// other kinds' processes talk to the TPM between its requests, as they would with an agent that
// serves other keys.
void process_sign(benchmark::State& state, Alg a) {
  constexpr Kind kKinds[] = {Kind::kSoftware, Kind::kTpmkey, Kind::kTpmkeyAgent, Kind::kTpm2Openssl, Kind::kAgentAnswer};
  constexpr int kN = 5, kProcesses = 4, kAnswer = 4;
  std::optional<AgentProcess> agent;
  std::optional<AgentAnswer> answer;
  try {
    agent.emplace(false, "broker-agent");
    answer.emplace(a, agent->socket());
  } catch (const std::exception& e) {
    record_problem(std::string("pkeyutl/") + alg_name(a) + ": " + e.what());
    state.SkipWithError(e.what());
    return;
  }
  Command timed[kProcesses];
  std::string logs[kProcesses];
  for (int i = 0; i < kProcesses; ++i) {
    timed[i] = pkeyutl(kKinds[i], a, options().tcti, "/dev/null", agent->socket());
    logs[i] = options().workdir + "/pkeyutl-" + kind_name(kKinds[i]) + "-" + alg_name(a) + ".log";
  }
  int64_t failures = 0;
  if (int status = run(timed[2], logs[2]); status != 0) {
    std::string msg = std::string("pkeyutl-tpmkey-agent/") + alg_name(a) + ": warm-up: " + read_all(logs[2]);
    record_problem(msg);
    state.SkipWithError(msg.c_str());
    ++failures;
  }
  const Interleaved r = interleave(state, kN, [&](int i) -> std::string {
    if (i == kAnswer) return answer->sign();
    if (const int status = run(timed[i], logs[i]); status != 0)
      return std::string("pkeyutl-") + kind_name(kKinds[i]) + "/" + alg_name(a) + ": exit status " +
             std::to_string(status) + ": " + read_all(logs[i]);
    return "";
  });
  if (r.failed) ++failures;
  state.SetItemsProcessed(state.iterations());
  for (int i = 0; i < kN; ++i) state.counters[std::string(kind_name(kKinds[i])) + "_ms"] = r.mean_ms[size_t(i)];
  if (!failures) {
    for (int i = 0; i < kProcesses; ++i) {
      const double cmds = counted_run(kKinds[i], a, agent->socket());
      if (cmds < 0) ++failures;
      state.counters[std::string(kind_name(kKinds[i])) + "_cmds"] = cmds;
    }
    PkeyPtr pub = public_key(Kind::kTpmkey, a);
    if (!pub || !verify(pub.get(), a, answer->signature())) {
      record_problem(std::string("pkeyutl-agent-answer/") + alg_name(a) + ": the agent's last signature does not verify");
      ++failures;
    }
  }
  state.counters["failures"] = double(failures);
  agent->stop();
  check_tpm_clean(std::string("pkeyutl/") + alg_name(a));
}

// The floor under any one-shot TPM process here (bench/tss_floor.cc): the tss2 libraries, the
// TCTI and the round trips of the 6 commands a tpmkey process sends, without OpenSSL, without a
// provider and without TPM crypto. The iteration time is that sum; the steps are counters, with
// the time of a salted StartAuthSession (the TPM's ECDH) for the secure floor in the summary.
void tss_floor(benchmark::State& state) {
  const std::string log = options().workdir + "/tss-floor.log";
  Command c;
  c.argv = {options().tss_floor, options().tcti};
  double libraries = 0, tcti = 0, command = 0, salted = 0;
  for (auto _ : state) {
    double l = 0, t = 0, r = 0, s = 0;
    int status = run(c, log);
    if (status != 0 || std::sscanf(read_all(log).c_str(), "%lf %lf %lf %lf", &l, &t, &r, &s) != 4) {
      std::string msg = "tss-floor: exit status " + std::to_string(status) + ": " + read_all(log);
      record_problem(msg);
      state.SkipWithError(msg.c_str());
      break;
    }
    libraries += l;
    tcti += t;
    command += r;
    salted += s;
    state.SetIterationTime((l + t + 6 * r) / 1000.0);
  }
  const double n = double(std::max<int64_t>(state.iterations(), 1));
  state.SetItemsProcessed(state.iterations());
  state.counters["libraries_ms"] = libraries / n;
  state.counters["tcti_ms"] = tcti / n;
  state.counters["command_ms"] = command / n;
  state.counters["salted_ms"] = salted / n;
  check_tpm_clean("tss-floor");
}

// An openssl.cnf in the workdir that activates the default provider alone ("default"), and after
// it the empty provider (empty_provider.cc: "empty") or tpmkey ("tpmkey", as a system-wide
// configuration would: its TPM and keystore configured, never used by `openssl dgst`).
std::string idle_cnf(const std::string& kind) {
  const std::string path = options().workdir + "/idle-" + kind + ".cnf";
  std::ofstream f(path, std::ios::trunc);
  f << "openssl_conf = openssl_init\n\n[openssl_init]\nproviders = provider_sect\n\n[provider_sect]\n"
    << "default = default_sect\n" << (kind != "default" ? kind + " = second_sect\n" : "")
    << "\n[default_sect]\nactivate = 1\n";
  if (kind == "tpmkey")
    f << "\n[second_sect]\nmodule = " << options().provider_dir << "/tpmkey.so\ntcti = "
      << options().tcti << "\nkeystore = " << options().keystore << "\nactivate = 1\n";
  if (kind == "empty") f << "\n[second_sect]\nmodule = " << TPMKEY_BENCH_EMPTY_PROVIDER << "\nactivate = 1\n";
  return path;
}

Command dgst(const std::string& cnf) {
  Command c;
  c.argv = {"openssl", "dgst", "-sha256", message_file()};
  c.env = {"OPENSSL_CONF=" + cnf};
  for (const char* drop : {"TPMKEY_TCTI", "TPMKEY_KEYSTORE", "TPM2OPENSSL_TCTI", "OPENSSL_MODULES"}) c.env.push_back(drop);
  return c;
}

// The idle provider: `openssl dgst -sha256` of the message as a new process, with an openssl.cnf
// that activates default alone, one that activates default and the empty provider, and one that
// activates default and tpmkey, side by side in each iteration (the order rotates), as the
// one-shot rows run. Counters: each kind's mean time per process (<kind>_ms) and the median over
// the iterations of the paired differences (<kind>-minus-default_ms). An untimed `openssl list
// -providers` first checks that the tpmkey configuration really activates tpmkey.
void idle_provider(benchmark::State& state) {
  const std::string kinds[3] = {"default", "empty", "tpmkey"};
  Command timed[3] = {dgst(idle_cnf(kinds[0])), dgst(idle_cnf(kinds[1])), dgst(idle_cnf(kinds[2]))};
  const std::string log = options().workdir + "/idle-provider.log";
  Command list = timed[2];
  list.argv = {"openssl", "list", "-providers"};
  if (run(list, log) != 0 || read_all(log).find("tpmkey") == std::string::npos) {
    std::string msg = "idle-provider: the configuration does not activate tpmkey: " + read_all(log);
    record_problem(msg);
    state.SkipWithError(msg.c_str());
    return;
  }
  std::vector<double> differences[3];
  const Interleaved r = interleave(
      state, 3,
      [&](int i) -> std::string {
        const int status = run(timed[i], log);
        return status == 0 ? "" : "idle-provider/" + kinds[i] + ": exit status " + std::to_string(status) + ": " +
                                      read_all(log);
      },
      [&](const std::vector<double>& ms) {
        for (int i = 1; i < 3; ++i) differences[i].push_back(ms[size_t(i)] - ms[0]);
      });
  const int64_t failures = r.failed ? 1 : 0;
  state.SetItemsProcessed(state.iterations());
  for (int i = 0; i < 3; ++i) state.counters[kinds[i] + "_ms"] = r.mean_ms[size_t(i)];
  for (int i = 1; i < 3; ++i) state.counters[kinds[i] + "-minus-default_ms"] = median(std::move(differences[i]));
  state.counters["failures"] = double(failures);
}

}  // namespace

void register_processes() {
  // Processes that never touch the TPM are short: three times the iterations of the other rows.
  benchmark::RegisterBenchmark("idle-provider", idle_provider)
      ->UseManualTime()
      ->Iterations(3 * options().process_iterations)
      ->Repetitions(options().repetitions)
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("tss-floor", tss_floor)
      ->UseManualTime()
      ->Iterations(options().process_iterations)
      ->Repetitions(options().repetitions)
      ->Unit(benchmark::kMillisecond);
  for (Alg a : {Alg::kEcdsaP256, Alg::kRsaPkcs1}) {
    std::string name = std::string("pkeyutl/") + alg_name(a);
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { process_sign(s, a); })
        ->UseManualTime()
        ->Iterations(options().process_iterations)
        ->Repetitions(options().repetitions)
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace tpmkey::bench
