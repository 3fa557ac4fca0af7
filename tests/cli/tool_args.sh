#!/usr/bin/env bash
# Every tool's command line behaves like the ecosystem's (getopt_long, one
# table of common flags): --name=value, -n3, -- ending the options, strict
# numbers, --version, --help, exit codes 0 ok / 1 failure / 2 usage, -f for
# prompts longer than a command line, progress only on a terminal, and
# --backend auto (the default) choosing the CPU here and saying so.
# Usage: tool_args.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
models=${KVRT_TEST_MODELS:-$src/../shared/models}
model=$src/models/stories260K.gguf
failures=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/out err=$tmp/err

fail() { echo "FAIL $1"; failures=$((failures + 1)); }
. "$(dirname "${BASH_SOURCE[0]}")/backends.bash"

# expect_rc WANT NAME CMD...: exit status WANT (never a crash)
expect_rc() {
    local want=$1 name=$2
    shift 2
    "$@" >"$out" 2>"$err"
    local rc=$?
    if [ $rc -ne "$want" ]; then
        fail "$name: exit $rc, want $want; stderr: $(head -c 600 "$err")"; return 1
    fi
    echo "ok   $name"
}

# expect_usage NAME STDERR_SUBSTRING CMD...: exit 2, the message on stderr, nothing on stdout
expect_usage() {
    local name=$1 needle=$2
    shift 2
    "$@" >"$out" 2>"$err"
    local rc=$?
    if [ $rc -ne 2 ] || [ -s "$out" ] || ! grep -qF -- "$needle" "$err"; then
        fail "$name: exit $rc (want 2), stdout '$(head -c 200 "$out")', stderr '$(cat "$err")' (want '$needle')"
        return 1
    fi
    echo "ok   $name"
}

run=$build/kvrt-run

# ---- kvrt-run: getopt_long forms ------------------------------------------------------
"$run" -m "$model" -p "Once upon a time" --n-predict 3 --temp 0 --backend cpu >"$tmp/spaced" 2>"$tmp/spaced.err"
if "$run" -m "$model" -p "Once upon a time" -n3 --temp=0 --backend=cpu >"$out" 2>"$err" \
    && cmp -s "$out" "$tmp/spaced" && [ -s "$out" ] && grep -q "generated 3 tokens" "$err"; then
    echo "ok   kvrt-run -n3 --temp=0 --backend=cpu"
else
    fail "kvrt-run -n3 --temp=0: $(cat "$err")"
fi
"$run" --model="$model" --prompt="Once upon a time" --n-pred=3 --te=0 --backend cpu >"$out" 2>"$err" \
    && cmp -s "$out" "$tmp/spaced" && echo "ok   kvrt-run unambiguous prefixes (--n-pred, --te)" \
    || fail "kvrt-run prefixes: $(cat "$err")"
# -- ends the options: what follows is an argument (kvrt-run takes none), and a bare -- is fine
expect_usage "kvrt-run -- then an option-like argument" "unexpected argument '-n'" \
    "$run" -m "$model" -p x -- -n 3
expect_rc 0 "kvrt-run with a trailing --" "$run" -m "$model" -p x -n 1 --temp 0 --backend cpu --
expect_usage "kvrt-run ambiguous prefix" "ambiguous" "$run" -m "$model" --t 2
expect_usage "kvrt-run value given to a flag" "--profile takes no value" "$run" -m "$model" --profile=1

# ---- strict numbers ------------------------------------------------------------------------
expect_usage "-n trailing junk" "--n-predict: '5x' is not a number" "$run" -m "$model" -n 5x
expect_usage "-n with spaces" "is not a number" "$run" -m "$model" -n " 5"
expect_usage "-n beyond int32" "--n-predict: 4294967296 is out of range" "$run" -m "$model" -n 4294967296
expect_usage "-n beyond int64" "is out of range" "$run" -m "$model" -n 99999999999999999999999
expect_usage "-t out of range" "--threads: 1025 is out of range [0, 1024]" "$run" -m "$model" -t 1025
expect_usage "-t list where one count is taken" "--threads: takes one number" "$run" -m "$model" -t 1,2
expect_usage "--temp nan" "--temp: 'nan' is not a finite number" "$run" -m "$model" --temp nan
expect_usage "--temp inf" "--temp: 'inf' is not a finite number" "$run" -m "$model" --temp inf
expect_usage "--temp hex" "is not a finite number" "$run" -m "$model" --temp 0x1p1
expect_usage "--temp overflow" "--temp: '1e999' is not a finite number" "$run" -m "$model" --temp 1e999
expect_usage "--top-p 0" "--top-p: 0 is out of range (0, 1]" "$run" -m "$model" --top-p 0
expect_usage "--top-p 1.5" "--top-p: 1.5 is out of range" "$run" -m "$model" --top-p 1.5
expect_usage "--repeat-penalty -1" "--repeat-penalty: -1 is out of range" "$run" -m "$model" --repeat-penalty -1
expect_usage "--seed -2" "--seed: -2 is out of range" "$run" -m "$model" -s -2
expect_usage "--ctx 1e8" "--ctx: '1e8' is not a number" "$run" -m "$model" --ctx 1e8
expect_usage "--block-size 12" "--block-size: use 8, 16 or 32" "$run" -m "$model" --block-size 12
expect_usage "--block-size 64" "--block-size: use 8, 16 or 32" "$run" -m "$model" --block-size 64
expect_usage "--kv-type q4" "--kv-type: unknown value 'q4'" "$run" -m "$model" --kv-type q4
# --device: an index is an int32, never wrapped (4294967296 is not device 0)
expect_usage "--device 4294967296" "--device: 4294967296 is out of range [0, 2147483647]" \
    "$run" -m "$model" --backend vulkan --device 4294967296
expect_usage "--device -1" "--device: -1 is out of range" "$run" -m "$model" --backend opencl --device -1
expect_usage "--device with auto" "--device picks a device of a named backend" "$run" -m "$model" --device 0

# ---- exit codes, --version, --help -------------------------------------------------------------
expect_rc 0 "kvrt-run ok" "$run" -m "$model" -p x -n 1 --backend cpu
expect_rc 1 "kvrt-run failure (missing model file)" "$run" -m "$tmp/missing.gguf" -p x
expect_rc 2 "kvrt-run usage (unknown option)" "$run" -m "$model" --frobnicate
if "$run" --version >"$out" 2>"$err" && grep -qE "^kvrt-run \(kvrt\) [0-9]+\.[0-9]+\.[0-9]+$" "$out"; then
    echo "ok   kvrt-run --version"
else
    fail "kvrt-run --version: $(cat "$out" "$err")"
fi
"$run" --help >"$out" 2>"$err" && grep -q "^usage: kvrt-run" "$out" && grep -q -- "--pipeline-cache FILE" "$out" \
    && grep -q -- "-f, --file FILE" "$out" && echo "ok   kvrt-run --help" || fail "kvrt-run --help"

# ---- -f: a prompt larger than one command-line argument may be (128 KiB) ---------------------
printf 'Once upon a time, there was a little girl named Lily. ' >"$tmp/small.txt"
"$run" -m "$model" -p "$(cat "$tmp/small.txt")" -n 4 --temp 0 --backend cpu >"$tmp/via_p" 2>/dev/null
"$run" -m "$model" -f "$tmp/small.txt" -n 4 --temp 0 --backend cpu >"$out" 2>"$err" \
    && cmp -s "$out" "$tmp/via_p" && [ -s "$out" ] && echo "ok   -f FILE equals -p TEXT" || fail "-f small: $(cat "$err")"
"$run" -m "$model" -f - -n 4 --temp 0 --backend cpu <"$tmp/small.txt" >"$out" 2>"$err" \
    && cmp -s "$out" "$tmp/via_p" && echo "ok   -f - reads stdin" || fail "-f -: $(cat "$err")"
small=$(cat "$tmp/small.txt")
for ((i = 0; i < 2600; i++)); do printf '%s ' "$small"; done >"$tmp/big.txt"
[ "$(stat -c %s "$tmp/big.txt")" -gt 131072 ] || fail "the big prompt is not over 128 KiB"
# (a shell cannot pass it with -p: exec refuses a single argument over 128 KiB)
if "$run" -m "$model" -f "$tmp/big.txt" -n 2 --temp 0 --ctx 256 --truncate-prompt --backend cpu >"$out" 2>"$err" \
    && grep -q "prompt 256 tokens" "$err" && grep -q "truncated" "$err" && grep -q "Lily" "$out"; then
    echo "ok   -f with a $(stat -c %s "$tmp/big.txt")-byte prompt"
else
    fail "-f big prompt: $(tail -n 3 "$err")"
fi
expect_rc 1 "-f missing file" "$run" -m "$model" -f "$tmp/nope.txt"
grep -q "nope.txt" "$err" || fail "-f missing file: the message does not name it"
expect_usage "-p and -f together" "one of -p and -f" "$run" -m "$model" -p x -f "$tmp/small.txt"

# ---- --backend auto (the default): the CPU here, said on stderr ------------------------------------
# This machine's GPU drivers are software (lavapipe, PoCL's CPU device): auto must not choose them.
hardware=0
if built vulkan && "$run" --list-devices --backend vulkan 2>/dev/null | grep -qE "\((discrete|integrated|virtual),"; then
    hardware=1
fi
if built opencl && "$run" --list-devices --backend opencl 2>/dev/null | grep -q ", gpu,"; then
    hardware=1
fi
if "$run" -m "$model" -p x -n 1 --temp 0 >"$out" 2>"$err"; then
    if [ $hardware -eq 0 ] && grep -q "^kvrt-run: backend auto: cpu (no hardware Vulkan or OpenCL device" "$err"; then
        echo "ok   auto chose the cpu and said so"
    elif [ $hardware -eq 1 ] && grep -qE "^kvrt-run: backend auto: (vulkan|opencl) " "$err"; then
        echo "ok   auto chose a hardware device and said so"
    else
        fail "auto: $(grep "backend auto" "$err")"
    fi
    if built vulkan && [ $hardware -eq 0 ] && ! grep -q "backend auto: .*llvmpipe.*\[vulkan 0\]" "$err"; then
        fail "auto: the software Vulkan device passed over is not named: $(grep "backend auto" "$err")"
    fi
else
    fail "default backend: exit $? $(cat "$err")"
fi
"$run" --list-devices >"$out" 2>"$err" && grep -q "^cpu:" "$out" && grep -q "^auto: " "$out" \
    && echo "ok   --list-devices with auto lists every backend" || fail "--list-devices (auto): $(cat "$out" "$err")"
# a software driver is used when named
if built vulkan; then
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" "$run" -m "$model" -p x -n 1 --temp 0 --backend vulkan \
        >"$out" 2>"$err" && ! grep -q "backend auto" "$err" && echo "ok   --backend vulkan uses the named backend" \
        || fail "--backend vulkan: $(cat "$err")"
fi

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
