#!/usr/bin/env bash
# Every tool's command line behaves like the ecosystem's (getopt_long, one
# table of common flags): --name=value, -n3, -- ending the options, strict
# numbers, --version, --help, exit codes 0 ok / 1 failure / 2 usage, -f for
# prompts longer than a command line, progress only on a terminal, and
# --backend auto (the default) choosing the CPU here and saying so.
# Usage: tool_args.sh BUILD_DIR SOURCE_DIR
set -u
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.gguf stories260K.bin tok512.bin
model=$models/stories260K.gguf
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

# ---- every tool: --version, --help, exit codes 0 ok / 1 failure / 2 usage -------------------------------
version_help() { # NAME CMD...: --version and --help exit 0 with the text on stdout
    local name=$1
    shift
    if "$@" --version >"$out" 2>"$err" && grep -qE "^$name \(kvrt\) [0-9]+\.[0-9]+\.[0-9]+$" "$out"; then
        echo "ok   $name --version"
    else
        fail "$name --version: $(cat "$out" "$err")"
    fi
    if "$@" --help >"$out" 2>"$err" && grep -q "^usage: $name" "$out" && grep -q -- "--version" "$out" \
        && grep -q "exit status: 0 ok, 1 failure, 2 usage error" "$out"; then
        echo "ok   $name --help"
    else
        fail "$name --help: $(head -c 300 "$out") $(cat "$err")"
    fi
    expect_usage "$name unknown option" "unknown option '--bogus'" "$@" --bogus
    expect_usage "$name unknown short option" "unknown option '-Q'" "$@" -Q
}
bench=$build/kvrt-bench
convert=$build/kvrt-convert
tokenize=$build/kvrt-tokenize
synth=$build/kvrt-synth
mem=$build/kvrt-mem
version_help kvrt-run "$run"
version_help kvrt-convert "$convert"
version_help kvrt-tokenize "$tokenize"
version_help kvrt-synth "$synth"
version_help kvrt-mem "$mem"
version_help kvrt-quantize "$build/kvrt-quantize"
version_help kvrt-server "$build/kvrt-server"
for sub in attn model serve threads tokenize; do version_help "kvrt-bench $sub" "$bench" "$sub"; done
expect_rc 0 "kvrt-bench --version" "$bench" --version && grep -q "^kvrt-bench (kvrt) " "$out" \
    || fail "kvrt-bench --version: $(cat "$out")"
expect_usage "kvrt-bench unknown subcommand" "unknown subcommand" "$bench" nope

# kvrt-convert: three arguments; -- ends the options, so an output may start with '-'
ck=$models/stories260K.bin tok=$models/tok512.bin
expect_usage "kvrt-convert missing arguments" "argument" "$convert" "$ck" "$tok"
expect_usage "kvrt-convert extra argument" "unexpected argument 'four'" "$convert" "$ck" "$tok" "$tmp/o.gguf" four
expect_usage "kvrt-convert --type q5" "--type: unknown value 'q5'" "$convert" --type q5 "$ck" "$tok" "$tmp/o.gguf"
expect_usage "kvrt-convert --ctx 0" "--ctx: 0 is out of range" "$convert" --ctx 0 "$ck" "$tok" "$tmp/o.gguf"
expect_rc 1 "kvrt-convert failure (missing checkpoint)" "$convert" "$tmp/none.bin" "$tok" "$tmp/o.gguf"
(cd "$tmp" && "$convert" --type=f16 -- "$ck" "$tok" -dash.gguf >"$out" 2>"$err") \
    && [ -s "$tmp/-dash.gguf" ] && echo "ok   kvrt-convert -- -dash.gguf (exit 0)" || fail "kvrt-convert --: $(cat "$err")"
# options after the arguments are still options (getopt_long permutes)
expect_rc 0 "kvrt-convert options after the arguments" "$convert" "$ck" "$tok" "$tmp/late.gguf" --type q8_0 -q
[ -s "$err" ] && fail "kvrt-convert -q printed: $(cat "$err")"

# kvrt-tokenize: -f with a text longer than a command-line argument may be
expect_rc 0 "kvrt-tokenize ok" "$tokenize" -m "$model" -p "Once upon a time"
expect_rc 1 "kvrt-tokenize failure (missing file)" "$tokenize" -m "$tmp/none.gguf" -p x
expect_usage "kvrt-tokenize -p and -f" "exactly one of -p and -f" "$tokenize" -m "$model" -p x -f "$tmp/small.txt"
if "$tokenize" -m "$model" -f "$tmp/big.txt" >"$out" 2>"$err"; then
    n_big=$(wc -w <"$out")
    n_small=$("$tokenize" -m "$model" --no-bos -f "$tmp/small.txt" | wc -w)
    # each copy of the sentence tokenizes the same after the first; BOS adds one
    [ "$n_big" -gt 30000 ] && [ "$n_big" -gt $((2500 * n_small)) ] \
        && echo "ok   kvrt-tokenize -f with a $(stat -c %s "$tmp/big.txt")-byte text ($n_big ids)" \
        || fail "kvrt-tokenize -f big: $n_big ids ($n_small per sentence)"
else
    fail "kvrt-tokenize -f big: $(cat "$err")"
fi
"$tokenize" -m "$model" -f - <"$tmp/small.txt" >"$out" 2>"$err" \
    && [ "$(cat "$out")" = "$("$tokenize" -m "$model" -p "$small")" ] && echo "ok   kvrt-tokenize -f -" \
    || fail "kvrt-tokenize -f -: $(cat "$err")"

# kvrt-synth and kvrt-convert: progress (\r percentages) only on a terminal; here stderr is a file
expect_rc 0 "kvrt-synth ok" "$synth" --preset=tiny --layers=1 -o "$tmp/s.gguf"
if grep -q $'\r' "$err"; then fail "kvrt-synth wrote \\r progress to a file: $(od -c "$err" | head -n 3)"
else echo "ok   kvrt-synth: no progress when stderr is not a terminal"; fi
expect_rc 1 "kvrt-synth failure (no such folder)" "$synth" -o "$tmp/none/s.gguf"
expect_usage "kvrt-synth no output" "no output file" "$synth" --preset tiny
expect_usage "kvrt-synth --std nan" "--std: 'nan' is not a finite number" "$synth" --std nan -o "$tmp/x.gguf"
expect_usage "kvrt-synth --std 0" "--std: 0 is out of range (must be > 0)" "$synth" --std 0 -o "$tmp/x.gguf"
expect_usage "kvrt-synth --seed -1" "--seed: '-1' is not a number" "$synth" --seed -1 -o "$tmp/x.gguf"
expect_usage "kvrt-synth --layers 2x" "--layers: '2x' is not a number" "$synth" --layers 2x -o "$tmp/x.gguf"
expect_rc 0 "kvrt-convert ok" "$convert" "$ck" "$tok" "$tmp/c.gguf"
if grep -q $'\r' "$err"; then fail "kvrt-convert wrote \\r progress to a file"
else echo "ok   kvrt-convert: no progress when stderr is not a terminal"; fi
if command -v script >/dev/null; then # under a pseudo-terminal the progress is back
    script -qec "$synth --preset tiny -o $tmp/t.gguf" /dev/null >"$out" 2>&1
    grep -q $'\r'"kvrt-synth: 100%" "$out" && echo "ok   kvrt-synth: progress on a terminal" \
        || fail "kvrt-synth on a terminal: no progress: $(od -c "$out" | head -n 3)"
fi

# kvrt-mem: the KV cache's block sizes, strict numbers, a write error is a failure
expect_rc 0 "kvrt-mem ok" "$mem" --preset llama-2-7b --ctx=4k
expect_usage "kvrt-mem --block-size 1" "--block-size: use 8, 16 or 32" "$mem" --preset llama-2-7b --ctx 4k --block-size 1
expect_usage "kvrt-mem --ctx 4kk" "--ctx: '4kk' is not a number" "$mem" --preset llama-2-7b --ctx 4kk
"$mem" --preset llama-2-7b --ctx 4k >/dev/full 2>"$err"
[ $? -eq 1 ] && grep -q "cannot write" "$err" && echo "ok   kvrt-mem exit 1 on a full stdout" \
    || fail "kvrt-mem >/dev/full: $(cat "$err")"

# kvrt-bench: the same common flags, bounds and messages as kvrt-run in every subcommand
for sub in attn model serve; do
    expect_usage "kvrt-bench $sub --block-size 12" "--block-size: use 8, 16 or 32" "$bench" $sub --block-size 12
    expect_usage "kvrt-bench $sub --device 4294967296" "--device: 4294967296 is out of range" \
        "$bench" $sub --backend vulkan --device 4294967296
    expect_usage "kvrt-bench $sub --device with auto" "--device picks a device of a named backend" \
        "$bench" $sub --backend auto --device 1
    expect_usage "kvrt-bench $sub -t 1025" "--threads: 1025 is out of range [0, 1024]" "$bench" $sub -t1025
    expect_usage "kvrt-bench $sub --kv-type q4" "--kv-type: unknown value 'q4'" "$bench" $sub --kv-type=q4
    expect_usage "kvrt-bench $sub --backend tpu" "--backend: unknown backend 'tpu' (auto, cpu, vulkan, opencl)" \
        "$bench" $sub --backend tpu
    expect_usage "kvrt-bench $sub positional" "unexpected argument 'extra'" "$bench" $sub extra
done
expect_usage "kvrt-bench attn -t list" "--threads: takes one number" "$bench" attn -t 1,2
expect_usage "kvrt-bench model -t 17 counts" "--threads: bad list" "$bench" model -t 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
expect_usage "kvrt-bench attn --ctx junk" "--ctx: '4q' is not a number" "$bench" attn --ctx 512,4q
expect_rc 1 "kvrt-bench serve failure (missing model)" "$bench" serve --model "$tmp/none.gguf" --requests 4
if expect_rc 0 "kvrt-bench serve ok (auto, -v)" "$bench" serve --model "$model" --requests 8 --max-seqs 4 -v -t1 \
    --backend=auto; then
    grep -q "^kvrt-bench serve: backend auto: " "$err" || fail "kvrt-bench serve: the auto choice is not on stderr"
    grep -q "^kvrt-bench serve: backend [a-z]*, device .*, threads 1, KV f32, block size 16" "$err" \
        || fail "kvrt-bench serve -v: no settings line: $(head -n 3 "$err")"
fi
expect_rc 1 "kvrt-bench attn failure (no such device)" "$bench" attn --quick --backend opencl --device no-such-device
# -m is --model in every subcommand; tokenize is on the common parser too
expect_rc 1 "kvrt-bench serve -m (missing model)" "$bench" serve -m "$tmp/none.gguf" --requests 4
mkfifo "$tmp/fifo"
if expect_rc 1 "kvrt-bench model -m FIFO" "$bench" model -m "$tmp/fifo" --quick; then
    grep -q "is a FIFO, not a regular file" "$err" || fail "kvrt-bench model -m FIFO: $(cat "$err")"
    grep -q "measuring memory bandwidth" "$err" && fail "kvrt-bench model -m FIFO: measured before refusing"
fi
vocab=$src/tests/data/vocab/gpt-2-vocab.gguf
expect_rc 0 "kvrt-bench tokenize --mb=1 -t1 --vocab=FILE" "$bench" tokenize --mb=1 -t1 --vocab="$vocab" \
    && grep -q "^gpt-2-vocab.gguf" "$out" || fail "kvrt-bench tokenize: no row: $(cat "$out" "$err")"
expect_usage "kvrt-bench tokenize -t 2000" "--threads: 2000 is out of range" "$bench" tokenize -t 2000
expect_usage "kvrt-bench tokenize --mb 0" "--mb: 0 is out of range" "$bench" tokenize --mb 0
expect_usage "kvrt-bench tokenize extra argument" "unexpected argument 'x'" "$bench" tokenize x
# (attn and model runs that exit 0 are kvrt_bench.sh's and kvrt_bench_model.sh's: minutes on a busy machine)

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
