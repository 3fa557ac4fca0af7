/* The prompt cache on disk (prompt_cache.h): one file per full KV block.
 *
 * File "<key as 16 hex digits>.kvb", little-endian:
 *   file_head            magic "KVRTPC01", version, block_size, fingerprint,
 *                        key, parent key, payload bytes, payload checksum
 *   int32 tokens[block_size]
 *   uint64 head checksum (of file_head and tokens)
 *   payload              kvrt_kv_cache_save_block's bytes: per layer K, then V
 * A file is trusted only when its size, magic, version, block size,
 * fingerprint, key, parent key and tokens are the ones expected and both
 * checksums match. */
#include "model/prompt_cache.h"

#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PC_MAGIC "KVRTPC01"
#define PC_VERSION 1u
#define PC_EXT ".kvb"

typedef struct file_head {
    char magic[8];
    uint32_t version;
    uint32_t block_size;
    uint64_t fingerprint;
    uint64_t key;
    uint64_t parent;
    uint64_t payload_bytes;
    uint64_t payload_sum;
} file_head;
_Static_assert(sizeof(file_head) == 56, "no padding in the file header");

struct kvrt_prompt_cache {
    const kvrt_allocator *alloc;
    char *dir;
    uint64_t max_bytes, fingerprint;
    int32_t block_size;
    size_t slot_bytes, file_bytes;
    bool on, writing;
    uint8_t *buf;            /* [file_bytes] one file */
    int fail_write;          /* test hook: errno of the next write */
    char warning[512];
    kvrt_prompt_cache_stats stats;
};

/* ---- hashing ------------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* A checksum of n bytes, eight at a time (a block of a 110M model is ~1 MB). */
static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 29;
    }
    uint64_t tail = 0;
    memcpy(&tail, b + i, n - i);
    return mix64(h ^ tail ^ (uint64_t)n);
}

static uint64_t block_key(uint64_t parent, const int32_t *tokens, int32_t block_size)
{
    return hash_bytes(mix64(parent ^ 0x5bd1e9955bd1e995ull), tokens, (size_t)block_size * sizeof(int32_t));
}

/* Sampled, not whole: a model of many GB is not read to open a cache. Every
 * tensor's type, size and shape, and 16 runs of 64 bytes spread over it. */
static uint64_t hash_tensor(uint64_t h, const kvrt_tensor_ref *t)
{
    int64_t meta[4] = {(int64_t)t->type, (int64_t)t->nbytes, t->ne[0], t->ne[1]};
    h = hash_bytes(h, meta, sizeof(meta));
    if (!t->data || t->nbytes == 0)
        return h;
    for (size_t i = 0; i < 16; i++) {
        size_t at = t->nbytes <= 64 ? 0 : (t->nbytes - 64) / 15 * i;
        h = hash_bytes(h, (const uint8_t *)t->data + at, KVRT_MIN((size_t)64, t->nbytes));
    }
    return h;
}

uint64_t kvrt_prompt_cache_fingerprint(const kvrt_model_file *mf, const kvrt_kv_pool_desc *desc)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    double shape[] = {hp->arch, hp->n_vocab, hp->n_embd, hp->n_layer, hp->n_ff, hp->n_head, hp->n_head_kv,
                      hp->head_dim, hp->rope_dim, hp->rope_neox, hp->rope_freq_base, hp->rms_eps, hp->rope_scaling,
                      hp->rope_scale, hp->rope_attn_factor, hp->rope_orig_ctx, hp->yarn_beta_fast,
                      hp->yarn_beta_slow, hp->sliding_window};
    uint64_t h = hash_bytes(0x6b767274ull, shape, sizeof(shape));
    const kvrt_tensor_ref *top[] = {&mf->w.tok_embd, &mf->w.output_norm, &mf->w.output, &mf->w.rope_freqs};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(top); i++)
        h = hash_tensor(h, top[i]);
    _Static_assert(sizeof(kvrt_llama_layer) % sizeof(kvrt_tensor_ref) == 0, "a layer is a list of tensors");
    for (int32_t l = 0; mf->w.layers && l < hp->n_layer; l++) {
        const kvrt_tensor_ref *t = (const kvrt_tensor_ref *)(const void *)&mf->w.layers[l];
        for (size_t i = 0; i < sizeof(kvrt_llama_layer) / sizeof(kvrt_tensor_ref); i++)
            h = hash_tensor(h, &t[i]);
    }
    int64_t layout[] = {PC_VERSION, desc->n_layers, desc->n_kv_heads, desc->head_dim, desc->block_size,
                        (int64_t)desc->dtype, (int64_t)kvrt_kv_block_bytes(desc)};
    return hash_bytes(h, layout, sizeof(layout));
}

/* ---- warnings -------------------------------------------------------------------------------- */

static void warn(kvrt_prompt_cache *pc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(kvrt_prompt_cache *pc, const char *fmt, ...)
{
    int n = snprintf(pc->warning, sizeof(pc->warning), "prompt cache %s: ", pc->dir);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(pc->warning))
        vsnprintf(pc->warning + n, sizeof(pc->warning) - (size_t)n, fmt, ap);
    va_end(ap);
    pc->stats.n_warnings++;
}

/* ---- open / close ------------------------------------------------------------------------------- */

/* Makes sure dir is a folder this process can list, read and write. */
static void check_dir(kvrt_prompt_cache *pc)
{
    struct stat st;
    if (stat(pc->dir, &st) != 0) {
        if (errno != ENOENT || mkdir(pc->dir, 0777) != 0) {
            warn(pc, "cannot be created (%s); running without it", strerror(errno));
            return;
        }
    } else if (!S_ISDIR(st.st_mode)) {
        warn(pc, "is not a folder; running without it");
        return;
    }
    if (access(pc->dir, R_OK | W_OK | X_OK) != 0) {
        warn(pc, "is not writable (%s); running without it", strerror(errno));
        return;
    }
    pc->on = pc->writing = true;
}

kvrt_status kvrt_prompt_cache_open(const char *dir, uint64_t max_bytes, uint64_t fingerprint, int32_t block_size,
                                   size_t slot_bytes, const kvrt_allocator *alloc, kvrt_prompt_cache **out,
                                   kvrt_error *err)
{
    *out = NULL;
    kvrt_prompt_cache *pc = kvrt_calloc(alloc, 1, sizeof(*pc));
    size_t len = dir ? strlen(dir) : 0;
    size_t file_bytes = sizeof(file_head) + (size_t)block_size * sizeof(int32_t) + 8 + slot_bytes;
    if (pc) {
        pc->alloc = alloc;
        pc->dir = kvrt_alloc(alloc, len + 1, 0);
        pc->buf = kvrt_alloc(alloc, file_bytes, 0);
    }
    if (!pc || !pc->dir || !pc->buf) {
        kvrt_prompt_cache_close(pc);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "prompt cache: out of host memory");
    }
    memcpy(pc->dir, dir ? dir : "", len + 1);
    pc->max_bytes = max_bytes ? max_bytes : KVRT_PROMPT_CACHE_DEFAULT_MAX;
    pc->fingerprint = fingerprint;
    pc->block_size = block_size;
    pc->slot_bytes = slot_bytes;
    pc->file_bytes = file_bytes;
    if (len == 0)
        warn(pc, "no folder named; running without it");
    else if (len > 3000)
        warn(pc, "the folder's path is too long; running without it");
    else
        check_dir(pc);
    *out = pc;
    return KVRT_OK;
}

void kvrt_prompt_cache_close(kvrt_prompt_cache *pc)
{
    if (!pc)
        return;
    kvrt_free(pc->alloc, pc->dir);
    kvrt_free(pc->alloc, pc->buf);
    kvrt_free(pc->alloc, pc);
}

bool kvrt_prompt_cache_active(const kvrt_prompt_cache *pc)
{
    return pc && pc->on;
}

const char *kvrt_prompt_cache_warning(const kvrt_prompt_cache *pc)
{
    return pc ? pc->warning : "";
}

void kvrt_prompt_cache_get_stats(const kvrt_prompt_cache *pc, kvrt_prompt_cache_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (pc)
        *out = pc->stats;
}

void kvrt_prompt_cache_debug_fail_write(kvrt_prompt_cache *pc, int err)
{
    pc->fail_write = err;
}

/* ---- one file ----------------------------------------------------------------------------------- */

static void file_path(const kvrt_prompt_cache *pc, uint64_t key, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%016llx" PC_EXT, pc->dir, (unsigned long long)key);
}

/* The expected header of a block; the checksum of its payload is the file's. */
static void fill_head(const kvrt_prompt_cache *pc, uint64_t key, uint64_t parent, file_head *h)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, PC_MAGIC, 8);
    h->version = PC_VERSION;
    h->block_size = (uint32_t)pc->block_size;
    h->fingerprint = pc->fingerprint;
    h->key = key;
    h->parent = parent;
    h->payload_bytes = pc->slot_bytes;
}

/* Whether pc->buf holds exactly the file of (key, parent, tokens); with_payload also checks the payload. */
static bool file_ok(const kvrt_prompt_cache *pc, uint64_t key, uint64_t parent, const int32_t *tokens,
                    bool with_payload)
{
    file_head want, got;
    fill_head(pc, key, parent, &want);
    memcpy(&got, pc->buf, sizeof(got));
    want.payload_sum = got.payload_sum;
    size_t tok_bytes = (size_t)pc->block_size * sizeof(int32_t);
    uint64_t head_sum;
    memcpy(&head_sum, pc->buf + sizeof(got) + tok_bytes, 8);
    if (memcmp(&want, &got, sizeof(got)) != 0 || memcmp(pc->buf + sizeof(got), tokens, tok_bytes) != 0 ||
        head_sum != hash_bytes(0, pc->buf, sizeof(got) + tok_bytes))
        return false;
    return !with_payload || hash_bytes(0, pc->buf + pc->file_bytes - pc->slot_bytes, pc->slot_bytes) == got.payload_sum;
}

/* Reads the whole file (or its header part) of `key` into pc->buf: 1 read
 * in full, 0 missing, -1 present but of the wrong size or unreadable. A hit
 * touches the file (LRU order across processes). */
static int read_file(kvrt_prompt_cache *pc, uint64_t key, size_t bytes, bool touch)
{
    char path[4096];
    file_path(pc, key, path, sizeof(path));
    int fd;
    uint64_t size;
    kvrt_error e;
    if (kvrt_open_regular_file(path, "prompt cache file", &fd, &size, &e) != KVRT_OK)
        return access(path, F_OK) == 0 ? -1 : 0;
    size_t got = 0;
    while (size == pc->file_bytes && got < bytes) {
        ssize_t r = read(fd, pc->buf + got, bytes - got);
        if (r <= 0 && !(r < 0 && errno == EINTR))
            break;
        got += r > 0 ? (size_t)r : 0;
    }
    if (got == bytes && touch)
        (void)futimens(fd, NULL);
    close(fd);
    return got == bytes ? 1 : -1;
}

int32_t kvrt_prompt_cache_load(kvrt_prompt_cache *pc, kvrt_kv_cache *cache, const int32_t *tokens, int32_t n_blocks,
                               const int32_t *blocks)
{
    if (!kvrt_prompt_cache_active(pc))
        return 0;
    uint64_t parent = mix64(pc->fingerprint);
    for (int32_t i = 0; i < n_blocks; i++) {
        const int32_t *t = tokens + (size_t)i * (size_t)pc->block_size;
        uint64_t key = block_key(parent, t, pc->block_size);
        int r = read_file(pc, key, pc->file_bytes, true);
        if (r == 0)
            return i;
        if (r < 0 || !file_ok(pc, key, parent, t, true)) {
            pc->stats.rejected_files++; /* replaced when the block is stored again */
            return i;
        }
        if (kvrt_kv_cache_load_block(cache, blocks[i], pc->buf + pc->file_bytes - pc->slot_bytes) != KVRT_OK) {
            warn(pc, "loading a block failed (%s); running without it", kvrt_kv_cache_message(cache));
            pc->on = false;
            return i;
        }
        pc->stats.hit_blocks++;
        parent = key;
    }
    return n_blocks;
}

/* Writes pc->buf as the file of `key`; false (with a warning that stops
 * writing) when the folder will not take it. */
static bool write_file(kvrt_prompt_cache *pc, uint64_t key)
{
    char path[4096];
    file_path(pc, key, path, sizeof(path));
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return true; /* something else has the name: not ours to replace; the block just stays uncached */
    kvrt_atomic_file af;
    kvrt_error e;
    kvrt_status s = kvrt_atomic_file_open(path, NULL, &af, &e);
    if (s == KVRT_OK) {
        int injected = pc->fail_write;
        pc->fail_write = 0;
        bool ok = !injected && fwrite(pc->buf, 1, pc->file_bytes, af.f) == pc->file_bytes;
        int why = injected ? injected : errno;
        s = kvrt_atomic_file_close(&af, ok ? KVRT_OK : KVRT_ERR_IO, &e);
        if (!ok)
            snprintf(e.message, sizeof(e.message), "%s", strerror(why));
    }
    if (s != KVRT_OK) {
        warn(pc, "writing failed (%s); no more blocks are written this run", e.message);
        pc->writing = false;
        return false;
    }
    pc->stats.written_blocks++;
    return true;
}

typedef struct pc_entry {
    struct timespec used;
    off_t size;
    char name[32];
} pc_entry;

static int entry_cmp(const void *a, const void *b)
{
    const pc_entry *x = a, *y = b;
    if (x->used.tv_sec != y->used.tv_sec)
        return x->used.tv_sec < y->used.tv_sec ? -1 : 1;
    if (x->used.tv_nsec != y->used.tv_nsec)
        return x->used.tv_nsec < y->used.tv_nsec ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A cache file's name: 16 hex digits and the extension. */
static bool is_cache_name(const char *n)
{
    if (strlen(n) != 16 + strlen(PC_EXT) || strcmp(n + 16, PC_EXT) != 0)
        return false;
    for (int i = 0; i < 16; i++)
        if (!((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'f')))
            return false;
    return true;
}

/* The size cap: deletes least recently used cache files (oldest mtime first)
 * until the folder's cache files fit. Other processes may delete files at
 * the same time; a file that vanished is simply gone. */
static void evict(kvrt_prompt_cache *pc)
{
    DIR *d = opendir(pc->dir);
    if (!d)
        return;
    pc_entry *v = NULL;
    size_t n = 0, cap = 0;
    uint64_t total = 0;
    char path[4096];
    for (struct dirent *de; (de = readdir(d));) {
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", pc->dir, de->d_name);
        if (!is_cache_name(de->d_name) || lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap && !kvrt_grow_array(pc->alloc, (void **)&v, n, cap = cap ? cap * 2 : 64, sizeof(*v)))
            break;
        v[n].used = st.st_mtim;
        v[n].size = st.st_size;
        snprintf(v[n].name, sizeof(v[n].name), "%.31s", de->d_name);
        total += (uint64_t)st.st_size;
        n++;
    }
    closedir(d);
    if (total > pc->max_bytes && v) {
        qsort(v, n, sizeof(*v), entry_cmp);
        for (size_t i = 0; i < n && total > pc->max_bytes; i++) {
            snprintf(path, sizeof(path), "%s/%s", pc->dir, v[i].name);
            if (unlink(path) == 0)
                pc->stats.evicted_files++;
            total -= (uint64_t)v[i].size;
        }
    }
    kvrt_free(pc->alloc, v);
}

void kvrt_prompt_cache_store(kvrt_prompt_cache *pc, kvrt_kv_cache *cache, const int32_t *tokens, int32_t first,
                             int32_t n_blocks, const int32_t *blocks)
{
    if (!kvrt_prompt_cache_active(pc) || !pc->writing || first >= n_blocks)
        return;
    uint64_t parent = mix64(pc->fingerprint);
    size_t tok_bytes = (size_t)pc->block_size * sizeof(int32_t);
    bool wrote = false;
    for (int32_t i = 0; i < n_blocks && pc->writing; i++) {
        const int32_t *t = tokens + (size_t)i * (size_t)pc->block_size;
        uint64_t key = block_key(parent, t, pc->block_size);
        /* a file that is there and sound stays (another process may have
         * written it); anything else at the name is replaced */
        if (i >= first && !(read_file(pc, key, pc->file_bytes, false) == 1 && file_ok(pc, key, parent, t, true))) {
            file_head h;
            fill_head(pc, key, parent, &h);
            uint8_t *payload = pc->buf + pc->file_bytes - pc->slot_bytes;
            if (kvrt_kv_cache_save_block(cache, blocks[i], payload) != KVRT_OK) {
                warn(pc, "reading a block failed (%s); no more blocks are written", kvrt_kv_cache_message(cache));
                pc->writing = false;
                break;
            }
            h.payload_sum = hash_bytes(0, payload, pc->slot_bytes);
            memcpy(pc->buf, &h, sizeof(h));
            memcpy(pc->buf + sizeof(h), t, tok_bytes);
            uint64_t head_sum = hash_bytes(0, pc->buf, sizeof(h) + tok_bytes);
            memcpy(pc->buf + sizeof(h) + tok_bytes, &head_sum, 8);
            wrote |= write_file(pc, key);
        }
        parent = key;
    }
    if (wrote)
        evict(pc);
}
