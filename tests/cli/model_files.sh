#!/usr/bin/env bash
# Tools that write model files never destroy what they are given: a failed
# write leaves an existing output as it was, and a conversion reproduces the
# shipped GGUF byte for byte.
# Usage: model_files.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.bin tok512.bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }

echo keep >"$tmp/f.gguf"
if "$build/kvrt-synth" -o "$tmp/f.gguf" --heads 7 -q 2>"$tmp/err"; then fail "synth with 7 heads succeeded"; fi
[ "$(cat "$tmp/f.gguf")" = keep ] && echo "ok   failed synth leaves the old file" || fail "failed synth changed the old file"
"$build/kvrt-synth" -o "$tmp/f.gguf" --dim 1073741824 --layers 1 --vocab 1073741824 --heads 1 --kv-heads 1 -q \
    2>"$tmp/err" && fail "absurd shape accepted"
grep -qE "more than 2\^24|is too large" "$tmp/err" && echo "ok   absurd shape refused up front" || fail "absurd shape: $(cat "$tmp/err")"
[ -z "$(ls "$tmp" | grep tmp-)" ] && echo "ok   no temporary files left" || fail "temporary files left: $(ls "$tmp")"

# (converting onto an input is refused: tests/cli/no_clobber.sh)
"$build/kvrt-convert" -q "$models/stories260K.bin" "$models/tok512.bin" "$tmp/x.gguf" || fail "convert: exit $?"
ids=$("$build/kvrt-tokenize" -m "$tmp/x.gguf" -p "Once upon a time" 2>&1)
[ "$ids" = "1 403 407 261 378" ] && echo "ok   converted file tokenizes" || fail "converted file: '$ids'"
cmp -s "$tmp/x.gguf" "$src/models/stories260K.gguf" && echo "ok   same bytes as the shipped GGUF" \
    || fail "converted file differs from models/stories260K.gguf"

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
