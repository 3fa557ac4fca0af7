#!/usr/bin/env bash
# kvrt-bench serve on a tiny configuration: every workload runs, --json gives
# one JSON document on stdout with the documented fields (the table goes to
# stderr), the counts are consistent, and usage errors exit 2. Timings are
# reported, never asserted.
# Usage (ctest): bash kvrt_bench_serve.sh BUILD_DIR SOURCE_DIR
set -u
tool="$1/kvrt-bench"
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.gguf
model="$models/stories260K.gguf"
fails=0
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
run() { "$tool" serve "$@" >"$out" 2>"$err"; rc=$?; }

[ -f "$model" ] || { echo "FAIL: no model at $model" >&2; exit 1; }

# --- a tiny run, --json -------------------------------------------------------------
run --model "$model" --requests 12 --max-seqs 4 --seed 7 --json
[ "$rc" -eq 0 ] || { fail "serve --json exited $rc"; cat "$err" >&2; }
grep -q "| workload" "$err" || fail "the table is not on stderr"
python3 - "$out" <<'PY' || fail "JSON fields"
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
for k in ("tool", "bench", "model", "backend", "device", "threads", "seed", "requests", "block_size", "kv_type",
          "max_context", "workloads", "continuous_vs_static_speedup", "continuous_vs_shrinking_static_speedup",
          "kv_utilization", "contiguous_kv_utilization", "prefix_cache"):
    need(k in d, "top-level key " + k)
need(d["bench"] == "serve" and d["backend"] == "cpu" and d["seed"] == 7 and d["requests"] == 12, "echoed options")
names = [(w["name"], w["mode"]) for w in d["workloads"]]
for want in (("sharegpt", "continuous"), ("sharegpt", "static"), ("sharegpt", "static-shrinking"),
             ("sysprompt", "prefix-cache-on"), ("sysprompt", "prefix-cache-off"), ("parallel", "n=4"),
             ("burst", "small-pool")):
    need(want in names, "workload %s/%s" % want)
for w in d["workloads"]:
    for k in ("requests", "samples", "seconds", "requests_per_s", "output_tokens", "output_tokens_per_s",
              "ttft_ms", "tpot_ms", "kv_utilization", "contiguous_kv_utilization", "prefix_hit_rate",
              "prefill_tokens", "preemptions", "steps", "kv_blocks"):
        need(k in w, "workload key " + k)
    for k in ("p50", "p95", "p99"):
        need(w["ttft_ms"][k] >= 0 and w["tpot_ms"][k] >= 0, "latency percentiles")
    need(w["ttft_ms"]["p50"] <= w["ttft_ms"]["p95"] <= w["ttft_ms"]["p99"], "TTFT percentiles ordered")
    need(0 < w["kv_utilization"] <= 1 and 0 < w["contiguous_kv_utilization"] <= w["kv_utilization"],
         "KV utilizations in (0, 1], contiguous <= paged")
    need(w["output_tokens"] > 0 and w["steps"] > 0, "tokens and steps")
by = {(w["name"], w["mode"]): w for w in d["workloads"]}
share = [by[("sharegpt", m)] for m in ("continuous", "static", "static-shrinking")]
need(len({w["output_tokens"] for w in share}) == 1, "the three sharegpt runs produce the same output tokens")
need(by[("parallel", "n=4")]["samples"] == 4 * by[("parallel", "n=4")]["requests"], "n = 4 samples")
need(by[("burst", "small-pool")]["preemptions"] > 0, "the burst preempts")
on, off = by[("sysprompt", "prefix-cache-on")], by[("sysprompt", "prefix-cache-off")]
need(on["prefill_tokens"] < off["prefill_tokens"] and on["prefix_hit_rate"] > 0.5 and off["prefix_hit_rate"] == 0,
     "prefix cache saves prefill")
need(d["prefix_cache"]["prefill_tokens_on"] == on["prefill_tokens"], "prefix_cache summary")
need(d["continuous_vs_static_speedup"] > 0 and d["kv_utilization"] == by[("sharegpt", "continuous")]["kv_utilization"],
     "comparisons")
PY

# --- the table alone, F16 KV, block size 8 ----------------------------------------
run --model "$model" --requests 4 --kv-type f16 --block-size 8
[ "$rc" -eq 0 ] || { fail "serve --kv-type f16 exited $rc"; cat "$err" >&2; }
grep -q "KV f16, block size 8" "$out" || fail "table header on stdout"
grep -q "continuous vs static" "$out" || fail "comparison lines on stdout"

# --- one budget, one row per KV type (--kv-types) ------------------------------------
# stories260K has head_dim 8: q8_0 cannot store it (a row saying so), fp8 can,
# in half of f16's bytes, so the same budget buys at least as many blocks.
run --model "$model" --requests 6 --max-seqs 4 --kv-types f16,fp8,q8_0,f16/fp8 --kv-budget 1 --json
[ "$rc" -eq 0 ] || { fail "serve --kv-types exited $rc"; cat "$err" >&2; }
grep -q "KV budget 1.00 MiB" "$err" || fail "budget table header on stderr"
python3 - "$out" <<'PY' || fail "--kv-types JSON"
import json, sys
d = json.load(open(sys.argv[1]))
rows = d["kv_types"]
assert d["kv_budget_bytes"] == 1 << 20, d
assert [(r["kv_type_k"], r["kv_type_v"]) for r in rows] == \
    [("f16", "f16"), ("fp8", "fp8"), ("q8_0", "q8_0"), ("f16", "fp8")], rows
f16, fp8, q8, mixed = rows
assert "head_dim" in q8["skipped"], q8
for r in (f16, fp8, mixed):
    assert "skipped" not in r and r["output_tokens"] > 0 and r["seqs_per_step_max"] >= 1, r
    assert r["blocks"] * r["block_bytes"] <= d["kv_budget_bytes"] < (r["blocks"] + 1) * r["block_bytes"], r
assert f16["output_tokens"] == fp8["output_tokens"] == mixed["output_tokens"], rows  # the same requests
assert fp8["block_bytes"] * 2 == f16["block_bytes"] and fp8["blocks"] >= 2 * f16["blocks"] - 1, rows
PY
run --model "$model" --kv-budget 8
[ "$rc" -eq 2 ] || fail "--kv-budget without --kv-types exited $rc, want 2"

# --- K and V types named apart where they differ ------------------------------------
run --model "$model" --requests 2 --max-seqs 2 --kv-type-k f16 --kv-type-v fp8 --json
[ "$rc" -eq 0 ] || { fail "serve --kv-type-k/-v exited $rc"; cat "$err" >&2; }
grep -q "KV K f16 / V fp8" "$err" || fail "table header names K and V"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert (d["kv_type_k"], d["kv_type_v"]) == ("f16", "fp8"), d' \
    "$out" || fail "JSON kv_type_k / kv_type_v"

# --- a recorded workload replayed (what tools/kvrt-server-load.py compares against) ----
wl=$(mktemp)
printf '# max_tokens ids...\n5 1 403 407 261 378\n\n12 1 2 3 4\n7 1 9\n' >"$wl"
run --model "$model" --workload "$wl" --concurrency 2 --json
[ "$rc" -eq 0 ] || { fail "serve --workload exited $rc"; cat "$err" >&2; }
python3 - "$out" <<'PY' || fail "--workload JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["requests"] == 3 and d["concurrency"] == 2, d
assert d["output_tokens"] == 5 + 12 + 7, d  # EOS ignored: exactly max_tokens each
assert 0 <= d["ttft_ms"]["p50"] <= d["ttft_ms"]["p99"], d
PY
printf '5 1 99999\n' >"$wl"
run --model "$model" --workload "$wl"
[ "$rc" -eq 1 ] && grep -q "outside the vocabulary" "$err" || fail "a token outside the vocabulary: rc $rc"
printf '600 1 2\n' >"$wl"
run --model "$model" --workload "$wl"
[ "$rc" -eq 1 ] && grep -q "context" "$err" || fail "a request longer than the context: rc $rc"
rm -f "$wl"

# --- errors ------------------------------------------------------------------------
run --model "$model" --block-size 12
[ "$rc" -eq 2 ] || fail "--block-size 12 exited $rc, want 2"
run --requests 0
[ "$rc" -eq 2 ] || fail "--requests 0 exited $rc, want 2"
run --bogus
[ "$rc" -eq 2 ] || fail "--bogus exited $rc, want 2"
run --model /nonexistent/model.gguf --requests 2
[ "$rc" -eq 1 ] || fail "a missing model exited $rc, want 1"
grep -q "nonexistent" "$err" || fail "the error names the missing file"
run --help
[ "$rc" -eq 0 ] && grep -q -- "--requests" "$out" || fail "--help"

[ "$fails" -eq 0 ] && echo "kvrt_bench_serve: all checks passed"
exit $((fails > 0))
