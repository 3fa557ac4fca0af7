/* Files kvrt writes and reads, with one rule: no file it did not create is
 * ever destroyed (DESIGN.md, "Build and tool interfaces").
 *
 * Outputs are written whole or not at all: the bytes go to a temporary beside
 * the target, renamed over it only when everything was written. A failed
 * write leaves an existing target untouched, a target that is also an input
 * (a memory-mapped model converted onto itself) is refused instead of being
 * truncated while it is read, a symlink keeps pointing at the new data (its
 * target is replaced, in the target's folder), and a device or FIFO is
 * written, never replaced by a regular file.
 *
 * Inputs are opened without blocking and checked to be regular files before
 * anything is read, so a FIFO named as a model cannot hang the caller. */
#include "common/kvrt_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LINK_HOPS 40   /* as the kernel's own limit for path resolution */
#define MAX_TMP_ATTEMPTS 100

/* ---- where the bytes go ---------------------------------------------------- */

/* Follows symlinks from `path` to the file they name (which may not exist
 * yet: a dangling link is written through). A relative link is taken from
 * the link's own folder. */
static kvrt_status follow_links(const char *path, char *out, size_t cap, kvrt_error *err)
{
    if (strlen(path) >= cap)
        return kvrt_fail(err, KVRT_ERR_IO, "output path '%.200s...' is too long", path);
    strcpy(out, path);
    for (int hop = 0; hop < MAX_LINK_HOPS; hop++) {
        char link[4096];
        ssize_t n = readlink(out, link, sizeof(link) - 1);
        if (n < 0)
            return KVRT_OK; /* not a link (or not there): this is the file */
        link[n] = '\0';
        const char *slash = strrchr(out, '/');
        size_t dir = link[0] == '/' || !slash ? 0 : (size_t)(slash - out) + 1;
        if (dir + (size_t)n >= cap)
            return kvrt_fail(err, KVRT_ERR_IO, "the symlink '%s' leads to a path that is too long", path);
        memcpy(out + dir, link, (size_t)n + 1);
    }
    return kvrt_fail(err, KVRT_ERR_IO, "'%s': too many levels of symbolic links", path);
}

/* The folder a temporary for `target` goes in ("." for a bare name). */
static void folder_of(const char *target, char *dir, size_t cap)
{
    const char *slash = strrchr(target, '/');
    if (!slash) {
        snprintf(dir, cap, ".");
        return;
    }
    size_t n = slash == target ? 1 : (size_t)(slash - target);
    snprintf(dir, cap, "%.*s", (int)n, target);
}

static const char *kind_of(mode_t m)
{
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    if (S_ISSOCK(m))
        return "a socket";
    return "not a regular file";
}

/* Refuses an output that is one of the inputs, compared by device and inode
 * (so hard links and symlinks to an input count too). */
static kvrt_status check_inputs(const char *path, const struct stat *out, const kvrt_atomic_file_opts *o,
                                kvrt_error *err)
{
    for (const char *const *in = o && o->inputs ? o->inputs : NULL; in && *in; in++) {
        struct stat st;
        if (stat(*in, &st) == 0 && st.st_dev == out->st_dev && st.st_ino == out->st_ino)
            return kvrt_fail(err, KVRT_ERR_IO, "the output '%s' is the input '%s'; refusing to overwrite it", path,
                             *in);
    }
    return KVRT_OK;
}

/* Everything decided before a byte is written: the target, and whether it is
 * replaced (regular or missing) or written directly (*direct). */
static kvrt_status plan(const char *path, const kvrt_atomic_file_opts *o, char *target, size_t cap, bool *direct,
                        struct stat *st, bool *exists, kvrt_error *err)
{
    *direct = false;
    KVRT_TRY(follow_links(path, target, cap, err));
    *exists = stat(target, st) == 0;
    if (!*exists)
        return KVRT_OK;
    KVRT_TRY(check_inputs(path, st, o, err));
    if (S_ISREG(st->st_mode))
        return KVRT_OK;
    if (S_ISCHR(st->st_mode) || S_ISFIFO(st->st_mode)) {
        *direct = true; /* /dev/null, /dev/stdout, a pipe: written as they are, never replaced */
        return KVRT_OK;
    }
    return kvrt_fail(err, KVRT_ERR_IO, "the output '%s' is %s; kvrt neither replaces nor writes it", path,
                     kind_of(st->st_mode));
}

kvrt_status kvrt_atomic_file_check(const char *path, const kvrt_atomic_file_opts *opts, kvrt_error *err)
{
    char target[4096];
    bool direct, exists;
    struct stat st;
    return plan(path, opts, target, sizeof(target), &direct, &st, &exists, err);
}

/* ---- the temporary ------------------------------------------------------------- */

/* Publishes `name` as the temporary a signal handler may remove. */
static void set_tmp(kvrt_atomic_file *af, const char *name)
{
    af->tmp_live = 0;
    atomic_signal_fence(memory_order_seq_cst);
    snprintf(af->tmp, sizeof(af->tmp), "%s", name);
    atomic_signal_fence(memory_order_seq_cst);
    af->tmp_live = 1;
}

static void clear_tmp(kvrt_atomic_file *af)
{
    af->tmp_live = 0;
    atomic_signal_fence(memory_order_seq_cst);
    af->tmp[0] = '\0';
}

/* "<target>.tmp-<pid>-<attempt>": the pid keeps processes apart, O_EXCL (or
 * linkat's EEXIST) threads of one process, and a name someone else made, or
 * a crashed run with the same pid left, is skipped, never clobbered. */
static bool tmp_name(const kvrt_atomic_file *af, int attempt, char *name, size_t cap)
{
    int n = snprintf(name, cap, "%s.tmp-%ld-%d", af->target, (long)getpid(), attempt);
    return n > 0 && (size_t)n < cap;
}

/* Gives the unnamed temporary a name (af->tmp) so it can be renamed. Through
 * /proc/self/fd, which needs no privilege (AT_EMPTY_PATH would). */
static kvrt_status name_unnamed(kvrt_atomic_file *af, int fd, kvrt_error *err)
{
    char proc[64], name[sizeof(af->tmp)];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    for (int attempt = 0; attempt < MAX_TMP_ATTEMPTS; attempt++) {
        if (!tmp_name(af, attempt, name, sizeof(name)))
            return kvrt_fail(err, KVRT_ERR_IO, "output path '%s' is too long", af->path);
        set_tmp(af, name); /* before the link: a signal in between removes it */
        if (linkat(AT_FDCWD, proc, AT_FDCWD, name, AT_SYMLINK_FOLLOW) == 0)
            return KVRT_OK;
        int e = errno;
        clear_tmp(af);
        if (e != EEXIST)
            return kvrt_fail(err, KVRT_ERR_IO, "cannot name the temporary for '%s': %s", af->path, strerror(e));
    }
    return kvrt_fail(err, KVRT_ERR_IO, "cannot name the temporary for '%s': too many stale temporaries", af->path);
}

/* An O_TMPFILE temporary in the target's folder, or -1 when the filesystem
 * (or a missing /proc) does not allow one. Naming is tried first on a second,
 * empty one, so a filesystem that cannot link them is found out before
 * gigabytes are written (a temporary that was named once cannot be named
 * again after its name is removed). */
static int open_unnamed(kvrt_atomic_file *af, const char *dir, mode_t mode)
{
#if defined(O_TMPFILE)
    if (access("/proc/self/fd", X_OK) != 0)
        return -1;
    int probe = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
    if (probe < 0)
        return -1;
    bool linkable = name_unnamed(af, probe, NULL) == KVRT_OK;
    if (linkable)
        unlink(af->tmp);
    clear_tmp(af);
    close(probe);
    return linkable ? open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode) : -1;
#else
    (void)af, (void)dir, (void)mode;
    return -1;
#endif
}

static int open_named(kvrt_atomic_file *af, mode_t mode, kvrt_error *err)
{
    char name[sizeof(af->tmp)];
    for (int attempt = 0; attempt < MAX_TMP_ATTEMPTS; attempt++) {
        if (!tmp_name(af, attempt, name, sizeof(name))) {
            kvrt_fail(err, KVRT_ERR_IO, "output path '%s' is too long", af->path);
            return -1;
        }
        set_tmp(af, name);
        int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd >= 0)
            return fd;
        int e = errno;
        clear_tmp(af);
        if (e != EEXIST) {
            kvrt_fail(err, KVRT_ERR_IO, "cannot create '%s': %s", name, strerror(e));
            return -1;
        }
    }
    kvrt_fail(err, KVRT_ERR_IO, "cannot create a temporary for '%s': too many stale temporaries", af->path);
    return -1;
}

/* The target itself, for a device or FIFO. Non-blocking open: a FIFO nobody
 * reads fails at once (ENXIO) instead of hanging. */
static int open_direct(kvrt_atomic_file *af, kvrt_error *err)
{
    int fd = open(af->target, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        kvrt_fail(err, KVRT_ERR_IO, "cannot write '%s': %s", af->path,
                  errno == ENXIO ? "a FIFO with no reader" : strerror(errno));
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    return fd;
}

kvrt_status kvrt_atomic_file_open(const char *path, const kvrt_atomic_file_opts *opts, kvrt_atomic_file *af,
                                  kvrt_error *err)
{
    af->f = NULL;
    af->path = path;
    af->unnamed = false;
    clear_tmp(af);
    struct stat st;
    bool exists;
    KVRT_TRY(plan(path, opts, af->target, sizeof(af->target), &af->direct, &st, &exists, err));
    int fd;
    if (af->direct) {
        fd = open_direct(af, err);
    } else {
        /* a replaced file keeps its permissions; a new one gets the umask's */
        mode_t mode = exists ? st.st_mode & 0777 : 0666;
        char dir[sizeof(af->target)];
        folder_of(af->target, dir, sizeof(dir));
        fd = opts && opts->named_temporary ? -1 : open_unnamed(af, dir, mode);
        af->unnamed = fd >= 0;
        if (fd < 0)
            fd = open_named(af, mode, err);
        if (fd >= 0 && exists)
            (void)fchmod(fd, mode); /* O_TMPFILE and O_CREAT apply the umask */
    }
    if (fd < 0)
        return err ? err->status : KVRT_ERR_IO;
    af->f = fdopen(fd, "wb");
    if (!af->f) {
        int e = errno;
        close(fd);
        if (af->tmp_live)
            unlink(af->tmp);
        clear_tmp(af);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "cannot open '%s': %s", path, strerror(e));
    }
    return KVRT_OK;
}

kvrt_status kvrt_atomic_file_close(kvrt_atomic_file *af, kvrt_status status, kvrt_error *err)
{
    if (!af->f)
        return status;
    const char *shown = af->direct ? af->path : af->tmp[0] ? af->tmp : af->path;
    if (status == KVRT_OK && fflush(af->f) != 0)
        status = kvrt_fail(err, KVRT_ERR_IO, "cannot write '%s': %s", shown, strerror(errno));
    if (status == KVRT_OK && af->unnamed)
        status = name_unnamed(af, fileno(af->f), err);
    if (fclose(af->f) != 0 && status == KVRT_OK)
        status = kvrt_fail(err, KVRT_ERR_IO, "cannot write '%s': %s", shown, strerror(errno));
    af->f = NULL;
    if (status == KVRT_OK && !af->direct && rename(af->tmp, af->target) != 0)
        status = kvrt_fail(err, KVRT_ERR_IO, "cannot rename '%s' to '%s': %s", af->tmp, af->target, strerror(errno));
    if (status != KVRT_OK && af->tmp_live)
        unlink(af->tmp);
    clear_tmp(af);
    return status;
}

/* ---- inputs ------------------------------------------------------------------------ */

kvrt_status kvrt_open_regular_file(const char *path, const char *what, int *fd, uint64_t *size, kvrt_error *err)
{
    *fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (*fd < 0)
        return kvrt_fail(err, KVRT_ERR_IO, "cannot open %s '%s': %s", what, path, strerror(errno));
    struct stat st;
    bool statted = fstat(*fd, &st) == 0;
    if (!statted || !S_ISREG(st.st_mode)) {
        const char *kind = statted ? kind_of(st.st_mode) : "unreadable";
        close(*fd);
        *fd = -1;
        return kvrt_fail(err, KVRT_ERR_IO, "%s '%s' is %s, not a regular file", what, path, kind);
    }
    int flags = fcntl(*fd, F_GETFL);
    if (flags >= 0)
        fcntl(*fd, F_SETFL, flags & ~O_NONBLOCK);
    if (size)
        *size = (uint64_t)st.st_size;
    return KVRT_OK;
}
