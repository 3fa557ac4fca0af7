#!/usr/bin/env bash
# kvrt-run as a user runs it: the golden greedy run reproduces the reference
# text exactly (stdout carries text only), stats go to stderr, and bad input
# gets a message and a nonzero exit, never a crash.
# Usage: kvrt_run.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.bin stories260K.gguf tok512.bin golden/stories260K-once/text.txt
tool=$build/kvrt-run
golden=$models/golden/stories260K-once
failures=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/out err=$tmp/err

fail() { echo "FAIL $1"; failures=$((failures + 1)); }
. "$(dirname "${BASH_SOURCE[0]}")/backends.bash"

# golden: same text as the independent implementation, from every model form
for form in "-m $src/models/stories260K.gguf" "-m $models/stories260K.gguf" \
            "-m $models/stories260K.bin -z $models/tok512.bin"; do
    for kv in f32 f16; do
        # shellcheck disable=SC2086
        if ! "$tool" $form -p "Once upon a time" -n 252 --temp 0 --ctx 512 --kv-type $kv -t 2 >"$out" 2>"$err"; then
            fail "golden ($form, $kv): exit $? ($(tail -n 2 "$err"))"; continue
        fi
        if ! cmp -s "$out" "$golden/text.txt"; then
            fail "golden ($form, $kv): stdout differs from text.txt"; continue
        fi
        grep -q "tok/s" "$err" && grep -q "blocks used" "$err" || fail "golden ($form, $kv): no stats on stderr"
        echo "ok   golden $form $kv"
    done
done

# --ctx beyond the file's stated context (128 in llama.cpp's file) warns
"$tool" -m "$models/stories260K.gguf" -p "Once" -n 4 --temp 0 --ctx 512 >"$out" 2>"$err" \
    && grep -q "warning: --ctx 512 exceeds" "$err" && echo "ok   ctx warning" || fail "ctx warning"

# same seed, same text; sampling flags accepted
"$tool" -m "$src/models/stories260K.gguf" -p "Once" -n 40 --temp 0.9 --top-k 20 --top-p 0.9 --min-p 0.02 \
    --repeat-penalty 1.1 --seed 7 >"$tmp/a" 2>/dev/null
"$tool" -m "$src/models/stories260K.gguf" -p "Once" -n 40 --temp 0.9 --top-k 20 --top-p 0.9 --min-p 0.02 \
    --repeat-penalty 1.1 --seed 7 >"$tmp/b" 2>/dev/null
cmp -s "$tmp/a" "$tmp/b" && [ -s "$tmp/a" ] && echo "ok   seeded sampling repeats" || fail "seeded sampling"

# --dump-logits: positions x vocab float32 (5 prompt rows + 9 decode rows for -n 10)
"$tool" -m "$src/models/stories260K.gguf" -p "Once upon a time" -n 10 --temp 0 --dump-logits "$tmp/l.f32" \
    >/dev/null 2>&1 && [ "$(stat -c %s "$tmp/l.f32")" -eq $(( (5 + 9) * 512 * 4 )) ] \
    && echo "ok   dump-logits size" || fail "dump-logits size"

# expect_error NAME STDERR_SUBSTRING ARGS...
expect_error() {
    local name=$1 needle=$2
    shift 2
    "$tool" "$@" >"$out" 2>"$err"
    local rc=$?
    if [ $rc -eq 0 ] || [ $rc -ge 128 ] || ! grep -qF -- "$needle" "$err"; then
        fail "$name: exit $rc, stderr '$(cat "$err")' (want '$needle')"; return
    fi
    echo "ok   $name"
}
head -c 20000 "$src/models/stories260K.gguf" >"$tmp/trunc.gguf"
head -c 1000 "$models/stories260K.bin" >"$tmp/trunc.bin"
long=$(printf 'Once upon a time %.0s' $(seq 1 200))
expect_error "missing model" "cannot open" -m "$tmp/nope.gguf" -p x
expect_error "no model" "no model" -p x
expect_error "truncated gguf" "bad model file" -m "$tmp/trunc.gguf" -p x
expect_error "truncated checkpoint" "bad model file" -m "$tmp/trunc.bin" -z "$models/tok512.bin" -p x
expect_error "prompt over the context" "more than the context" -m "$src/models/stories260K.gguf" -p "$long" --ctx 64
expect_error "bad block size" "block size" -m "$src/models/stories260K.gguf" -p x --block-size 12
expect_error "bad kv type" "--kv-type" -m "$src/models/stories260K.gguf" -p x --kv-type q4
expect_error "bad number" "is not a number" -m "$src/models/stories260K.gguf" -p x -n abc
expect_error "unknown flag" "unknown option" -m "$src/models/stories260K.gguf" --frobnicate 1
expect_error "unknown backend" "unknown backend" -m "$src/models/stories260K.gguf" --backend cuda
"$tool" -m "$src/models/stories260K.gguf" -p "$long" --ctx 64 --truncate-prompt -n 2 --temp 0 >"$out" 2>"$err" \
    && grep -q "truncated" "$err" && echo "ok   --truncate-prompt" || fail "--truncate-prompt"
# (the loaders unload GPU drivers before LeakSanitizer can name their leaks;
# the library's own listing code is leak-checked in test_vulkan_device/test_opencl_backend)
for b in cpu vulkan opencl; do
    built $b || { not_built "--list-devices $b" "$tool" --list-devices --backend $b; continue; }
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" "$tool" --list-devices --backend $b >"$out" 2>"$err" \
        && grep -q "^0: " "$out" \
        && echo "ok   --list-devices $b" || fail "--list-devices $b: $(cat "$err")"
done
# --profile: the same text on stdout, the per-op table on stderr with the call
# counts the Llama graph implies (-n 12 = 12 forwards of 5 layers: 7 matmuls a
# layer + the LM head; one prefill and 11 decodes)
for b in cpu vulkan; do
    built $b || { not_built "--profile $b" "$tool" -m "$src/models/stories260K.gguf" -p x --backend $b --profile; continue; }
    asan="${ASAN_OPTIONS:-}"; [ $b = vulkan ] && asan="$asan:detect_leaks=0"
    ASAN_OPTIONS="$asan" "$tool" -m "$src/models/stories260K.gguf" -p "Once upon a time" -n 12 --temp 0 \
        --backend $b >"$tmp/plain" 2>/dev/null
    ASAN_OPTIONS="$asan" "$tool" -m "$src/models/stories260K.gguf" -p "Once upon a time" -n 12 --temp 0 \
        --backend $b --profile >"$out" 2>"$err"
    if ! cmp -s "$tmp/plain" "$out" || [ ! -s "$out" ]; then
        fail "--profile $b: stdout differs from the run without it"
    elif ! grep -q "^| op  *| calls | total ms | mean us |  *share |" "$err" \
        || ! grep -Eq "^\| matmul +\| +432 \|" "$err" || ! grep -Eq "^\| attn_decode +\| +55 \|" "$err" \
        || ! grep -Eq "^\| attn_prefill +\| +5 \|" "$err" || grep -q "^| op" "$out"; then
        fail "--profile $b: no per-op table with the expected calls on stderr: $(cat "$err")"
    else
        echo "ok   --profile $b"
    fi
done
built opencl && expect_error "--profile on opencl" "--profile: opencl backend does not support per-op profiling" \
    -m "$src/models/stories260K.gguf" -p x --backend opencl --profile
"$tool" --help >"$out" && grep -q "usage: kvrt-run" "$out" && echo "ok   --help" || fail "--help"

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
