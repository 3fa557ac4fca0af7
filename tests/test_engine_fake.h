/* A fake model for the engine tests, behind the engine's runner interface.
 *
 * Its "KV cache" stores, per slot, the token id and position written there.
 * A forward first writes every new token through slot_mapping (as a real
 * model's kv write), then, for each logits row, reads the whole history of
 * that sequence back through its block table and hashes the token ids. The
 * logits are pseudo-random values of that hash, so the next token depends on
 * the exact token history and on the cache holding it: a wrong block table,
 * a missing copy-on-write copy, a lost swap or a stale block shows up as a
 * forward error or different tokens. It also checks the batch contract
 * (decodes first, contiguous positions, slots matching the block tables).
 *
 * fake_reference() computes the greedy tokens of one request directly, with
 * no engine: the oracle for "the same tokens as if it had run alone".
 */
#ifndef TEST_ENGINE_FAKE_H
#define TEST_ENGINE_FAKE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"
#include "kv/block_manager_internal.h"

typedef struct fake_model {
    int32_t n_vocab, block_size, num_blocks;
    int32_t *kv_tok, *kv_pos; /* [num_blocks * block_size]; -1 = never written */
    double clock;             /* the engine's clock (seconds) */
    double step_seconds, token_seconds; /* clock advance per forward */
    int64_t forwards, copies_applied, blocks_read, blocks_written;
    int32_t fail_at_forward;  /* > 0: that forward (1-based) fails */
    int32_t fail_at_copy, fail_at_read, fail_at_write; /* same for those calls */
    int32_t n_copy_calls, n_read_calls, n_write_calls;
    void (*on_batch)(void *user, const kvrt_batch *b);
    void *user;
} fake_model;

static uint64_t fake_mix(uint64_t h, uint64_t x)
{
    h ^= x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xFF51AFD7ED558CCDull;
    return h ^ (h >> 33);
}

/* Logits of the token following a history hash. */
static void fake_logits(uint64_t h, int32_t n_vocab, float *out)
{
    for (int32_t v = 0; v < n_vocab; v++)
        out[v] = (float)(fake_mix(h, (uint64_t)v + 1) >> 40) / (float)(1u << 24) * 8.0f;
}

static int32_t fake_argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static kvrt_status fake_forward(void *self, const kvrt_batch *b, float *logits, kvrt_error *err)
{
    fake_model *f = self;
    f->forwards++;
    if (f->on_batch)
        f->on_batch(f->user, b);
    if (f->fail_at_forward > 0 && f->forwards == f->fail_at_forward)
        return kvrt_fail(err, KVRT_ERR_DEVICE_LOST, "fake device lost at forward %lld", (long long)f->forwards);
    int32_t bs = f->block_size;
    if (b->query_start_loc[0] != 0 || b->query_start_loc[b->num_seqs] != b->num_tokens)
        return kvrt_fail(err, KVRT_ERR_INTERNAL, "query_start_loc does not span the tokens");
    for (int32_t s = 0; s < b->num_seqs; s++) {
        int32_t q0 = b->query_start_loc[s], q1 = b->query_start_loc[s + 1];
        if (q1 <= q0)
            return kvrt_fail(err, KVRT_ERR_INTERNAL, "sequence %d has no new token", (int)s);
        if (s < b->num_decode_seqs && q1 - q0 != 1)
            return kvrt_fail(err, KVRT_ERR_INTERNAL, "decode %d has %d tokens", (int)s, (int)(q1 - q0));
        const int32_t *row = b->block_tables + (size_t)s * (size_t)b->max_blocks_per_seq;
        for (int32_t t = q0; t < q1; t++) {
            int32_t pos = b->positions[t];
            if (pos != b->seq_lens[s] - (q1 - t))
                return kvrt_fail(err, KVRT_ERR_INTERNAL, "token %d: position %d, seq_len %d", (int)t, (int)pos,
                                 (int)b->seq_lens[s]);
            if (b->tokens[t] < 0 || b->tokens[t] >= f->n_vocab)
                return kvrt_fail(err, KVRT_ERR_INTERNAL, "token id %d", (int)b->tokens[t]);
            int32_t blk = row[pos / bs];
            if (blk < 0 || blk >= f->num_blocks || b->slot_mapping[t] != blk * bs + pos % bs)
                return kvrt_fail(err, KVRT_ERR_INTERNAL, "slot %d of position %d disagrees with block %d",
                                 (int)b->slot_mapping[t], (int)pos, (int)blk);
            f->kv_tok[b->slot_mapping[t]] = b->tokens[t];
            f->kv_pos[b->slot_mapping[t]] = pos;
        }
    }
    for (int32_t i = 0; i < b->num_logits; i++) {
        int32_t t = b->logits_indices[i], s = 0;
        while (b->query_start_loc[s + 1] <= t)
            s++;
        const int32_t *row = b->block_tables + (size_t)s * (size_t)b->max_blocks_per_seq;
        uint64_t h = 0x1234;
        for (int32_t p = 0; p <= b->positions[t]; p++) {
            int32_t blk = row[p / bs];
            int32_t slot = blk * bs + p % bs;
            if (blk < 0 || f->kv_pos[slot] != p)
                return kvrt_fail(err, KVRT_ERR_INTERNAL, "position %d of sequence %d: block %d holds %d", (int)p,
                                 (int)s, (int)blk, blk < 0 ? -1 : (int)f->kv_pos[slot]);
            h = fake_mix(h, (uint64_t)f->kv_tok[slot]);
        }
        fake_logits(h, f->n_vocab, logits + (size_t)i * (size_t)f->n_vocab);
    }
    f->clock += f->step_seconds + f->token_seconds * b->num_tokens;
    return KVRT_OK;
}

static void fake_copy_block(fake_model *f, int32_t src, int32_t dst)
{
    size_t bs = (size_t)f->block_size;
    memcpy(f->kv_tok + (size_t)dst * bs, f->kv_tok + (size_t)src * bs, bs * sizeof(int32_t));
    memcpy(f->kv_pos + (size_t)dst * bs, f->kv_pos + (size_t)src * bs, bs * sizeof(int32_t));
}

static kvrt_status fake_copy_blocks(void *self, const int32_t (*pairs)[2], int32_t n, kvrt_error *err)
{
    fake_model *f = self;
    if (++f->n_copy_calls == f->fail_at_copy)
        return kvrt_fail(err, KVRT_ERR_DEVICE_LOST, "fake copy failure");
    for (int32_t i = 0; i < n; i++)
        fake_copy_block(f, pairs[i][0], pairs[i][1]);
    f->copies_applied += n;
    return KVRT_OK;
}

static kvrt_status fake_read_block(void *self, int32_t block, void *dst, kvrt_error *err)
{
    fake_model *f = self;
    if (++f->n_read_calls == f->fail_at_read)
        return kvrt_fail(err, KVRT_ERR_DEVICE_LOST, "fake read failure");
    size_t bs = (size_t)f->block_size;
    memcpy(dst, f->kv_tok + (size_t)block * bs, bs * sizeof(int32_t));
    memcpy((char *)dst + bs * sizeof(int32_t), f->kv_pos + (size_t)block * bs, bs * sizeof(int32_t));
    f->blocks_read++;
    return KVRT_OK;
}

static kvrt_status fake_write_block(void *self, int32_t block, const void *src, kvrt_error *err)
{
    fake_model *f = self;
    if (++f->n_write_calls == f->fail_at_write)
        return kvrt_fail(err, KVRT_ERR_DEVICE_LOST, "fake write failure");
    size_t bs = (size_t)f->block_size;
    memcpy(f->kv_tok + (size_t)block * bs, src, bs * sizeof(int32_t));
    memcpy(f->kv_pos + (size_t)block * bs, (const char *)src + bs * sizeof(int32_t), bs * sizeof(int32_t));
    f->blocks_written++;
    return KVRT_OK;
}

static const kvrt_runner_ops fake_ops = {
    .forward = fake_forward,
    .copy_blocks = fake_copy_blocks,
    .read_block = fake_read_block,
    .write_block = fake_write_block,
    .destroy = NULL, /* the test owns the fake */
};

static double fake_clock(void *user)
{
    return ((fake_model *)user)->clock;
}

static void fake_init(fake_model *f, int32_t n_vocab, int32_t block_size, int32_t num_blocks)
{
    memset(f, 0, sizeof(*f));
    f->n_vocab = n_vocab;
    f->block_size = block_size;
    f->num_blocks = num_blocks;
    size_t n = (size_t)num_blocks * (size_t)block_size;
    f->kv_tok = malloc(n * sizeof(int32_t));
    f->kv_pos = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++)
        f->kv_tok[i] = f->kv_pos[i] = -1;
    f->step_seconds = 0.010;
    f->token_seconds = 0.001;
}

static void fake_free(fake_model *f)
{
    free(f->kv_tok);
    free(f->kv_pos);
}

/* Engine params for a fake of this shape; the caller adjusts the rest. */
static kvrt_engine_params fake_params(fake_model *f, int32_t max_context)
{
    kvrt_engine_params p = kvrt_engine_default_params();
    p.block_size = f->block_size;
    p.num_blocks = f->num_blocks;
    p.max_context = max_context;
    p.clock = fake_clock;
    p.clock_user = f;
    return p;
}

static kvrt_runner fake_runner(fake_model *f)
{
    kvrt_runner r = {.iface = &fake_ops, .self = f, .n_vocab = f->n_vocab,
                     .block_bytes = 2 * (size_t)f->block_size * sizeof(int32_t)};
    return r;
}

/* Greedy tokens of one request computed without an engine: out[n_out], stops
 * like the engine (eos unless < 0, max_tokens, context). Returns n_out. */
static int32_t fake_reference(int32_t n_vocab, const int32_t *prompt, int32_t n_prompt, int32_t max_tokens,
                              int32_t max_context, int32_t eos, int32_t *out)
{
    float *logits = malloc((size_t)n_vocab * sizeof(float));
    uint64_t h = 0x1234;
    for (int32_t i = 0; i < n_prompt; i++)
        h = fake_mix(h, (uint64_t)prompt[i]);
    int32_t n = 0;
    while (n < max_tokens && n_prompt + n < max_context) {
        fake_logits(h, n_vocab, logits);
        int32_t t = fake_argmax(logits, n_vocab);
        out[n++] = t;
        if (t == eos)
            break;
        h = fake_mix(h, (uint64_t)t);
    }
    free(logits);
    return n;
}

/* A prompt of n tokens from a seed (ids in [1, n_vocab)). */
static void fake_prompt(int32_t *p, int32_t n, int32_t n_vocab, uint64_t seed)
{
    uint64_t h = seed * 7919 + 1;
    for (int32_t i = 0; i < n; i++) {
        h = fake_mix(h, (uint64_t)i);
        p[i] = 1 + (int32_t)(h % (uint64_t)(n_vocab - 1));
    }
}

/* ---- helpers for the cmocka suites (include cmocka.h first) ------------------ */

static kvrt_engine *fake_engine(fake_model *f, const kvrt_engine_params *p)
{
    kvrt_engine *e = NULL;
    kvrt_error err;
    kvrt_status st = kvrt_engine_create_with_runner(p, fake_runner(f), &e, &err);
    if (st != KVRT_OK)
        fail_msg("engine create: %s", err.message);
    return e;
}

/* Steps until no work is left; fails the test after max_steps or on an error. */
static int32_t run_all(kvrt_engine *e, int32_t max_steps)
{
    int32_t steps = 0;
    while (kvrt_engine_has_work(e)) {
        kvrt_step_info info;
        kvrt_status st = kvrt_engine_step(e, &info);
        if (st != KVRT_OK)
            fail_msg("step %d: %s", (int)steps, kvrt_engine_message(e));
        if (++steps > max_steps)
            fail_msg("no progress after %d steps", (int)max_steps);
    }
    return steps;
}

/* Every block back in the pool, no sequence left, invariants hold. */
static void assert_pool_clean(kvrt_engine *e)
{
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(e->bm, &st), KVRT_OK);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free, st.blocks_total);
    assert_int_equal(st.host_blocks_used, 0);
    assert_int_equal(st.num_seqs, 0);
    char msg[256];
    if (kvrt_bm_check_invariants(e->bm, msg, sizeof(msg)) != KVRT_OK)
        fail_msg("block manager invariant: %s", msg);
}

static int64_t submit_prompt(kvrt_engine *e, const int32_t *prompt, int32_t n_prompt, int32_t max_tokens)
{
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = n_prompt;
    rp.max_tokens = max_tokens;
    int64_t id = 0;
    if (kvrt_engine_submit(e, &rp, &id) != KVRT_OK)
        fail_msg("submit: %s", kvrt_engine_message(e));
    return id;
}

/* Asserts sample 0 of a request equals the engine-free reference. */
static void assert_matches_reference(kvrt_engine *e, int64_t id, const int32_t *prompt, int32_t n_prompt,
                                     int32_t max_tokens)
{
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_true(out.finished);
    int32_t *ref = malloc((size_t)max_tokens * sizeof(int32_t));
    int32_t n = fake_reference(e->runner.n_vocab, prompt, n_prompt, max_tokens, e->p.max_context, e->p.eos_id, ref);
    assert_int_equal(out.samples[0].n_tokens, n);
    for (int32_t i = 0; i < n; i++)
        if (out.samples[0].tokens[i] != ref[i])
            fail_msg("request %lld token %d: %d, alone %d", (long long)id, (int)i, (int)out.samples[0].tokens[i],
                     (int)ref[i]);
    free(ref);
}

#endif /* TEST_ENGINE_FAKE_H */
