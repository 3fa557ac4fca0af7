#!/usr/bin/env bash
# kvrt-bench threads as a user runs it: `threads -m stories260K.gguf --quick
# --json` (one JSON document on stdout: the four settings -t 1, cores, 4 x
# cores, cores beside a busy process, each with a positive median and its
# ratio to -t 1; the split table), the busy processes gone afterwards, the
# table on stdout without --json, and usage errors. Timings are reported,
# never asserted.
# Usage (ctest): bash kvrt_bench_threads.sh BUILD_DIR SOURCE_DIR
set -u
tool="$1/kvrt-bench"
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.gguf
fails=0
out=$(mktemp) err=$(mktemp) tmp=$(mktemp -d)
trap 'rm -f "$out" "$err"; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
run() { "$tool" "$@" >"$out" 2>"$err"; rc=$?; }

# the model through a path unique to this run, so its busy children can be found by name
ln -s "$(realpath "$models/stories260K.gguf")" "$tmp/threads-model.gguf"

# --- threads --quick --json ------------------------------------------------------------
run threads -m "$tmp/threads-model.gguf" --quick --json
[ "$rc" -eq 0 ] || { fail "threads --quick --json exited $rc"; cat "$err" >&2; }
python3 - "$out" <<'PY' || fail "JSON fields"
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("  JSON check failed:", what, file=sys.stderr)
        sys.exit(1)
def pos(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
need(d["tool"] == "kvrt-bench" and d["bench"] == "threads", "tool/bench")
cores = d["cores"]
need(cores >= 1 and d["default_threads"] == cores, "cores = the default thread count")
need(d["busy_processes"] == 1, "one busy process by default")
m = d["models"]
need(len(m) == 1 and m[0]["path"].endswith("threads-model.gguf"), "one model")
s = m[0]["settings"]
need([(x["threads"], x["busy"], x["default"]) for x in s] ==
     [(1, False, False), (cores, False, True), (4 * cores, False, False), (cores, True, False)],
     "settings -t 1, cores (default), 4 x cores, cores + busy: %r" % s)
for x in s:
    need(pos(x["decode_tok_s_median"]) and pos(x["vs_t1"]) and pos(x["cpu_us_per_token_median"]), x["label"])
need(s[0]["vs_t1"] == 1.0, "-t 1 is the reference")
need(abs(m[0]["min_ratio_vs_t1"] - min(x["vs_t1"] for x in s)) < 1e-9, "worst ratio")
need(isinstance(m[0]["min_ratio_met"], bool) and isinstance(m[0]["default_met"], bool), "verdicts")
sp = d["split"]
need(len(sp) >= 8 and all(pos(r["work"]) and pos(r["inline_us"]) and pos(r["pool_us"]) for r in sp), "split rows")
need([r["work"] for r in sp] == sorted(r["work"] for r in sp), "split sizes grow")
need(d["min_work_per_thread"] > 0, "threshold reported")
PY
grep -q "^| model" "$err" || fail "--json: the table is not on stderr"
grep -q "^| job" "$err" || fail "--json: the split table is not on stderr"
sleep 0.2
pgrep -f "$tmp/threads-model.gguf" >/dev/null && fail "busy processes left running"

# --- the table on stdout; the split table alone --------------------------------------------
run threads -m "$tmp/threads-model.gguf" --quick --no-split --busy 2 -t 3
[ "$rc" -eq 0 ] || { fail "threads --no-split exited $rc"; cat "$err" >&2; }
[ "$(grep -c '^| threads-model.gguf' "$out")" -eq 5 ] || fail "want 5 rows (4 settings and -t 3)"
grep -q "+ 2 busy" "$out" || fail "--busy 2 not in the busy row"
grep -q "^| job" "$out" && fail "--no-split printed the split table"
run threads --split-only --quick
[ "$rc" -eq 0 ] || { fail "threads --split-only exited $rc"; cat "$err" >&2; }
grep -q "^| job" "$out" || fail "--split-only: no split table"
grep -q "^| model" "$out" && fail "--split-only printed the decode table"

# --- usage errors ------------------------------------------------------------------------------
expect_usage() { # PATTERN ARGS...
    local pattern=$1
    shift
    run "$@"
    [ "$rc" -eq 2 ] || fail "'$*' exited $rc, want 2"
    grep -qF -- "$pattern" "$err" || fail "'$*': stderr lacks '$pattern': $(cat "$err")"
}
expect_usage "-m FILE is needed" threads
expect_usage "unknown argument '--bogus'" threads --split-only --bogus
expect_usage "--reps" threads --split-only --reps 0
expect_usage "-t" threads -m "$tmp/threads-model.gguf" -t 0
run threads -m "$tmp/missing.gguf" --quick --no-split
[ "$rc" -eq 1 ] || fail "a missing model: exit $rc, want 1"

[ $fails -eq 0 ] && echo "kvrt_bench_threads: all checks passed"
exit $((fails > 0))
