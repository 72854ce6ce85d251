// A console reporter that also keeps every run, and the Markdown summary printed at the end:
// signatures/s, TPM commands per signature and ratios to the limit and to tpm2-openssl; the
// agent's round trips against the in-process rate, and login times side by side.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

namespace tpmkey::bench {

struct RunResult {
  double per_second = 0;    // items_per_second, median of the repetitions: signatures/s
                            // (aggregate over threads) or processes/s
  double seconds_per_op = 0;
  double cpu_seconds_per_op = -1;  // CPU time of the benchmark thread (the client side; swtpm excluded)
  double tpm_cmds = -1;     // per signature / per process; -1: not measured
  double failures = 0;       // summed over repetitions (and threads)
  double cv = -1;            // coefficient of variation of per_second over the repetitions; -1: none
  std::map<std::string, double> counters;     // every counter of the median (e.g. pkeyutl's <kind>_ms)
  std::map<std::string, double> counter_cvs;  // and its coefficient of variation over the repetitions
  int64_t iterations = 0;
  bool error = false;
  std::string error_message;
};

class Recorder : public benchmark::ConsoleReporter {
 public:
  using ConsoleReporter::ConsoleReporter;
  void ReportRuns(const std::vector<Run>& reports) override;
  // Keyed by "<benchmark name>" and, for threaded families, "<benchmark name>@<threads>".
  const std::map<std::string, RunResult>& results() const { return results_; }

 private:
  std::map<std::string, RunResult> results_;
};

// The Markdown tables. `problems` (leaked handles, failures) are listed after them.
std::string summary_markdown(const std::map<std::string, RunResult>& r, const std::vector<std::string>& problems);

}  // namespace tpmkey::bench
