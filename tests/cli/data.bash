# Sourced by the CLI suites (with $src set to the source tree): where the test
# data is (tests/data, or $KVRT_TEST_MODELS), and require_data, which names
# every missing file and exits 1 before any tool is run on it.
models=${KVRT_TEST_MODELS:-$src/tests/data}
require_data() {
    local f missing=0
    for f in "$@"; do
        if [ ! -r "$models/$f" ]; then
            echo "FAIL test data $models/$f is missing (tests/data in the source tree, or \$KVRT_TEST_MODELS)"
            missing=1
        fi
    done
    [ $missing -eq 0 ] || exit 1
}
