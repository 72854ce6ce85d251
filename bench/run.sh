#!/usr/bin/env bash
# The tpmkey benchmarks, in one command from a clone: builds (Release, build-bench/), starts a
# private swtpm, creates the keys (tpmkey CLI, tpm2-openssl genpkey, software keys), starts a
# private sshd on 127.0.0.1 and OpenSSH's ssh-agent for the login rows, runs
# build-bench/bin/tpmkey_bench and prints its Markdown summary. swtpm, sshd and ssh-agent are
# stopped and the scratch directory removed on exit, whatever happens. See docs/performance.md.
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
sshd_pid="" ssh_agent_pid=""
cleanup() {
  for pid in $sshd_pid $ssh_agent_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  stop_swtpm
  rm -rf "$work"
}
trap cleanup EXIT
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
# Decryption and key agreement (the decrypt usage): bench-rsa-dec (RSA-2048), bench-ecdh (EC P-256).
for k in rsa-dec:rsa2048 ecdh:ec-p256; do
  quiet "$build/bin/tpmkey" --tcti "$tcti" --keystore "$keystore" create "bench-${k%%:*}" --algorithm "${k#*:}" --usage decrypt
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

echo "== sshd and ssh-agent for the login rows" >&2
# The keys: the TPM keys' public halves as OpenSSH lines; a software ECDSA P-256 and RSA-2048 key
# (ssh-keygen), used as key files and, added to ssh-agent, through it. For the two agents ssh gets
# a public key with no private key next to it (tpm-*.pub, agent-soft-*.pub), so a login can only
# succeed if that agent signs.
ssh_dir="$work/ssh"
mkdir -p "$ssh_dir"
for k in ec rsa; do
  "$build/bin/tpmkey" --keystore "$keystore" pubkey "bench-$k" --format openssh >"$ssh_dir/tpm-$k.pub"
done
quiet ssh-keygen -q -t ecdsa -b 256 -N '' -C bench-soft-ec -f "$ssh_dir/soft-ec"
quiet ssh-keygen -q -t rsa -b 2048 -N '' -C bench-soft-rsa -f "$ssh_dir/soft-rsa"
for k in ec rsa; do cp "$ssh_dir/soft-$k.pub" "$ssh_dir/agent-soft-$k.pub"; done
cat "$ssh_dir"/tpm-*.pub "$ssh_dir"/soft-*.pub >"$ssh_dir/authorized_keys"
quiet ssh-keygen -q -t ed25519 -N '' -C bench-sshd-host -f "$ssh_dir/host_key"
# Running as root, sshd insists on its privilege separation directory; a container may lack it.
if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd; fi
# sshd logs in the user this script runs as, with public keys only. SetEnv SHLVL=1: Debian's bash
# reads the user's ~/.bashrc for a command that sshd runs unless it is a nested shell, and what
# someone's ~/.bashrc does (here: pyenv init, ~200 ms) is no part of a login's cost.
sshd_port=""
for _ in $(seq 1 20); do
  port=$(( 10000 + RANDOM % 22000 ))
  port_in_use "$port" && continue
  cat >"$ssh_dir/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
AddressFamily inet
PidFile $ssh_dir/sshd.pid
HostKey $ssh_dir/host_key
AuthorizedKeysFile $ssh_dir/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
GSSAPIAuthentication no
PermitRootLogin prohibit-password
LogLevel VERBOSE
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
PermitUserEnvironment no
SetEnv SHLVL=1
MaxStartups 100
EOF
  # sshd re-executes itself for every connection, which it only does from an absolute path.
  /usr/sbin/sshd -D -e -f "$ssh_dir/sshd_config" >"$ssh_dir/sshd.log" 2>&1 &
  sshd_pid=$!
  for _ in $(seq 1 200); do
    grep -q "Server listening on 127.0.0.1 port $port\." "$ssh_dir/sshd.log" && { sshd_port=$port; break; }
    kill -0 "$sshd_pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$sshd_port" ] && break
  kill "$sshd_pid" 2>/dev/null && wait "$sshd_pid" 2>/dev/null || true
  sshd_pid=""
  grep -q "Bind to port\|Cannot bind" "$ssh_dir/sshd.log" || { cat "$ssh_dir/sshd.log" >&2; echo "sshd did not start" >&2; exit 1; }
done
[ -n "$sshd_port" ] || { echo "sshd: no free port" >&2; exit 1; }
echo "[127.0.0.1]:$sshd_port $(cut -d' ' -f1,2 "$ssh_dir/host_key.pub")" >"$ssh_dir/known_hosts"
ssh-agent -D -a "$ssh_dir/ssh-agent.sock" >"$ssh_dir/ssh-agent.log" 2>&1 &
ssh_agent_pid=$!
for _ in $(seq 1 200); do [ -S "$ssh_dir/ssh-agent.sock" ] && break; sleep 0.05; done
SSH_AUTH_SOCK="$ssh_dir/ssh-agent.sock" quiet ssh-add "$ssh_dir/soft-ec" "$ssh_dir/soft-rsa"
echo "== sshd: 127.0.0.1:$sshd_port, ssh-agent: $ssh_dir/ssh-agent.sock" >&2

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" >&2
echo "== running tpmkey_bench" >&2
table="${BENCH_TABLE:-$build/bench-summary.md}"
status=0
rm -f "$table"  # no stale summary from an earlier run if this one stops early
"$build/bin/tpmkey_bench" --tcti="$tcti" --workdir="$work" --keystore="$keystore" --sshd-port="$sshd_port" \
  --table-out="$table" "$@" || status=$?
if [ -s "$table" ]; then echo "(summary also written to $table)" >&2; fi
exit $status
