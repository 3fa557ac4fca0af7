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
