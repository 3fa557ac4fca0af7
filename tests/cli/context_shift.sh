#!/usr/bin/env bash
# kvrt-run --context-shift (issue 18): ten contexts of generation with no
# error, and sinks that leave no block to
# drop refused with a message (exit 1, never a crash).
# Usage: context_shift.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
tool=$build/kvrt-run
model=$src/models/stories260K.gguf
failures=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL $1"; failures=$((failures + 1)); }

# 320 tokens in a context of 32 (blocks of 8): shifts, no error, stats on
# stderr. The tool on the CPU; tests/test_context_shift.c runs every backend.
for be in cpu; do
    if "$tool" -m "$model" -p "Once upon a time" -n 320 --temp 0 --ignore-eos --ctx 32 --block-size 8 \
        --context-shift --backend $be >"$tmp/out" 2>"$tmp/err"; then
        grep -q "generated 320 tokens" "$tmp/err" && grep -qE "context shifts: [1-9][0-9]*" "$tmp/err" \
            && echo "ok   $be: 320 tokens in a context of 32" || fail "$be: $(tail -n 3 "$tmp/err")"
    else
        fail "$be: exit $? ($(tail -n 2 "$tmp/err"))"
    fi
done

# without --context-shift the same run stops at the context
"$tool" -m "$model" -p "Once upon a time" -n 320 --temp 0 --ignore-eos --ctx 32 >/dev/null 2>"$tmp/err" \
    && grep -q "context full" "$tmp/err" && echo "ok   no shift: context full" || fail "no shift: $(tail -n 2 "$tmp/err")"

# sinks >= context (or no whole block left after them): a clear error, exit 1
for sinks in 32 500 25; do
    "$tool" -m "$model" -p "Once" -n 4 --ctx 32 --block-size 8 --context-shift --sinks $sinks >/dev/null 2>"$tmp/err"
    rc=$?
    [ $rc -eq 1 ] && grep -q "sink tokens" "$tmp/err" && echo "ok   --sinks $sinks refused" \
        || fail "--sinks $sinks: exit $rc, '$(cat "$tmp/err")'"
done

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
