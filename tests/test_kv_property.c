/* KV block manager: a randomized property test against an independent model,
 * and allocation fault injection.
 *
 * The model keeps what a correct manager must be consistent with, computed
 * only from what the API reports: per-sequence token lists and table rows, a
 * reference count per block, the tokens written into every block and host
 * slot, and the event counters. It predicts every failure (out of blocks,
 * context overflow, host tier full) and every copy-on-write exactly; it lets
 * the manager choose block ids, eviction and prefix hits, and checks that
 * those choices are sound (fresh blocks are unowned, adopted blocks hold
 * exactly the queried tokens, written blocks are owned by the writer alone). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt.h"
#include "kv/block_manager_internal.h"

enum { MAX_SEQS = 24, MAX_BLOCKS = 64, MAX_HOST = 32, MAX_ROW = 12, MAX_BS = 32, MAX_TOKENS = MAX_ROW * MAX_BS };

typedef struct mseq {
    int live;
    int32_t id;
    uint64_t extra;
    int swapped;
    int32_t len;
    int32_t doc;      /* token source while not diverged */
    int diverged;
    int32_t toks[MAX_TOKENS];
    int32_t row[MAX_ROW]; /* device blocks, or host slots when swapped; -1 unused/released */
} mseq;

typedef struct model {
    kvrt_block_manager *bm;
    int32_t bs, nblocks, nhost, max_row;
    int prefix;
    uint64_t rng;
    int ref[MAX_BLOCKS];
    int32_t content[MAX_BLOCKS][MAX_BS];
    int32_t fill[MAX_BLOCKS];
    /* What a block's KV depends on: every token up to its end, and extra_key. */
    int32_t origin[MAX_BLOCKS][MAX_TOKENS];
    uint64_t origin_extra[MAX_BLOCKS];
    int32_t host_origin[MAX_HOST][MAX_TOKENS];
    uint64_t host_origin_extra[MAX_HOST];
    int host_used[MAX_HOST];
    int32_t host_content[MAX_HOST][MAX_BS];
    int32_t host_fill[MAX_HOST];
    mseq seqs[MAX_SEQS];
    int64_t allocations, cows, swapped_out, swapped_in, lookups, query_tokens, hit_tokens, hit_blocks;
    int64_t n_oob, n_overflow, n_host_full; /* predicted failures seen, for coverage */
} model;

/* ---- helpers ------------------------------------------------------------------------- */

static uint64_t rnd(model *m)
{
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return m->rng * 0x2545f4914f6cdd1dull;
}

static int32_t rnd_below(model *m, int32_t n)
{
    return (int32_t)(rnd(m) % (uint64_t)n);
}

static void check_invariants(const kvrt_block_manager *bm)
{
    char msg[256];
    if (kvrt_bm_check_invariants(bm, msg, sizeof(msg)) != KVRT_OK)
        fail_msg("invariant violated: %s", msg);
}

/* Documents differ only in positions 8..15: the first 8 tokens are common
 * (duplicate first blocks at block size 8), and every later block holds the
 * same tokens in every document behind a different prefix, which only the
 * parent check of a lookup tells apart. */
static int32_t doc_token(int32_t doc, int32_t pos)
{
    return pos >= 8 && pos < 16 ? 100 + doc * 8 + pos : (pos * 17) % 97;
}

static int32_t next_token(model *m, mseq *s, int32_t pos)
{
    if (!s->diverged && rnd_below(m, 40) == 0)
        s->diverged = 1;
    return s->diverged ? rnd_below(m, 97) : doc_token(s->doc, pos);
}

static int32_t entries(const model *m, int32_t len)
{
    return (len + m->bs - 1) / m->bs;
}

static int32_t free_blocks(const model *m)
{
    int32_t n = 0;
    for (int32_t b = 0; b < m->nblocks; b++)
        n += m->ref[b] == 0;
    return n;
}

static int32_t free_host(const model *m)
{
    int32_t n = 0;
    for (int32_t h = 0; h < m->nhost; h++)
        n += !m->host_used[h];
    return n;
}

static int32_t live_entries(const model *m, const mseq *s)
{
    int32_t n = 0;
    for (int32_t i = 0; i < entries(m, s->len); i++)
        n += s->row[i] >= 0;
    return n;
}

static mseq *pick_seq(model *m, int want_swapped)
{
    int32_t cand[MAX_SEQS], n = 0;
    for (int32_t i = 0; i < MAX_SEQS; i++) {
        if (m->seqs[i].live && (want_swapped < 0 || m->seqs[i].swapped == want_swapped))
            cand[n++] = i;
    }
    return n ? &m->seqs[cand[rnd_below(m, n)]] : NULL;
}

static mseq *free_slot(model *m)
{
    for (int32_t i = 0; i < MAX_SEQS; i++) {
        if (!m->seqs[i].live)
            return &m->seqs[i];
    }
    return NULL;
}

/* ---- verification after every operation ---------------------------------------------- */

static void verify(model *m)
{
    kvrt_block_manager *bm = m->bm;
    check_invariants(bm);
    /* Reference counts: the model's map, built from its own tables, equals the manager's. */
    int used = 0;
    for (int32_t b = 0; b < m->nblocks; b++) {
        assert_true(m->ref[b] >= 0);
        if (m->ref[b] != bm->blocks[b].ref_cnt)
            fail_msg("block %d: model ref %d, manager %d", (int)b, m->ref[b], (int)bm->blocks[b].ref_cnt);
        used += m->ref[b] > 0;
        /* The manager's stored tokens agree with what was written into blocks in use. */
        if (m->ref[b] > 0) {
            assert_int_equal(bm->blocks[b].fill, m->fill[b]);
            assert_memory_equal(&bm->tokens[(size_t)b * (size_t)m->bs], m->content[b],
                                (size_t)m->fill[b] * sizeof(int32_t));
        }
    }
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(bm, &st), KVRT_OK);
    assert_int_equal(st.blocks_used, used);
    assert_int_equal(st.blocks_free, m->nblocks - used);
    assert_int_equal(st.blocks_used + st.blocks_free, st.blocks_total);
    assert_true(st.blocks_cached >= 0 && st.blocks_cached <= st.blocks_free);
    assert_int_equal(st.host_blocks_used, m->nhost - free_host(m));
    assert_int_equal(st.allocations, m->allocations);
    assert_int_equal(st.cow_copies, m->cows);
    assert_int_equal(st.blocks_swapped_out, m->swapped_out);
    assert_int_equal(st.blocks_swapped_in, m->swapped_in);
    assert_int_equal(st.prefix_lookups, m->lookups);
    assert_int_equal(st.prefix_query_tokens, m->query_tokens);
    assert_int_equal(st.prefix_hit_tokens, m->hit_tokens);
    assert_int_equal(st.prefix_hit_blocks, m->hit_blocks);
    assert_true(st.evictions <= st.allocations);
    if (!m->prefix)
        assert_int_equal(st.blocks_cached, 0);
    /* Tables and lengths. */
    int32_t nlive = 0;
    for (int32_t i = 0; i < MAX_SEQS; i++) {
        mseq *s = &m->seqs[i];
        if (!s->live)
            continue;
        nlive++;
        kvrt_bm_seq_info inf;
        assert_int_equal(kvrt_bm_get_seq_info(bm, s->id, &inf), KVRT_OK);
        assert_int_equal(inf.seq_len, s->len);
        assert_int_equal(inf.swapped, s->swapped);
        assert_int_equal(inf.extra_key, s->extra);
        assert_int_equal(inf.num_blocks, live_entries(m, s));
        if (s->swapped) {
            assert_memory_equal(bm->seqs[s->id]->table, s->row, sizeof(int32_t) * (size_t)m->max_row);
            continue;
        }
        int32_t row[MAX_ROW];
        assert_int_equal(kvrt_bm_block_tables(bm, &s->id, 1, row, m->max_row), KVRT_OK);
        assert_memory_equal(row, s->row, sizeof(int32_t) * (size_t)m->max_row);
    }
    assert_int_equal(st.num_seqs, nlive);
}

/* ---- operations -------------------------------------------------------------------------- */

static void op_append(model *m, mseq *s, int32_t n)
{
    int32_t toks[MAX_TOKENS + 64], slots[MAX_TOKENS + 64];
    for (int32_t t = 0; t < n; t++)
        toks[t] = next_token(m, s, s->len + t);
    int64_t new_entries = ((int64_t)s->len + n + m->bs - 1) / m->bs;
    int32_t have = entries(m, s->len);
    int cow = !s->swapped && n > 0 && s->len % m->bs != 0 && m->ref[s->row[have - 1]] > 1;
    int32_t need = (int32_t)(new_entries - have) + cow, predicted = -1;
    kvrt_status pst = kvrt_bm_blocks_needed(m->bm, s->id, n, &predicted);
    kvrt_bm_append_result r;
    kvrt_status st = kvrt_bm_append(m->bm, s->id, toks, n, slots, &r);
    if (s->swapped) {
        assert_int_equal(pst, KVRT_ERR_INVALID_ARGUMENT);
        assert_int_equal(st, KVRT_ERR_INVALID_ARGUMENT);
        return;
    }
    if (new_entries > m->max_row) {
        assert_int_equal(pst, KVRT_ERR_CONTEXT_OVERFLOW);
        assert_int_equal(st, KVRT_ERR_CONTEXT_OVERFLOW);
        m->n_overflow++;
        return;
    }
    assert_int_equal(pst, KVRT_OK);
    assert_int_equal(predicted, need);
    if (need > free_blocks(m)) {
        assert_int_equal(st, KVRT_ERR_OUT_OF_BLOCKS);
        m->n_oob++;
        return;
    }
    assert_int_equal(st, KVRT_OK);
    assert_int_equal(r.n_copies, cow);
    assert_int_equal(r.n_new_blocks, need);
    int32_t row[MAX_ROW];
    assert_int_equal(kvrt_bm_block_tables(m->bm, &s->id, 1, row, m->max_row), KVRT_OK);
    if (cow) {
        int32_t src = s->row[have - 1], dst = r.copies[0][1];
        assert_int_equal(r.copies[0][0], src);
        assert_int_equal(row[have - 1], dst);
        assert_true(dst >= 0 && dst < m->nblocks);
        assert_int_equal(m->ref[dst], 0); /* a fresh block */
        m->ref[src]--;
        m->ref[dst] = 1;
        memcpy(m->content[dst], m->content[src], sizeof(m->content[dst]));
        memcpy(m->origin[dst], m->origin[src], sizeof(m->origin[dst]));
        m->origin_extra[dst] = m->origin_extra[src];
        m->fill[dst] = m->fill[src];
        s->row[have - 1] = dst;
        m->cows++;
    }
    for (int32_t i = 0; i < have; i++)
        assert_int_equal(row[i], s->row[i]); /* append never rewrites older entries */
    for (int32_t i = have; i < new_entries; i++) {
        int32_t b = row[i];
        assert_true(b >= 0 && b < m->nblocks);
        assert_int_equal(m->ref[b], 0);
        m->ref[b] = 1;
        m->fill[b] = 0;
        s->row[i] = b;
    }
    m->allocations += need;
    for (int32_t t = 0; t < n; t++) {
        int32_t pos = s->len + t, b = s->row[pos / m->bs];
        assert_int_equal(slots[t], b * m->bs + pos % m->bs);
        assert_int_equal(m->ref[b], 1); /* only the writer owns a block it writes */
        assert_int_equal(m->fill[b], pos % m->bs);
        m->content[b][pos % m->bs] = toks[t];
        m->fill[b]++;
        s->toks[pos] = toks[t];
        memcpy(m->origin[b], s->toks, sizeof(int32_t) * (size_t)(pos + 1));
        m->origin_extra[b] = s->extra;
    }
    s->len += n;
}

static void op_create(model *m, int with_prompt)
{
    mseq *s = free_slot(m);
    if (!s)
        return;
    memset(s, 0, sizeof(*s));
    for (int32_t i = 0; i < MAX_ROW; i++)
        s->row[i] = -1;
    s->extra = rnd_below(m, 3) == 0 ? (uint64_t)rnd_below(m, 4) : 0;
    s->doc = rnd_below(m, 4);
    assert_int_equal(kvrt_bm_seq_create(m->bm, s->extra, &s->id), KVRT_OK);
    s->live = 1;
    if (!with_prompt)
        return;
    /* A prompt of L tokens: look up L - 1 (its last token is always computed). */
    int32_t L = 1 + rnd_below(m, m->max_row * m->bs + 8), toks[MAX_TOKENS + 8], k = -1;
    for (int32_t p = 0; p < L; p++)
        toks[p] = doc_token(s->doc, p);
    assert_int_equal(kvrt_bm_match_prefix(m->bm, s->id, toks, L - 1, &k), KVRT_OK);
    if (!m->prefix) {
        assert_int_equal(k, 0);
        return;
    }
    assert_true(k % m->bs == 0 && k <= L - 1 && k <= m->max_row * m->bs);
    int32_t row[MAX_ROW];
    assert_int_equal(kvrt_bm_block_tables(m->bm, &s->id, 1, row, m->max_row), KVRT_OK);
    for (int32_t i = 0; i < k / m->bs; i++) {
        int32_t b = row[i];
        assert_true(b >= 0 && b < m->nblocks);
        /* The heart of collision safety: an adopted block holds exactly these
         * tokens, computed behind exactly this prefix, for this extra_key. */
        assert_int_equal(m->fill[b], m->bs);
        assert_memory_equal(m->content[b], &toks[i * m->bs], sizeof(int32_t) * (size_t)m->bs);
        assert_memory_equal(m->origin[b], toks, sizeof(int32_t) * (size_t)((i + 1) * m->bs));
        assert_int_equal(m->origin_extra[b], s->extra);
        m->ref[b]++;
        s->row[i] = b;
    }
    memcpy(s->toks, toks, sizeof(int32_t) * (size_t)k);
    s->len = k;
    m->lookups++;
    m->query_tokens += L - 1;
    m->hit_tokens += k;
    m->hit_blocks += k / m->bs;
}

static void op_fork(model *m, mseq *p, int then_write)
{
    mseq *c = free_slot(m);
    if (!c)
        return;
    int32_t id = -1;
    kvrt_status st = kvrt_bm_seq_fork(m->bm, p->id, &id);
    if (p->swapped) {
        assert_int_equal(st, KVRT_ERR_INVALID_ARGUMENT);
        return;
    }
    assert_int_equal(st, KVRT_OK);
    *c = *p;
    c->id = id;
    for (int32_t i = 0; i < entries(m, c->len); i++) {
        if (c->row[i] >= 0)
            m->ref[c->row[i]]++;
    }
    if (then_write) {
        verify(m);
        op_append(m, rnd_below(m, 2) ? p : c, 1); /* a write into the shared last block */
    }
}

static void op_free(model *m, mseq *s)
{
    assert_int_equal(kvrt_bm_seq_free(m->bm, s->id), KVRT_OK);
    for (int32_t i = 0; i < entries(m, s->len); i++) {
        if (s->row[i] < 0)
            continue;
        if (s->swapped)
            m->host_used[s->row[i]] = 0;
        else
            m->ref[s->row[i]]--;
    }
    s->live = 0;
}

static void op_release(model *m, mseq *s)
{
    int32_t pos = rnd_below(m, s->len + m->bs + 1), sinks = rnd_below(m, 3) == 0 ? rnd_below(m, 2 * m->bs) : 0;
    int32_t n = -1;
    kvrt_status st = kvrt_bm_release_before(m->bm, s->id, pos, sinks, &n);
    if (s->swapped) {
        assert_int_equal(st, KVRT_ERR_INVALID_ARGUMENT);
        return;
    }
    assert_int_equal(st, KVRT_OK);
    int32_t end = (pos < s->len ? pos : s->len) / m->bs, expect = 0;
    for (int32_t i = (sinks + m->bs - 1) / m->bs; i < end; i++) {
        if (s->row[i] < 0)
            continue;
        m->ref[s->row[i]]--;
        s->row[i] = -1;
        expect++;
    }
    assert_int_equal(n, expect);
}

static void op_swap_out(model *m, mseq *s)
{
    int32_t pairs[MAX_ROW][2], n = -1, blocks = live_entries(m, s);
    kvrt_status st = kvrt_bm_swap_out(m->bm, s->id, pairs, MAX_ROW, &n);
    if (s->swapped) {
        assert_int_equal(st, KVRT_ERR_INVALID_ARGUMENT);
        return;
    }
    if (blocks > free_host(m)) {
        assert_int_equal(st, KVRT_ERR_OUT_OF_BLOCKS);
        m->n_host_full++;
        return;
    }
    assert_int_equal(st, KVRT_OK);
    assert_int_equal(n, blocks);
    int32_t k = 0;
    for (int32_t i = 0; i < entries(m, s->len); i++) {
        if (s->row[i] < 0)
            continue;
        int32_t b = pairs[k][0], h = pairs[k][1];
        k++;
        assert_int_equal(b, s->row[i]);
        assert_true(h >= 0 && h < m->nhost);
        assert_false(m->host_used[h]);
        m->host_used[h] = 1;
        memcpy(m->host_content[h], m->content[b], sizeof(m->host_content[h]));
        memcpy(m->host_origin[h], m->origin[b], sizeof(m->host_origin[h]));
        m->host_origin_extra[h] = m->origin_extra[b];
        m->host_fill[h] = m->fill[b];
        m->ref[b]--;
        s->row[i] = h;
    }
    s->swapped = 1;
    m->swapped_out += n;
}

static void op_swap_in(model *m, mseq *s)
{
    int32_t pairs[MAX_ROW][2], n = -1, blocks = live_entries(m, s);
    kvrt_status st = kvrt_bm_swap_in(m->bm, s->id, pairs, MAX_ROW, &n);
    if (!s->swapped) {
        assert_int_equal(st, KVRT_ERR_INVALID_ARGUMENT);
        return;
    }
    if (blocks > free_blocks(m)) {
        assert_int_equal(st, KVRT_ERR_OUT_OF_BLOCKS);
        m->n_oob++;
        return;
    }
    assert_int_equal(st, KVRT_OK);
    assert_int_equal(n, blocks);
    int32_t k = 0;
    for (int32_t i = 0; i < entries(m, s->len); i++) {
        if (s->row[i] < 0)
            continue;
        int32_t h = pairs[k][0], b = pairs[k][1];
        k++;
        assert_int_equal(h, s->row[i]);
        assert_true(b >= 0 && b < m->nblocks);
        assert_int_equal(m->ref[b], 0);
        m->ref[b] = 1;
        memcpy(m->content[b], m->host_content[h], sizeof(m->content[b]));
        memcpy(m->origin[b], m->host_origin[h], sizeof(m->origin[b]));
        m->origin_extra[b] = m->host_origin_extra[h];
        m->fill[b] = m->host_fill[h];
        m->host_used[h] = 0;
        s->row[i] = b;
    }
    s->swapped = 0;
    m->swapped_in += n;
    m->allocations += n;
}

static int32_t append_size(model *m)
{
    int32_t r = rnd_below(m, 100);
    if (r < 65)
        return 1 + rnd_below(m, 4);           /* decode-like */
    if (r < 95)
        return 1 + rnd_below(m, 3 * m->bs);   /* prefill chunk */
    return rnd_below(m, m->max_row * m->bs + 8); /* may overflow the table */
}

static void step(model *m)
{
    int32_t r = rnd_below(m, 100);
    mseq *s;
    if (r < 34) {
        if ((s = pick_seq(m, -1)))
            op_append(m, s, append_size(m));
    } else if (r < 46) {
        op_create(m, 1);
    } else if (r < 50) {
        op_create(m, 0);
    } else if (r < 58) {
        if ((s = pick_seq(m, -1)))
            op_fork(m, s, rnd_below(m, 2));
    } else if (r < 72) {
        if ((s = pick_seq(m, -1)))
            op_free(m, s);
    } else if (r < 78) {
        if ((s = pick_seq(m, -1)))
            op_release(m, s);
    } else if (r < 85) {
        if ((s = pick_seq(m, 0)))
            op_swap_out(m, s);
    } else if (r < 94) {
        if ((s = pick_seq(m, 1)))
            op_swap_in(m, s);
    } else if (r < 95) {
        assert_int_equal(kvrt_bm_reset_prefix_cache(m->bm), KVRT_OK);
    } else {
        /* Invalid-argument probes on a live sequence change nothing. */
        if ((s = pick_seq(m, -1))) {
            int32_t x;
            assert_int_equal(kvrt_bm_append(m->bm, s->id, NULL, 3, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
            assert_int_equal(kvrt_bm_release_before(m->bm, s->id, -2, 0, NULL), KVRT_ERR_INVALID_ARGUMENT);
            assert_int_equal(kvrt_bm_blocks_needed(m->bm, s->id, -1, &x), KVRT_ERR_INVALID_ARGUMENT);
        }
    }
    verify(m);
}

typedef struct prop_config {
    int32_t block_size, num_blocks, num_host, max_row;
    int prefix, hash_bits, ops;
    uint64_t seed;
} prop_config;

static void run_property(const prop_config *cfg)
{
    static model m; /* large: keep it off the stack */
    memset(&m, 0, sizeof(m));
    assert_true(cfg->num_blocks <= MAX_BLOCKS && cfg->num_host <= MAX_HOST && cfg->max_row <= MAX_ROW);
    m.bs = cfg->block_size;
    m.nblocks = cfg->num_blocks;
    m.nhost = cfg->num_host;
    m.max_row = cfg->max_row;
    m.prefix = cfg->prefix;
    m.rng = cfg->seed;
    kvrt_block_manager_params p = kvrt_block_manager_default_params();
    p.num_blocks = m.nblocks;
    p.block_size = m.bs;
    p.max_blocks_per_seq = m.max_row;
    p.num_host_blocks = m.nhost;
    p.enable_prefix_cache = m.prefix;
    assert_int_equal(kvrt_block_manager_create(&p, &m.bm, NULL), KVRT_OK);
    if (cfg->hash_bits < 64)
        assert_int_equal(kvrt_bm_debug_set_hash_bits(m.bm, cfg->hash_bits), KVRT_OK);
    for (int i = 0; i < cfg->ops; i++)
        step(&m);
    /* Freeing everything returns the pool to the start. */
    for (int32_t i = 0; i < MAX_SEQS; i++) {
        if (m.seqs[i].live)
            op_free(&m, &m.seqs[i]);
    }
    verify(&m);
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(m.bm, &st), KVRT_OK);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free, st.blocks_total);
    assert_int_equal(st.host_blocks_used, 0);
    assert_int_equal(st.num_seqs, 0);
    print_message("bs %d, %d blocks, prefix %d, hash bits %d: %d ops, %lld allocations, %lld evictions, "
                  "%lld CoW, %lld/%lld blocks swapped out/in, %lld hit tokens of %lld queried, "
                  "%lld out-of-blocks, %lld overflows, %lld host-full\n",
                  (int)m.bs, (int)m.nblocks, m.prefix, cfg->hash_bits, cfg->ops, (long long)st.allocations,
                  (long long)st.evictions, (long long)st.cow_copies, (long long)st.blocks_swapped_out,
                  (long long)st.blocks_swapped_in, (long long)st.prefix_hit_tokens,
                  (long long)st.prefix_query_tokens, (long long)m.n_oob, (long long)m.n_overflow,
                  (long long)m.n_host_full);
    /* The workload must have exercised every path it claims to test. */
    assert_true(st.cow_copies > 0);
    assert_true(st.blocks_swapped_in > 0);
    assert_true(m.n_oob > 0 && m.n_overflow > 0 && m.n_host_full > 0);
    if (m.prefix) {
        assert_true(st.prefix_hit_blocks > 0);
        assert_true(st.evictions > 0);
    }
    kvrt_block_manager_destroy(m.bm);
}

static void test_property_bs8(void **state)
{
    (void)state;
    const prop_config c = {8, 48, 24, 12, 1, 64, 6000, 0x1234abcdull};
    run_property(&c);
}

static void test_property_bs16_colliding_hashes(void **state)
{
    (void)state;
    /* One hash bit: every lookup meets blocks with the same hash. */
    const prop_config c = {16, 40, 16, 10, 1, 1, 6000, 0x9e3779b9ull};
    run_property(&c);
}

static void test_property_bs32_no_prefix_cache(void **state)
{
    (void)state;
    const prop_config c = {32, 24, 12, 8, 0, 64, 4000, 0x51ed2701ull};
    run_property(&c);
}

/* ---- allocation fault injection ------------------------------------------------------------ */

typedef struct fault_alloc {
    int64_t calls;       /* allocation attempts */
    int64_t outstanding; /* live allocations */
    int64_t fail_every;  /* every Nth attempt fails (0 = never) */
    int64_t fail_at;     /* exactly this attempt fails (0 = never) */
    int64_t failures;
} fault_alloc;

static void *fault_alloc_fn(void *user, size_t size, size_t alignment)
{
    fault_alloc *fa = user;
    fa->calls++;
    if ((fa->fail_every && fa->calls % fa->fail_every == 0) || fa->calls == fa->fail_at) {
        fa->failures++;
        return NULL;
    }
    void *p = NULL;
    if (alignment < sizeof(void *))
        alignment = sizeof(void *);
    if (posix_memalign(&p, alignment, size) != 0)
        return NULL;
    fa->outstanding++;
    return p;
}

static void fault_free_fn(void *user, void *ptr)
{
    fault_alloc *fa = user;
    if (ptr) {
        fa->outstanding--;
        free(ptr);
    }
}

/* Creates a manager and runs a workload whose only allocating calls are
 * seq_create and fork; every failure must be a clean OUT_OF_HOST_MEMORY that
 * changes nothing. Returns the number of failed calls. */
static int64_t fault_workload(fault_alloc *fa)
{
    kvrt_allocator a = {fault_alloc_fn, fault_free_fn, fa};
    kvrt_block_manager_params p = kvrt_block_manager_default_params();
    p.num_blocks = 64;
    p.block_size = 8;
    p.max_blocks_per_seq = 8;
    p.num_host_blocks = 16;
    p.allocator = &a;
    kvrt_block_manager *bm = (kvrt_block_manager *)&p;
    kvrt_error err;
    kvrt_status s = kvrt_block_manager_create(&p, &bm, &err);
    if (s != KVRT_OK) {
        assert_int_equal(s, KVRT_ERR_OUT_OF_HOST_MEMORY);
        assert_int_equal(err.status, KVRT_ERR_OUT_OF_HOST_MEMORY);
        assert_non_null(strstr(err.message, "out of host memory"));
        assert_null(bm);
        return 1;
    }
    int64_t failed = 0;
    int32_t ids[40], n = 0, toks[20];
    for (int32_t t = 0; t < 20; t++)
        toks[t] = t;
    for (int i = 0; i < 40; i++) {
        kvrt_bm_stats before, after;
        assert_int_equal(kvrt_bm_get_stats(bm, &before), KVRT_OK);
        int32_t id = -5;
        /* Forks of a sequence with a partial block, plain creates otherwise. */
        s = (n > 0 && i % 3 == 0) ? kvrt_bm_seq_fork(bm, ids[n - 1], &id) : kvrt_bm_seq_create(bm, 0, &id);
        if (s != KVRT_OK) {
            assert_int_equal(s, KVRT_ERR_OUT_OF_HOST_MEMORY);
            assert_non_null(strstr(kvrt_block_manager_message(bm), "out of host memory"));
            assert_int_equal(kvrt_bm_get_stats(bm, &after), KVRT_OK);
            assert_memory_equal(&before, &after, sizeof(before));
            check_invariants(bm);
            failed++;
            continue;
        }
        ids[n++] = id;
        kvrt_bm_seq_info inf;
        assert_int_equal(kvrt_bm_get_seq_info(bm, id, &inf), KVRT_OK);
        if (n % 2 && inf.seq_len < 40 && kvrt_bm_get_stats(bm, &after) == KVRT_OK && after.blocks_free >= 2)
            assert_int_equal(kvrt_bm_append(bm, id, toks, 1 + n % 11, NULL, NULL), KVRT_OK);
        check_invariants(bm);
    }
    /* Free half, then destroy with the rest still live: no leak either way. */
    for (int32_t k = 0; k < n; k += 2)
        assert_int_equal(kvrt_bm_seq_free(bm, ids[k]), KVRT_OK);
    check_invariants(bm);
    kvrt_block_manager_destroy(bm);
    return failed;
}

static void test_fault_injection(void **state)
{
    (void)state;
    int64_t total_failures = 0, create_calls = 0;
    /* Every Nth allocation fails. */
    for (int64_t every = 1; every <= 12; every++) {
        fault_alloc fa = {0, 0, every, 0, 0};
        total_failures += fault_workload(&fa);
        assert_int_equal(fa.outstanding, 0);
        if (every == 1)
            assert_true(fa.failures == 1 && fa.calls == 1);
    }
    /* Exactly the k-th allocation fails, for every allocation a clean run makes. */
    fault_alloc clean = {0, 0, 0, 0, 0};
    assert_int_equal(fault_workload(&clean), 0);
    assert_int_equal(clean.outstanding, 0);
    create_calls = clean.calls;
    assert_true(create_calls > 10);
    for (int64_t k = 1; k <= create_calls; k++) {
        fault_alloc fa = {0, 0, 0, k, 0};
        int64_t f = fault_workload(&fa);
        assert_int_equal(fa.failures, 1);
        assert_int_equal(f, 1);
        assert_int_equal(fa.outstanding, 0);
    }
    assert_true(total_failures > 12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_property_bs8),
        cmocka_unit_test(test_property_bs16_colliding_hashes),
        cmocka_unit_test(test_property_bs32_no_prefix_cache),
        cmocka_unit_test(test_fault_injection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
