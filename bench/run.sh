#!/usr/bin/env bash
# The tpmkey benchmarks, in one command from a clone: builds (Release, build-bench/), starts a
# private swtpm, creates the keys (tpmkey CLI, tpm2-openssl genpkey, software keys), runs
# build-bench/bin/tpmkey_bench and prints its Markdown summary. swtpm is stopped and the scratch
# directory removed on exit, whatever happens. See docs/performance.md.
#
#   bash bench/run.sh [tpmkey_bench flags...]     e.g. --min-time=0.5 or --benchmark_filter=limit
# Environment: BENCH_JOBS (build parallelism, default nproc), BENCH_TABLE (also write the summary
# there; default build-bench/bench-summary.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash tools/deps.sh

build="$root/build-bench"
echo "== building (Release) into $build" >&2
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DTPMKEY_BENCH=ON -DTPMKEY_TESTS=OFF >/dev/null
cmake --build "$build" -j"${BENCH_JOBS:-$(nproc)}" --target tpmkey_bench >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/tpmkey-bench.XXXXXX")
source tools/swtpm-env.sh
trap 'stop_swtpm; rm -rf "$work"' EXIT
start_swtpm
tcti="$TPMKEY_TCTI"
unset TPMKEY_TCTI  # every command below gets its TPM explicitly
export TSS2_LOG=all+none
echo "== swtpm: $tcti (state in $SWTPM_DIR)" >&2

echo "== creating keys" >&2
keystore="$work/keystore"
# Runs a command quietly; shows its output only if it fails.
quiet() { "$@" >"$work/step.log" 2>&1 || { cat "$work/step.log" >&2; echo "failed: $*" >&2; exit 1; }; }
# The recommended set-up: the SRK persistent at 0x81000001 and pinned (tpmkey init), so a process
# opens a salted session to it instead of creating a primary key. tpm2-openssl keys use parent
# 0x40000001, for which tpm2-openssl creates the primary in each process.
quiet "$build/bin/tpmkey" --tcti "$tcti" --keystore "$keystore" init
for k in ec:ec-p256 rsa:rsa2048; do
  quiet "$build/bin/tpmkey" --tcti "$tcti" --keystore "$keystore" create "bench-${k%%:*}" --algorithm "${k#*:}"
  "$build/bin/tpmkey" --keystore "$keystore" pubkey "bench-${k%%:*}" >"$work/bench-${k%%:*}.pub"
done
# tpm2-openssl reads its TCTI from TPM2OPENSSL_TCTI (before its openssl.cnf "tcti" key).
t2o=(-provider tpm2 -provider default -propquery '?provider=tpm2')
export TPM2OPENSSL_TCTI="$tcti"
quiet openssl genpkey "${t2o[@]}" -algorithm EC -pkeyopt group:P-256 -out "$work/tpm2-openssl-ec.pem"
quiet openssl genpkey "${t2o[@]}" -algorithm RSA -pkeyopt bits:2048 -out "$work/tpm2-openssl-rsa.pem"
for k in ec rsa; do
  head -1 "$work/tpm2-openssl-$k.pem" | grep -q "TSS2 PRIVATE KEY" || { echo "tpm2-openssl made no TPM key" >&2; exit 1; }
  quiet openssl pkey "${t2o[@]}" -in "$work/tpm2-openssl-$k.pem" -pubout -out "$work/tpm2-openssl-$k.pub"
done
unset TPM2OPENSSL_TCTI
quiet openssl genpkey -algorithm EC -pkeyopt group:P-256 -out "$work/soft-ec.pem"
quiet openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/soft-rsa.pem"
for k in ec rsa; do openssl pkey -in "$work/soft-$k.pem" -pubout -out "$work/soft-$k.pub"; done

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" >&2
echo "== running tpmkey_bench" >&2
table="${BENCH_TABLE:-$build/bench-summary.md}"
status=0
rm -f "$table"  # no stale summary from an earlier run if this one stops early
"$build/bin/tpmkey_bench" --tcti="$tcti" --workdir="$work" --keystore="$keystore" --table-out="$table" "$@" || status=$?
if [ -s "$table" ]; then echo "(summary also written to $table)" >&2; fi
exit $status
