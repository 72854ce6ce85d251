#!/usr/bin/env bash
# The tpmkey demo: build, start a private swtpm, create an EC and an RSA key inside it, sign a
# file with `openssl pkeyutl` through the provider, verify with OpenSSL's default provider alone.
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
trap 'stop_swtpm; rm -rf "$work"' EXIT
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
say "Done: two TPM keys created, a file signed with each, both signatures verified. Stopping swtpm."
