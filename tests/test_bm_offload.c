/* kvrt_bm_offload (issue 18): a running sequence's oldest full blocks become
 * host slots, a prefix of its table, and its device blocks go back to the
 * pool (still cached when registered); appends go on; free returns every
 * slot; fork, swap and window release are refused while blocks are on the
 * host; the host tier's capacity is all-or-nothing. The invariant checker
 * runs after every step. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "kv/block_manager_internal.h"
#include "kvrt.h"

static void check(kvrt_block_manager *bm)
{
    char msg[256];
    kvrt_status s = kvrt_bm_check_invariants(bm, msg, sizeof(msg));
    if (s != KVRT_OK)
        fail_msg("invariants: %s", msg);
}

static kvrt_block_manager *make(int32_t blocks, int32_t host)
{
    kvrt_block_manager_params p = kvrt_block_manager_default_params();
    p.num_blocks = blocks;
    p.block_size = 8;
    p.max_blocks_per_seq = 16;
    p.num_host_blocks = host;
    kvrt_block_manager *bm = NULL;
    assert_int_equal(kvrt_block_manager_create(&p, &bm, NULL), KVRT_OK);
    return bm;
}

static int32_t seq_with(kvrt_block_manager *bm, int32_t n_tokens, int32_t base)
{
    int32_t seq, toks[128];
    for (int32_t i = 0; i < n_tokens; i++)
        toks[i] = base + i;
    assert_int_equal(kvrt_bm_seq_create(bm, 0, &seq), KVRT_OK);
    kvrt_bm_append_result res;
    assert_int_equal(kvrt_bm_append(bm, seq, toks, n_tokens, NULL, &res), KVRT_OK);
    return seq;
}

static void test_offload_moves_a_prefix(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(8, 4);
    int32_t seq = seq_with(bm, 29, 100); /* 4 entries: 3 full, 1 partial */
    int32_t before[16], after[16], pairs[16][2], n = 0;
    assert_int_equal(kvrt_bm_block_tables(bm, &seq, 1, before, 16), KVRT_OK);
    /* end past the full blocks is refused */
    assert_int_equal(kvrt_bm_offload(bm, seq, 4, 4, pairs, 16, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_offload(bm, seq, 3, 2, pairs, 16, &n), KVRT_OK);
    assert_int_equal(n, 2);
    check(bm);
    assert_int_equal(pairs[0][0], before[0]);
    assert_int_equal(pairs[1][0], before[1]);
    kvrt_bm_seq_info info;
    assert_int_equal(kvrt_bm_get_seq_info(bm, seq, &info), KVRT_OK);
    assert_int_equal(info.num_host, 2);
    assert_int_equal(kvrt_bm_block_tables(bm, &seq, 1, after, 16), KVRT_OK);
    assert_int_equal(after[0], pairs[0][1]);
    assert_int_equal(after[1], pairs[1][1]);
    assert_int_equal(after[2], before[2]);
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(bm, &st), KVRT_OK);
    assert_int_equal(st.blocks_used, 2);
    assert_int_equal(st.host_blocks_used, 2);
    assert_int_equal(st.blocks_offloaded, 2);
    /* the freed device blocks were full and hashed: they stay cached */
    assert_int_equal(st.blocks_cached, 2);
    /* the rest up to `end`, then nothing more to move */
    assert_int_equal(kvrt_bm_offload(bm, seq, 3, 8, pairs, 16, &n), KVRT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(kvrt_bm_offload(bm, seq, 3, 8, pairs, 16, &n), KVRT_OK);
    assert_int_equal(n, 0);
    check(bm);
    /* appends go on into device blocks */
    int32_t toks[20], slots[20];
    for (int i = 0; i < 20; i++)
        toks[i] = 500 + i;
    kvrt_bm_append_result res;
    assert_int_equal(kvrt_bm_append(bm, seq, toks, 20, slots, &res), KVRT_OK);
    check(bm);
    /* fork, swap and window release are refused while blocks are on the host */
    int32_t child;
    assert_int_equal(kvrt_bm_seq_fork(bm, seq, &child), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_swap_out(bm, seq, pairs, 16, &n), KVRT_ERR_INVALID_ARGUMENT);
    int32_t released;
    assert_int_equal(kvrt_bm_release_before(bm, seq, 40, 0, &released), KVRT_ERR_INVALID_ARGUMENT);
    check(bm);
    /* freeing returns every device block and host slot */
    assert_int_equal(kvrt_bm_seq_free(bm, seq), KVRT_OK);
    check(bm);
    assert_int_equal(kvrt_bm_get_stats(bm, &st), KVRT_OK);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.host_blocks_used, 0);
    assert_int_equal(st.blocks_free, 8);
    kvrt_block_manager_destroy(bm);
}

static void test_offload_host_capacity_and_sharing(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(12, 2);
    int32_t a = seq_with(bm, 32, 1), b = seq_with(bm, 24, 1); /* 4 and 3 full blocks */
    int32_t pairs[16][2], n = 0;
    /* 3 blocks do not fit 2 host slots: nothing changes */
    assert_int_equal(kvrt_bm_offload(bm, a, 3, 3, pairs, 16, &n), KVRT_ERR_OUT_OF_BLOCKS);
    check(bm);
    kvrt_bm_seq_info info;
    assert_int_equal(kvrt_bm_get_seq_info(bm, a, &info), KVRT_OK);
    assert_int_equal(info.num_host, 0);
    /* max_pairs too small */
    assert_int_equal(kvrt_bm_offload(bm, a, 2, 2, pairs, 1, &n), KVRT_ERR_INVALID_ARGUMENT);
    /* a block shared by fork stays on the device for the other sequence */
    int32_t c;
    assert_int_equal(kvrt_bm_seq_fork(bm, b, &c), KVRT_OK);
    kvrt_bm_stats st0, st1;
    assert_int_equal(kvrt_bm_get_stats(bm, &st0), KVRT_OK);
    assert_int_equal(kvrt_bm_offload(bm, c, 2, 2, pairs, 16, &n), KVRT_OK);
    assert_int_equal(n, 2);
    check(bm);
    assert_int_equal(kvrt_bm_get_stats(bm, &st1), KVRT_OK);
    assert_int_equal(st1.blocks_used, st0.blocks_used); /* b still holds them */
    assert_int_equal(st1.host_blocks_used, 2);
    assert_int_equal(kvrt_bm_seq_free(bm, c), KVRT_OK);
    assert_int_equal(kvrt_bm_seq_free(bm, b), KVRT_OK);
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    check(bm);
    assert_int_equal(kvrt_bm_get_stats(bm, &st1), KVRT_OK);
    assert_int_equal(st1.blocks_used, 0);
    assert_int_equal(st1.host_blocks_used, 0);
    kvrt_block_manager_destroy(bm);
}

/* kvrt_bm_offload_plan: shared blocks count as moves, never as freed
 * blocks; the plan ends at the last block that frees one; an all-shared
 * sequence plans nothing; offloading the plan frees exactly what it said. */
static void test_offload_plan_skips_shared_gain(void **state)
{
    (void)state;
    kvrt_block_manager *bm = make(16, 8);
    int32_t a = seq_with(bm, 16, 1), b; /* 2 full blocks, shared with b by fork */
    assert_int_equal(kvrt_bm_seq_fork(bm, a, &b), KVRT_OK);
    int32_t more[16];
    for (int32_t i = 0; i < 16; i++)
        more[i] = 100 + i;
    assert_int_equal(kvrt_bm_append(bm, a, more, 16, NULL, NULL), KVRT_OK); /* a: 2 shared + 2 own */
    int32_t mv = -1, fr = -1;
    assert_int_equal(kvrt_bm_offload_plan(bm, b, 2, 5, 8, &mv, &fr), KVRT_OK);
    assert_int_equal(mv, 0); /* b's blocks are all shared: moving them frees nothing */
    assert_int_equal(fr, 0);
    assert_int_equal(kvrt_bm_offload_plan(bm, a, 4, 1, 8, &mv, &fr), KVRT_OK);
    assert_int_equal(mv, 3); /* two shared copies on the way to the first own block */
    assert_int_equal(fr, 1);
    assert_int_equal(kvrt_bm_offload_plan(bm, a, 4, INT32_MAX, 8, &mv, &fr), KVRT_OK);
    assert_int_equal(mv, 4);
    assert_int_equal(fr, 2);
    assert_int_equal(kvrt_bm_offload_plan(bm, a, 4, INT32_MAX, 2, &mv, &fr), KVRT_OK);
    assert_int_equal(mv, 0); /* two host slots reach no own block */
    assert_int_equal(fr, 0);
    assert_int_equal(kvrt_bm_offload_plan(bm, a, 5, 1, 8, &mv, &fr), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_bm_stats st0, st1;
    assert_int_equal(kvrt_bm_get_stats(bm, &st0), KVRT_OK);
    int32_t pairs[16][2], n = 0;
    assert_int_equal(kvrt_bm_offload_plan(bm, a, 4, 1, 8, &mv, &fr), KVRT_OK);
    assert_int_equal(kvrt_bm_offload(bm, a, 4, mv, pairs, 16, &n), KVRT_OK);
    check(bm);
    assert_int_equal(kvrt_bm_get_stats(bm, &st1), KVRT_OK);
    assert_int_equal(st1.blocks_free, st0.blocks_free + fr);
    assert_int_equal(st1.host_blocks_used, mv);
    /* host blocks are a prefix: the plan starts after them */
    assert_int_equal(kvrt_bm_offload_plan(bm, a, 4, INT32_MAX, 8, &mv, &fr), KVRT_OK);
    assert_int_equal(mv, 1);
    assert_int_equal(fr, 1);
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    assert_int_equal(kvrt_bm_seq_free(bm, b), KVRT_OK);
    check(bm);
    kvrt_block_manager_destroy(bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offload_moves_a_prefix),
        cmocka_unit_test(test_offload_host_capacity_and_sharing),
        cmocka_unit_test(test_offload_plan_skips_shared_gain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
