#!/usr/bin/env bash
# kvrt-quantize as a user runs it: presets and single types on a synthetic
# F32 model (the type mix kvrt-run -v then reports), F16/BF16 input, the
# output never replacing the input, quantized input refused or requantized
# with a warning, no progress off a terminal, --stats, usage errors.
# Usage (ctest): bash kvrt_quantize.sh BUILD_DIR SOURCE_DIR
set -u
bin="$1"
tool="$bin/kvrt-quantize"
fails=0
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
out="$dir/out" err="$dir/err"

fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
run() { "$tool" "$@" >"$out" 2>"$err"; rc=$?; }
ok() { run "$@"; [ "$rc" -eq 0 ] || fail "'$*' exited $rc: $(tail -3 "$err")"; }
expect_rc() { local want="$1"; shift; run "$@"; [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, want $want: $(tail -3 "$err")"; }
expect_err() { grep -qF -- "$1" "$err" || { fail "stderr lacks '$1':"; sed 's/^/  | /' "$err" >&2; }; }

# the type mix kvrt-run -v prints for a file: "q4_K:18 q6_K:2 ..." sorted
mix_of() {
  "$bin/kvrt-run" -m "$1" -p a -n 1 -v --backend cpu 2>&1 >/dev/null |
    sed -n 's/^kvrt-run: type *\([a-z0-9_A-Z]*\): \([0-9]*\) tensors$/\1:\2/p' | sort | tr '\n' ' '
}

# 3 layers, rows of 256, ffn_down rows of 96 (fall-backs), GQA 4
shape=(--vocab 300 --dim 256 --ff 96 --layers 3 --heads 4 --kv-heads 1 --seed 5 -q)
"$bin/kvrt-synth" "${shape[@]}" -o "$dir/f32.gguf" || fail "kvrt-synth f32"
"$bin/kvrt-synth" "${shape[@]}" --type F16 -o "$dir/f16.gguf" || fail "kvrt-synth f16"
"$bin/kvrt-synth" "${shape[@]}" --type BF16 -o "$dir/bf16.gguf" || fail "kvrt-synth bf16"
sum_in=$(sha256sum "$dir/f32.gguf" | cut -d' ' -f1)

# --- presets: the mix the rules give (model/quant_mix.h), as kvrt-run -v counts it
check_mix() { # TYPE WANT [flags]
  local type="$1" want="$2"; shift 2
  local file="$dir/$type${1:-}.gguf"
  ok "$@" "$dir/f32.gguf" "$file" "$type"
  got=$(mix_of "$file")
  [ "$got" = "$want" ] || fail "$type $*: mix '$got', want '$want'"
}
# Q4_K_M: layer 2 of 3 gets more bits (attn_v q6_K, ffn_down q6_K -> q8_0 for rows of 96),
# layers 0-1 ffn_down q4_K -> q5_0; output q6_K
check_mix Q4_K_M "f32:7 q4_K:18 q5_0:2 q6_K:2 q8_0:1 "
# Q2_K: attn_v q4_K (GQA 4), attn_output and ffn_down q3_K (-> iq4_nl for rows of 96)
check_mix Q2_K "f32:7 iq4_nl:3 q2_K:13 q3_K:3 q4_K:3 q6_K:1 "
check_mix Q3_K_M "f32:7 q3_K:13 q4_K:4 q5_0:3 q5_K:2 q6_K:1 "
check_mix Q6_K "f32:7 q6_K:20 q8_0:3 "
check_mix Q8_0 "f32:7 q8_0:23 "
check_mix q4_0 "f32:7 q4_0:22 q6_K:1 "
check_mix Q4_K "f32:7 q4_K:20 q5_0:3 " # a single type: no per-tensor rules
check_mix Q4_K_M "f32:7 q4_K:20 q5_0:3 " --pure
check_mix IQ4_XS "f32:7 iq4_nl:3 iq4_xs:16 q5_K:3 q6_K:1 "
[ "$(sha256sum "$dir/f32.gguf" | cut -d' ' -f1)" = "$sum_in" ] || fail "the input changed"

# F16 and BF16 input give the bytes F32 input gives (the values are the same)
ok "$dir/f16.gguf" "$dir/from16.gguf" Q5_K_M
ok "$dir/bf16.gguf" "$dir/frombf16.gguf" Q5_K_M
[ "$(mix_of "$dir/from16.gguf")" = "$(mix_of "$dir/frombf16.gguf")" ] || fail "f16 and bf16 inputs give different mixes"

# --- never over the input ---------------------------------------------------------------
expect_rc 1 "$dir/f32.gguf" "$dir/f32.gguf" Q4_K_M
expect_err "is the input"
ln -s "$dir/f32.gguf" "$dir/link.gguf"
expect_rc 1 "$dir/f32.gguf" "$dir/link.gguf" Q4_K_M
ln "$dir/f32.gguf" "$dir/hard.gguf"
expect_rc 1 "$dir/f32.gguf" "$dir/hard.gguf" Q4_K_M
expect_rc 1 "$dir/hard.gguf" "$dir/./f32.gguf" Q4_K_M
[ "$(sha256sum "$dir/f32.gguf" | cut -d' ' -f1)" = "$sum_in" ] || fail "the input changed"
# an output that exists is replaced whole; a failed run leaves it and no temporary
cp "$dir/Q8_0.gguf" "$dir/keep.gguf"
expect_rc 1 "$dir/missing.gguf" "$dir/keep.gguf" Q4_K_M
cmp -s "$dir/Q8_0.gguf" "$dir/keep.gguf" || fail "a failed run changed an existing output"
ls "$dir" | grep -q '\.tmp-' && fail "a temporary was left behind"

# --- quantized input ----------------------------------------------------------------------
expect_rc 1 "$dir/Q4_K_M.gguf" "$dir/re.gguf" Q6_K
expect_err "is q4_K already"
[ -e "$dir/re.gguf" ] && fail "a refused requantize wrote its output"
ok --allow-requantize "$dir/Q4_K_M.gguf" "$dir/re.gguf" Q6_K
expect_err "warning: 20 matrices are quantized already"
[ "$(mix_of "$dir/re.gguf")" = "f32:7 q6_K:20 q8_0:3 " ] || fail "requantized mix $(mix_of "$dir/re.gguf")"

# --- progress only on a terminal; --stats ------------------------------------------------------
ok "$dir/f32.gguf" "$dir/p.gguf" Q4_K_M
grep -q '\[ *1/' "$err" && fail "progress printed to a pipe"
grep -qF "(Q4_K_M): 30 tensors, 23 converted" "$err" || fail "summary line: $(cat "$err")"
if command -v script >/dev/null; then
  script -qec "$tool $dir/f32.gguf $dir/t.gguf Q4_K_M" /dev/null >"$out" 2>&1
  grep -q '\[  30/  30\]' "$out" || fail "no progress on a terminal: $(tr '\r' '\n' <"$out" | tail -3)"
fi
ok -q --stats "$dir/f32.gguf" "$dir/s.gguf" Q4_K_M
[ -s "$err" ] && fail "-q still printed: $(cat "$err")"
grep -qE '^q4_K +[0-9]+ +[0-9.e-]+ +[0-9.e-]+$' "$out" || fail "--stats: no q4_K row: $(cat "$out")"
# relative RMSE of q4_K on Gaussian weights: about 0.07, q8_0 about 0.004
awk '$1 == "q4_K" && ($4 < 0.05 || $4 > 0.09) { exit 1 }' "$out" || fail "q4_K relative rmse out of range: $(cat "$out")"
awk '$1 == "q8_0" && ($4 > 0.006) { exit 1 }' "$out" || fail "q8_0 relative rmse out of range"

# --- usage --------------------------------------------------------------------------------------
expect_rc 2
expect_rc 2 "$dir/f32.gguf" "$dir/x.gguf"
expect_rc 2 "$dir/f32.gguf" "$dir/x.gguf" Q4_K_X
expect_err "unknown TYPE 'Q4_K_X'"
expect_rc 2 "$dir/f32.gguf" "$dir/x.gguf" IQ2_XXS
expect_rc 2 --threads 0 "$dir/f32.gguf" "$dir/x.gguf" Q4_K_M
expect_rc 2 --bogus "$dir/f32.gguf" "$dir/x.gguf" Q4_K_M
expect_rc 0 --help
grep -qF "Q4_K_M" "$out" || fail "--help does not list the presets"
expect_rc 0 --version
expect_rc 1 "$dir/nothere.gguf" "$dir/x.gguf" Q4_K_M
expect_err "nothere.gguf"
printf 'GGUF' >"$dir/short.gguf"
expect_rc 1 "$dir/short.gguf" "$dir/x.gguf" Q4_K_M
[ -e "$dir/x.gguf" ] && fail "a failed run left an output"

[ "$fails" -eq 0 ] && echo "kvrt_quantize: all checks passed"
exit $((fails > 0))
