#!/usr/bin/env bash
# kvrt-bench model as a user runs it: `model --quick --json` (one JSON
# document on stdout with the expected fields, the tables on stderr, the
# temporary model files gone afterwards), the cached and recomputed logits
# agreeing, a user-given --model file, and usage errors. Timings are
# reported, never asserted.
# Usage (ctest): bash kvrt_bench_model.sh BUILD_DIR SOURCE_DIR
set -u
tool="$1/kvrt-bench"
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.gguf
fails=0
out=$(mktemp) err=$(mktemp) tmp=$(mktemp -d)
trap 'rm -f "$out" "$err"; rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
. "$(dirname "${BASH_SOURCE[0]}")/backends.bash"
# The Vulkan loader unloads lavapipe before LeakSanitizer reports, so a driver
# leak cannot be attributed (nor suppressed by tests/lsan.supp): runs on the
# vulkan backend skip leak checking. kvrt's own Vulkan code is leak-checked by
# the test_vulkan_* suites, which pin the driver.
no_leaks_for_vulkan() { case " $* " in *" vulkan "*) echo "${ASAN_OPTIONS:-}:detect_leaks=0" ;; *) echo "${ASAN_OPTIONS:-}" ;; esac; }
run() { ASAN_OPTIONS="$(no_leaks_for_vulkan "$@")" TMPDIR="$tmp" "$tool" "$@" >"$out" 2>"$err"; rc=$?; }

# --- model --quick --json -------------------------------------------------------------
run model --quick --json -t 1,2
[ "$rc" -eq 0 ] || { fail "model --quick --json exited $rc"; cat "$err" >&2; }
python3 -c 'import json,sys; json.load(sys.stdin)' <"$out" || fail "stdout is not one JSON document"
python3 - "$out" <<'PY' || fail "JSON fields"
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
def pos(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
for k in ("tool", "bench", "backend", "device", "openblas_core", "openblas_threads", "kv_type", "prompt_len",
          "gen", "reps", "memory_bandwidth", "results", "kv_cache_scaling", "summary"):
    need(k in d, "top-level key " + k)
need(d["bench"] == "model" and d["backend"] == "cpu" and d["quick"] is True, "bench/backend/quick")
# a build without OpenBLAS (-DKVRT_OPENBLAS=OFF) reports none
need((d["openblas_core"] is None and d["openblas_threads"] == 0) or
     (d["openblas_threads"] >= 1 and d["openblas_core"]), "OpenBLAS core and threads")
bws = d["memory_bandwidth"]
need([b["threads"] for b in bws] == [1, 2], "a bandwidth measurement per thread count")
for b in bws:
    need(pos(b["read_gbs"]) and pos(b["copy_gbs"]) and b["buffer_bytes"] >= 4 * b["llc_bytes"], "bandwidth")
res = d["results"]
# the quick grid: one model x f32, f16, q8_0 x 1, 2 threads
need(len(res) == 6, "6 quick rows, got %d" % len(res))
need({(r["type"], r["threads"]) for r in res} ==
     {(t, n) for t in ("f32", "f16", "q8_0") for n in (1, 2)}, "types x threads")
by_type = {}
for r in res:
    name = "%s %s t%d" % (r["model"], r["type"], r["threads"])
    need(r["model"] == "quick" and pos(r["n_params"]), name + " model")
    need(r["blas"] is True, name + " OpenBLAS allowed by default")
    # decode reads every weight but the embedding table (one row of it)
    need(0 < r["weight_bytes_per_token"] < r["weight_bytes"], name + " bytes per token")
    need(r["prefill"]["tokens"] == d["prompt_len"] and r["decode"]["tokens"] == d["gen"], name + " token counts")
    for k in ("ms", "tokens_per_s"):
        need(pos(r["prefill"][k]) and pos(r["decode"][k]), name + " " + k)
    dec = r["decode"]
    bw = [b for b in bws if b["threads"] == r["threads"]][0]["read_gbs"]
    need(dec["bandwidth_gbs"] == bw, name + " ratio against the same thread count's bandwidth")
    want = r["weight_bytes_per_token"] * dec["tokens_per_s"] * 1e-9
    need(abs(dec["weight_gbs"] - want) <= 1e-3 * want, name + " weight_gbs")
    need(abs(dec["pct_bandwidth"] - 100 * want / bw) <= 1e-3 * dec["pct_bandwidth"], name + " pct_bandwidth")
    by_type.setdefault(r["type"], set()).add((r["n_params"], r["weight_bytes"]))
for t, s in by_type.items():
    need(len(s) == 1, t + ": both thread counts measured the same file")
# same parameters, fewer bytes: f32 > f16 > q8_0
wb = {t: list(s)[0][1] for t, s in by_type.items()}
need(wb["f32"] > wb["f16"] > wb["q8_0"], "weight bytes by type: %r" % wb)
c = d["kv_cache_scaling"]
need(c is not None and c["model"] == "quick" and c["threads"] == 1, "KV cache table on the first thread count")
need([r["steps"] for r in c["rows"]] == [4, 8, 16], "quick cache lengths")
for r in c["rows"]:
    n = r["steps"]
    need(r["cached_tokens"] == n and r["recompute_tokens"] == n * (n + 1) // 2, "tokens evaluated at %d" % n)
    need(pos(r["cached_ms"]) and pos(r["recompute_ms"]), "cache times at %d" % n)
# the cache must not change the answer (prefill and decode paths of the same model)
need(c["max_abs_logit"] > 0 and c["logits_agree"] is True and
     c["max_abs_logit_diff"] <= 1e-4 * max(1.0, c["max_abs_logit"]),
     "cached vs recomputed logits differ by %r" % c["max_abs_logit_diff"])
s = d["summary"]
need(s["target_model"] == "110m" and s["target_pct_bandwidth"] == 70, "targets")
PY
grep -q "^| model" "$err" || fail "--json: the table is not on stderr"
grep -q "^| steps" "$err" || fail "--json: the KV cache table is not on stderr"
grep -q "memory bandwidth (2 thread" "$err" || fail "--json: bandwidth line not on stderr"
[ -z "$(ls -A "$tmp")" ] || fail "temporary files left behind: $(ls -A "$tmp")"

# --- a given model file, table on stdout, no cache table -------------------------------
run model --model "$models/stories260K.gguf" -t 1 --prompt-len 8 --gen 4 --reps 1 --cache-lens none
[ "$rc" -eq 0 ] || { fail "model --model exited $rc"; cat "$err" >&2; }
grep -q "^| model" "$out" || fail "table not on stdout"
grep -Eq "OpenBLAS core|no OpenBLAS" "$out" || fail "OpenBLAS core not printed"
[ "$(grep -c '^| stories260K.gguf' "$out")" -eq 1 ] || fail "--model: want one row"
grep -q "^| steps" "$out" && fail "--cache-lens none still printed the cache table"
grep -q "^{" "$out" && fail "JSON on stdout without --json"

# --- OpenBLAS on and off: every row both ways ----------------------------------------------
run model --model "$models/stories260K.gguf" -t 1 --prompt-len 40 --gen 2 --reps 1 --cache-lens none --blas on,off
[ "$rc" -eq 0 ] || { fail "model --blas on,off exited $rc"; cat "$err" >&2; }
[ "$(grep -c '^| stories260K.gguf .* | on ' "$out")" -eq 1 ] || fail "--blas on,off: want one row with OpenBLAS on"
[ "$(grep -c '^| stories260K.gguf .* | off ' "$out")" -eq 1 ] || fail "--blas on,off: want one row with OpenBLAS off"
grep -q "OpenBLAS .*disabled\|no OpenBLAS" "$err" || fail "--blas off: the context does not say OpenBLAS is disabled"
for bad in "maybe" "on,on" "on,off,on" ""; do
    run model --quick --blas "$bad"
    [ "$rc" -eq 2 ] || fail "--blas '$bad': exit $rc, want 2"
done

# --- GPU backends: every row also on the CPU, ratios in the JSON ------------------------
# tiny runs (PoCL / lavapipe here): the fields are checked, never the speeds; the
# quantised types exercise the device's Q8_0 / Q4_0 weight paths.
check_gpu() { # BACKEND TYPES
  built "$1" || { not_built "model --backend $1" "$tool" model --quick --backend "$1"; return; }
  run model --quick --json --backend "$1" --type "$2" --prompt-len 4 --gen 2 --reps 1 --cache-lens none
  [ "$rc" -eq 0 ] || { fail "model --backend $1 --type $2 exited $rc: $(tail -3 "$err")"; return; }
  python3 - "$out" "$1" "$2" <<'PY' || fail "model --backend $1: JSON fields"
import json, os, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
def pos(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
need(d["backend"] == sys.argv[2] and d["cpu_compare"] is True, "backend and cpu_compare")
res = d["results"]
need([r["type"] for r in res] == sys.argv[3].split(","), "one row per type")
# no -t on a GPU backend: one row on all cores, the CPU compared on as many
need(all(r["threads"] == os.cpu_count() for r in res), "threads = all cores: %r" % [r["threads"] for r in res])
for r in res:
    for k in ("cpu_prefill_ms", "cpu_decode_ms", "vs_cpu_prefill", "vs_cpu_decode"):
        need(pos(r[k]), r["type"] + " " + k + " = %r" % r[k])
    need(abs(r["vs_cpu_decode"] - r["cpu_decode_ms"] / r["decode"]["ms"]) <= 1e-3 * r["vs_cpu_decode"],
         r["type"] + " vs_cpu_decode")
    need(abs(r["vs_cpu_prefill"] - r["cpu_prefill_ms"] / r["prefill"]["ms"]) <= 1e-3 * r["vs_cpu_prefill"],
         r["type"] + " vs_cpu_prefill")
PY
  grep -q "decode vs cpu" "$err" || fail "model --backend $1: no CPU columns in the table"
}
check_gpu opencl f32,q4_0
check_gpu vulkan f16,q8_0
if built opencl; then
run model --quick --json --backend opencl --type q8_0 -t 1 --prompt-len 4 --gen 2 --reps 1 --cache-lens none --no-cpu-compare
[ "$rc" -eq 0 ] || { fail "model --no-cpu-compare exited $rc"; cat "$err" >&2; }
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["cpu_compare"] is False and d["results"][0]["threads"] == 1 and d["results"][0]["vs_cpu_decode"] is None else 1)' "$out" \
  || fail "--no-cpu-compare / -t 1 on opencl"
fi

# --- --profile: per-op times in the JSON (still one document) and a table on stderr ------
check_profile() { # BACKEND
  built "$1" || return 0 # (check_gpu checked the message)
  run model --quick --json --profile --backend "$1" -t 1 --type f32 --prompt-len 4 --gen 2 --reps 1 \
      --cache-lens none --no-cpu-compare
  [ "$rc" -eq 0 ] || { fail "model --profile --backend $1 exited $rc: $(tail -3 "$err")"; return; }
  python3 - "$out" <<'PY' || fail "model --profile --backend $1: JSON profile"
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
p = d.get("profile")
need(isinstance(p, list) and len(p) == 1 and p[0]["threads"] == 1, "one profile per thread count")
ops = {o["op"]: o for o in p[0]["ops"]}
for k in ("matmul", "rmsnorm", "attn_prefill", "attn_decode", "embed", "swiglu"):
    need(k in ops and ops[k]["calls"] > 0 and ops[k]["total_ms"] > 0, "op " + k)
# a warm-up prefill, then one rep: a prefill and 2 decodes; 4 forwards, one embed each
need(ops["embed"]["calls"] == 4, "embed calls %r" % ops["embed"]["calls"])
need(abs(sum(o["share"] for o in ops.values()) - 1) < 1e-3, "shares sum to 1")
tot = [o["total_ms"] for o in p[0]["ops"]]
need(tot == sorted(tot, reverse=True), "largest total first")
PY
  grep -q "^time per op, $1 backend, 1 thread" "$err" || fail "model --profile --backend $1: no table on stderr"
}
check_profile cpu
check_profile vulkan
if built opencl; then
run model --quick --profile --backend opencl -t 1 --cache-lens none --no-cpu-compare
[ "$rc" -eq 1 ] && grep -q -- "--profile: opencl backend does not support" "$err" \
  || fail "--profile on opencl: rc $rc, $(cat "$err")"
fi

# --- errors -----------------------------------------------------------------------------
run model --model "$tmp/missing.gguf" -t 1
[ "$rc" -eq 1 ] && grep -q "missing.gguf" "$err" || fail "missing --model file: rc $rc, $(cat "$err")"
expect_usage() { # PATTERN ARGS...
  local pat="$1"; shift
  run "$@"
  [ "$rc" -eq 2 ] || fail "'$*' exited $rc, want 2"
  grep -qE -- "$pat" "$err" || fail "'$*': stderr lacks /$pat/: $(cat "$err")"
  [ ! -s "$out" ] || fail "'$*' wrote to stdout"
}
expect_usage "unknown option '--bogus'" model --bogus
expect_usage "--type: unknown value 'q5'" model --type f32,q5
expect_usage "--preset: unknown preset '3b'" model --preset 15m,3b
expect_usage "--threads: 'x' is not a number" model -t 1,x
expect_usage "--gen: 0 is out of range" model --gen 0
expect_usage "--prompt-len: missing value" model --prompt-len
expect_usage "--kv-type: unknown value 'q8_0'" model --kv-type q8_0
expect_usage "--threads: bad list" model --threads 1,,2
run model --help
[ "$rc" -eq 0 ] && grep -q -- "--prompt-len" "$out" || fail "model --help"

if [ "$fails" -ne 0 ]; then echo "$fails failure(s)" >&2; exit 1; fi
echo "kvrt-bench model: all checks passed"
