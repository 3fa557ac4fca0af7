#!/usr/bin/env bash
# kvrt-run --prompt-cache (issue 18): the same text cold and from disk;
# several processes sharing one folder at once; a folder that is not
# writable or is a file is a warning and the run goes on.
# Usage: prompt_cache.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
tool=$build/kvrt-run
model=$src/models/stories260K.gguf
failures=0
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
prompt="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends."
run() { "$tool" -m "$model" -p "$prompt" -n 24 --temp 0 -t 1 "$@"; }

run >"$tmp/ref" 2>/dev/null || fail "reference run"
run --prompt-cache "$tmp/pc" >"$tmp/cold" 2>"$tmp/err1" || fail "cold: $(tail -n 2 "$tmp/err1")"
run --prompt-cache "$tmp/pc" >"$tmp/warm" 2>"$tmp/err2" || fail "warm: $(tail -n 2 "$tmp/err2")"
grep -q "prompt cache: 0 of 36 prompt tokens loaded, 2 blocks written" "$tmp/err1" \
    && grep -q "prompt cache: 32 of 36 prompt tokens loaded, 0 blocks written" "$tmp/err2" \
    && cmp -s "$tmp/ref" "$tmp/cold" && cmp -s "$tmp/ref" "$tmp/warm" \
    && echo "ok   cold and from disk: the same text" || fail "cold/warm: $(grep 'prompt cache' "$tmp/err1" "$tmp/err2")"

# four processes at once on one folder, two prompts: every run right, and the folder sound after
rm -rf "$tmp/pc"
for i in 1 2 3 4; do
    if [ $((i % 2)) -eq 0 ]; then p2=(-p "$prompt And then"); else p2=(); fi
    "$tool" -m "$model" -p "$prompt" "${p2[@]}" -n 24 --temp 0 -t 1 --prompt-cache "$tmp/pc" \
        >"$tmp/par$i" 2>"$tmp/parerr$i" &
done
wait
ok=1
for i in 1 3; do cmp -s "$tmp/ref" "$tmp/par$i" || ok=0; done
cmp -s "$tmp/par2" "$tmp/par4" || ok=0
run --prompt-cache "$tmp/pc" >"$tmp/after" 2>"$tmp/err3"
grep -q "32 of 36 prompt tokens loaded" "$tmp/err3" && cmp -s "$tmp/ref" "$tmp/after" || ok=0
[ $ok -eq 1 ] && echo "ok   four processes share one folder" || fail "shared folder: $(cat "$tmp"/parerr* | grep -i 'warn\|error')"

# not writable: a warning, the same text (as root, run as nobody: root writes anywhere)
mkdir -p "$tmp/ro" && chmod 555 "$tmp/ro"
as=()
if [ "$(id -u)" = 0 ]; then
    chmod 755 "$tmp"
    as=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
"${as[@]}" "$tool" -m "$model" -p "$prompt" -n 24 --temp 0 -t 1 --prompt-cache "$tmp/ro" >"$tmp/ro.out" 2>"$tmp/ro.err"
rc=$?
[ $rc -eq 0 ] && grep -q "warning: prompt cache .*not writable" "$tmp/ro.err" && cmp -s "$tmp/ref" "$tmp/ro.out" \
    && echo "ok   not writable: warning, run goes on" || fail "not writable: exit $rc, $(head -n 3 "$tmp/ro.err")"

# a file where the folder should be: a warning, the file untouched
echo "keep me" >"$tmp/afile"
run --prompt-cache "$tmp/afile" >"$tmp/f.out" 2>"$tmp/f.err"
rc=$?
[ $rc -eq 0 ] && grep -q "is not a folder" "$tmp/f.err" && cmp -s "$tmp/ref" "$tmp/f.out" \
    && [ "$(cat "$tmp/afile")" = "keep me" ] && echo "ok   a file: warning, untouched" || fail "a file: exit $rc"

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
