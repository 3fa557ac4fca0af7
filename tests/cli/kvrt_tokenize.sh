#!/usr/bin/env bash
# kvrt-tokenize as a user runs it: exact stdout on the stories260K vocabulary
# (tok512.bin, the golden run's prompt ids), the Llama-2 vocabulary, flags,
# and errors (nonzero exit, message on stderr, nothing on stdout).
# Usage: kvrt_tokenize.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
. "$(dirname "${BASH_SOURCE[0]}")/data.bash"
require_data stories260K.bin stories260K.gguf tok512.bin tokenizer.bin
tool=$build/kvrt-tokenize
failures=0
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

# expect NAME WANT_STDOUT ARGS...: exit 0, stdout exactly WANT (plus the final newline)
expect() {
    local name=$1 want=$2
    shift 2
    if ! "$tool" "$@" >"$out" 2>"$err"; then
        echo "FAIL $name: exit $? ($(cat "$err"))"; failures=$((failures + 1)); return
    fi
    if [ "$(cat "$out")" != "$want" ] || [ "$(tail -c 1 "$out" | od -An -c | tr -d ' ')" != '\n' ]; then
        echo "FAIL $name: stdout '$(cat "$out")', want '$want'"; failures=$((failures + 1)); return
    fi
    echo "ok   $name"
}

# expect_error NAME STDERR_SUBSTRING ARGS...: nonzero exit, empty stdout, message on stderr
expect_error() {
    local name=$1 needle=$2
    shift 2
    if "$tool" "$@" >"$out" 2>"$err"; then
        echo "FAIL $name: exit 0"; failures=$((failures + 1)); return
    fi
    if [ -s "$out" ] || ! grep -qF -- "$needle" "$err"; then
        echo "FAIL $name: stdout '$(cat "$out")', stderr '$(cat "$err")' (want '$needle')"
        failures=$((failures + 1)); return
    fi
    echo "ok   $name"
}

tok512=$models/tok512.bin
expect "tok512 prompt" "1 403 407 261 378" -z "$tok512" -p "Once upon a time"
expect "checkpoint + tokenizer" "1 403 407 261 378" -m "$models/stories260K.bin" -z "$tok512" -p "Once upon a time"
expect "llama.cpp GGUF" "1 403 407 261 378" -m "$models/stories260K.gguf" -p "Once upon a time"
expect "kvrt-convert GGUF" "1 403 407 261 378" -m "$src/models/stories260K.gguf" -p "Once upon a time"
expect_error "GGUF given as -z" "is a GGUF file" -z "$models/stories260K.gguf" -p "x"
expect_error "GGUF with -z" "carries its vocabulary" -m "$models/stories260K.gguf" -z "$tok512" -p "x"
expect "--no-bos" "403 407 261 378" -z "$tok512" -p "Once upon a time" --no-bos
expect "empty prompt is BOS alone" "1" -z "$tok512" -p ""
expect "--pieces" "$(printf '1\t<s>\n403\t\xe2\x96\x81Once\n13\t<0x0A>')" -z "$tok512" -p "Once
" --pieces
expect "llama-2 vocabulary" "1 15043 3186" -z "$models/tokenizer.bin" -p "Hello world"
expect "llama-2 spaces and emoji" "1 29871 15043 29871 243 162 169 156" -z "$models/tokenizer.bin" \
    -p " Hello $(printf '\xf0\x9f\xa6\x99')"
expect "text from stdin" "1 403 407 261 378" -z "$tok512" -f - < <(printf 'Once upon a time')

# byte-level BPE vocabularies (tests/data/vocab): GPT-2 adds no BOS, special tokens only with --special
vocab=$src/tests/data/vocab
expect "gpt-2 BPE" "15496 995" -m "$vocab/gpt-2-vocab.gguf" -p "Hello world"
expect "gpt-2 pieces" "$(printf '15496\tHello\n995\t\xc4\xa0world')" -m "$vocab/gpt-2-vocab.gguf" -p "Hello world" --pieces
expect "qwen3 special parsed" "151644 872 198 6023 151645" -m "$vocab/qwen3-vocab.gguf" --special \
    -p "<|im_start|>user
hi<|im_end|>"
expect "qwen3 special as text" "27 91 318 4906 91 29" -m "$vocab/qwen3-vocab.gguf" -p "<|im_start|>"
expect "phi-3 BOS and rstrip" "1 32010 15043 32007" -m "$vocab/phi-3-vocab.gguf" --special -p "<|user|>
Hello<|end|>"

if "$tool" --help >"$out" 2>"$err" && grep -q "usage: kvrt-tokenize" "$out"; then echo "ok   --help"
else echo "FAIL --help"; failures=$((failures + 1)); fi
expect_error "no text" "-p" -z "$tok512"
expect_error "no model" "-m" -p "x"
expect_error "unknown flag" "--bogus" -z "$tok512" -p "x" --bogus
expect_error "missing value" "missing value" -z "$tok512" -p
expect_error "missing tokenizer file" "cannot open" -z /nonexistent/tok.bin -p "x"
expect_error "checkpoint without -z" "-z" -m "$models/stories260K.bin" -p "x"
expect_error "vocabulary size mismatch" "more than the model's 512" -m "$models/stories260K.bin" \
    -z "$models/tokenizer.bin" -p "x"
bad=$(mktemp)
head -c 1000 "$tok512" >"$bad"
expect_error "truncated tokenizer" "truncated" -z "$bad" -p "x"
rm -f "$bad"

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"
