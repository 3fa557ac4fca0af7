/* The tools' side of kvrt's file rules: which paths are inputs (the library
 * cannot know), and removing temporaries when a signal ends the process (a
 * library installs no signal handlers). The state lives in statics because a
 * signal handler gets no argument. */
#include "files.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { MAX_INPUTS = 16, MAX_OUTPUTS = 8, MAX_SCRATCH = 8 };

static kvrt_atomic_file *volatile g_outputs[MAX_OUTPUTS];
static bool g_named_temporaries;
static const char *volatile g_scratch[MAX_SCRATCH];
static volatile bool g_scratch_dir[MAX_SCRATCH];

/* unlink, rmdir, signal and raise are async-signal-safe */
static void on_signal(int sig)
{
    for (int i = 0; i < MAX_OUTPUTS; i++) {
        kvrt_atomic_file *af = g_outputs[i];
        if (af && af->tmp_live)
            unlink(af->tmp);
    }
    for (int pass = 0; pass < 2; pass++) /* files first, then the folders they were in */
        for (int i = 0; i < MAX_SCRATCH; i++) {
            const char *p = g_scratch[i];
            if (p && p[0] && g_scratch_dir[i] == (pass == 1))
                (void)(pass ? rmdir(p) : unlink(p));
        }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Once per process; a signal the caller ignores (nohup's SIGHUP) stays ignored. */
static void install_handlers(void)
{
    static bool installed;
    if (installed)
        return;
    installed = true;
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(sigs); i++) {
        struct sigaction old, sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(sigs[i], &sa, NULL);
    }
}

/* The non-NULL inputs, NULL-terminated, for the library. */
static const char *const *input_list(const char *const *inputs, int n, const char **out)
{
    int k = 0;
    for (int i = 0; i < n && k < MAX_INPUTS; i++)
        if (inputs[i] && inputs[i][0])
            out[k++] = inputs[i];
    out[k] = NULL;
    return out;
}

bool kvrt_tool_output_check(const char *prog, const char *path, const char *const *inputs, int n_inputs)
{
    const char *list[MAX_INPUTS + 1];
    kvrt_atomic_file_opts o = {.inputs = input_list(inputs, n_inputs, list)};
    kvrt_error err;
    if (kvrt_atomic_file_check(path, &o, &err) == KVRT_OK)
        return true;
    fprintf(stderr, "%s: %s\n", prog, err.message);
    return false;
}

bool kvrt_tool_output_open(const char *prog, const char *path, const char *const *inputs, int n_inputs,
                           kvrt_atomic_file *af)
{
    const char *list[MAX_INPUTS + 1];
    kvrt_atomic_file_opts o = {.inputs = input_list(inputs, n_inputs, list), .named_temporary = g_named_temporaries};
    install_handlers();
    int slot = -1;
    for (int i = 0; i < MAX_OUTPUTS && slot < 0; i++)
        if (!g_outputs[i])
            slot = i;
    if (slot < 0) {
        fprintf(stderr, "%s: too many open outputs\n", prog);
        return false;
    }
    af->tmp_live = 0;
    g_outputs[slot] = af; /* before a temporary can exist */
    kvrt_error err;
    if (kvrt_atomic_file_open(path, &o, af, &err) != KVRT_OK) {
        g_outputs[slot] = NULL;
        fprintf(stderr, "%s: %s\n", prog, err.message);
        return false;
    }
    return true;
}

void kvrt_tool_output_named_temporaries(bool on)
{
    g_named_temporaries = on;
}

kvrt_status kvrt_tool_output_close(kvrt_atomic_file *af, kvrt_status status, kvrt_error *err)
{
    status = kvrt_atomic_file_close(af, status, err);
    for (int i = 0; i < MAX_OUTPUTS; i++)
        if (g_outputs[i] == af)
            g_outputs[i] = NULL;
    return status;
}

void kvrt_tool_scratch_add(const char *path, bool is_dir)
{
    install_handlers();
    for (int i = 0; i < MAX_SCRATCH; i++)
        if (!g_scratch[i]) {
            g_scratch_dir[i] = is_dir;
            g_scratch[i] = path;
            return;
        }
}

void kvrt_tool_scratch_forget(const char *path)
{
    for (int i = 0; i < MAX_SCRATCH; i++)
        if (g_scratch[i] == path)
            g_scratch[i] = NULL;
}

static bool is_regular(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

const char *kvrt_tool_shipped_model(char *buf, size_t size)
{
    static const char name[] = "stories260K.gguf";
    if (snprintf(buf, size, "models/%s", name) < (int)size && is_regular(buf))
        return buf;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    char joined[8192];
    snprintf(joined, sizeof(joined), "%s/%s/%s", exe, KVRT_BIN_TO_MODELS, name);
    char real[4096];
    if (!realpath(joined, real) || !is_regular(real) || strlen(real) >= size)
        return NULL;
    memcpy(buf, real, strlen(real) + 1);
    return buf;
}

void kvrt_tool_save_caches(const char *prog, kvrt_context *ctx)
{
    if (ctx && kvrt_context_save_caches(ctx) != KVRT_OK)
        fprintf(stderr, "%s: warning: pipeline cache not saved: %s\n", prog, kvrt_context_message(ctx));
}

FILE *kvrt_tool_open_input(const char *prog, const char *what, const char *path)
{
    int fd;
    kvrt_error err;
    if (kvrt_open_regular_file(path, what, &fd, NULL, &err) != KVRT_OK) {
        fprintf(stderr, "%s: %s\n", prog, err.message);
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        fprintf(stderr, "%s: cannot open %s '%s'\n", prog, what, path);
    }
    return f;
}
