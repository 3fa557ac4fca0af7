#!/usr/bin/env bash
# `cmake --install` as a packager runs it: headers, static and shared libkvrt,
# kvrt.pc and the CMake package; a program builds against the installed
# copy both ways and runs; the shared library exports only the kvrt API; the
# exported CMake targets name no path of the build machine (a package built
# here must work elsewhere) and kvrt::kvrt is the one name to link.
# (tests/cli/examples.sh builds and runs examples/ the same ways.)
# Usage: install.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
lib=$(find "$tmp/prefix" -name libkvrt.so -print -quit)
[ -n "$lib" ] || { echo "FAIL no libkvrt.so installed"; exit 1; }
libdir=$(dirname "$lib")
for f in include/kvrt.h include/kvrt_kv.h include/kvrt_attention.h include/kvrt_model.h; do
    [ -f "$tmp/prefix/$f" ] || { echo "FAIL $f not installed"; exit 1; }
done
[ -f "$libdir/libkvrt.a" ] && [ -f "$libdir/pkgconfig/kvrt.pc" ] && [ -f "$libdir/cmake/kvrt/kvrtConfig.cmake" ] \
    || { echo "FAIL static library, kvrt.pc or kvrtConfig.cmake missing"; exit 1; }
echo "ok   installed files"

# no absolute path of this machine in the exported targets (OpenBLAS, the build or source tree)
abs=$(grep -hn -e '"/' -e ';/' "$libdir"/cmake/kvrt/kvrtTargets*.cmake | grep -v '_IMPORT_PREFIX' || true)
[ -z "$abs" ] || { echo "FAIL absolute paths in the exported targets: $abs"; exit 1; }
echo "ok   exported targets name no absolute path"

# only kvrt_ names (and nothing of volk, Vulkan or the kernels) are exported
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^kvrt_' | grep -v '^_' || true)
[ -z "$bad" ] || { echo "FAIL exported non-API symbols: $bad"; exit 1; }
echo "ok   exports: $(nm -D --defined-only "$lib" | awk '{print $3}' | grep -c '^kvrt_') kvrt_ symbols only"

# a sanitizer build's library needs the sanitizer runtimes in the program too
san=""
grep -q "^KVRT_SANITIZE:BOOL=ON" "$build/CMakeCache.txt" && san="-fsanitize=address,undefined"

cat >"$tmp/app.c" <<'C'
#include <kvrt.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_context_create(NULL, &ctx, &err) != KVRT_OK) { fprintf(stderr, "%s\n", err.message); return 1; }
    kvrt_kv_cache_params p = {1, 1, 4, 8, 2, KVRT_DTYPE_F32};
    kvrt_kv_cache *c = NULL;
    if (kvrt_kv_cache_create(ctx, &p, &c, &err) != KVRT_OK) { fprintf(stderr, "%s\n", err.message); return 1; }
    float k[4] = {1, 0, 0, 0}, v[4] = {0.5f, 1, 2, 3}, q[4] = {1, 1, 1, 1}, out[4];
    int32_t slot = 8, len = 1, table[2] = {1, -1}; /* block 1, offset 0 */
    kvrt_attention_params ap = {1, 2, 0.0f, 0, 0};
    if (kvrt_kv_cache_write(c, 0, k, v, &slot, 1) != KVRT_OK ||
        kvrt_attention_decode(c, 0, &ap, 1, q, &len, table, out) != KVRT_OK) {
        fprintf(stderr, "%s\n", kvrt_kv_cache_message(c)); return 1;
    }
    printf("kvrt %s: %g %g %g %g\n", kvrt_version(), out[0], out[1], out[2], out[3]);
    kvrt_kv_cache_destroy(c);
    kvrt_context_destroy(ctx);
    return memcmp(out, v, sizeof(v)) != 0; /* one key: the output is its value */
}
C
PKG_CONFIG_PATH="$libdir/pkgconfig" cc -std=c11 $san "$tmp/app.c" $(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs kvrt) \
    -Wl,-rpath,"$libdir" -o "$tmp/app_pc"
"$tmp/app_pc" | grep -q "^kvrt .*: 0.5 1 2 3$" || { echo "FAIL pkg-config build"; exit 1; }
echo "ok   pkg-config build runs"

mkdir -p "$tmp/cm"
cat >"$tmp/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.20)
project(app C)
find_package(kvrt REQUIRED)
add_executable(app_static ../app.c)
target_link_libraries(app_static PRIVATE kvrt::kvrt_static)
add_executable(app_shared ../app.c)
target_link_libraries(app_shared PRIVATE kvrt::kvrt_shared)
add_executable(app_default ../app.c)
target_link_libraries(app_default PRIVATE kvrt::kvrt)
CM
cmake -S "$tmp/cm" -B "$tmp/cm/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_C_FLAGS="$san" \
    -DCMAKE_EXE_LINKER_FLAGS="$san" >/dev/null
cmake --build "$tmp/cm/build" >/dev/null
for a in app_static app_shared app_default; do
    "$tmp/cm/build/$a" | grep -q ": 0.5 1 2 3$" || { echo "FAIL find_package build ($a)"; exit 1; }
done
echo "ok   find_package(kvrt) builds (static, shared and kvrt::kvrt) run"
echo "all ok"
