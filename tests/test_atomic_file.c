/* Files kvrt writes and reads (runtime/common/atomic_file.c): no file the
 * writer did not create is ever destroyed.
 * - A failed write leaves the target untouched and no temporary behind, with
 *   the unnamed (O_TMPFILE) temporary and with the named fallback.
 * - A stale temporary name is skipped, never clobbered, and the write lands.
 * - An output that is an input (same file, hard link, symlink to it) is
 *   refused and the input keeps its bytes.
 * - A symlink is followed: the file it names is replaced (in its own folder,
 *   also through a relative link into another folder) and the link stays.
 * - A character device (/dev/null) or a FIFO with a reader is written
 *   directly and stays what it was; a FIFO without a reader, a directory or a
 *   socket is refused at once.
 * - A replaced file keeps its permissions.
 * - Inputs: a FIFO, a directory or a device is refused without blocking. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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

static void in_dir(char *out, size_t size, const char *name)
{
    int n = snprintf(out, size, "%s/%s", g_dir, name);
    assert_true(n > 0 && (size_t)n < size);
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

/* Entries of g_dir (and of `sub` under it, if not NULL) whose name contains ".tmp-". */
static int count_temporaries(const char *sub)
{
    char dir_path[400];
    snprintf(dir_path, sizeof(dir_path), "%s%s%s", g_dir, sub ? "/" : "", sub ? sub : "");
    DIR *d = opendir(dir_path);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp-"))
            n++;
    closedir(d);
    return n;
}

/* Writes `text` to `path` through the atomic writer; returns the status. */
static kvrt_status write_atomic(const char *path, const kvrt_atomic_file_opts *o, const char *text, kvrt_error *err)
{
    kvrt_atomic_file af;
    kvrt_status s = kvrt_atomic_file_open(path, o, &af, err);
    if (s != KVRT_OK)
        return s;
    fputs(text, af.f);
    return kvrt_atomic_file_close(&af, KVRT_OK, err);
}

static void test_failed_write_keeps_target(void **state)
{
    for (int named = 0; named < 2; named++) {
        char path[320];
        in_dir(path, sizeof(path), named ? "target-named" : "target-unnamed");
        write_text(path, "old");
        kvrt_atomic_file_opts o = {.named_temporary = named};
        kvrt_atomic_file af;
        kvrt_error err;
        assert_int_equal(kvrt_atomic_file_open(path, &o, &af, &err), KVRT_OK);
        print_message("  %s temporary: %s\n", named ? "forced named" : "default", af.unnamed ? "unnamed (O_TMPFILE)" : "named");
        if (named)
            assert_false(af.unnamed);
        /* while it is written, an unnamed temporary has no name at all */
        assert_int_equal(count_temporaries(NULL), af.unnamed ? 0 : 1);
        fputs("half", af.f);
        assert_int_equal(kvrt_atomic_file_close(&af, KVRT_ERR_IO, &err), KVRT_ERR_IO);
        check_text(path, "old");
        assert_int_equal(count_temporaries(NULL), 0);
        assert_int_equal(write_atomic(path, &o, "new", &err), KVRT_OK);
        check_text(path, "new");
        assert_int_equal(count_temporaries(NULL), 0);
    }
}

static void test_existing_temporaries_are_skipped(void **state)
{
    for (int named = 0; named < 2; named++) {
        char path[320], stale[400];
        in_dir(path, sizeof(path), "target2");
        /* the names are "<path>.tmp-<pid>-<attempt>", attempts from 0 */
        for (int k = 0; k < 10; k++) {
            snprintf(stale, sizeof(stale), "%s.tmp-%ld-%d", path, (long)getpid(), k);
            write_text(stale, "someone else's");
        }
        kvrt_atomic_file_opts o = {.named_temporary = named};
        kvrt_error err;
        assert_int_equal(write_atomic(path, &o, "new", &err), KVRT_OK);
        check_text(path, "new");
        for (int k = 0; k < 10; k++) {
            snprintf(stale, sizeof(stale), "%s.tmp-%ld-%d", path, (long)getpid(), k);
            check_text(stale, "someone else's"); /* never clobbered */
            unlink(stale);
        }
    }
}

static void test_unwritable_folder(void **state)
{
    char path[320];
    in_dir(path, sizeof(path), "missing-folder/target");
    kvrt_atomic_file af;
    kvrt_error err;
    assert_int_equal(kvrt_atomic_file_open(path, NULL, &af, &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "missing-folder"));
}

static void test_output_that_is_an_input_is_refused(void **state)
{
    char input[320], hard[320], soft[320], other[320];
    in_dir(input, sizeof(input), "model.bin");
    in_dir(hard, sizeof(hard), "hard-link.bin");
    in_dir(soft, sizeof(soft), "soft-link.bin");
    in_dir(other, sizeof(other), "other.bin");
    write_text(input, "weights");
    assert_int_equal(link(input, hard), 0);
    assert_int_equal(symlink("model.bin", soft), 0);
    write_text(other, "other");
    const char *inputs[] = {other, input, NULL};
    kvrt_atomic_file_opts o = {.inputs = inputs};
    const char *outs[] = {input, hard, soft};
    for (int i = 0; i < 3; i++) {
        kvrt_error err;
        assert_int_equal(kvrt_atomic_file_check(outs[i], &o, &err), KVRT_ERR_IO);
        assert_int_equal(write_atomic(outs[i], &o, "overwritten", &err), KVRT_ERR_IO);
        print_message("  %s\n", err.message);
        assert_non_null(strstr(err.message, outs[i]));
        assert_non_null(strstr(err.message, input));
        check_text(input, "weights");
    }
    assert_int_equal(count_temporaries(NULL), 0);
    /* a path that is not an input is fine, and a missing input is no match */
    const char *inputs2[] = {other, "/nonexistent/file", NULL};
    kvrt_atomic_file_opts o2 = {.inputs = inputs2};
    kvrt_error err;
    assert_int_equal(write_atomic(input, &o2, "replaced", &err), KVRT_OK);
    check_text(input, "replaced");
}

static void test_symlinks_are_followed(void **state)
{
    char sub[320], target[320], link_path[320], rel_link[320], dangling[320], dangling_target[320];
    in_dir(sub, sizeof(sub), "elsewhere");
    assert_int_equal(mkdir(sub, 0777), 0);
    in_dir(target, sizeof(target), "elsewhere/real.gguf");
    write_text(target, "old");
    in_dir(link_path, sizeof(link_path), "abs-link.gguf");
    assert_int_equal(symlink(target, link_path), 0);
    in_dir(rel_link, sizeof(rel_link), "rel-link.gguf");
    assert_int_equal(symlink("elsewhere/real.gguf", rel_link), 0);
    kvrt_error err;
    for (int named = 0; named < 2; named++) {
        kvrt_atomic_file_opts o = {.named_temporary = named};
        assert_int_equal(write_atomic(link_path, &o, "via absolute link", &err), KVRT_OK);
        check_text(target, "via absolute link");
        assert_int_equal(write_atomic(rel_link, &o, "via relative link", &err), KVRT_OK);
        check_text(target, "via relative link");
    }
    struct stat st;
    assert_int_equal(lstat(link_path, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(lstat(rel_link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(count_temporaries(NULL), 0);
    assert_int_equal(count_temporaries("elsewhere"), 0);
    /* a dangling link is written through: the file it names is created */
    in_dir(dangling, sizeof(dangling), "dangling.gguf");
    in_dir(dangling_target, sizeof(dangling_target), "elsewhere/new.gguf");
    assert_int_equal(symlink("elsewhere/new.gguf", dangling), 0);
    assert_int_equal(write_atomic(dangling, NULL, "created", &err), KVRT_OK);
    check_text(dangling_target, "created");
    assert_int_equal(lstat(dangling, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    /* a loop is an error, not a hang */
    char loop_a[320], loop_b[320];
    in_dir(loop_a, sizeof(loop_a), "loop-a");
    in_dir(loop_b, sizeof(loop_b), "loop-b");
    assert_int_equal(symlink("loop-b", loop_a), 0);
    assert_int_equal(symlink("loop-a", loop_b), 0);
    assert_int_equal(write_atomic(loop_a, NULL, "x", &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "symbolic links"));
}

static void test_devices_and_fifos_are_written_never_replaced(void **state)
{
    kvrt_error err;
    /* /dev/null: written directly (no temporary in /dev), still a device */
    kvrt_atomic_file af;
    assert_int_equal(kvrt_atomic_file_open("/dev/null", NULL, &af, &err), KVRT_OK);
    assert_true(af.direct);
    fputs("discarded", af.f);
    assert_int_equal(kvrt_atomic_file_close(&af, KVRT_OK, &err), KVRT_OK);
    struct stat st;
    assert_int_equal(stat("/dev/null", &st), 0);
    assert_true(S_ISCHR(st.st_mode));

    /* a FIFO nobody reads: refused at once instead of blocking */
    char fifo[320];
    in_dir(fifo, sizeof(fifo), "a-fifo");
    assert_int_equal(mkfifo(fifo, 0666), 0);
    alarm(30);
    assert_int_equal(write_atomic(fifo, NULL, "x", &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "no reader"));
    /* with a reader: the bytes arrive through the FIFO, which stays a FIFO */
    int rd = open(fifo, O_RDONLY | O_NONBLOCK);
    assert_true(rd >= 0);
    assert_int_equal(write_atomic(fifo, NULL, "through the pipe", &err), KVRT_OK);
    char buf[64] = {0};
    assert_int_equal(read(rd, buf, sizeof(buf) - 1), (ssize_t)strlen("through the pipe"));
    assert_string_equal(buf, "through the pipe");
    close(rd);
    alarm(0);
    assert_int_equal(lstat(fifo, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));

    /* a directory and a socket: refused, left as they are */
    char dir[320], sock_path[320];
    in_dir(dir, sizeof(dir), "a-dir");
    assert_int_equal(mkdir(dir, 0777), 0);
    assert_int_equal(write_atomic(dir, NULL, "x", &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "a directory"));
    in_dir(sock_path, sizeof(sock_path), "a-socket");
    int sock = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(sock >= 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    assert_true(strlen(sock_path) < sizeof(addr.sun_path));
    strcpy(addr.sun_path, sock_path);
    assert_int_equal(bind(sock, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(write_atomic(sock_path, NULL, "x", &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "a socket"));
    close(sock);
    assert_int_equal(lstat(sock_path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(count_temporaries(NULL), 0);
}

static void test_permissions_are_kept(void **state)
{
    char path[320];
    in_dir(path, sizeof(path), "private.bin");
    write_text(path, "secret");
    assert_int_equal(chmod(path, 0600), 0);
    kvrt_error err;
    for (int named = 0; named < 2; named++) {
        kvrt_atomic_file_opts o = {.named_temporary = named};
        assert_int_equal(write_atomic(path, &o, "still secret", &err), KVRT_OK);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
    }
}

static void test_inputs_must_be_regular_files(void **state)
{
    char fifo[320], dir[320], file[320];
    in_dir(fifo, sizeof(fifo), "input-fifo");
    assert_int_equal(mkfifo(fifo, 0666), 0);
    in_dir(dir, sizeof(dir), "input-dir");
    assert_int_equal(mkdir(dir, 0777), 0);
    in_dir(file, sizeof(file), "input-file");
    write_text(file, "12345");
    int fd;
    uint64_t size = 0;
    kvrt_error err;
    alarm(30); /* a blocking open of the FIFO would hang here */
    assert_int_equal(kvrt_open_regular_file(fifo, "model", &fd, &size, &err), KVRT_ERR_IO);
    alarm(0);
    assert_non_null(strstr(err.message, "a FIFO"));
    assert_non_null(strstr(err.message, fifo));
    assert_int_equal(kvrt_open_regular_file(dir, "model", &fd, &size, &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "a directory"));
    assert_int_equal(kvrt_open_regular_file("/dev/zero", "tokenizer", &fd, &size, &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "a character device"));
    assert_int_equal(kvrt_open_regular_file(file, "model", &fd, &size, &err), KVRT_OK);
    assert_int_equal(size, 5);
    assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0); /* blocking again for the reader */
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failed_write_keeps_target),
        cmocka_unit_test(test_existing_temporaries_are_skipped),
        cmocka_unit_test(test_unwritable_folder),
        cmocka_unit_test(test_output_that_is_an_input_is_refused),
        cmocka_unit_test(test_symlinks_are_followed),
        cmocka_unit_test(test_devices_and_fifos_are_written_never_replaced),
        cmocka_unit_test(test_permissions_are_kept),
        cmocka_unit_test(test_inputs_must_be_regular_files),
    };
    return cmocka_run_group_tests_name("atomic_file", tests, make_dir, remove_dir);
}
