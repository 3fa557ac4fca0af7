#!/usr/bin/env bash
# The examples build against the installed package as an embedder builds
# them, and run: examples/generate.c (greedy, session API) and
# examples/stream.c (streaming, engine API), each with pkg-config (shared,
# and --static for a static link) and with find_package(kvrt) linking
# kvrt::kvrt (shared, and static with KVRT_USE_STATIC). Their text must be
# kvrt-run's greedy text on the shipped model. An installed kvrt-bench serve
# without --model finds the installed model, and a copy of it with nothing
# installed beside it says --model is needed.
# Usage: examples.sh BUILD_DIR SOURCE_DIR
set -u
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
ok() { echo "ok   $1"; }

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null || { echo "FAIL cmake --install"; exit 1; }
lib=$(find "$tmp/prefix" -name libkvrt.so -print -quit)
libdir=$(dirname "$lib")
export PKG_CONFIG_PATH=$libdir/pkgconfig
model=$src/models/stories260K.gguf
san=""
grep -q "^KVRT_SANITIZE:BOOL=ON" "$build/CMakeCache.txt" && san="-fsanitize=address,undefined"

# the reference: kvrt-run's greedy text, 20 tokens
"$build/kvrt-run" -m "$model" -p "Once upon a time" -n 20 --temp 0 -t 1 >"$tmp/want" 2>/dev/null ||
    fail "kvrt-run reference"
prompt_text=$(head -c 16 "$tmp/want")
[ "$prompt_text" = "Once upon a time" ] || fail "kvrt-run output starts '$prompt_text'"
tail -c +17 "$tmp/want" >"$tmp/want-gen" # what stream prints: the generation alone

# check NAME BINARY: generate prints kvrt-run's text; stream its generated part
check() {
    local name=$1 bin=$2 want=$tmp/want
    case $bin in *stream*) want=$tmp/want-gen ;; esac
    if "$bin" "$model" "Once upon a time" 20 >"$tmp/got" 2>"$tmp/err" && cmp -s "$tmp/got" "$want"; then
        ok "$name: same text as kvrt-run"
    else
        fail "$name: got '$(head -c 80 "$tmp/got")' want '$(head -c 80 "$want")' ($(tail -n 2 "$tmp/err"))"
    fi
}

for ex in generate stream; do
    flags=(-std=c11 -Wall -Wextra -Werror $san)
    # shellcheck disable=SC2046
    if cc "${flags[@]}" "$src/examples/$ex.c" $(pkg-config --cflags --libs kvrt) -Wl,-rpath,"$libdir" \
        -o "$tmp/$ex-pc"; then
        check "$ex, pkg-config" "$tmp/$ex-pc"
    else
        fail "$ex: pkg-config build"
    fi
    if [ -z "$san" ]; then # a sanitizer runtime cannot be linked statically
        # shellcheck disable=SC2046
        if cc "${flags[@]}" -static "$src/examples/$ex.c" $(pkg-config --static --cflags --libs kvrt) \
            -o "$tmp/$ex-static" 2>"$tmp/ld-err"; then
            file "$tmp/$ex-static" | grep -q "statically linked" || fail "$ex: pkg-config --static build is not static"
            check "$ex, pkg-config --static (statically linked)" "$tmp/$ex-static"
        else
            fail "$ex: pkg-config --static build: $(grep -v "dlopen" "$tmp/ld-err" | tail -n 3)"
        fi
    fi
done

for mode in shared static; do
    opt=OFF
    [ $mode = static ] && opt=ON
    if cmake -S "$src/examples" -B "$tmp/cm-$mode" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DKVRT_USE_STATIC=$opt \
        -DCMAKE_C_FLAGS="-Wall -Wextra -Werror $san" -DCMAKE_EXE_LINKER_FLAGS="$san" >"$tmp/cm.log" 2>&1 &&
        cmake --build "$tmp/cm-$mode" >>"$tmp/cm.log" 2>&1; then
        for ex in generate stream; do
            check "$ex, find_package(kvrt) kvrt::kvrt ($mode)" "$tmp/cm-$mode/$ex"
        done
        if [ $mode = static ]; then
            ldd "$tmp/cm-$mode/generate" | grep -q libkvrt && fail "KVRT_USE_STATIC still links libkvrt.so"
        else
            ldd "$tmp/cm-$mode/generate" | grep -q libkvrt.so || fail "kvrt::kvrt does not link libkvrt.so"
        fi
    else
        fail "find_package build ($mode): $(tail -n 5 "$tmp/cm.log")"
    fi
done

# --- kvrt-bench serve without --model --------------------------------------------------------------
installed=$tmp/prefix/share/kvrt/models/stories260K.gguf
[ -f "$installed" ] || fail "the model is not installed at share/kvrt/models"
mkdir -p "$tmp/elsewhere"
if (cd "$tmp/elsewhere" && "$tmp/prefix/bin/kvrt-bench" serve --requests 2 --max-seqs 2 --json >"$tmp/serve.json" \
    2>"$tmp/err") && grep -q "\"model\": *\"$(realpath "$installed")\"" "$tmp/serve.json"; then
    ok "installed kvrt-bench serve without --model runs the installed model"
else
    fail "installed kvrt-bench serve without --model: $(tail -n 2 "$tmp/err") $(grep -o '"model"[^,]*' "$tmp/serve.json")"
fi
mkdir -p "$tmp/lonely"
cp "$tmp/prefix/bin/kvrt-bench" "$tmp/lonely/"
(cd "$tmp/elsewhere" && "$tmp/lonely/kvrt-bench" serve --requests 2 >/dev/null 2>"$tmp/err")
rc=$?
if [ $rc -eq 2 ] && grep -q -- "--model" "$tmp/err"; then
    ok "with no model installed beside it: says --model is needed ($(head -n 1 "$tmp/err"))"
else
    fail "kvrt-bench serve with no model anywhere: exit $rc, $(head -n 2 "$tmp/err")"
fi

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all example checks passed"
