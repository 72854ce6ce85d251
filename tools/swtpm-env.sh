# Sourced by the demo: starts a private swtpm (fresh state, free loopback ports) and exports
# TPMKEY_TCTI for it. stop_swtpm stops it and removes its state.

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_swtpm() {
  SWTPM_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tpmkey-swtpm.XXXXXX")
  local port
  for _ in $(seq 1 100); do
    port=$(( 10000 + (RANDOM % 11000) * 2 ))  # below the ephemeral range (32768+)
    if ! port_in_use "$port" && ! port_in_use $((port + 1)); then break; fi
  done
  swtpm socket --tpm2 --daemon --pid "file=$SWTPM_DIR/pid" --tpmstate "dir=$SWTPM_DIR" \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
    --flags not-need-init,startup-clear
  for _ in $(seq 1 100); do port_in_use "$port" && break; sleep 0.05; done
  export TPMKEY_TCTI="swtpm:host=127.0.0.1,port=$port"
}

stop_swtpm() {
  if [ -n "${SWTPM_DIR:-}" ] && [ -f "$SWTPM_DIR/pid" ]; then
    kill "$(cat "$SWTPM_DIR/pid")" 2>/dev/null || true
  fi
  [ -n "${SWTPM_DIR:-}" ] && rm -rf "$SWTPM_DIR"
  SWTPM_DIR=""
}
