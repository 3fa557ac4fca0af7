#!/usr/bin/env bash
# kvrt-run --chat as a user runs it, on a small random model carrying Phi-3's
# vocabulary and chat template: each turn prefills only what is new (checked
# against kvrt-tokenize of the template text), a full context ends the
# conversation cleanly, and bad flag combinations are refused.
# Usage: kvrt_run_chat.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
run=$build/kvrt-run
tok=$build/kvrt-tokenize
vocab=$src/tests/data/vocab/phi-3-vocab.gguf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

"$build/kvrt-synth" --vocab-from "$vocab" --dim 32 --layers 2 --ff 64 --heads 4 --kv-heads 2 --ctx 256 --tied -q \
    -o "$tmp/m.gguf" || { echo "FAIL kvrt-synth"; exit 1; }
count() { "$tok" -m "$vocab" --special "$@" | wc -w; }
nl=$'\n'
n1=$(count -p "<|system|>${nl}Be brief.<|end|>${nl}<|user|>${nl}Hello there<|end|>${nl}<|assistant|>${nl}")
n2=$(count --no-bos -p "<|end|>${nl}<|user|>${nl}How are you?<|end|>${nl}<|assistant|>${nl}")

printf 'Hello there\n\nHow are you?\n' | "$run" -m "$tmp/m.gguf" --chat --system "Be brief." -n 6 --temp 0 \
    --ignore-eos -v >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 0 ] || fail "chat exit $rc: $(cat "$tmp/err")"
grep -q "chat template phi3" "$tmp/err" || fail "template not named: $(cat "$tmp/err")"
grep -q "turn 1: prefill $n1 tokens (context 0 + $n1 of 256)" "$tmp/err" \
    || fail "turn 1 is not $n1 tokens: $(grep turn "$tmp/err")"
grep -q "turn 2: prefill $n2 tokens (context $((n1 + 6)) + $n2 of 256)" "$tmp/err" \
    || fail "turn 2 is not the $n2 new tokens after $((n1 + 6)): $(grep turn "$tmp/err")"
[ "$(grep -c "turn [0-9]*: prefill" "$tmp/err")" -eq 2 ] || fail "the empty line made a turn"
[ $failures -eq 0 ] && echo "ok   turns prefill only what is new ($n1, then $n2 tokens)"

# a context too small for the second turn: said on stderr, exit 0
printf 'Hello there\nHow are you?\n' | "$run" -m "$tmp/m.gguf" --chat -n 6 --temp 0 --ignore-eos -c $((n1 + 8)) \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 0 ] && grep -q "context full" "$tmp/err"; then echo "ok   full context ends the conversation"
else fail "full context: exit $rc, $(cat "$tmp/err")"; fi

# --chat-template overrides the file's; unknown names and misuse are refused
printf 'Hi\n' | "$run" -m "$tmp/m.gguf" --chat --chat-template chatml -n 2 -v >"$tmp/out" 2>"$tmp/err" \
    && grep -q "chat template chatml" "$tmp/err" && echo "ok   --chat-template" || fail "--chat-template chatml"
if printf 'Hi\n' | "$run" -m "$tmp/m.gguf" --chat --chat-template bogus >"$tmp/out" 2>"$tmp/err"; then
    fail "unknown template accepted"
elif grep -q "llama3" "$tmp/err" && grep -q "mistral-v7" "$tmp/err"; then echo "ok   unknown template lists the names"
else fail "unknown template: $(cat "$tmp/err")"; fi
if printf 'Hi\n' | "$run" -m "$src/models/stories260K.gguf" --chat >"$tmp/out" 2>"$tmp/err"; then
    fail "a model without a template chatted"
elif grep -q "no chat template" "$tmp/err"; then echo "ok   no template in the file: said"
else fail "no template: $(cat "$tmp/err")"; fi
"$run" -m "$tmp/m.gguf" --system "x" >/dev/null 2>&1; [ $? -eq 2 ] && echo "ok   --system needs --chat" \
    || fail "--system without --chat"
"$run" -m "$tmp/m.gguf" --chat -p "x" </dev/null >/dev/null 2>&1; [ $? -eq 2 ] && echo "ok   --chat takes no -p" \
    || fail "--chat with -p"

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
