# Sourced by the CLI suites (after they define `fail`): which
# backends this build has. CMakeLists.txt sets KVRT_BUILT_BACKENDS; a script
# run by hand assumes all three. A suite runs a backend's checks where it is
# built and, where it is not, checks that the tool says so and fails cleanly.
built() {
    case " ${KVRT_BUILT_BACKENDS:-cpu vulkan opencl} " in *" $1 "*) return 0 ;; esac
    return 1
}

# not_built NAME CMD...: the command exits nonzero (not a crash) saying the
# backend is not built in.
not_built() {
    local name=$1
    shift
    local e
    e=$(mktemp)
    "$@" >/dev/null 2>"$e"
    local rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -qiE "built without|not built" "$e"; then
        echo "ok   $name: not built in, said so"
    else
        fail "$name: exit $rc, stderr '$(cat "$e")' (want: not built in)"
    fi
    rm -f "$e"
}
