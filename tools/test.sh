#!/usr/bin/env bash
# Runs the whole tpmkey test suite: a normal build and an ASan/UBSan build, each with ctest.
# Every swtpm test binary starts its own swtpm on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/deps.sh
export TSS2_LOG=all+none

echo "== build (RelWithDebInfo) and test"
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTPMKEY_BENCH=OFF >/dev/null
cmake --build build-test -j"$(nproc)"
(cd build-test && ctest --output-on-failure --timeout 900)

echo "== build with AddressSanitizer + UndefinedBehaviorSanitizer and test"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTPMKEY_SANITIZE=ON -DTPMKEY_BENCH=OFF >/dev/null
cmake --build build-asan -j"$(nproc)"
# The openssl binary is not instrumented: preload the sanitizer runtime for the provider it loads.
asan_rt=$(gcc -print-file-name=libasan.so)
(cd build-asan && TPMKEY_SUBPROCESS_PRELOAD="$asan_rt" ASAN_OPTIONS=detect_leaks=1 \
   ctest --output-on-failure --timeout 900)
