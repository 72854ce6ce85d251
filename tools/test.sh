#!/usr/bin/env bash
# Runs the whole tpmkey test suite: a normal build and an ASan/UBSan build, each with ctest, a
# ThreadSanitizer build running the concurrency tests, then a short pass of the benchmarks (they
# run, sign correctly and leave the TPM clean).
# Every swtpm test binary starts its own swtpm on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/deps.sh
export TSS2_LOG=all+none

echo "== build (RelWithDebInfo) and test"
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTPMKEY_WERROR=ON -DTPMKEY_BENCH=OFF >/dev/null
cmake --build build-test -j"$(nproc)"
(cd build-test && ctest --output-on-failure --timeout 900)

echo "== build with AddressSanitizer + UndefinedBehaviorSanitizer and test"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTPMKEY_WERROR=ON -DTPMKEY_SANITIZE=ON -DTPMKEY_BENCH=OFF >/dev/null
cmake --build build-asan -j"$(nproc)"
# The openssl binary is not instrumented: preload the sanitizer runtime for the provider it loads.
asan_rt=$(gcc -print-file-name=libasan.so)
(cd build-asan && TPMKEY_SUBPROCESS_PRELOAD="$asan_rt" ASAN_OPTIONS=detect_leaks=1 \
   ctest --output-on-failure --timeout 900)

echo "== build with ThreadSanitizer and run the concurrency tests"
# Only what runs threads or forks against one TPM: signing threads and fork (lifetime, session),
# racing processes and contention for slots, and the agent with concurrent clients. The openssl
# and tpm2-tools subprocesses are not instrumented: the runtime is preloaded for the provider they
# load. A race report ends the instrumented process (halt_on_error), so its test fails.
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DTPMKEY_WERROR=ON -DTPMKEY_SANITIZE_THREAD=ON -DTPMKEY_BENCH=OFF >/dev/null
cmake --build build-tsan -j"$(nproc)" --target tpmkey tpmkey_provider lifetime_tests session_tests agent_protocol_tests
tsan_rt=$(gcc -print-file-name=libtsan.so)
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 die_after_fork=0 suppressions=$PWD/test/tsan.supp"
# Instrumented processes are several times slower and hold the TPM's session slots longer: racing
# processes wait longer for each other than the default 5 s (this run looks for races, not speed).
export TPMKEY_BUSY_TIMEOUT=60
TPMKEY_SUBPROCESS_PRELOAD="$tsan_rt" build-tsan/test/lifetime_tests \
  --gtest_filter='LifetimeTest.ForkWhileAThreadSigns:LifetimeTest.RacingOneShotProcessesAllSucceed:LifetimeTest.WaitsForSlotsHeldByOthers'
TPMKEY_SUBPROCESS_PRELOAD="$tsan_rt" build-tsan/test/session_tests \
  --gtest_filter='SessionTest.ThreadsSignCorrectly:SessionTest.ForkedChildUsesItsOwnSession'
TPMKEY_SUBPROCESS_PRELOAD="$tsan_rt" build-tsan/test/agent_protocol_tests \
  --gtest_filter='AgentProtocolTest.ThirtyTwoClientsSignConcurrently:AgentProtocolTest.StalledClientDoesNotBlockOthers:AgentProtocolTest.PipelinedFrames'
unset TSAN_OPTIONS TPMKEY_BUSY_TIMEOUT

echo "== benchmarks: build, and one short pass over every row"
# Checks that `bash bench/run.sh` works from a clean clone: every row runs, every signature is
# verified, every benchmark leaves the TPM clean (its exit status). No timing is judged here.
bench_log=$(mktemp)
if ! BENCH_TABLE="$bench_log.md" bash bench/run.sh --min-time=0.02 --repetitions=1 --cold-iterations=2 \
       --process-iterations=2 >"$bench_log" 2>&1; then
  cat "$bench_log"
  echo "benchmark smoke run failed" >&2
  exit 1
fi
grep -A3 '^### Problems' "$bench_log"
rm -f "$bench_log" "$bench_log.md"
