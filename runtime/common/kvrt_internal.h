/* Internal helpers shared by every part of the library: errors, host memory,
 * checked arithmetic. Not installed. */
#ifndef KVRT_INTERNAL_H
#define KVRT_INTERNAL_H

#include "kvrt.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>

#if defined(__GNUC__)
#define KVRT_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#define KVRT_LIKELY(x) __builtin_expect(!!(x), 1)
#define KVRT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define KVRT_PRINTF(fmt_idx, arg_idx)
#define KVRT_LIKELY(x) (x)
#define KVRT_UNLIKELY(x) (x)
#endif

#define KVRT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KVRT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVRT_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- errors ---------------------------------------------------------------- */

/* Fills `err` (may be NULL) with status and a printf-style message; returns status.
 * Usage: return kvrt_fail(&obj->err, KVRT_ERR_INVALID_ARGUMENT, "n_tokens %d < 0", n); */
kvrt_status kvrt_fail(kvrt_error *err, kvrt_status status, const char *fmt, ...) KVRT_PRINTF(3, 4);
kvrt_status kvrt_failv(kvrt_error *err, kvrt_status status, const char *fmt, va_list ap);
/* Resets `err` (may be NULL) to KVRT_OK / "". */
void kvrt_error_clear(kvrt_error *err);
/* Copies src into dst (either may be NULL); returns src->status (KVRT_OK if src is NULL). */
kvrt_status kvrt_error_copy(kvrt_error *dst, const kvrt_error *src);

/* Evaluates a kvrt_status expression and returns it from the caller when it fails. */
#define KVRT_TRY(expr)                      \
    do {                                    \
        kvrt_status kvrt_try_s_ = (expr);   \
        if (kvrt_try_s_ != KVRT_OK)         \
            return kvrt_try_s_;             \
    } while (0)

/* ---- host memory (through the optional embedder allocator) ----------------- */

/* NULL allocator = malloc/free. Allocation of 0 bytes returns a unique non-NULL pointer.
 * Alignment must be a power of two (0 = 16). */
void *kvrt_alloc(const kvrt_allocator *a, size_t size, size_t alignment);
void *kvrt_calloc(const kvrt_allocator *a, size_t count, size_t size); /* zeroed, overflow-checked */
void kvrt_free(const kvrt_allocator *a, void *ptr);
char *kvrt_strdup(const kvrt_allocator *a, const char *s);
/* Replaces *p (an array of `used` elements of `elem` bytes, or NULL) by a
 * zeroed array of `count` elements holding the same first `used` ones, and
 * frees the old one. false (and *p unchanged) when out of memory or when
 * count * elem overflows. The allocator interface has no realloc. */
bool kvrt_grow_array(const kvrt_allocator *a, void **p, size_t used, size_t count, size_t elem);

/* ---- files written whole or not at all (atomic_file.c) ------------------- */

/* An output file that never destroys what its writer did not create
 * (DESIGN.md, "Build and tool interfaces"): symlinks are followed and the
 * file they name is replaced in its own folder; an existing character device or FIFO is
 * written directly (it cannot be replaced), anything else that is not a
 * regular file is refused; a regular file is replaced only by a rename once
 * every byte was written. The bytes go to an unnamed temporary (O_TMPFILE)
 * where the filesystem allows, so nothing is left behind whatever kills the
 * process; elsewhere to a named one, removed on every error path. */
typedef struct kvrt_atomic_file {
    FILE *f;                /* write here */
    const char *path;       /* the output as given */
    char target[4096];      /* path with its symlinks followed: the file replaced */
    char tmp[4096];         /* the temporary's name while it has one */
    /* set (last) once tmp names a file of ours and cleared first: a signal
     * handler may unlink tmp while it is set, and only then */
    volatile sig_atomic_t tmp_live;
    bool direct;            /* writing the target itself (a device or FIFO) */
    bool unnamed;           /* an O_TMPFILE temporary, named at close */
} kvrt_atomic_file;

typedef struct kvrt_atomic_file_opts {
    const char *const *inputs; /* NULL-terminated paths the output must not be
                                * (same device and inode); NULL = none */
    bool named_temporary;      /* no O_TMPFILE (tests of the fallback path) */
} kvrt_atomic_file_opts;

/* Opens the output (opts may be NULL). KVRT_ERR_IO naming the path when it is
 * an input, a directory, a FIFO without a reader or another kind of file that
 * can be neither replaced nor written. */
kvrt_status kvrt_atomic_file_open(const char *path, const kvrt_atomic_file_opts *opts, kvrt_atomic_file *af,
                                  kvrt_error *err);
/* The checks of kvrt_atomic_file_open without opening anything, so a tool can
 * refuse before a long load. */
kvrt_status kvrt_atomic_file_check(const char *path, const kvrt_atomic_file_opts *opts, kvrt_error *err);
/* Closes it; when `status` (the writer's result) and the close succeed, puts
 * the bytes in place, otherwise removes the temporary. Returns the final status. */
kvrt_status kvrt_atomic_file_close(kvrt_atomic_file *af, kvrt_status status, kvrt_error *err);

/* ---- input files (atomic_file.c) ------------------------------------------- */

/* Opens `path` for reading without blocking (a FIFO or device at the path
 * must not hang the caller) and accepts only a regular file: *fd (blocking
 * again) and its size on success; KVRT_ERR_IO naming `what` and the path and
 * saying what the file is otherwise. */
kvrt_status kvrt_open_regular_file(const char *path, const char *what, int *fd, uint64_t *size, kvrt_error *err);

/* ---- checked 64-bit arithmetic -------------------------------------------- */

/* *out = a * b; false on overflow (or negative operands). */
static inline bool kvrt_mul_i64(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0)
        return false;
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool kvrt_mul_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool kvrt_add_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

#endif /* KVRT_INTERNAL_H */
