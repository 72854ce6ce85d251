#!/usr/bin/env bash
# The tpmkey demo: build, start a private swtpm, create an EC and an RSA key inside it, sign a
# file with `openssl pkeyutl` through the provider, verify with OpenSSL's default provider alone;
# then start `tpmkey agent` and a private sshd on 127.0.0.1, and log in over ssh with a TPM key.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash tools/deps.sh
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building tpmkey"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTPMKEY_TESTS=OFF -DTPMKEY_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
tpmkey="$root/build/bin/tpmkey"

work=$(mktemp -d "${TMPDIR:-/tmp}/tpmkey-demo.XXXXXX")
source tools/swtpm-env.sh
sshd_pid=""
unset SSH_AGENT_PID
cleanup() {
  if [ -n "$sshd_pid" ]; then kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true; fi
  if [ -n "${SSH_AGENT_PID:-}" ]; then
    "$tpmkey" agent -k >/dev/null || true
    # It flushes what it loaded into the TPM as it stops: let it finish before swtpm goes.
    for _ in $(seq 1 100); do kill -0 "$SSH_AGENT_PID" 2>/dev/null || break; sleep 0.05; done
  fi
  stop_swtpm
  rm -rf "$work"
}
trap cleanup EXIT
say "Starting a private swtpm (the embedded default TPM)"
start_swtpm
export TPMKEY_KEYSTORE="$work/keystore" TSS2_LOG=all+none
echo "TPM:      $TPMKEY_TCTI"
echo "keystore: $TPMKEY_KEYSTORE"
provider=(-provider-path "$root/build/lib" -provider tpmkey -provider default)

say "Pinning the TPM's storage root key (salted sessions go only to it) and making it persistent"
"$tpmkey" init

say "Creating keys inside the TPM"
"$tpmkey" create demo-ec --algorithm ec-p256
"$tpmkey" create demo-rsa --algorithm rsa2048
"$tpmkey" list

echo "tpmkey demo: this file is signed by a key that never leaves the TPM" > "$work/message.txt"
for key in demo-ec demo-rsa; do
  say "Signing message.txt with tpm2:$key (openssl pkeyutl, through the provider)"
  opts=()
  [ "$key" = demo-rsa ] && opts=(-pkeyopt rsa_padding_mode:pss)
  set -x
  openssl pkeyutl "${provider[@]}" -sign -inkey "tpm2:$key" -rawin -digest sha256 "${opts[@]}" \
    -in "$work/message.txt" -out "$work/$key.sig"
  openssl pkey "${provider[@]}" -in "tpm2:$key" -pubout -out "$work/$key.pub"
  { set +x; } 2>/dev/null
  [ "$key" = demo-rsa ] && opts+=(-pkeyopt rsa_pss_saltlen:digest)
  echo "Verifying with OpenSSL's default provider alone (no TPM involved):"
  OPENSSL_CONF=/dev/null openssl pkeyutl -verify -pubin -inkey "$work/$key.pub" -rawin -digest sha256 "${opts[@]}" \
    -in "$work/message.txt" -sigfile "$work/$key.sig"
done

say "The keystore lists through OpenSSL too"
openssl storeutl "${provider[@]}" tpm2:

say "Starting tpmkey agent, an ssh-agent whose keys sign in the TPM (docs/ssh.md)"
echo "+ eval \"\$(tpmkey agent -a $work/agent.sock)\""
eval "$("$tpmkey" agent -a "$work/agent.sock")"
set -x
ssh-add -l
{ set +x; } 2>/dev/null

say "Starting a private sshd on 127.0.0.1 that accepts tpm2:demo-ec"
user=$(id -un)
"$tpmkey" pubkey demo-ec --format openssh > "$work/authorized_keys"
ssh-keygen -q -t ed25519 -N "" -C tpmkey-demo-host -f "$work/host_key"
# Run as root, sshd needs its privilege separation directory (Debian makes it at boot).
if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd; fi
for _ in $(seq 1 20); do
  port=$(( 10000 + (RANDOM % 11000) * 2 ))
  port_in_use "$port" && continue
  cat > "$work/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
AddressFamily inet
PidFile $work/sshd.pid
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PrintMotd no
EOF
  /usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
  sshd_pid=$!
  for _ in $(seq 1 200); do
    if grep -q "Server listening" "$work/sshd.log"; then break 2; fi
    kill -0 "$sshd_pid" 2>/dev/null || break
    sleep 0.05
  done
  kill "$sshd_pid" 2>/dev/null || true   # not listening (the port was taken): another port
  wait "$sshd_pid" 2>/dev/null || true
  sshd_pid=""
done
if [ -z "$sshd_pid" ]; then cat "$work/sshd.log" >&2; echo "demo: sshd did not start" >&2; exit 1; fi
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$work/host_key.pub")" > "$work/known_hosts"
echo "sshd: 127.0.0.1 port $port, user $user, authorized_keys: tpm2:demo-ec"

say "Logging in with ssh: the agent signs with tpm2:demo-ec, inside the TPM"
# No ssh_config and no key files: the only keys ssh can offer are the agent's; the host key is
# checked against known_hosts.
ssh_opts=(-F /dev/null -o IdentityAgent="$SSH_AUTH_SOCK" -o UserKnownHostsFile="$work/known_hosts"
          -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes
          -o IdentityFile="$work/none" -p "$port")
set -x
ssh "${ssh_opts[@]}" "$user@127.0.0.1" 'echo "logged in as $(id -un) on $(hostname), with a key that never leaves the TPM"'
{ set +x; } 2>/dev/null
echo "sshd's log:"
grep "Accepted publickey" "$work/sshd.log"

say "Done: two TPM keys, a file signed with each and verified, an ssh login with one. Stopping sshd, the agent and swtpm."
