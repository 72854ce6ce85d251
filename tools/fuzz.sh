#!/usr/bin/env bash
# Builds the libFuzzer targets (test/fuzz/, clang, ASan + UBSan) in build-fuzz/ and runs each for
# SECONDS (default 600) from a scratch copy of its committed seed corpus, so the committed corpus
# is not flooded with generated inputs. Prints per target: seconds, executions, coverage (libFuzzer's
# final cov:) and findings (crash, leak, timeout and OOM inputs, kept in build-fuzz/findings/).
# Usage: tools/fuzz.sh [SECONDS] [TARGET...]   (TARGET: uri keyfile srk_pin ...; default all)
# FUZZ_BUILD_DIR overrides build-fuzz/, FUZZ_BUILD_JOBS the build's parallelism (2).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(uri keyfile srk_pin ssh_wire private_key frame ssh_key agent tpm_response tpm params)
jobs=${FUZZ_BUILD_JOBS:-2}
build=${FUZZ_BUILD_DIR:-build-fuzz}  # another directory, for a second checkout or a scratch build

bash tools/deps.sh
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTPMKEY_FUZZ=ON -DTPMKEY_TESTS=OFF -DTPMKEY_BENCH=OFF -DTPMKEY_WERROR=ON >/dev/null
cmake --build "$build" -j"$jobs" --target $(printf 'fuzz_%s ' "${targets[@]}")

scratch=$(mktemp -d "${TMPDIR:-/tmp}/tpmkey-fuzz-run.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
findings_dir=$build/findings
mkdir -p "$findings_dir"
# No TPM is reachable from a fuzz target (test/fuzz/agent_support.h sets the same for the agent).
export TPMKEY_TCTI="swtpm:host=127.0.0.1,port=1" TPMKEY_TIMEOUT=0.2
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

summary=()
status=0
for t in "${targets[@]}"; do
  corpus="$scratch/$t"
  mkdir -p "$corpus" "$findings_dir/$t"
  cp test/fuzz/corpus/"$t"/* "$corpus"/
  log="$findings_dir/$t.log"
  echo "== fuzz_$t: $seconds s" >&2
  start=$(date +%s)
  # -fork would use more cores than the machine has to share; one process per target, in turn.
  set +e
  "$build"/fuzz/fuzz_"$t" "$corpus" -max_total_time="$seconds" -print_final_stats=1 -timeout=30 \
    -rss_limit_mb=2048 -artifact_prefix="$findings_dir/$t/" >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)  # none if it stopped at once
  found=$(find "$findings_dir/$t" -type f | wc -l)
  [ "$rc" -eq 0 ] && [ "$found" -eq 0 ] || status=1
  summary+=("$(printf '%-12s %6s s  %12s execs  cov %6s  findings %s (exit %s)' "$t" "$elapsed" "${execs:-?}" \
    "${cov:-?}" "$found" "$rc")")
done
echo "== summary ($(date -u +%F), $seconds s per target; logs and inputs in $findings_dir/)"
printf '%s\n' "${summary[@]}"
exit $status
