#!/usr/bin/env bash
# The test data is in the repository and intact: every file under tests/data
# matches SHA256SUMS and has a row in tests/data/README.md (origin, licence),
# and nothing the build or tests read points outside the source tree (the
# old ../shared/models folder).
# Usage: test_data.sh BUILD_DIR SOURCE_DIR
set -u
src=$2
data=$src/tests/data
failures=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }

if (cd "$data" && sha256sum --quiet -c SHA256SUMS); then
    echo "ok   tests/data matches SHA256SUMS"
else
    fail "tests/data differs from SHA256SUMS"
fi
while IFS= read -r f; do
    f=${f#./}
    case $f in README.md | SHA256SUMS | .gitattributes) continue ;; esac
    grep -q "  $f\$" "$data/SHA256SUMS" || fail "$f has no line in SHA256SUMS"
    sum=$(sha256sum "$data/$f" | cut -d' ' -f1)
    grep -q "\`${f##*/}\`.*\`$sum\`" "$data/README.md" || fail "$f: no README row with its sha256 $sum"
done < <(cd "$data" && find . -type f | sort)
[ $failures -eq 0 ] && echo "ok   every data file has a README row with its sha256"

if grep -rn --include='*.c' --include='*.h' --include='*.sh' --include='*.bash' --include='*.txt' \
    --include='*.cmake' --exclude=test_data.sh -e '\.\./shared' "$src/tests" "$src/tools" "$src/CMakeLists.txt" "$src/.ci"; then
    fail "the build or tests still read ../shared"
else
    echo "ok   nothing reads ../shared"
fi
[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all test-data checks passed"
