/* The engine's prompt cache folder (prompt_cache_dir, model/prompt_cache.h):
 * a request's prompt blocks that the in-memory prefix cache does not hold
 * are loaded from files at admission, appended to its block-manager
 * sequence like computed ones (so they are registered in memory too), and
 * a prompt's full blocks are written once the prompt is computed. */
#include "engine/engine_internal.h"
#include "model/prompt_cache.h"

#include <string.h>

kvrt_status kvrt_engine_disk_open(kvrt_engine *e, kvrt_error *err)
{
    if (!e->p.prompt_cache_dir)
        return KVRT_OK;
    if (!e->runner.kv_fingerprint || !e->runner.iface->read_block || !e->runner.iface->write_block)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "prompt_cache_dir: this engine's runner cannot use it");
    if (e->runner.window > 0) /* released blocks leave holes in a prompt */
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "prompt_cache_dir: not with a sliding window (%d positions)", (int)e->runner.window);
    e->disk_table = kvrt_calloc(e->alloc, (size_t)e->max_blocks_per_seq, sizeof(int32_t));
    if (!e->disk_table)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "engine: out of host memory");
    return kvrt_prompt_cache_open(e->p.prompt_cache_dir, e->p.prompt_cache_max_bytes, e->runner.kv_fingerprint,
                                  e->p.block_size, e->runner.block_bytes, e->alloc, &e->disk, err);
}

void kvrt_engine_disk_close(kvrt_engine *e)
{
    kvrt_prompt_cache_close(e->disk);
    kvrt_free(e->alloc, e->disk_table);
}

const char *kvrt_engine_warning(const kvrt_engine *e)
{
    return e ? kvrt_prompt_cache_warning(e->disk) : "";
}

void kvrt_engine_disk_metrics(const kvrt_engine *e, kvrt_engine_metrics *m)
{
    kvrt_prompt_cache_stats ps;
    kvrt_prompt_cache_get_stats(e->disk, &ps);
    m->disk_hit_tokens = ps.hit_blocks * e->p.block_size;
    m->disk_written_blocks = ps.written_blocks;
}

typedef struct disk_io {
    kvrt_engine *e;
    kvrt_eseq *s;
} disk_io;

static kvrt_status eng_read_block(void *user, int32_t block, void *dst, char *why, size_t cap)
{
    kvrt_engine *e = ((disk_io *)user)->e;
    kvrt_error err = {0};
    kvrt_status st = e->runner.iface->read_block(e->runner.self, block, dst, &err);
    snprintf(why, cap, "%s", err.message);
    return st;
}

static kvrt_status eng_write_block(void *user, int32_t block, const void *src, char *why, size_t cap)
{
    kvrt_engine *e = ((disk_io *)user)->e;
    kvrt_error err = {0};
    kvrt_status st = e->runner.iface->write_block(e->runner.self, block, src, &err);
    snprintf(why, cap, "%s", err.message);
    return st;
}

/* Block i of the prompt is next: one block's tokens appended (a fresh block:
 * the sequence holds whole blocks only), its id returned; -1 when the pool
 * has no room. */
static int32_t eng_dest_block(void *user, int32_t i)
{
    disk_io *d = user;
    int32_t bs = d->e->p.block_size, row = d->s->bm_seq;
    if (kvrt_bm_append(d->e->bm, row, d->s->tokens + (size_t)i * (size_t)bs, bs, NULL, NULL) != KVRT_OK ||
        kvrt_bm_block_tables(d->e->bm, &row, 1, d->e->disk_table, d->e->max_blocks_per_seq) != KVRT_OK)
        return -1;
    return d->e->disk_table[i];
}

int32_t kvrt_engine_disk_extend(kvrt_engine *e, kvrt_eseq *s, int32_t matched)
{
    int32_t bs = e->p.block_size, first = matched / bs, want = (s->len - 1) / bs;
    if (!kvrt_prompt_cache_active(e->disk) || first >= want || matched % bs)
        return matched;
    disk_io d = {e, s};
    kvrt_prompt_cache_io io = {eng_read_block, eng_write_block, eng_dest_block, &d};
    int32_t got = kvrt_prompt_cache_load(e->disk, &io, s->tokens, first, want);
    kvrt_bm_seq_info info;
    if (kvrt_bm_get_seq_info(e->bm, s->bm_seq, &info) == KVRT_OK && info.seq_len == (first + got) * bs)
        return (first + got) * bs;
    /* a block was appended but its bytes did not arrive (the folder is off
     * now): start the sequence again from what memory holds */
    uint64_t key = info.extra_key;
    (void)kvrt_bm_seq_free(e->bm, s->bm_seq);
    s->bm_seq = -1;
    int32_t again = 0;
    if (kvrt_bm_seq_create(e->bm, key, &s->bm_seq) != KVRT_OK ||
        kvrt_bm_match_prefix(e->bm, s->bm_seq, s->tokens, s->len - 1, &again) != KVRT_OK)
        return 0; /* the caller's fit sees what the sequence holds */
    return again;
}

void kvrt_engine_disk_after_step(kvrt_engine *e, kvrt_eseq *s)
{
    kvrt_request *r = s->req;
    if (s->index != 0 || r->disk_from < 0 || s->num_computed < r->p.n_prompt || s->bm_seq < 0)
        return;
    int32_t n_blocks = r->p.n_prompt / e->p.block_size, row = s->bm_seq;
    int32_t first = r->disk_from;
    r->disk_from = -1; /* once per request */
    if (first >= n_blocks || kvrt_bm_block_tables(e->bm, &row, 1, e->disk_table, e->max_blocks_per_seq) != KVRT_OK)
        return;
    disk_io d = {e, s};
    kvrt_prompt_cache_io io = {eng_read_block, eng_write_block, eng_dest_block, &d};
    kvrt_prompt_cache_store(e->disk, &io, s->tokens, first, n_blocks, e->disk_table);
}
