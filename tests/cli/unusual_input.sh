#!/usr/bin/env bash
# kvrt-run on unusual but legal input, and on files that only look right:
# - a token whose text is 300 bytes is printed whole (no fixed buffer);
# - a GGUF with tokenizer.ggml.add_bos_token = false gets no BOS;
# - --truncate-prompt keeps the end of the prompt without assuming id 0 is
#   BOS, and at --ctx 1 keeps the last token instead of dropping the prompt;
# - the default context is the model's, capped at 4096, said on stderr;
# - --ctx 100000000 fails at once naming the flag (not after a 3 GB table);
# - a file whose llama.block_count is smaller than its blk.N tensors is
#   refused instead of printing plausible wrong text.
# Files are made here from tests/data with small Python edits.
# Usage: unusual_input.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.bin tok512.bin stories260K.gguf
tool=$build/kvrt-run
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
ok() { echo "ok   $1"; }
gguf=$src/models/stories260K.gguf # kvrt's own: context 512, add_bos_token absent (true)

# --- a 300-byte token ------------------------------------------------------------------
# tok512.bin with token 395 (" named", generated at step 9 of the golden run) spelled as 300 Zs
python3 - "$models/tok512.bin" "$tmp/long.bin" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
off, out = 4, [struct.pack("<i", 300)]
for i in range(512):
    score, n = struct.unpack_from("<fi", d, off)
    piece = d[off + 8:off + 8 + n]
    off += 8 + n
    if i == 395:
        piece = b"Z" * 300
    out.append(struct.pack("<fi", score, len(piece)) + piece)
open(sys.argv[2], "wb").write(b"".join(out))
PY
"$tool" -m "$models/stories260K.bin" -z "$tmp/long.bin" -p "Once upon a time" -n 12 --temp 0 -t 1 \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
zs=$(grep -o 'Z*' "$tmp/out" | awk '{ print length }' | sort -n | tail -n 1)
if [ $rc -eq 0 ] && [ "${zs:-0}" -eq 300 ]; then
    ok "a 300-byte token is printed whole"
else
    fail "300-byte token: exit $rc, longest run of Z ${zs:-0}, stderr $(tail -n 2 "$tmp/err")"
fi

# --- add_bos_token = false ------------------------------------------------------------------
# Inserts KVs at the front of the GGUF's key list, padded to a multiple of the
# 32-byte alignment so the tensor data stays aligned where it was.
add_kv_bool() { # IN OUT KEY VALUE
    python3 - "$@" <<'PY'
import struct, sys
src, dst, key, val = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "true"
d = open(src, "rb").read()
assert d[:4] == b"GGUF"
ver, nt, nkv = struct.unpack_from("<IQQ", d, 4)
def kv(k, t, payload):
    kb = k.encode()
    return struct.pack("<Q", len(kb)) + kb + struct.pack("<I", t) + payload
extra = kv(key, 7, struct.pack("<B", val))                 # GGUF bool
fixed = len(kv("kvrt.test.pad", 8, struct.pack("<Q", 0)))  # GGUF string, empty
pad = -(len(extra) + fixed) % 32
extra += kv("kvrt.test.pad", 8, struct.pack("<Q", pad) + b"x" * pad)
open(dst, "wb").write(d[:4] + struct.pack("<IQQ", ver, nt, nkv + 2) + extra + d[24:])
PY
}
add_kv_bool "$gguf" "$tmp/nobos.gguf" tokenizer.ggml.add_bos_token false
"$tool" -m "$gguf" -p "Once upon a time" -n 1 --temp 0 -t 1 >/dev/null 2>"$tmp/err-bos"
"$tool" -m "$tmp/nobos.gguf" -p "Once upon a time" -n 1 --temp 0 -t 1 >"$tmp/out" 2>"$tmp/err"
if grep -q "prompt 5 tokens" "$tmp/err-bos" && grep -q "prompt 4 tokens" "$tmp/err"; then
    ok "add_bos_token = false: the prompt has no BOS (4 tokens, 5 with it)"
else
    fail "add_bos_token: with BOS '$(grep prompt "$tmp/err-bos")', without '$(grep prompt "$tmp/err")' $(tail -n 2 "$tmp/err")"
fi

# --- --truncate-prompt ------------------------------------------------------------------
# no BOS: the last 3 of "Once| upon| a| time"
"$tool" -m "$tmp/nobos.gguf" -p "Once upon a time" -n 1 --temp 0 -t 1 --ctx 3 --truncate-prompt \
    >"$tmp/out" 2>"$tmp/err"
case "$(head -c 12 "$tmp/out")" in # (a piece's leading space is dropped only after BOS)
" upon a time") ok "--truncate-prompt without BOS keeps the last 3 tokens" ;;
*) fail "--truncate-prompt without BOS printed '$(head -c 40 "$tmp/out")' ($(grep -i truncat "$tmp/err"))" ;;
esac
# with BOS, --ctx 1: the last token, not BOS alone
"$tool" -m "$gguf" -p "Once upon a time" -n 1 --temp 0 -t 1 --ctx 1 --truncate-prompt >"$tmp/out" 2>"$tmp/err"
if grep -q "last 1 tokens" "$tmp/err" && [ "$(head -c 5 "$tmp/out")" = " time" ]; then
    ok "--ctx 1 --truncate-prompt keeps the last token"
else
    fail "--ctx 1 --truncate-prompt: '$(head -c 40 "$tmp/out")' ($(grep -i truncat "$tmp/err"))"
fi
# with BOS, --ctx 3: BOS and the last 2
"$tool" -m "$gguf" -p "Once upon a time" -n 1 --temp 0 -t 1 --ctx 3 --truncate-prompt >"$tmp/out" 2>"$tmp/err"
if grep -q "last 2 tokens after BOS" "$tmp/err" && [ "$(head -c 6 "$tmp/out")" = "a time" ]; then
    ok "--ctx 3 --truncate-prompt keeps BOS and the last 2 tokens"
else
    fail "--ctx 3 --truncate-prompt: '$(head -c 40 "$tmp/out")' ($(grep -i truncat "$tmp/err"))"
fi

# --- the default context ----------------------------------------------------------------------
"$tool" -m "$gguf" -p "Once" -n 1 --temp 0 -t 1 >/dev/null 2>"$tmp/err"
grep -q "context 512 positions (the model's;" "$tmp/err" && ok "default context: the model's 512, said on stderr" ||
    fail "default context: $(grep -i context "$tmp/err")"
"$build/kvrt-convert" -q --ctx 1000000 "$models/stories260K.bin" "$models/tok512.bin" "$tmp/million.gguf" ||
    fail "kvrt-convert --ctx 1000000"
"$tool" -m "$tmp/million.gguf" -p "Once" -n 1 --temp 0 -t 1 >/dev/null 2>"$tmp/err"
grep -q "context 4096 positions (the model's, capped" "$tmp/err" &&
    ok "default context of a 1,000,000-position file: capped at 4096" ||
    fail "capped context: $(grep -i context "$tmp/err")"

# --- a context beyond memory fails at once ----------------------------------------------------
start=$(date +%s)
timeout 60 "$tool" -m "$gguf" -p "Once" -n 1 -t 1 --ctx 100000000 >/dev/null 2>"$tmp/err"
rc=$? secs=$(($(date +%s) - start))
if [ $rc -eq 1 ] && [ $secs -lt 10 ] && grep -q -- "--ctx" "$tmp/err" && grep -q "max_context 100000000" "$tmp/err"; then
    ok "--ctx 100000000 refused in ${secs} s ($(head -n 1 "$tmp/err"))"
else
    fail "--ctx 100000000: exit $rc after ${secs} s: $(head -n 2 "$tmp/err")"
fi

# --- tensors the architecture does not use -----------------------------------------------------
python3 - "$gguf" "$tmp/four.gguf" <<'PY'
import struct, sys
d = bytearray(open(sys.argv[1], "rb").read())
key = b"llama.block_count"
at = d.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
t, v = struct.unpack_from("<II", d, at)
assert t == 4 and v == 5, (t, v)    # GGUF uint32, 5 layers
struct.pack_into("<I", d, at + 4, 4)
open(sys.argv[2], "wb").write(d)
PY
"$tool" -m "$tmp/four.gguf" -p "Once" -n 4 --temp 0 -t 1 >/dev/null 2>"$tmp/err"
rc=$?
if [ $rc -eq 1 ] && grep -q "blk.4" "$tmp/err" && grep -q "not used" "$tmp/err"; then
    ok "block_count 4 with blk.4 tensors refused ($(head -n 1 "$tmp/err"))"
else
    fail "block_count 4 with 5 layers of tensors: exit $rc, $(head -n 2 "$tmp/err")"
fi

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all unusual-input checks passed"
