#!/usr/bin/env bash
# kvrt-mem as a user runs it: the published KV sizes, the paged-block waste
# on a hand-computed case, the MHA/GQA/MQA comparison, and usage errors.
# Usage (ctest): bash kvrt_mem.sh BUILD_DIR SOURCE_DIR
set -u
tool="$1/kvrt-mem"
fails=0
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# run ARGS...: runs the tool, stdout in $out, stderr in $err, status in $rc
run() { "$tool" "$@" >"$out" 2>"$err"; rc=$?; }

# expect_line TEXT: stdout has a line containing TEXT (fixed string)
expect_line() { grep -qF -- "$1" "$out" || { fail "'${args[*]}': no line with '$1'"; sed 's/^/  | /' "$out" >&2; }; }

# expect_row FIRST_CELL CELL...: a table row that starts with FIRST_CELL has the given cells in order
expect_row() {
  local want="|" c
  for c in "$@"; do want="$want *$c *|"; done
  grep -qE -- "^$want" "$out" || { fail "'${args[*]}': no table row '$*'"; sed 's/^/  | /' "$out" >&2; }
}

ok() { args=("$@"); run "$@"; [ "$rc" -eq 0 ] || { fail "'$*' exited $rc: $(cat "$err")"; }; }

# --- published numbers --------------------------------------------------------
ok --preset llama-2-7b --ctx 4096
expect_line "KV cache total: 2.00 GiB (2.15 GB) = $((2 * 32 * 32 * 128 * 2 * 4096)) bytes"
expect_line "per token:      512 KiB"
ok --preset llama-2-70b --ctx 4096 --kv-type f16
expect_line "KV cache total: 1.25 GiB (1.34 GB) = $((2 * 80 * 8 * 128 * 2 * 4096)) bytes"
ok --preset llama-2-70b --ctx 4k --kv-type f32
expect_line "KV cache total: 2.50 GiB (2.68 GB) = $((2 * 80 * 8 * 128 * 4 * 4096)) bytes"
# quantized KV: a 128-value row is 128 bytes + 4 scales of 2 (q8_0), 64 + 8 (q4_0)
ok --preset llama-2-7b --ctx 4096 --kv-type q8_0
expect_line "KV type:        q8_0 (136 bytes per row of 128 values, 8.50 bits per value)"
expect_line "= $((2 * 32 * 32 * 136 * 4096)) bytes"
ok --preset llama-2-7b --ctx 4096 --kv-type q4_0
expect_line "KV type:        q4_0 (72 bytes per row of 128 values, 4.50 bits per value)"
expect_line "= $((2 * 32 * 32 * 72 * 4096)) bytes"
# fp8: one byte per value, no scale, any head_dim (stories260K's 8 too)
ok --preset llama-2-7b --ctx 4096 --kv-type fp8
expect_line "KV type:        fp8 (128 bytes per row of 128 values, 8.00 bits per value)"
expect_line "= $((2 * 32 * 32 * 128 * 4096)) bytes"
ok --preset stories260K --ctx 100 --kv-type fp8_e5m2
expect_line "KV type:        fp8_e5m2 (8 bytes per row of 8 values, 8.00 bits per value)"
# --budget: the context each KV type fits (whole blocks, scales included) and the --ctx sequences
ok --preset llama-2-7b --budget 8G --batch 4 --ctx 4096
expect_line "context lengths that fit a KV pool of 8.00 GiB (8.59 GB) (batch 4, block size 16"
expect_row f32 "1 MiB" 2048 0.50x 2
expect_row f16 "512 KiB" 4096 1.00x 4
expect_row q8_0 "272 KiB" $((8 * 1024 * 1024 / 4 / (16 * 272) * 16)) 1.88x 7
expect_row q4_0 "144 KiB" 14560 3.55x 14
expect_row fp8 "256 KiB" 8192 2.00x 8
expect_row fp8_e5m2 "256 KiB" 8192 2.00x 8
ok --preset stories260K --budget 1MiB --kv-type-k f16 --kv-type-v fp8
expect_row q8_0 - "head_dim 8 not a multiple of 32" - -
expect_row "K f16 / V fp8" "480 B" 2176 1.33x -
ok --preset llama-2-7b --budget 80GB
expect_line "context lengths that fit a KV pool of 74.51 GiB (80.00 GB)"
# K and V apart: each row by its own type, whatever the flags' order
ok --preset llama-2-7b --ctx 4096 --kv-type-k q8_0 --kv-type f16
expect_line "KV type:        K q8_0 / V f16 (136 + 256 bytes per K and V row of 128 values, 12.25 bits per value)"
expect_line "= $((32 * 32 * (136 + 256) * 4096)) bytes"
ok --preset llama-2-7b --ctx 4096 --kv-type-v q4_0 --kv-type-k q8_0
expect_line "= $((32 * 32 * (136 + 72) * 4096)) bytes"
ok --preset llama-3-8b --ctx 8192 --batch 4
expect_line "= $((2 * 32 * 8 * 128 * 2 * 8192 * 4)) bytes"

# every shape as flags gives the preset's answer; --dim is heads x head_dim
ok --layers 32 --heads 32 --kv-heads 8 --head-dim 128 --ctx 8192 --batch 4
expect_line "= $((2 * 32 * 8 * 128 * 2 * 8192 * 4)) bytes"
ok --layers 32 --heads 32 --kv-heads 8 --dim 4096 --ctx 8192 --batch 4
expect_line "head_dim 128"
expect_line "= $((2 * 32 * 8 * 128 * 2 * 8192 * 4)) bytes"
# a flag overrides one field of a preset
ok --preset llama-2-7b --kv-heads 4 --ctx 1000
expect_line "= $((2 * 32 * 4 * 128 * 2 * 1000)) bytes"

# --- paged blocks: stories260K (5 layers, 4 KV heads, head_dim 8), f32, 100 tokens x 3, block 16
# per token 2*5*4*8*4 = 1280 B; ceil(100/16) = 7 blocks, the last holds 100-96 = 4 tokens,
# 12 slots wasted per sequence; pool 21 blocks of 16*1280 = 20480 B = 430080 B;
# waste 36 tokens = 46080 B = 10.71 % of the pool.
ok --preset stories260K --ctx 100 --batch 3 --kv-type f32 --block-size 16
expect_line "KV cache total: 0.000358 GiB (0.000384 GB) = 384000 bytes"
expect_line "block:              20 KiB (20480 bytes, all layers, K and V)"
expect_line "blocks per seq:     7 (last block holds 4 of 16 tokens)"
expect_line "waste per seq:      12 tokens = 15360 bytes"
expect_line "pool:               21 blocks = 0.000401 GiB (0.00043 GB) = 430080 bytes"
expect_line "waste total:        36 tokens = 46080 bytes (10.71 % of the pool)"
# block 32: ceil(100/32) = 4 blocks (128 slots), 28 wasted per sequence
ok --preset stories260K --ctx 100 --batch 3 --kv-type f32 --block-size 32
expect_line "waste per seq:      28 tokens = $((28 * 1280)) bytes"
expect_line "pool:               12 blocks"
# a context that fills its blocks wastes nothing
ok --preset llama-2-7b --ctx 4096 --block-size 16
expect_line "waste total:        0 tokens = 0 bytes (0.00 % of the pool)"

# --- MHA vs GQA vs MQA for one shape (variant, KV heads, q heads per KV head, per token, GiB, GB, ratio)
ok --preset llama-2-7b --ctx 4096
expect_row MHA 32 1 "512 KiB" 2.00 2.15 1.000x "<- this"
expect_row GQA 8 4 "128 KiB" 0.50 0.54 0.250x
expect_row MQA 1 32 "16 KiB" 0.06 0.07 0.031x
ok --preset llama-2-70b --ctx 4096
expect_row MHA 64 1 "2.5 MiB" 10.00 10.74 1.000x
expect_row GQA 8 8 "320 KiB" 1.25 1.34 0.125x "<- this"

# --- the context table includes the requested length, marked
ok --preset llama-2-7b --ctx 3000
expect_row "3000 \\*" 1.46
expect_row 131072 64.00 64.00 68.72 8192 64.00

# --- usage errors: exit 2, a message on stderr, nothing on stdout
expect_usage_error() { # PATTERN ARGS...
  local pat="$1"; shift
  args=("$@"); run "$@"
  [ "$rc" -eq 2 ] || fail "'$*' exited $rc, want 2"
  [ ! -s "$out" ] || fail "'$*' wrote to stdout"
  grep -qiE -- "$pat" "$err" || fail "'$*': stderr lacks /$pat/: $(cat "$err")"
}
expect_usage_error "unknown preset 'nope'.*llama-2-7b.*stories260K" --preset nope --ctx 10
expect_usage_error "--ctx is required" --preset llama-2-7b
expect_usage_error "--ctx: 'abc' is not a number" --preset llama-2-7b --ctx abc
expect_usage_error "--ctx: 0 is out of range" --preset llama-2-7b --ctx 0
expect_usage_error "--batch: -1 is out of range" --preset llama-2-7b --ctx 10 --batch -1
expect_usage_error "--ctx: missing value" --preset llama-2-7b --ctx
expect_usage_error "--kv-type: unknown value 'q4' \(one of: f32, f16, q8_0, q4_0, fp8, fp8_e5m2\)" --preset llama-2-7b --ctx 10 --kv-type q4
expect_usage_error "--kv-type q4_0: head_dim 8 is not a multiple of 32" --preset stories260K --ctx 10 --kv-type q4_0
expect_usage_error "--kv-type-v q4_0: head_dim 8 is not a multiple of 32" --preset stories260K --ctx 10 --kv-type-v q4_0
expect_usage_error "--kv-type-k: unknown value 'q4' \(one of: f32, f16, q8_0, q4_0, fp8, fp8_e5m2\)" --preset llama-2-7b --ctx 10 --kv-type-k q4
expect_usage_error "--budget: '0' is not a size" --preset llama-2-7b --budget 0
expect_usage_error "--budget: '8Q' is not a size" --preset llama-2-7b --budget 8Q
expect_usage_error "--ctx is required \(tokens per sequence\), or --budget" --preset llama-2-7b
expect_usage_error "shape is incomplete" --layers 2 --heads 4 --ctx 5
expect_usage_error "--kv-heads 3 must divide --heads 4" --layers 2 --heads 4 --kv-heads 3 --head-dim 8 --ctx 5
expect_usage_error "--dim 30 is not a multiple" --layers 2 --heads 4 --dim 30 --ctx 5
expect_usage_error "unknown option '--bogus'" --bogus
expect_usage_error "overflows" --preset llama-2-70b --ctx 1099511627776 --batch 1048576

args=(--help); run --help
[ "$rc" -eq 0 ] || fail "--help exited $rc"
expect_line "usage: kvrt-mem"
expect_line "tinyllama-1.1b"

if [ "$fails" -ne 0 ]; then echo "$fails failure(s)" >&2; exit 1; fi
echo "kvrt-mem: all checks passed"
