/* KV block manager: unit tests of every verb and every error path. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "kvrt.h"
#include "kv/block_manager_internal.h"

/* ---- helpers ------------------------------------------------------------------------ */

static void check(const kvrt_block_manager *bm)
{
    char msg[256];
    kvrt_status s = kvrt_bm_check_invariants(bm, msg, sizeof(msg));
    if (s != KVRT_OK)
        fail_msg("invariant violated: %s", msg);
}

static kvrt_block_manager *make(int32_t num_blocks, int32_t block_size, int32_t max_blocks, int32_t host, int prefix)
{
    kvrt_block_manager_params p = kvrt_block_manager_default_params();
    p.num_blocks = num_blocks;
    p.block_size = block_size;
    p.max_blocks_per_seq = max_blocks;
    p.num_host_blocks = host;
    p.enable_prefix_cache = prefix;
    kvrt_block_manager *bm = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_block_manager_create(&p, &bm, &err), KVRT_OK);
    assert_non_null(bm);
    assert_int_equal(err.status, KVRT_OK);
    check(bm);
    return bm;
}

static kvrt_bm_stats stats(kvrt_block_manager *bm)
{
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(bm, &st), KVRT_OK);
    return st;
}

static int32_t new_seq(kvrt_block_manager *bm, uint64_t extra)
{
    int32_t id = -7;
    assert_int_equal(kvrt_bm_seq_create(bm, extra, &id), KVRT_OK);
    assert_true(id >= 0);
    return id;
}

static kvrt_bm_seq_info info(kvrt_block_manager *bm, int32_t seq)
{
    kvrt_bm_seq_info i;
    assert_int_equal(kvrt_bm_get_seq_info(bm, seq, &i), KVRT_OK);
    return i;
}

/* Tokens t0, t0+1, ... so distinct ranges give distinct blocks. */
static void fill_tokens(int32_t *t, int32_t n, int32_t t0)
{
    for (int32_t i = 0; i < n; i++)
        t[i] = t0 + i;
}

static kvrt_bm_append_result append(kvrt_block_manager *bm, int32_t seq, const int32_t *tokens, int32_t n,
                                    int32_t *slots)
{
    kvrt_bm_append_result r;
    memset(&r, 0x5a, sizeof(r));
    kvrt_status s = kvrt_bm_append(bm, seq, tokens, n, slots, &r);
    if (s != KVRT_OK)
        fail_msg("append failed: %s", kvrt_block_manager_message(bm));
    check(bm);
    return r;
}

static int32_t row_entry(kvrt_block_manager *bm, int32_t seq, int32_t i)
{
    int32_t row[64];
    assert_true(bm->max_blocks_per_seq <= 64);
    assert_int_equal(kvrt_bm_block_tables(bm, &seq, 1, row, bm->max_blocks_per_seq), KVRT_OK);
    return row[i];
}

static void assert_msg_has(kvrt_block_manager *bm, const char *needle)
{
    if (!strstr(kvrt_block_manager_message(bm), needle))
        fail_msg("message \"%s\" lacks \"%s\"", kvrt_block_manager_message(bm), needle);
}

/* ---- create / destroy ----------------------------------------------------------------- */

static void test_create_rejects_bad_params(void **state)
{
    (void)state;
    kvrt_block_manager_params good = kvrt_block_manager_default_params();
    assert_int_equal(good.block_size, 16);
    assert_int_equal(good.enable_prefix_cache, 1);
    good.num_blocks = 8;
    good.max_blocks_per_seq = 4;
    kvrt_block_manager *bm = (kvrt_block_manager *)&good; /* must be reset to NULL */
    kvrt_error err;
    assert_int_equal(kvrt_block_manager_create(NULL, &bm, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(bm);
    assert_non_null(strstr(err.message, "params"));
    assert_int_equal(kvrt_block_manager_create(&good, NULL, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "out"));

    struct {
        int32_t num_blocks, block_size, max_blocks, host;
        const char *needle;
    } bad[] = {
        {8, 12, 4, 0, "block_size"}, {8, 64, 4, 0, "block_size"}, {8, 0, 4, 0, "block_size"},
        {0, 16, 4, 0, "num_blocks"}, {-1, 16, 4, 0, "num_blocks"}, {8, 16, 0, 0, "max_blocks_per_seq"},
        {8, 16, 4, -2, "num_host_blocks"}, {INT32_MAX / 8, 16, 4, 0, "int32"},
        {8, 32, INT32_MAX / 16, 0, "int32"}, {8, 32, 4, INT32_MAX / 16, "int32"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvrt_block_manager_params p = good;
        p.num_blocks = bad[i].num_blocks;
        p.block_size = bad[i].block_size;
        p.max_blocks_per_seq = bad[i].max_blocks;
        p.num_host_blocks = bad[i].host;
        bm = (kvrt_block_manager *)&good;
        assert_int_equal(kvrt_block_manager_create(&p, &bm, &err), KVRT_ERR_INVALID_ARGUMENT);
        assert_null(bm);
        assert_int_equal(err.status, KVRT_ERR_INVALID_ARGUMENT);
        if (!strstr(err.message, bad[i].needle))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.message, bad[i].needle);
        assert_int_equal(kvrt_block_manager_create(&p, &bm, NULL), KVRT_ERR_INVALID_ARGUMENT);
    }
    kvrt_block_manager_destroy(NULL);
    assert_non_null(kvrt_block_manager_message(NULL));
}

static void test_create_every_block_size(void **state)
{
    (void)state;
    const int32_t sizes[] = {8, 16, 32};
    for (int k = 0; k < 3; k++) {
        kvrt_block_manager *bm = make(5, sizes[k], 3, 2, 1);
        kvrt_bm_stats st = stats(bm);
        assert_int_equal(st.blocks_total, 5);
        assert_int_equal(st.blocks_free, 5);
        assert_int_equal(st.blocks_used, 0);
        assert_int_equal(st.blocks_cached, 0);
        assert_int_equal(st.host_blocks_total, 2);
        assert_int_equal(st.host_blocks_used, 0);
        assert_string_equal(kvrt_block_manager_message(bm), "");
        /* Blocks of this size: block_size + 1 tokens take two blocks, slots follow. */
        int32_t seq = new_seq(bm, 0);
        int32_t toks[33], slots[33];
        fill_tokens(toks, sizes[k] + 1, 100);
        append(bm, seq, toks, sizes[k] + 1, slots);
        for (int32_t t = 0; t <= sizes[k]; t++)
            assert_int_equal(slots[t], row_entry(bm, seq, t / sizes[k]) * sizes[k] + t % sizes[k]);
        assert_int_equal(stats(bm).blocks_used, 2);
        kvrt_block_manager_destroy(bm);
    }
}

/* ---- sequences ------------------------------------------------------------------------- */

static void test_seq_ids_and_errors(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(8, 8, 4, 0, 1);
    int32_t a = new_seq(bm, 1), b = new_seq(bm, 2);
    assert_int_not_equal(a, b);
    assert_int_equal(stats(bm).num_seqs, 2);
    assert_int_equal(kvrt_bm_seq_create(bm, 0, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "out_seq");
    const int32_t bad_ids[] = {-1, 1000, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < 4; i++) {
        kvrt_bm_seq_info inf;
        assert_int_equal(kvrt_bm_seq_free(bm, bad_ids[i]), KVRT_ERR_NO_SUCH_SEQUENCE);
        assert_msg_has(bm, "no sequence");
        assert_int_equal(kvrt_bm_get_seq_info(bm, bad_ids[i], &inf), KVRT_ERR_NO_SUCH_SEQUENCE);
    }
    assert_int_equal(kvrt_bm_get_seq_info(bm, a, NULL), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_bm_seq_info i = info(bm, b);
    assert_int_equal(i.seq_len, 0);
    assert_int_equal(i.extra_key, 2);
    assert_int_equal(i.num_entries, 0);
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_ERR_NO_SUCH_SEQUENCE); /* double free is caught */
    assert_int_equal(stats(bm).num_seqs, 1);
    /* Many sequences: the id table grows. */
    int32_t ids[100];
    for (int k = 0; k < 100; k++)
        ids[k] = new_seq(bm, 0);
    for (int k = 0; k < 100; k++)
        for (int j = 0; j < k; j++)
            assert_int_not_equal(ids[k], ids[j]);
    check(bm);
    for (int k = 0; k < 100; k++)
        assert_int_equal(kvrt_bm_seq_free(bm, ids[k]), KVRT_OK);
    check(bm);
    kvrt_block_manager_destroy(bm); /* frees the remaining sequence b */
}

static void test_null_manager(void **state)
{
    (void)state;
    int32_t x = 0, toks[1] = {0}, pairs[1][2];
    kvrt_bm_stats st;
    kvrt_bm_seq_info inf;
    assert_int_equal(kvrt_bm_get_stats(NULL, &st), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_seq_create(NULL, 0, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_seq_free(NULL, 0), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_seq_fork(NULL, 0, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_get_seq_info(NULL, 0, &inf), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_block_tables(NULL, &x, 1, toks, 1), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_blocks_needed(NULL, 0, 1, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_append(NULL, 0, toks, 1, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_match_prefix(NULL, 0, toks, 1, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_reset_prefix_cache(NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_release_before(NULL, 0, 0, 0, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_out(NULL, 0, pairs, 1, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_in(NULL, 0, pairs, 1, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_check_invariants(NULL, NULL, 0), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_block_manager *bm = make(4, 8, 2, 0, 1);
    assert_int_equal(kvrt_bm_get_stats(bm, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "out is NULL");
    kvrt_block_manager_destroy(bm);
}

/* ---- appending --------------------------------------------------------------------------- */

static void test_append_slots_and_counters(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(6, 8, 4, 0, 1);
    int32_t seq = new_seq(bm, 0);
    int32_t toks[32], slots[32];
    fill_tokens(toks, 32, 0);
    kvrt_bm_append_result r = append(bm, seq, toks, 3, slots);
    assert_int_equal(r.n_copies, 0);
    assert_int_equal(r.n_new_blocks, 1);
    int32_t b0 = row_entry(bm, seq, 0);
    for (int t = 0; t < 3; t++)
        assert_int_equal(slots[t], b0 * 8 + t);
    /* 10 more: fills block 0 (5 tokens) and 5 into block 1. */
    r = append(bm, seq, toks + 3, 10, slots);
    assert_int_equal(r.n_new_blocks, 1);
    int32_t b1 = row_entry(bm, seq, 1);
    assert_int_not_equal(b0, b1);
    for (int t = 0; t < 10; t++) {
        int pos = 3 + t;
        assert_int_equal(slots[t], (pos < 8 ? b0 : b1) * 8 + pos % 8);
    }
    assert_int_equal(row_entry(bm, seq, 2), -1);
    kvrt_bm_seq_info i = info(bm, seq);
    assert_int_equal(i.seq_len, 13);
    assert_int_equal(i.stored_tokens, 13);
    assert_int_equal(i.num_entries, 2);
    assert_int_equal(i.num_blocks, 2);
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.blocks_used, 2);
    assert_int_equal(st.blocks_free, 4);
    assert_int_equal(st.allocations, 2);
    /* n = 0 is a no-op, tokens may be NULL then; slot_mapping and res may be NULL. */
    assert_int_equal(kvrt_bm_append(bm, seq, NULL, 0, NULL, &r), KVRT_OK);
    assert_int_equal(r.n_new_blocks, 0);
    assert_int_equal(kvrt_bm_append(bm, seq, toks, 2, NULL, NULL), KVRT_OK);
    assert_int_equal(info(bm, seq).seq_len, 15);
    assert_int_equal(kvrt_bm_seq_free(bm, seq), KVRT_OK);
    st = stats(bm);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free, st.blocks_total);
    assert_int_equal(st.blocks_cached, 1); /* block 0 was full and hashed */
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_append_errors_change_nothing(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(3, 8, 4, 0, 1);
    int32_t a = new_seq(bm, 0), b = new_seq(bm, 0);
    int32_t toks[40], slots[40];
    fill_tokens(toks, 40, 7);
    append(bm, a, toks, 12, slots); /* 2 blocks */
    kvrt_bm_stats before = stats(bm);
    int32_t sentinel[40];
    for (int i = 0; i < 40; i++)
        slots[i] = sentinel[i] = -99;
    /* b needs 2 blocks, 1 is free. */
    kvrt_bm_append_result r = {7, {{7, 7}}, 7};
    assert_int_equal(kvrt_bm_append(bm, b, toks, 9, slots, &r), KVRT_ERR_OUT_OF_BLOCKS);
    assert_msg_has(bm, "needs 2 blocks");
    kvrt_bm_stats after = stats(bm);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_memory_equal(slots, sentinel, sizeof(slots));
    assert_int_equal(r.n_new_blocks, 7); /* result untouched too */
    assert_int_equal(info(bm, b).seq_len, 0);
    /* Beyond max_blocks_per_seq (4 * 8 = 32 tokens). */
    assert_int_equal(kvrt_bm_append(bm, a, toks, 21, slots, NULL), KVRT_ERR_CONTEXT_OVERFLOW);
    assert_msg_has(bm, "max_blocks_per_seq");
    assert_int_equal(kvrt_bm_append(bm, a, toks, INT32_MAX, slots, NULL), KVRT_ERR_CONTEXT_OVERFLOW);
    assert_int_equal(kvrt_bm_append(bm, a, toks, -1, slots, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "n_tokens < 0");
    assert_int_equal(kvrt_bm_append(bm, a, NULL, 1, slots, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "tokens is NULL");
    assert_int_equal(kvrt_bm_append(bm, 99, toks, 1, slots, NULL), KVRT_ERR_NO_SUCH_SEQUENCE);
    after = stats(bm);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_memory_equal(slots, sentinel, sizeof(slots));
    assert_int_equal(info(bm, a).seq_len, 12);
    check(bm);
    /* Exactly what fits still works: a has 4 free positions then 1 block. */
    append(bm, a, toks + 12, 12, slots);
    assert_int_equal(stats(bm).blocks_free, 0);
    kvrt_block_manager_destroy(bm);
}

static void test_blocks_needed(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(10, 8, 4, 0, 1);
    int32_t seq = new_seq(bm, 0), n = -1;
    int32_t toks[32];
    fill_tokens(toks, 32, 1);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, 0, &n), KVRT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, 9, &n), KVRT_OK);
    assert_int_equal(n, 2);
    append(bm, seq, toks, 5, NULL);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, 3, &n), KVRT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, 4, &n), KVRT_OK);
    assert_int_equal(n, 1);
    /* A shared partial last block adds its copy. */
    int32_t child;
    assert_int_equal(kvrt_bm_seq_fork(bm, seq, &child), KVRT_OK);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, 1, &n), KVRT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(kvrt_bm_blocks_needed(bm, child, 4, &n), KVRT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(kvrt_bm_blocks_needed(bm, child, 0, &n), KVRT_OK);
    assert_int_equal(n, 0);
    /* The prediction matches what append takes. */
    int64_t alloc0 = stats(bm).allocations;
    kvrt_bm_append_result r = append(bm, child, toks, 4, NULL);
    assert_int_equal(r.n_new_blocks, 2);
    assert_int_equal(stats(bm).allocations - alloc0, 2);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, 28, &n), KVRT_ERR_CONTEXT_OVERFLOW);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, -1, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_blocks_needed(bm, seq, 1, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_blocks_needed(bm, 55, 1, &n), KVRT_ERR_NO_SUCH_SEQUENCE);
    kvrt_block_manager_destroy(bm);
}

/* ---- fork and copy-on-write ----------------------------------------------------------------- */

static void test_fork_and_copy_on_write(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(8, 8, 4, 0, 1);
    int32_t p = new_seq(bm, 3);
    int32_t toks[32], slots[32];
    fill_tokens(toks, 32, 50);
    append(bm, p, toks, 13, NULL); /* block 0 full, block 1 holds 5 */
    int32_t full = row_entry(bm, p, 0), part = row_entry(bm, p, 1);
    int32_t c = -1;
    assert_int_equal(kvrt_bm_seq_fork(bm, p, &c), KVRT_OK);
    check(bm);
    assert_int_equal(bm->blocks[full].ref_cnt, 2);
    assert_int_equal(bm->blocks[part].ref_cnt, 2);
    assert_int_equal(row_entry(bm, c, 0), full);
    assert_int_equal(row_entry(bm, c, 1), part);
    kvrt_bm_seq_info ci = info(bm, c);
    assert_int_equal(ci.seq_len, 13);
    assert_int_equal(ci.extra_key, 3);
    assert_int_equal(stats(bm).blocks_used, 2);

    /* First write by the child copies the shared partial block. */
    kvrt_bm_append_result r = append(bm, c, toks + 13, 1, slots);
    assert_int_equal(r.n_copies, 1);
    assert_int_equal(r.copies[0][0], part);
    int32_t copy = r.copies[0][1];
    assert_int_not_equal(copy, part);
    assert_int_not_equal(copy, full);
    assert_int_equal(r.n_new_blocks, 1);
    assert_int_equal(row_entry(bm, c, 1), copy);
    assert_int_equal(slots[0], copy * 8 + 5);
    assert_int_equal(bm->blocks[part].ref_cnt, 1);
    assert_int_equal(bm->blocks[copy].ref_cnt, 1);
    assert_memory_equal(&bm->tokens[copy * 8], &bm->tokens[part * 8], 5 * sizeof(int32_t));
    assert_int_equal(stats(bm).cow_copies, 1);
    /* The parent now owns its block alone: no copy. */
    r = append(bm, p, toks + 13, 1, slots);
    assert_int_equal(r.n_copies, 0);
    assert_int_equal(slots[0], part * 8 + 5);
    /* The copy pairs have the shape kvrt_kv_cache_copy_blocks takes. */
    const int32_t(*pairs)[2] = r.copies;
    (void)pairs;

    /* A full shared block is never copied: appending starts a new block. */
    int32_t q = new_seq(bm, 0);
    append(bm, q, toks, 8, NULL);
    int32_t q0 = row_entry(bm, q, 0), d = -1;
    assert_int_equal(kvrt_bm_seq_fork(bm, q, &d), KVRT_OK);
    r = append(bm, d, toks + 8, 3, NULL);
    assert_int_equal(r.n_copies, 0);
    assert_int_equal(r.n_new_blocks, 1);
    assert_int_equal(row_entry(bm, d, 0), q0);
    assert_int_equal(bm->blocks[q0].ref_cnt, 2);
    assert_int_equal(stats(bm).cow_copies, 1);

    /* Fork errors. */
    assert_int_equal(kvrt_bm_seq_fork(bm, p, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_seq_fork(bm, -3, &d), KVRT_ERR_NO_SUCH_SEQUENCE);
    int32_t ids[] = {p, c, q, d};
    for (int k = 0; k < 4; k++)
        assert_int_equal(kvrt_bm_seq_free(bm, ids[k]), KVRT_OK);
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free, st.blocks_total);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_cow_out_of_blocks(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(2, 8, 4, 0, 1);
    int32_t p = new_seq(bm, 0), c, other = new_seq(bm, 0);
    int32_t toks[8];
    fill_tokens(toks, 8, 0);
    append(bm, p, toks, 3, NULL);
    append(bm, other, toks, 1, NULL); /* the pool is now full */
    assert_int_equal(kvrt_bm_seq_fork(bm, p, &c), KVRT_OK);
    kvrt_bm_stats before = stats(bm);
    int32_t shared = row_entry(bm, p, 0);
    assert_int_equal(kvrt_bm_append(bm, c, toks, 1, NULL, NULL), KVRT_ERR_OUT_OF_BLOCKS);
    kvrt_bm_stats after = stats(bm);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_int_equal(bm->blocks[shared].ref_cnt, 2);
    assert_int_equal(row_entry(bm, c, 0), shared);
    check(bm);
    /* Once the parent leaves, the child writes in place. */
    assert_int_equal(kvrt_bm_seq_free(bm, p), KVRT_OK);
    kvrt_bm_append_result r = append(bm, c, toks, 1, NULL);
    assert_int_equal(r.n_copies, 0);
    kvrt_block_manager_destroy(bm);
}

/* ---- prefix cache -------------------------------------------------------------------------- */

static void test_prefix_hit_after_free(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(8, 16, 4, 0, 1);
    int32_t toks[64];
    fill_tokens(toks, 64, 1000);
    int32_t a = new_seq(bm, 9);
    append(bm, a, toks, 40, NULL); /* 2 full blocks + 8 */
    int32_t a0 = row_entry(bm, a, 0), a1 = row_entry(bm, a, 1);
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.blocks_cached, 2);
    assert_int_equal(st.blocks_used, 0);

    /* Same prompt: 39 tokens passed (the last one must be computed) -> 32 matched. */
    int32_t b = new_seq(bm, 9), n = -1;
    assert_int_equal(kvrt_bm_match_prefix(bm, b, toks, 39, &n), KVRT_OK);
    check(bm);
    assert_int_equal(n, 32);
    assert_int_equal(row_entry(bm, b, 0), a0);
    assert_int_equal(row_entry(bm, b, 1), a1);
    assert_int_equal(info(bm, b).seq_len, 32);
    st = stats(bm);
    assert_int_equal(st.prefix_lookups, 1);
    assert_int_equal(st.prefix_query_tokens, 39);
    assert_int_equal(st.prefix_hit_tokens, 32);
    assert_int_equal(st.prefix_hit_blocks, 2);
    assert_int_equal(st.blocks_cached, 0);
    assert_int_equal(st.blocks_used, 2);
    /* The rest of the prompt continues the chain: its next full block is found too. */
    append(bm, b, toks + 32, 16, NULL);
    int32_t b2 = row_entry(bm, b, 2);
    int32_t c = new_seq(bm, 9);
    assert_int_equal(kvrt_bm_match_prefix(bm, c, toks, 63, &n), KVRT_OK);
    assert_int_equal(n, 48);
    assert_int_equal(row_entry(bm, c, 2), b2);
    assert_int_equal(bm->blocks[a0].ref_cnt, 2);

    /* A lookup that covers less than one block matches nothing. */
    int32_t d = new_seq(bm, 9);
    assert_int_equal(kvrt_bm_match_prefix(bm, d, toks, 15, &n), KVRT_OK);
    assert_int_equal(n, 0);
    /* Another extra_key (a LoRA adapter) never matches. */
    int32_t e = new_seq(bm, 10);
    assert_int_equal(kvrt_bm_match_prefix(bm, e, toks, 39, &n), KVRT_OK);
    assert_int_equal(n, 0);
    /* A prompt that diverges in its second block matches the first only. */
    int32_t alt[40];
    memcpy(alt, toks, sizeof(alt));
    alt[20] = -5;
    int32_t f = new_seq(bm, 9);
    assert_int_equal(kvrt_bm_match_prefix(bm, f, alt, 39, &n), KVRT_OK);
    assert_int_equal(n, 16);
    assert_int_equal(row_entry(bm, f, 0), a0);
    st = stats(bm);
    assert_int_equal(st.prefix_lookups, 5);
    assert_int_equal(st.prefix_hit_blocks, 2 + 3 + 1);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_match_prefix_errors(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(4, 8, 2, 2, 1);
    int32_t toks[16], n = 5;
    fill_tokens(toks, 16, 0);
    int32_t s = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, toks, 8, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, NULL, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, toks, -1, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_match_prefix(bm, 77, toks, 8, &n), KVRT_ERR_NO_SUCH_SEQUENCE);
    assert_int_equal(n, 5);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, NULL, 0, &n), KVRT_OK);
    assert_int_equal(n, 0);
    append(bm, s, toks, 3, NULL);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, toks, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "already holds 3 tokens");
    /* Longer than the table: matches up to max_blocks_per_seq blocks. */
    append(bm, s, toks + 3, 13, NULL);
    assert_int_equal(kvrt_bm_seq_free(bm, s), KVRT_OK);
    int32_t long_prompt[40];
    memcpy(long_prompt, toks, sizeof(toks));
    fill_tokens(long_prompt + 16, 24, 500);
    int32_t t = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, t, long_prompt, 40, &n), KVRT_OK);
    assert_int_equal(n, 16);
    assert_int_equal(stats(bm).prefix_lookups, 2);
    check(bm);
    kvrt_block_manager_destroy(bm);

    /* Prefix cache off: nothing is registered or matched or counted. */
    bm = make(4, 8, 2, 0, 0);
    s = new_seq(bm, 0);
    append(bm, s, toks, 16, NULL);
    assert_int_equal(kvrt_bm_seq_free(bm, s), KVRT_OK);
    assert_int_equal(stats(bm).blocks_cached, 0);
    s = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, toks, 15, &n), KVRT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(stats(bm).prefix_lookups, 0);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_lru_eviction_order(void **state)
{
    (void)state;
    /* 4 blocks of 8. Three sequences of one full block each, freed in order. */
    kvrt_block_manager *bm = make(4, 8, 4, 0, 1);
    int32_t toks[3][8], ids[3], blk[3];
    for (int k = 0; k < 3; k++) {
        fill_tokens(toks[k], 8, 100 * (k + 1));
        ids[k] = new_seq(bm, 0);
        append(bm, ids[k], toks[k], 8, NULL);
        blk[k] = row_entry(bm, ids[k], 0);
    }
    for (int k = 0; k < 3; k++)
        assert_int_equal(kvrt_bm_seq_free(bm, ids[k]), KVRT_OK);
    assert_int_equal(stats(bm).blocks_cached, 3);
    /* A freed partial (unhashed) block goes to the head of the queue... */
    int32_t w = new_seq(bm, 0), other[16];
    fill_tokens(other, 16, 9000);
    append(bm, w, other, 3, NULL);
    int32_t plain = row_entry(bm, w, 0);
    assert_int_equal(kvrt_bm_seq_free(bm, w), KVRT_OK);
    /* ...so it is reused first: no eviction. */
    int32_t s = new_seq(bm, 0);
    append(bm, s, other, 1, NULL);
    assert_int_equal(row_entry(bm, s, 0), plain);
    assert_int_equal(stats(bm).evictions, 0);
    assert_int_equal(stats(bm).blocks_cached, 3);
    /* The next allocation evicts the least recently freed: blk[0]. */
    append(bm, s, other + 1, 8, NULL);
    assert_int_equal(row_entry(bm, s, 1), blk[0]);
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.blocks_cached, 2);
    int32_t n, t = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, t, toks[0], 8, &n), KVRT_OK);
    assert_int_equal(n, 0);
    /* A hit refreshes nothing until freed again, but takes blk[1] off the queue. */
    assert_int_equal(kvrt_bm_match_prefix(bm, t, toks[1], 8, &n), KVRT_OK);
    assert_int_equal(n, 8);
    assert_int_equal(row_entry(bm, t, 0), blk[1]);
    /* So the next eviction takes blk[2], and blk[1] is still cached after t is freed. */
    append(bm, s, other, 8, NULL);
    assert_int_equal(row_entry(bm, s, 2), blk[2]);
    assert_int_equal(kvrt_bm_seq_free(bm, t), KVRT_OK);
    int32_t u = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, u, toks[1], 8, &n), KVRT_OK);
    assert_int_equal(n, 8);
    assert_int_equal(stats(bm).evictions, 2);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_free_order_evicts_tail_first(void **state)
{
    (void)state;
    /* A freed sequence's later blocks are evicted before its earlier ones. */
    kvrt_block_manager *bm = make(3, 8, 4, 0, 1);
    int32_t toks[24];
    fill_tokens(toks, 24, 1);
    int32_t a = new_seq(bm, 0);
    append(bm, a, toks, 24, NULL);
    int32_t b0 = row_entry(bm, a, 0), b2 = row_entry(bm, a, 2);
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    int32_t s = new_seq(bm, 0), other[8];
    fill_tokens(other, 8, 777);
    append(bm, s, other, 1, NULL);
    assert_int_equal(row_entry(bm, s, 0), b2);
    int32_t t = new_seq(bm, 0), n;
    assert_int_equal(kvrt_bm_match_prefix(bm, t, toks, 23, &n), KVRT_OK);
    assert_int_equal(n, 16);
    assert_int_equal(row_entry(bm, t, 0), b0);
    kvrt_block_manager_destroy(bm);
}

static void test_duplicate_not_registered(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(6, 8, 4, 0, 1);
    int32_t toks[16];
    fill_tokens(toks, 16, 42);
    int32_t a = new_seq(bm, 0), b = new_seq(bm, 0);
    append(bm, a, toks, 16, NULL);
    append(bm, b, toks, 16, NULL); /* same contents, computed again */
    int32_t a0 = row_entry(bm, a, 0), b0 = row_entry(bm, b, 0), b1 = row_entry(bm, b, 1);
    assert_true(bm->blocks[a0].registered);
    assert_false(bm->blocks[b0].registered);
    assert_false(bm->blocks[b1].registered);
    /* The duplicate shares the identity, so the chain through it stays findable. */
    assert_int_equal(bm->blocks[b0].cid, bm->blocks[a0].cid);
    assert_int_equal(kvrt_bm_seq_free(bm, b), KVRT_OK);
    assert_int_equal(stats(bm).blocks_cached, 0); /* duplicates are plain free blocks */
    int32_t c = new_seq(bm, 0), n;
    assert_int_equal(kvrt_bm_match_prefix(bm, c, toks, 16, &n), KVRT_OK);
    assert_int_equal(n, 16);
    assert_int_equal(row_entry(bm, c, 1), row_entry(bm, a, 1));
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_hash_collisions_never_return_wrong_block(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(16, 8, 4, 0, 1);
    assert_int_equal(kvrt_bm_debug_set_hash_bits(bm, 1), KVRT_OK); /* every other block collides */
    int32_t p1[16], p2[16];
    fill_tokens(p1, 16, 10);
    fill_tokens(p2, 16, 10);
    p2[0] = 11; /* only the first block differs; the second blocks hold equal tokens */
    int32_t a = new_seq(bm, 0), b = new_seq(bm, 0), c = new_seq(bm, 1);
    append(bm, a, p1, 16, NULL);
    append(bm, b, p2, 16, NULL);
    append(bm, c, p1, 16, NULL); /* another extra_key */
    assert_int_equal(kvrt_bm_debug_set_hash_bits(bm, 8), KVRT_ERR_INVALID_ARGUMENT);
    int32_t n, s = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, p2, 16, &n), KVRT_OK);
    assert_int_equal(n, 16);
    assert_int_equal(row_entry(bm, s, 0), row_entry(bm, b, 0));
    /* Same tokens, different parent: b's second block, never a's. */
    assert_int_equal(row_entry(bm, s, 1), row_entry(bm, b, 1));
    int32_t t = new_seq(bm, 1);
    assert_int_equal(kvrt_bm_match_prefix(bm, t, p1, 16, &n), KVRT_OK);
    assert_int_equal(n, 16);
    assert_int_equal(row_entry(bm, t, 0), row_entry(bm, c, 0));
    assert_int_equal(row_entry(bm, t, 1), row_entry(bm, c, 1));
    /* Unseen tokens collide with everything and match nothing. */
    int32_t z[16];
    fill_tokens(z, 16, 5000);
    int32_t u = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, u, z, 16, &n), KVRT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(kvrt_bm_debug_set_hash_bits(NULL, 1), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_debug_set_hash_bits(bm, 0), KVRT_ERR_INVALID_ARGUMENT);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_extra_key_separates_colliding_blocks(void **state)
{
    (void)state;
    /* Eight extra keys, the same tokens, one-bit hashes: at least four keys
     * share a hash (pigeonhole), so only the extra_key comparison keeps
     * their blocks apart, in registration and in lookup. */
    kvrt_block_manager *bm = make(16, 8, 2, 0, 1);
    assert_int_equal(kvrt_bm_debug_set_hash_bits(bm, 1), KVRT_OK);
    int32_t toks[8], owner[8], blk[8];
    fill_tokens(toks, 8, 4);
    for (int e = 0; e < 8; e++) {
        owner[e] = new_seq(bm, (uint64_t)e * 1000);
        append(bm, owner[e], toks, 8, NULL);
        blk[e] = row_entry(bm, owner[e], 0);
        assert_true(bm->blocks[blk[e]].registered);
    }
    for (int e = 0; e < 8; e++) {
        int32_t s = new_seq(bm, (uint64_t)e * 1000), n;
        assert_int_equal(kvrt_bm_match_prefix(bm, s, toks, 8, &n), KVRT_OK);
        assert_int_equal(n, 8);
        assert_int_equal(row_entry(bm, s, 0), blk[e]);
    }
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_parent_identity_survives_eviction(void **state)
{
    (void)state;
    /* A child block must not be matched through a parent block id whose
     * contents were evicted and replaced by a different chain. */
    kvrt_block_manager *bm = make(2, 8, 4, 0, 1);
    assert_int_equal(kvrt_bm_debug_set_hash_bits(bm, 1), KVRT_OK);
    int32_t x[16], y[16];
    fill_tokens(x, 16, 0);
    fill_tokens(y, 16, 0);
    y[3] = 99; /* first blocks differ, second blocks are equal */
    int32_t a = new_seq(bm, 0);
    append(bm, a, x, 16, NULL);
    int32_t x0 = row_entry(bm, a, 0), x1 = row_entry(bm, a, 1);
    /* Windowing x's first block out queues it before x's second one. */
    assert_int_equal(kvrt_bm_release_before(bm, a, 8, 0, NULL), KVRT_OK);
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    /* y's first block now reuses x's first block id (evicting it). */
    int32_t b = new_seq(bm, 0);
    append(bm, b, y, 8, NULL);
    assert_int_equal(row_entry(bm, b, 0), x0);
    assert_int_equal(stats(bm).evictions, 1);
    assert_true(bm->blocks[x1].registered);
    assert_int_equal(kvrt_bm_seq_free(bm, b), KVRT_OK);
    int32_t s = new_seq(bm, 0), n;
    assert_int_equal(kvrt_bm_match_prefix(bm, s, y, 16, &n), KVRT_OK);
    assert_int_equal(n, 8); /* y's first block only: x's second block had another parent */
    for (int i = 0; i < 8; i++)
        assert_int_equal(bm->tokens[row_entry(bm, s, 0) * 8 + i], y[i]);
    /* x itself no longer matches either: its first block is gone. */
    int32_t t = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, t, x, 16, &n), KVRT_OK);
    assert_int_equal(n, 0);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_reset_prefix_cache(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(6, 8, 4, 0, 1);
    int32_t toks[24];
    fill_tokens(toks, 24, 3);
    int32_t a = new_seq(bm, 0), keep = new_seq(bm, 0);
    append(bm, a, toks, 16, NULL);
    append(bm, keep, toks + 8, 8, NULL); /* another chain, in use */
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    assert_int_equal(stats(bm).blocks_cached, 2);
    assert_int_equal(kvrt_bm_reset_prefix_cache(bm), KVRT_OK);
    check(bm);
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.blocks_cached, 0);
    assert_int_equal(st.blocks_free, 5);
    int32_t b = new_seq(bm, 0), n;
    assert_int_equal(kvrt_bm_match_prefix(bm, b, toks, 16, &n), KVRT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, b, toks + 8, 8, &n), KVRT_OK);
    assert_int_equal(n, 0);
    /* Blocks filled afterwards register again. */
    append(bm, b, toks, 8, NULL);
    assert_true(bm->blocks[row_entry(bm, b, 0)].registered);
    int32_t c = new_seq(bm, 0);
    assert_int_equal(kvrt_bm_match_prefix(bm, c, toks, 8, &n), KVRT_OK);
    assert_int_equal(n, 8);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

/* ---- block tables -------------------------------------------------------------------------- */

static void test_block_tables(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(10, 8, 4, 2, 1);
    int32_t toks[32];
    fill_tokens(toks, 32, 0);
    int32_t s[3] = {new_seq(bm, 0), new_seq(bm, 0), new_seq(bm, 0)};
    append(bm, s[0], toks, 20, NULL);
    append(bm, s[2], toks, 1, NULL);
    int32_t tab[3][6];
    memset(tab, 0x11, sizeof(tab));
    assert_int_equal(kvrt_bm_block_tables(bm, s, 3, &tab[0][0], 6), KVRT_OK);
    for (int c = 0; c < 6; c++) {
        assert_int_equal(tab[0][c], c < 3 ? bm->seqs[s[0]]->table[c] : -1);
        assert_int_equal(tab[1][c], -1);
        assert_int_equal(tab[2][c], c < 1 ? bm->seqs[s[2]]->table[c] : -1);
    }
    assert_true(tab[0][0] >= 0 && tab[0][1] >= 0 && tab[0][2] >= 0);
    /* Rows shorter than a sequence's entries: rejected, nothing written. */
    int32_t narrow[3][2];
    memset(narrow, 0x22, sizeof(narrow));
    assert_int_equal(kvrt_bm_block_tables(bm, s, 3, &narrow[0][0], 2), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "row_len");
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++)
            assert_int_equal(narrow[r][c], 0x22222222);
    int32_t bad[2] = {s[1], 1234};
    assert_int_equal(kvrt_bm_block_tables(bm, bad, 2, &narrow[0][0], 2), KVRT_ERR_NO_SUCH_SEQUENCE);
    assert_int_equal(narrow[0][0], 0x22222222);
    assert_int_equal(kvrt_bm_block_tables(bm, NULL, 1, &narrow[0][0], 2), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_block_tables(bm, s, 1, NULL, 2), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_block_tables(bm, s, -1, &narrow[0][0], 2), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_block_tables(bm, s, 1, &narrow[0][0], 0), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_block_tables(bm, NULL, 0, NULL, 1), KVRT_OK);
    kvrt_block_manager_destroy(bm);
}

/* ---- sliding window -------------------------------------------------------------------------- */

static void test_release_before(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(8, 8, 6, 0, 1);
    int32_t toks[48];
    fill_tokens(toks, 48, 0);
    int32_t s = new_seq(bm, 0), n = -1;
    append(bm, s, toks, 37, NULL); /* entries 0..4, entry 4 holds 5 */
    int32_t blk[5];
    for (int i = 0; i < 5; i++)
        blk[i] = row_entry(bm, s, i);
    int32_t c;
    assert_int_equal(kvrt_bm_seq_fork(bm, s, &c), KVRT_OK); /* shared: release drops one ref */
    /* sinks = 3 keeps block 0; pos 26 -> blocks 1, 2 are entirely before it, 3 is not. */
    assert_int_equal(kvrt_bm_release_before(bm, s, 26, 3, &n), KVRT_OK);
    check(bm);
    assert_int_equal(n, 2);
    assert_int_equal(row_entry(bm, s, 0), blk[0]);
    assert_int_equal(row_entry(bm, s, 1), -1);
    assert_int_equal(row_entry(bm, s, 2), -1);
    assert_int_equal(row_entry(bm, s, 3), blk[3]);
    assert_int_equal(bm->blocks[blk[1]].ref_cnt, 1);
    kvrt_bm_seq_info i = info(bm, s);
    assert_int_equal(i.seq_len, 37);
    assert_int_equal(i.stored_tokens, 37 - 16);
    assert_int_equal(i.num_entries, 5);
    assert_int_equal(i.num_blocks, 3);
    /* Again: already released entries are not released twice. */
    assert_int_equal(kvrt_bm_release_before(bm, s, 26, 3, &n), KVRT_OK);
    assert_int_equal(n, 0);
    /* pos beyond seq_len is clamped: the partial last block stays. */
    assert_int_equal(kvrt_bm_release_before(bm, s, 1000, 0, NULL), KVRT_OK);
    assert_int_equal(row_entry(bm, s, 0), -1);
    assert_int_equal(row_entry(bm, s, 3), -1);
    assert_int_equal(row_entry(bm, s, 4), blk[4]);
    assert_int_equal(info(bm, s).stored_tokens, 5);
    /* Appending continues normally (the last block is shared with c: CoW). */
    kvrt_bm_append_result r = append(bm, s, toks, 4, NULL);
    assert_int_equal(r.n_copies, 1);
    /* A fork of a windowed sequence keeps the holes. */
    int32_t d;
    assert_int_equal(kvrt_bm_seq_fork(bm, s, &d), KVRT_OK);
    assert_int_equal(row_entry(bm, d, 1), -1);
    assert_int_equal(info(bm, d).num_blocks, 2); /* 41 tokens: entry 4 (the copy) and a new entry 5 */
    check(bm);
    assert_int_equal(kvrt_bm_release_before(bm, s, -1, 0, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_release_before(bm, s, 0, -1, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_release_before(bm, 42, 0, 0, NULL), KVRT_ERR_NO_SUCH_SEQUENCE);
    int32_t ids[] = {s, c, d};
    for (int k = 0; k < 3; k++)
        assert_int_equal(kvrt_bm_seq_free(bm, ids[k]), KVRT_OK);
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free, st.blocks_total);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

/* ---- swapping ---------------------------------------------------------------------------------- */

static void test_swap_out_and_in(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(6, 8, 4, 4, 1);
    int32_t toks[32], pairs[4][2], n = -1;
    fill_tokens(toks, 32, 300);
    int32_t s = new_seq(bm, 5);
    append(bm, s, toks, 20, NULL);
    int32_t dev[3];
    for (int i = 0; i < 3; i++)
        dev[i] = row_entry(bm, s, i);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 4, &n), KVRT_OK);
    check(bm);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pairs[i][0], dev[i]);
        assert_true(pairs[i][1] >= 0 && pairs[i][1] < 4);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(pairs[i][1], pairs[j][1]);
    }
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.host_blocks_used, 3);
    assert_int_equal(st.blocks_swapped_out, 3);
    assert_int_equal(st.blocks_cached, 2); /* the device copies of the full blocks stay cached */
    kvrt_bm_seq_info i = info(bm, s);
    assert_int_equal(i.swapped, 1);
    assert_int_equal(i.seq_len, 20);
    assert_int_equal(i.num_blocks, 3);

    /* A swapped-out sequence cannot be appended to, forked, matched, windowed or tabled. */
    int32_t x, tab[4];
    assert_int_equal(kvrt_bm_append(bm, s, toks, 1, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "swapped out");
    assert_int_equal(kvrt_bm_blocks_needed(bm, s, 1, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_seq_fork(bm, s, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_match_prefix(bm, s, toks, 8, &x), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_release_before(bm, s, 8, 0, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_block_tables(bm, &s, 1, tab, 4), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 4, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "already swapped out");

    /* Drop the cached device copies: after swap-in the prefix must be found
     * through the swapped-in blocks themselves. */
    assert_int_equal(kvrt_bm_reset_prefix_cache(bm), KVRT_OK);
    /* Swap in: new device blocks, pairs host -> device, host slots back. */
    int32_t host_of[3] = {pairs[0][1], pairs[1][1], pairs[2][1]};
    assert_int_equal(kvrt_bm_swap_in(bm, s, pairs, 4, &n), KVRT_OK);
    check(bm);
    assert_int_equal(n, 3);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(pairs[k][0], host_of[k]);
        assert_int_equal(row_entry(bm, s, k), pairs[k][1]);
    }
    st = stats(bm);
    assert_int_equal(st.host_blocks_used, 0);
    assert_int_equal(st.blocks_used, 3);
    assert_int_equal(st.blocks_swapped_in, 3);
    assert_int_equal(info(bm, s).swapped, 0);
    assert_int_equal(kvrt_bm_swap_in(bm, s, pairs, 4, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_msg_has(bm, "not swapped out");
    /* The sequence continues where it was; its tokens came back with it. */
    kvrt_bm_append_result r = append(bm, s, toks + 20, 4, NULL);
    assert_int_equal(r.n_new_blocks, 0);
    int32_t m = new_seq(bm, 5);
    assert_int_equal(kvrt_bm_match_prefix(bm, m, toks, 24, &n), KVRT_OK);
    assert_int_equal(n, 24);
    for (int k = 0; k < 3; k++)
        assert_int_equal(row_entry(bm, m, k), row_entry(bm, s, k));
    check(bm);
    kvrt_block_manager_destroy(bm);
}

static void test_swap_limits(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(4, 8, 4, 2, 1);
    int32_t toks[32], pairs[4][2], n = -1;
    fill_tokens(toks, 32, 0);
    int32_t s = new_seq(bm, 0), e = new_seq(bm, 0);
    append(bm, s, toks, 17, NULL); /* 3 blocks, host has 2 slots */
    kvrt_bm_stats before = stats(bm);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 4, &n), KVRT_ERR_OUT_OF_BLOCKS);
    assert_msg_has(bm, "host tier");
    kvrt_bm_stats after = stats(bm);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_int_equal(n, -1);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 2, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_out(bm, s, NULL, 4, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 4, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, -1, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_out(bm, 9, pairs, 4, &n), KVRT_ERR_NO_SUCH_SEQUENCE);
    assert_int_equal(kvrt_bm_swap_in(bm, 9, pairs, 4, &n), KVRT_ERR_NO_SUCH_SEQUENCE);
    /* An empty sequence swaps out with no pairs. */
    assert_int_equal(kvrt_bm_swap_out(bm, e, pairs, 0, &n), KVRT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(kvrt_bm_swap_in(bm, e, pairs, 0, &n), KVRT_OK);
    assert_int_equal(n, 0);
    /* Windowed blocks are not swapped. */
    assert_int_equal(kvrt_bm_release_before(bm, s, 8, 0, NULL), KVRT_OK);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 2, &n), KVRT_OK);
    assert_int_equal(n, 2);
    int32_t hs0 = pairs[0][1], hs1 = pairs[1][1];
    /* Swap in needs 2 device blocks: fill the pool so only 1 is free. */
    int32_t t = new_seq(bm, 0), other[32];
    fill_tokens(other, 32, 5000);
    append(bm, t, other, 24, NULL);
    before = stats(bm);
    assert_int_equal(before.blocks_free, 1);
    assert_int_equal(kvrt_bm_swap_in(bm, s, pairs, 2, &n), KVRT_ERR_OUT_OF_BLOCKS);
    after = stats(bm);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_int_equal(kvrt_bm_swap_in(bm, s, pairs, 1, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(info(bm, s).swapped, 1);
    check(bm);
    assert_int_equal(kvrt_bm_seq_free(bm, t), KVRT_OK);
    assert_int_equal(kvrt_bm_swap_in(bm, s, pairs, 2, &n), KVRT_OK);
    assert_int_equal(pairs[0][0], hs0);
    assert_int_equal(pairs[1][0], hs1);
    assert_int_equal(row_entry(bm, s, 0), -1);
    assert_int_equal(row_entry(bm, s, 1), pairs[0][1]);
    /* Freeing a swapped-out sequence returns its host slots. */
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 2, &n), KVRT_OK);
    assert_int_equal(stats(bm).host_blocks_used, 2);
    assert_int_equal(kvrt_bm_seq_free(bm, s), KVRT_OK);
    assert_int_equal(kvrt_bm_seq_free(bm, e), KVRT_OK);
    kvrt_bm_stats st = stats(bm);
    assert_int_equal(st.host_blocks_used, 0);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free, st.blocks_total);
    check(bm);
    kvrt_block_manager_destroy(bm);

    /* No host tier: any non-empty sequence is out of (host) blocks. */
    bm = make(2, 8, 2, 0, 1);
    s = new_seq(bm, 0);
    append(bm, s, toks, 1, NULL);
    assert_int_equal(kvrt_bm_swap_out(bm, s, pairs, 2, &n), KVRT_ERR_OUT_OF_BLOCKS);
    kvrt_block_manager_destroy(bm);
}

static void test_swap_shared_blocks(void **state)
{
    (void)state;
    /* Swapping out one of two sharers copies the blocks and leaves the other intact. */
    kvrt_block_manager *bm = make(6, 8, 4, 4, 1);
    int32_t toks[16], pairs[4][2], n;
    fill_tokens(toks, 16, 0);
    int32_t p = new_seq(bm, 0), c;
    append(bm, p, toks, 11, NULL);
    assert_int_equal(kvrt_bm_seq_fork(bm, p, &c), KVRT_OK);
    int32_t b1 = row_entry(bm, p, 1);
    assert_int_equal(kvrt_bm_swap_out(bm, c, pairs, 4, &n), KVRT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(bm->blocks[b1].ref_cnt, 1);
    assert_int_equal(stats(bm).blocks_used, 2);
    /* The parent writes in place now; the child's copy on the host is unaffected. */
    kvrt_bm_append_result r = append(bm, p, toks, 1, NULL);
    assert_int_equal(r.n_copies, 0);
    assert_int_equal(kvrt_bm_swap_in(bm, c, pairs, 4, &n), KVRT_OK);
    assert_int_not_equal(row_entry(bm, c, 1), b1);
    assert_int_equal(info(bm, c).seq_len, 11);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_rejects_bad_params),
        cmocka_unit_test(test_create_every_block_size),
        cmocka_unit_test(test_seq_ids_and_errors),
        cmocka_unit_test(test_null_manager),
        cmocka_unit_test(test_append_slots_and_counters),
        cmocka_unit_test(test_append_errors_change_nothing),
        cmocka_unit_test(test_blocks_needed),
        cmocka_unit_test(test_fork_and_copy_on_write),
        cmocka_unit_test(test_cow_out_of_blocks),
        cmocka_unit_test(test_prefix_hit_after_free),
        cmocka_unit_test(test_match_prefix_errors),
        cmocka_unit_test(test_lru_eviction_order),
        cmocka_unit_test(test_free_order_evicts_tail_first),
        cmocka_unit_test(test_duplicate_not_registered),
        cmocka_unit_test(test_hash_collisions_never_return_wrong_block),
        cmocka_unit_test(test_extra_key_separates_colliding_blocks),
        cmocka_unit_test(test_parent_identity_survives_eviction),
        cmocka_unit_test(test_reset_prefix_cache),
        cmocka_unit_test(test_block_tables),
        cmocka_unit_test(test_release_before),
        cmocka_unit_test(test_swap_out_and_in),
        cmocka_unit_test(test_swap_limits),
        cmocka_unit_test(test_swap_shared_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
