#!/usr/bin/env bash
# Installs the Debian 12 packages tpmkey needs, if any is missing. Safe to run again.
set -euo pipefail

packages=(g++ cmake make pkg-config openssl libssl-dev libtss2-dev swtpm swtpm-tools tpm2-tools
          tpm2-openssl libgtest-dev libbenchmark-dev openssh-client openssh-server git
          tpm2-abrmd libtss2-tcti-tabrmd0 dbus-daemon dbus-bin clang)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "tpmkey: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "tpmkey: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
