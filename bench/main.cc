// tpmkey_bench: every signing path measured in one run against one swtpm, then a Markdown summary.
// Normally started by bench/run.sh, which builds, starts swtpm and creates the keys.
//
//   tpmkey_bench --tcti=swtpm:host=127.0.0.1,port=N --workdir=DIR [--keystore=DIR]
//                [--min-time=SECONDS] [--repetitions=N] [--cold-iterations=N] [--process-iterations=N]
//                [--sshd-port=N] [--login-iterations=N] [--table-out=FILE] [--benchmark_* flags of Google Benchmark]
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench/benchmarks.h"
#include "bench/common.h"
#include "bench/summary.h"

namespace {

bool take(const char* arg, const char* flag, std::string& out) {
  size_t n = std::strlen(flag);
  if (std::strncmp(arg, flag, n) != 0 || arg[n] != '=') return false;
  out = arg + n + 1;
  return true;
}

int usage(const char* msg) {
  std::cerr << "tpmkey_bench: " << msg
            << "\nusage: tpmkey_bench --tcti=TCTI --workdir=DIR [--keystore=DIR] [--min-time=S]"
               " [--repetitions=N] [--cold-iterations=N] [--process-iterations=N] [--sshd-port=N]"
               " [--login-iterations=N] [--table-out=FILE] [--benchmark_...]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tpmkey::bench;
  Options o;
  o.provider_dir = TPMKEY_BENCH_PROVIDER_DIR;
  o.counting_tcti_module = TPMKEY_BENCH_COUNTING_TCTI;
  o.tss_floor = TPMKEY_BENCH_TSS_FLOOR;
  o.tpmkey_program = TPMKEY_BENCH_TPMKEY;
  std::string table_out, v;
  // Repetitions of different benchmarks run interleaved in random order, so a burst of load from
  // elsewhere on the machine spreads over all rows instead of skewing one ratio. Overridable.
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  std::vector<char*> rest{argv[0], interleave};
  try {
    for (int i = 1; i < argc; ++i) {
      const char* a = argv[i];
      if (take(a, "--tcti", o.tcti) || take(a, "--workdir", o.workdir) || take(a, "--keystore", o.keystore) ||
          take(a, "--provider-dir", o.provider_dir) || take(a, "--counting-tcti", o.counting_tcti_module) ||
          take(a, "--table-out", table_out))
        continue;
      if (take(a, "--min-time", v)) o.min_time = std::stod(v);
      else if (take(a, "--cold-iterations", v)) o.cold_iterations = std::stoi(v);
      else if (take(a, "--process-iterations", v)) o.process_iterations = std::stoi(v);
      else if (take(a, "--login-iterations", v)) o.login_iterations = std::stoi(v);
      else if (take(a, "--sshd-port", v)) o.sshd_port = std::stoi(v);
      else if (take(a, "--repetitions", v)) o.repetitions = std::stoi(v);
      else rest.push_back(argv[i]);
    }
  } catch (const std::exception&) {
    return usage("bad number");
  }
  if (o.tcti.empty() || o.workdir.empty()) return usage("--tcti and --workdir are required");
  if (o.keystore.empty()) o.keystore = o.workdir + "/keystore";
  if (o.min_time <= 0 || o.cold_iterations < 1 || o.process_iterations < 1 || o.login_iterations < 1 ||
      o.repetitions < 1 || o.sshd_port < 0 || o.sshd_port > 65535) return usage("bad number");
  set_options(o);
  // tpm2-openssl 1.1.1 reads its TCTI only from this variable: its openssl.cnf "tcti" key is
  // ignored (OSSL_PARAM_utf8_ptr gets the pointer instead of its address; tpm2-openssl issue #107).
  // Without it, it would search the default TCTIs, 127.0.0.1:2321 included: someone else's TPM.
  setenv("TPM2OPENSSL_TCTI", counting_tcti().c_str(), 1);

  if (!check_tpm_clean("nothing (at start)")) std::cerr << "tpmkey_bench: the TPM was not clean at start\n";

  register_raw_esys(false);
  register_raw_esys(true);
  register_raw_decrypt();
  register_warm(true, true);
  register_warm(true, false);
  register_warm(false, true);
  register_warm(false, false);
  register_cold(true);
  register_cold(false);
  register_threads();
  register_decrypt();
  register_processes();
  register_agent();
  register_tls();

  int rest_argc = int(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 2;
  Recorder recorder(isatty(STDOUT_FILENO) ? Recorder::OO_ColorTabular : Recorder::OO_Tabular);
  benchmark::RunSpecifiedBenchmarks(&recorder);
  benchmark::Shutdown();

  check_tpm_clean("the last benchmark");
  const std::string table = summary_markdown(recorder.results(), problems());
  std::cout << "\n" << table << std::flush;
  if (!table_out.empty()) {
    std::ofstream f(table_out, std::ios::trunc);
    f << table;
  }
  bool errors = !problems().empty();
  for (const auto& [name, r] : recorder.results()) errors = errors || r.error || r.failures > 0;
  return errors ? 1 : 0;
}
