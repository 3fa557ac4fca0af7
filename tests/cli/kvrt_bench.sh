#!/usr/bin/env bash
# kvrt-bench as a user runs it: the subcommand dispatcher, `attn --quick
# --json` (one JSON document on stdout with the expected fields, the table on
# stderr), the paged and contiguous layouts agreeing on the same data, and
# usage errors. Timings are reported, never asserted.
# Usage (ctest): bash kvrt_bench.sh BUILD_DIR SOURCE_DIR
set -u
tool="$1/kvrt-bench"
fails=0
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
. "$(dirname "${BASH_SOURCE[0]}")/backends.bash"
# The Vulkan loader unloads lavapipe before LeakSanitizer reports, so a driver
# leak cannot be attributed (nor suppressed by tests/lsan.supp): runs on the
# vulkan backend skip leak checking. kvrt's own Vulkan code is leak-checked by
# the test_vulkan_* suites, which pin the driver.
no_leaks_for_vulkan() { case " $* " in *" vulkan "*) echo "${ASAN_OPTIONS:-}:detect_leaks=0" ;; *) echo "${ASAN_OPTIONS:-}" ;; esac; }
run() { ASAN_OPTIONS="$(no_leaks_for_vulkan "$@")" "$tool" "$@" >"$out" 2>"$err"; rc=$?; }

# --- attn --quick --json ----------------------------------------------------------
run attn --quick --json -t 2 --kv-type f16
[ "$rc" -eq 0 ] || { fail "attn --quick --json exited $rc"; cat "$err" >&2; }
python3 -c 'import json,sys; json.load(sys.stdin)' <"$out" || fail "stdout is not one JSON document"
python3 - "$out" <<'PY' || fail "JSON fields"
import json, math, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
for k in ("tool", "bench", "backend", "device", "threads", "openblas_core", "attn_kernels", "kv_type",
          "block_size", "memory_bandwidth", "results", "summary"):
    need(k in d, "top-level key " + k)
need(d["bench"] == "attn" and d["backend"] == "cpu" and d["kv_type"] == "f16", "bench/backend/kv_type")
need(d["threads"] == 2 and d["memory_bandwidth"]["threads"] == 2, "-t 2 reaches the kernels and the bandwidth run")
bw = d["memory_bandwidth"]
need(bw["read_gbs"] > 0 and bw["copy_gbs"] > 0, "bandwidth measured")
need(bw["buffer_bytes"] >= 4 * bw["llc_bytes"], "bandwidth working set >= 4x LLC")
res = d["results"]
# the quick grid: 2 shapes x 2 batches x 2 contexts, none skipped
need(len(res) == 8, "8 quick cells, got %d" % len(res))
need({r["ctx"] for r in res} == {37, 300} and {r["batch"] for r in res} == {1, 3}, "quick grid")
need({(r["n_heads"], r["n_kv_heads"]) for r in res} == {(4, 4), (8, 2)}, "MHA and GQA shapes")
for r in res:
    name = "%s b%d c%d" % (r["model"], r["batch"], r["ctx"])
    need(r["skipped"] is None, name + " skipped")
    dec = r["decode"]
    for k in ("paged_ms", "kv_read_gbs", "pct_bandwidth", "contiguous_ms", "contiguous_gbs", "paged_vs_contiguous"):
        need(isinstance(dec[k], (int, float)) and dec[k] > 0, name + " decode." + k)
    # K+V bytes of one call: 2 x batch x ctx x kv_heads x head_dim x 2 (f16)
    need(r["kv_bytes_per_call"] == 2 * r["batch"] * r["ctx"] * r["n_kv_heads"] * r["head_dim"] * 2, name + " kv bytes")
    # same K/V bytes through the paged and the contiguous layout with the same loops:
    # bitwise the same answer (cpu_attention.h promises it)
    need(dec["max_abs_diff"] == 0, name + " paged vs contiguous differ: %r" % dec["max_abs_diff"])
    pre = r["prefill"]
    need(pre is not None and pre["tokens_per_seq"] == min(16, r["ctx"]) and pre["gflops"] > 0, name + " prefill")
s = d["summary"]
need(s["target_paged_vs_contiguous"] == 0.95 and s["target_pct_bandwidth"] == 60, "targets")
need(s["min_paged_vs_contiguous"] > 0, "summary ratio")
PY
grep -q "^| model" "$err" || fail "--json: the table is not on stderr"
grep -q "memory bandwidth (2 threads" "$err" || fail "--json: bandwidth line not on stderr"

# --- without --json the table is on stdout -----------------------------------------
run attn --quick -t 1 --kv-type f32 --ctx 20 --batch 2 --block-size 8
[ "$rc" -eq 0 ] || { fail "attn --quick (table) exited $rc"; cat "$err" >&2; }
grep -q "^| model" "$out" || fail "table not on stdout"
grep -Eq "OpenBLAS core|no OpenBLAS" "$out" || fail "OpenBLAS core not printed"
[ "$(grep -c '^| tiny-' "$out")" -eq 2 ] || fail "--ctx/--batch: want 2 rows"
grep -q "^{" "$out" && fail "JSON on stdout without --json"

# --- GPU backends: every cell also on the CPU, ratios in the JSON --------------------
# opencl runs on PoCL and vulkan on lavapipe here: the fields are checked, never the speeds.
for be in opencl vulkan; do
  built "$be" || { not_built "attn --backend $be" "$tool" attn --quick --backend "$be"; continue; }
  run attn --quick --json --backend "$be" --ctx 37 --batch 2
  [ "$rc" -eq 0 ] || { fail "attn --backend $be exited $rc"; cat "$err" >&2; continue; }
  python3 - "$out" "$be" <<'PY' || fail "attn --backend $be: JSON fields"
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
def pos(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
need(d["backend"] == sys.argv[2] and d["cpu_compare"] is True, "backend and cpu_compare")
need(pos(d["device_copy_bandwidth"]["gbs"]), "device copy bandwidth")
need(d["pct_bandwidth_of"] == "device_copy_bandwidth.gbs", "% bw of the device copy")
need(len(d["results"]) == 2, "2 cells (2 shapes x batch 2 x ctx 37), got %d" % len(d["results"]))
for r in d["results"]:
    name = "%s b%d c%d" % (r["model"], r["batch"], r["ctx"])
    for k in ("cpu_decode_ms", "vs_cpu_decode", "cpu_prefill_ms", "vs_cpu_prefill"):
        need(pos(r[k]), name + " " + k + " = %r" % r[k])
    need(pos(r["decode"]["paged_ms"]) and pos(r["prefill"]["ms"]), name + " device times")
    # the ratio is the CPU time over the device time of the same cell
    need(abs(r["vs_cpu_decode"] - r["cpu_decode_ms"] / r["decode"]["paged_ms"]) <= 1e-3 * r["vs_cpu_decode"],
         name + " vs_cpu_decode")
    need(abs(r["vs_cpu_prefill"] - r["cpu_prefill_ms"] / r["prefill"]["ms"]) <= 1e-3 * r["vs_cpu_prefill"],
         name + " vs_cpu_prefill")
    # same K/V and queries on both backends: the outputs meet the kernel contract (DESIGN.md)
    d_ = r["cpu_max_abs_diff"]
    need(isinstance(d_, (int, float)) and 0 <= d_ <= 1e-4, name + " device vs CPU decode differ by %r" % d_)
PY
  grep -q "dec vs cpu" "$err" || fail "attn --backend $be: no CPU columns in the table"
done
if built opencl; then
run attn --quick --json --backend opencl --ctx 20 --batch 1 --no-cpu-compare --prefill-chunk 0
[ "$rc" -eq 0 ] || { fail "attn --no-cpu-compare exited $rc"; cat "$err" >&2; }
python3 - "$out" <<'PY' || fail "--no-cpu-compare: JSON"
import json, sys
d = json.load(open(sys.argv[1]))
ok = d["cpu_compare"] is False and all(r["cpu_decode_ms"] is None and r["vs_cpu_decode"] is None
                                       for r in d["results"])
sys.exit(0 if ok else 1)
PY
fi
grep -q "dec vs cpu" "$err" && fail "--no-cpu-compare still printed CPU columns"

# --- kv: KV types vs f16 on the synthetic model and stories260K (head_dim 8) ----------------
run kv -m "synth,$(cd "$(dirname "$0")/../.." && pwd)/models/stories260K.gguf" --positions 48 \
    --types f32,q8_0,fp8,f16/fp8 --json
[ "$rc" -eq 0 ] || fail "kv --json exited $rc: $(cat "$err")"
if ! python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = {(r["model"], r["k_type"], r["v_type"]): r for r in d["rows"]}
syn = [r for r in d["rows"] if r["model"].startswith("synth")]
sto = [r for r in d["rows"] if r["model"] == "stories260K.gguf"]
ok = len(syn) == 4 and len(sto) == 4 and d["bench"] == "kv"
ok = ok and all(r["ran"] and 0 <= r["logits_nmse"] < 1 and 0 <= r["top1_agreement"] <= 1 for r in syn)
ok = ok and rows[("synth tiny-gqa x4", "f32", "f32")]["logits_nmse"] < rows[("synth tiny-gqa x4", "q8_0", "q8_0")]["logits_nmse"]
# head_dim 8: q8_0 is refused naming it, fp8 runs
q8 = rows[("stories260K.gguf", "q8_0", "q8_0")]
ok = ok and not q8["ran"] and "head_dim 8" in q8["refused"] and rows[("stories260K.gguf", "fp8", "fp8")]["ran"]
ok = ok and rows[("stories260K.gguf", "f16", "fp8")]["kv_bytes_vs_f16"] == 0.75
sys.exit(0 if ok else 1)
PY
then fail "kv --json: $(head -c 1500 "$out")"; fi
grep -q "K f16 / V fp8" "$err" || fail "kv --json: no table on stderr"

# --- a KV type other than f16: each decode cell again with f16 KV, same backend -------
# Fields and ratios are checked, never the speeds (lavapipe and PoCL here).
for be in cpu opencl vulkan; do
  [ "$be" = cpu ] || built "$be" || continue
  run attn --quick --json --backend "$be" --kv-type q4_0 --ctx 40 --batch 1 --no-cpu-compare --prefill-chunk 0
  [ "$rc" -eq 0 ] || { fail "attn --kv-type q4_0 --backend $be exited $rc"; cat "$err" >&2; continue; }
  python3 - "$out" "$be" <<'PY' || fail "attn --kv-type q4_0 --backend $be: JSON f16 fields"
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
need(d["backend"] == sys.argv[2] and d["kv_type"] == "q4_0", "backend and kv_type")
need(len(d["results"]) == 2, "2 cells")
for r in d["results"]:
    dec = r["decode"]
    need(dec["f16_ms"] > 0 and dec["f16_kv_read_gbs"] > 0, "f16 time and rate")
    need(abs(dec["vs_f16"] - dec["f16_ms"] / dec["paged_ms"]) <= 1e-3 * dec["vs_f16"], "vs_f16 = f16 / q4_0 time")
    need(dec["cpu_ms"] > 0 and dec["f16_cpu_ms"] > 0 and
         abs(dec["vs_f16_cpu"] - dec["f16_cpu_ms"] / dec["cpu_ms"]) <= 1e-3 * dec["vs_f16_cpu"],
         "vs_f16_cpu = f16 / q4_0 process CPU time")
    # the same cell's f16 KV is 2 bytes a value, q4_0's 18 bytes a group of 32
    f16_bytes = dec["f16_kv_read_gbs"] * dec["f16_ms"] * 1e6
    need(abs(f16_bytes / r["kv_bytes_per_call"] - 64 / 18) < 1e-3, "f16 bytes / q4_0 bytes = 64 / 18")
PY
  grep -q "vs f16" "$err" || fail "attn --kv-type q4_0 --backend $be: no f16 columns in the table"
done
run attn --quick --json --ctx 20 --batch 1 --kv-type f16 --prefill-chunk 0
python3 - "$out" <<'PY' || fail "attn --kv-type f16: f16 comparison fields should be null"
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if all(r["decode"]["vs_f16"] is None and r["decode"]["f16_ms"] is None for r in d["results"]) else 1)
PY
grep -q "vs f16" "$err" && fail "attn --kv-type f16 printed f16 columns"

# --- dispatcher and usage errors ------------------------------------------------------
expect_usage() { # PATTERN ARGS...
  local pat="$1"; shift
  run "$@"
  [ "$rc" -eq 2 ] || fail "'$*' exited $rc, want 2"
  grep -qE -- "$pat" "$err" || fail "'$*': stderr lacks /$pat/: $(cat "$err")"
  [ ! -s "$out" ] || fail "'$*' wrote to stdout"
}
expect_usage "usage: kvrt-bench" 
expect_usage "unknown subcommand 'nope'" nope
expect_usage "unknown option '--bogus'" attn --bogus
expect_usage "--kv-type: unknown value 'q4'" attn --kv-type q4
expect_usage "--types: unknown value 'q4'" kv --types q8_0/q4
expect_usage "--kv-type-k q8_0 and --kv-type-v f16 differ" attn --kv-type-k q8_0 --kv-type-v f16
expect_usage "--threads: 'x' is not a number" attn -t x
expect_usage "--block-size: use 8, 16 or 32" attn --block-size 12
expect_usage "--ctx: missing value" attn --ctx
expect_usage "--backend: unknown backend 'tpu'" attn --backend tpu
run --help
[ "$rc" -eq 0 ] && grep -q "attn" "$out" || fail "--help"
run attn --help
[ "$rc" -eq 0 ] && grep -q -- "--kv-type" "$out" || fail "attn --help"

if [ "$fails" -ne 0 ]; then echo "$fails failure(s)" >&2; exit 1; fi
echo "kvrt-bench: all checks passed"
