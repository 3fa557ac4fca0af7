/* Files the tools write and read, by the library's rules (DESIGN.md, "Build
 * and tool interfaces"): an output is never one of the tool's inputs, a symlink is
 * followed, a device or FIFO is written and never replaced, and no temporary
 * is left behind, on an error or on SIGINT, SIGTERM or SIGHUP. Inputs are
 * opened without blocking and must be regular files. */
#ifndef KVRT_TOOL_FILES_H
#define KVRT_TOOL_FILES_H

#include <stdbool.h>
#include <stdio.h>

#include "common/kvrt_internal.h"

/* Refuses `path` as an output when it is one of inputs[0..n_inputs) (same
 * device and inode; NULL entries are skipped) or a file that can be neither
 * replaced nor written: prints "PROG: why" and returns false. For a check
 * before a long load; kvrt_tool_output_open checks again. */
bool kvrt_tool_output_check(const char *prog, const char *path, const char *const *inputs, int n_inputs);

/* Opens `path` through the library's atomic writer (write to af->f) and has
 * its temporary removed if the process is interrupted. Prints "PROG: why"
 * and returns false when it is refused or cannot be created. */
bool kvrt_tool_output_open(const char *prog, const char *path, const char *const *inputs, int n_inputs,
                           kvrt_atomic_file *af);

/* Tests: named temporaries (the fallback where O_TMPFILE is missing), so the
 * signal handler has a file to remove. */
void kvrt_tool_output_named_temporaries(bool on);

/* kvrt_atomic_file_close, after which an interruption no longer touches it. */
kvrt_status kvrt_tool_output_close(kvrt_atomic_file *af, kvrt_status status, kvrt_error *err);

/* A tool's own scratch file or (empty) folder, removed on SIGINT, SIGTERM or
 * SIGHUP. `path` is read when the signal arrives, so it must stay valid (and
 * may change) until kvrt_tool_scratch_forget. At most 8 at a time. */
void kvrt_tool_scratch_add(const char *path, bool is_dir);
void kvrt_tool_scratch_forget(const char *path);

/* Saves ctx's pipeline cache (kvrt_context_save_caches) and prints
 * "PROG: warning: pipeline cache not saved: why" when it cannot: an
 * unwritable folder, or a path that holds something other than a kvrt cache
 * (never replaced). A cache costs the next start time, not this run's
 * result, so it is a warning. NULL ctx is a no-op. */
struct kvrt_context;
void kvrt_tool_save_caches(const char *prog, struct kvrt_context *ctx);

/* The model kvrt ships (stories260K.gguf), for tools that run without
 * --model: models/ in the current folder (a source tree), else the
 * installed data folder next to the tool's own (share/kvrt/models). Writes
 * the path into buf and returns it; NULL when neither has it. */
const char *kvrt_tool_shipped_model(char *buf, size_t size);

/* Opens an input that must be a regular file (a model, tokenizer or
 * checkpoint) for reading, without blocking on a FIFO or device. Prints
 * "PROG: why" and returns NULL otherwise. */
FILE *kvrt_tool_open_input(const char *prog, const char *what, const char *path);

#endif /* KVRT_TOOL_FILES_H */
