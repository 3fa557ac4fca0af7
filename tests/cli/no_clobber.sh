#!/usr/bin/env bash
# No tool destroys a file it did not create (DESIGN.md, "Build and tool
# interfaces"). Every case runs in a temporary folder and compares sha256
# before and after:
# - an output that is one of the inputs (same path, hard link or symlink) is
#   refused: kvrt-run --dump-logits onto the model, checkpoint or tokenizer;
#   kvrt-convert onto its checkpoint or tokenizer;
# - --pipeline-cache naming something that is not a kvrt cache (the model) is
#   left as it is, with a warning (kvrt-run and kvrt-bench, where Vulkan is built);
# - a character device or FIFO given as an output is written directly and
#   stays what it was; a FIFO nobody reads is refused at once; a symlink keeps
#   pointing at the new data, written in its target's folder;
# - SIGINT or SIGTERM during a long kvrt-synth leaves no temporary and the
#   old file as it was;
# - a FIFO given as model, tokenizer or checkpoint fails at once, naming it.
# Usage: no_clobber.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.gguf stories260K.bin tok512.bin
. "$(dirname "${BASH_SOURCE[0]}")/backends.bash"
tmp=$(mktemp -d)
cleanup() {
    jobs -p | xargs -r kill 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
t0=$(date +%s)
ok() { echo "ok   $1 ($(($(date +%s) - t0)) s)"; }
sum() { sha256sum "$1" | cut -d' ' -f1; }
no_temporaries() {
    local left
    left=$(find "$tmp" -name '*.tmp-*' 2>/dev/null)
    [ -z "$left" ] && ok "$1: no temporary left" || fail "$1: temporaries left: $left"
}

cp "$models/stories260K.gguf" "$tmp/m.gguf"
cp "$models/stories260K.bin" "$tmp/ck.bin"
cp "$models/tok512.bin" "$tmp/tok.bin"
ln "$tmp/m.gguf" "$tmp/m-hard.gguf"
ln -s m.gguf "$tmp/m-link.gguf"
m_sum=$(sum "$tmp/m.gguf") ck_sum=$(sum "$tmp/ck.bin") tok_sum=$(sum "$tmp/tok.bin")
unchanged() { # NAME: the three inputs kept their bytes
    if [ "$(sum "$tmp/m.gguf")" = "$m_sum" ] && [ "$(sum "$tmp/ck.bin")" = "$ck_sum" ] &&
        [ "$(sum "$tmp/tok.bin")" = "$tok_sum" ]; then
        ok "$1: inputs unchanged"
    else
        fail "$1: an input changed"
    fi
}
# refused NAME CMD...: exits 1 (not a crash, not a hang) saying the output is an input
refused() {
    local name=$1
    shift
    timeout 120 "$@" >/dev/null 2>"$tmp/err"
    local rc=$?
    if [ $rc -eq 1 ] && grep -q "is the input" "$tmp/err"; then
        ok "$name: refused ($(head -n 1 "$tmp/err"))"
    else
        fail "$name: exit $rc, stderr '$(head -n 3 "$tmp/err")'"
    fi
    unchanged "$name"
}

run=(timeout 120 "$build/kvrt-run" -p "Once" -n 2 --temp 0 --ctx 64 -t 1)

# --- outputs that are inputs ---------------------------------------------------------
refused "dump-logits onto the model" "${run[@]:2}" -m "$tmp/m.gguf" --dump-logits "$tmp/m.gguf"
refused "dump-logits onto a hard link of the model" "${run[@]:2}" -m "$tmp/m.gguf" --dump-logits "$tmp/m-hard.gguf"
refused "dump-logits onto a symlink to the model" "${run[@]:2}" -m "$tmp/m-link.gguf" --dump-logits "$tmp/m.gguf"
refused "dump-logits onto the checkpoint" "${run[@]:2}" -m "$tmp/ck.bin" -z "$tmp/tok.bin" --dump-logits "$tmp/ck.bin"
refused "dump-logits onto the tokenizer" "${run[@]:2}" -m "$tmp/ck.bin" -z "$tmp/tok.bin" --dump-logits "$tmp/tok.bin"
refused "convert onto its checkpoint" "$build/kvrt-convert" -q "$tmp/ck.bin" "$tmp/tok.bin" "$tmp/ck.bin"
refused "convert onto its tokenizer" "$build/kvrt-convert" -q "$tmp/ck.bin" "$tmp/tok.bin" "$tmp/tok.bin"
no_temporaries "refused outputs"

# a dump that is not an input still works, and holds positions x vocab floats
if "${run[@]}" -m "$tmp/m.gguf" --dump-logits "$tmp/logits.f32" >/dev/null 2>"$tmp/err" &&
    [ "$(stat -c %s "$tmp/logits.f32")" -gt 0 ] && [ $(($(stat -c %s "$tmp/logits.f32") % 2048)) -eq 0 ]; then
    ok "dump-logits to a new file"
else
    fail "dump-logits to a new file: $(tail -n 2 "$tmp/err")"
fi

# --- --pipeline-cache naming a file that is not a cache -----------------------------
if built vulkan; then
    if "${run[@]}" -m "$tmp/m.gguf" --backend vulkan --pipeline-cache "$tmp/m.gguf" >/dev/null 2>"$tmp/err" &&
        grep -q "not saved" "$tmp/err"; then
        ok "kvrt-run --pipeline-cache onto the model: warned ($(grep "not saved" "$tmp/err" | head -n 1))"
    else
        fail "kvrt-run --pipeline-cache onto the model: $(tail -n 3 "$tmp/err")"
    fi
    unchanged "kvrt-run --pipeline-cache onto the model"
    if timeout 300 "$build/kvrt-bench" serve --model "$tmp/m.gguf" --requests 1 --max-seqs 1 --backend vulkan \
        --pipeline-cache "$tmp/m.gguf" >/dev/null 2>"$tmp/err" && grep -q "not saved" "$tmp/err"; then
        ok "kvrt-bench serve --pipeline-cache onto the model: warned"
    else
        fail "kvrt-bench serve --pipeline-cache onto the model: $(tail -n 3 "$tmp/err")"
    fi
    unchanged "kvrt-bench serve --pipeline-cache onto the model"
    # and a real cache is still written and replaced
    "${run[@]}" -m "$tmp/m.gguf" --backend vulkan --pipeline-cache "$tmp/cache.bin" >/dev/null 2>&1
    [ -s "$tmp/cache.bin" ] && ok "a new pipeline cache is written" || fail "no pipeline cache written"
fi

# --- outputs that are devices, FIFOs, symlinks ------------------------------------------
synth=("$build/kvrt-synth" -q --seed 3)
"${synth[@]}" -o "$tmp/ref.gguf" || fail "kvrt-synth to a regular file"
ref_sum=$(sum "$tmp/ref.gguf")
if [ "$(id -u)" -eq 0 ]; then # as root the old writer replaced devices: try it on a device of our own
    mknod "$tmp/null" c 1 3 && dev=$tmp/null
else
    dev=/dev/null
fi
if timeout 60 "${synth[@]}" -o "$dev" 2>"$tmp/err" && [ -c "$dev" ]; then
    ok "kvrt-synth -o a character device: written, still a device"
else
    fail "kvrt-synth -o $dev: $(cat "$tmp/err"); $(ls -l "$dev")"
fi

mkfifo "$tmp/fifo"
if timeout 20 "${synth[@]}" -o "$tmp/fifo" 2>"$tmp/err"; then
    fail "kvrt-synth -o a FIFO nobody reads succeeded"
elif [ $? -eq 124 ]; then
    fail "kvrt-synth -o a FIFO nobody reads blocked"
else
    grep -q "no reader" "$tmp/err" && ok "FIFO without a reader refused at once" || fail "FIFO: $(cat "$tmp/err")"
fi
cat "$tmp/fifo" >"$tmp/from-fifo" &
reader=$!
if timeout 60 "${synth[@]}" -o "$tmp/fifo" 2>"$tmp/err"; then
    wait $reader
    [ -p "$tmp/fifo" ] && [ "$(sum "$tmp/from-fifo")" = "$ref_sum" ] &&
        ok "kvrt-synth -o a FIFO with a reader: the same bytes came through, still a FIFO" ||
        fail "FIFO with a reader: bytes differ or no longer a FIFO"
else
    fail "kvrt-synth -o a FIFO with a reader: $(cat "$tmp/err")"
    kill $reader 2>/dev/null
fi

mkdir "$tmp/elsewhere"
echo old >"$tmp/elsewhere/real.gguf"
ln -s elsewhere/real.gguf "$tmp/link.gguf"
if "${synth[@]}" -o "$tmp/link.gguf" && [ -L "$tmp/link.gguf" ] && [ "$(sum "$tmp/elsewhere/real.gguf")" = "$ref_sum" ]; then
    ok "kvrt-synth -o a symlink: the link stays, its target has the data"
else
    fail "kvrt-synth -o a symlink: $(ls -l "$tmp/link.gguf" "$tmp/elsewhere")"
fi
ln -s elsewhere/converted.gguf "$tmp/dangling.gguf"
if "$build/kvrt-convert" -q "$tmp/ck.bin" "$tmp/tok.bin" "$tmp/dangling.gguf" && [ -L "$tmp/dangling.gguf" ] &&
    cmp -s "$tmp/elsewhere/converted.gguf" "$src/models/stories260K.gguf"; then
    ok "kvrt-convert -o a dangling symlink: written through it"
else
    fail "kvrt-convert to a dangling symlink"
fi
no_temporaries "devices, FIFOs, symlinks"

# --- interrupted writes ----------------------------------------------------------------
for sig in INT TERM; do
    echo "keep me" >"$tmp/big.gguf"
    before=$(sum "$tmp/big.gguf")
    # a background job of a script starts with SIGINT ignored; a user's Ctrl-C reaches a foreground one
    env --default-signal=INT,TERM "$build/kvrt-synth" -q --preset 1b --type q8_0 -o "$tmp/big.gguf" &
    pid=$!
    sleep 2
    if ! kill -0 $pid 2>/dev/null; then
        fail "SIG$sig: kvrt-synth --preset 1b finished within 2 s; nothing to interrupt"
        continue
    fi
    kill -$sig $pid
    wait $pid
    rc=$?
    [ $rc -gt 128 ] && ok "SIG$sig ends kvrt-synth (exit $rc)" || fail "SIG$sig: exit $rc"
    [ "$(sum "$tmp/big.gguf")" = "$before" ] && ok "SIG$sig: the old file is as it was" || fail "SIG$sig: old file changed"
    no_temporaries "SIG$sig during kvrt-synth"
done

# --- FIFOs given as inputs: an error at once, never a hang ------------------------------
mkfifo "$tmp/in-fifo"
# fails_fast NAME CMD...: nonzero within 20 s, naming the FIFO
fails_fast() {
    local name=$1
    shift
    timeout 20 "$@" >/dev/null 2>"$tmp/err"
    local rc=$?
    if [ $rc -eq 124 ]; then
        fail "$name: blocked on the FIFO"
    elif [ $rc -ne 0 ] && [ $rc -lt 124 ] && grep -q "in-fifo" "$tmp/err" && grep -qi "fifo" "$tmp/err"; then
        ok "$name: refused ($(head -n 1 "$tmp/err"))"
    else
        fail "$name: exit $rc, stderr '$(head -n 2 "$tmp/err")'"
    fi
}
fails_fast "kvrt-run -m FIFO" "${run[@]:2}" -m "$tmp/in-fifo"
fails_fast "kvrt-run -z FIFO" "${run[@]:2}" -m "$tmp/ck.bin" -z "$tmp/in-fifo"
fails_fast "kvrt-convert FIFO checkpoint" "$build/kvrt-convert" -q "$tmp/in-fifo" "$tmp/tok.bin" "$tmp/out.gguf"
fails_fast "kvrt-convert FIFO tokenizer" "$build/kvrt-convert" -q "$tmp/ck.bin" "$tmp/in-fifo" "$tmp/out.gguf"
fails_fast "kvrt-tokenize -m FIFO" "$build/kvrt-tokenize" -m "$tmp/in-fifo" -p "x"
fails_fast "kvrt-bench serve --model FIFO" "$build/kvrt-bench" serve --model "$tmp/in-fifo" --requests 2
[ -p "$tmp/in-fifo" ] && ok "the FIFO is still a FIFO" || fail "the input FIFO was replaced"

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all no-clobber checks passed"
