/* Files written whole or not at all (runtime/common/atomic_file.c): a failed
 * write leaves the target untouched and no temporary behind; a temporary
 * name that already exists (left by a crashed run with the same pid, or made
 * by someone else) is skipped, never clobbered, and the write still lands. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kvrt_internal.h"

static char g_dir[256];

static int make_dir(void **state)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/kvrt-atomic-XXXXXX");
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
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    assert_int_equal(n, strlen(text));
    assert_string_equal(buf, text);
}

static void test_failed_write_keeps_target(void **state)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/target", g_dir);
    write_text(path, "old");
    kvrt_atomic_file af;
    kvrt_error err;
    assert_int_equal(kvrt_atomic_file_open(path, &af, &err), KVRT_OK);
    fputs("half", af.f);
    assert_int_equal(kvrt_atomic_file_close(&af, KVRT_ERR_IO, &err), KVRT_ERR_IO);
    check_text(path, "old");
    assert_int_equal(access(af.tmp, F_OK), -1); /* the temporary is gone */
}

static void test_existing_temporaries_are_skipped(void **state)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/target2", g_dir);
    kvrt_atomic_file af;
    kvrt_error err;
    assert_int_equal(kvrt_atomic_file_open(path, &af, &err), KVRT_OK);
    /* the name is "<path>.tmp-<pid>-<serial>": the next ones are serial + 1, ... */
    const char *dash = strrchr(af.tmp, '-');
    assert_non_null(dash);
    unsigned long serial = strtoul(dash + 1, NULL, 10);
    assert_int_equal(kvrt_atomic_file_close(&af, KVRT_ERR_IO, &err), KVRT_ERR_IO);
    char stale[400];
    for (unsigned long k = serial + 1; k <= serial + 10; k++) {
        snprintf(stale, sizeof(stale), "%s.tmp-%ld-%lu", path, (long)getpid(), k);
        write_text(stale, "someone else's");
    }
    assert_int_equal(kvrt_atomic_file_open(path, &af, &err), KVRT_OK);
    fputs("new", af.f);
    assert_int_equal(kvrt_atomic_file_close(&af, KVRT_OK, &err), KVRT_OK);
    check_text(path, "new");
    for (unsigned long k = serial + 1; k <= serial + 10; k++) {
        snprintf(stale, sizeof(stale), "%s.tmp-%ld-%lu", path, (long)getpid(), k);
        check_text(stale, "someone else's"); /* never clobbered */
    }
}

static void test_unwritable_folder(void **state)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/missing-folder/target", g_dir);
    kvrt_atomic_file af;
    kvrt_error err;
    assert_int_equal(kvrt_atomic_file_open(path, &af, &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "missing-folder"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failed_write_keeps_target),
        cmocka_unit_test(test_existing_temporaries_are_skipped),
        cmocka_unit_test(test_unwritable_folder),
    };
    return cmocka_run_group_tests_name("atomic_file", tests, make_dir, remove_dir);
}
