/* The tools' file helpers (tools/common/files.c): a signal that ends a tool
 * while it writes leaves no temporary behind and the old file as it was.
 * Each case runs in a child process that raises the signal itself while a
 * named temporary exists (the fallback where O_TMPFILE is missing: an
 * unnamed one needs no cleanup); the parent checks how it ended and what is
 * left. A signal the caller ignores (nohup's SIGHUP) stays ignored. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "files.h"

static char g_dir[256];

static int make_dir(void **state)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/kvrt-tool-files-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void check_text(const char *path, const char *text)
{
    char buf[64] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    assert_int_equal(n, strlen(text));
    assert_string_equal(buf, text);
}

static int count_entries(void)
{
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* Child: opens `path` as a tool output, writes, checks its named temporary
 * exists, and raises `sig`. Exit codes say what went wrong before the signal. */
static void child_write_and_raise(const char *path, int sig)
{
    kvrt_tool_output_named_temporaries(true);
    kvrt_atomic_file af;
    if (!kvrt_tool_output_open("test", path, NULL, 0, &af))
        _exit(2);
    fputs("half of the new bytes", af.f);
    fflush(af.f);
    if (!af.tmp_live || access(af.tmp, F_OK) != 0)
        _exit(3);
    raise(sig);
    _exit(kvrt_tool_output_close(&af, KVRT_OK, NULL) == KVRT_OK ? 0 : 4); /* the signal was ignored */
}

static int run_child(const char *path, int sig, bool ignore)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (ignore)
            signal(sig, SIG_IGN);
        child_write_and_raise(path, sig);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void test_signals_remove_the_temporary(void **state)
{
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    char path[320];
    snprintf(path, sizeof(path), "%s/out.gguf", g_dir);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        write_text(path, "old");
        int status = run_child(path, sigs[i], false);
        if (!WIFSIGNALED(status))
            fail_msg("%s: the child exited %d instead of dying by the signal", strsignal(sigs[i]),
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        assert_int_equal(WTERMSIG(status), sigs[i]);
        check_text(path, "old");
        assert_int_equal(count_entries(), 1); /* out.gguf alone: no temporary */
    }
}

static void test_ignored_signal_stays_ignored(void **state)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/nohup.gguf", g_dir);
    write_text(path, "old");
    int status = run_child(path, SIGHUP, true);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    check_text(path, "half of the new bytes");
    unlink(path);
}

static void test_scratch_paths_removed(void **state)
{
    static char dir[320], file[400];
    snprintf(dir, sizeof(dir), "%s/scratch", g_dir);
    snprintf(file, sizeof(file), "%s/model.gguf", dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (mkdir(dir, 0777) != 0)
            _exit(2);
        kvrt_tool_scratch_add(file, false);
        kvrt_tool_scratch_add(dir, true);
        FILE *f = fopen(file, "wb");
        if (!f)
            _exit(3);
        fputs("weights", f);
        fclose(f);
        raise(SIGTERM);
        _exit(4);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(access(file, F_OK), -1);
    assert_int_equal(access(dir, F_OK), -1);
}

static void test_output_check_skips_null_inputs(void **state)
{
    char in[320], out[320];
    snprintf(in, sizeof(in), "%s/in.bin", g_dir);
    snprintf(out, sizeof(out), "%s/new.bin", g_dir);
    write_text(in, "input");
    const char *inputs[] = {NULL, in, NULL}; /* e.g. no tokenizer, a model, no pipeline cache */
    assert_true(kvrt_tool_output_check("test", out, inputs, 3));
    assert_false(kvrt_tool_output_check("test", in, inputs, 3));
    check_text(in, "input");
    unlink(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signals_remove_the_temporary),
        cmocka_unit_test(test_ignored_signal_stays_ignored),
        cmocka_unit_test(test_scratch_paths_removed),
        cmocka_unit_test(test_output_check_skips_null_inputs),
    };
    return cmocka_run_group_tests_name("tool_files", tests, make_dir, remove_dir);
}
