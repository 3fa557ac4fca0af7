#!/usr/bin/env bash
# The whole test suite, as CI runs it: a warnings-as-errors build and every
# ctest suite (CPU, Vulkan on lavapipe, OpenCL on PoCL), then the same suites
# under AddressSanitizer + UBSan, then a short libFuzzer smoke run.
# Usage: tools/run-tests.sh   (KVRT_JOBS=N to change build parallelism)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${KVRT_JOBS:-$(nproc)}
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }

step "build (Release, -Werror)"
cmake -S . -B build-ci -DCMAKE_BUILD_TYPE=Release -DKVRT_WERROR=ON >/dev/null
cmake --build build-ci -j "$jobs"
step "tests"
(cd build-ci && ctest --output-on-failure -j "$jobs")

step "build (ASan + UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVRT_WERROR=ON -DKVRT_SANITIZE=ON >/dev/null
cmake --build build-asan -j "$jobs"
step "tests under ASan + UBSan"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j "$jobs")

if ls tests/fuzz/fuzz_*.c >/dev/null 2>&1; then
  step "fuzz smoke (libFuzzer, clang)"
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVRT_FUZZ=ON -DKVRT_TESTS=OFF \
    -DKVRT_TOOLS=OFF >/dev/null
  cmake --build build-fuzz -j "$jobs"
  for f in build-fuzz/fuzz_*; do
    name=$(basename "$f")
    corpus=tests/fuzz/corpus/${name#fuzz_}
    mkdir -p build-fuzz/corpus-$name
    echo "--- $name (30 s)"
    "$f" -max_total_time=30 -rss_limit_mb=2048 -print_final_stats=1 build-fuzz/corpus-$name \
      $( [ -d "$corpus" ] && echo "$corpus" ) 2>&1 | tail -n 12
  done
fi
step "all tests passed"
