/* kvrt_bm_shift (issue 18, context shift): dropped blocks go back to the
 * pool; kept shared blocks are copied before the caller turns them, all or
 * nothing when the pool cannot give the copies; kept blocks of the
 * sequence's own leave the prefix cache; a shifted sequence never registers
 * new blocks; bad arguments are refused. The invariant checker runs after
 * every step. */
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
    if (kvrt_bm_check_invariants(bm, msg, sizeof(msg)) != KVRT_OK)
        fail_msg("invariants: %s", msg);
}

static int32_t free_count(kvrt_block_manager *bm)
{
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(bm, &st), KVRT_OK);
    return st.blocks_free;
}

static void test_shift_copies_shared_and_uncaches(void **state)
{
    (void)state;
    kvrt_block_manager_params p = kvrt_block_manager_default_params();
    p.num_blocks = 6;
    p.block_size = 8;
    p.max_blocks_per_seq = 16;
    p.num_host_blocks = 2;
    kvrt_block_manager *bm = NULL;
    assert_int_equal(kvrt_block_manager_create(&p, &bm, NULL), KVRT_OK);
    int32_t toks[40];
    for (int32_t i = 0; i < 40; i++)
        toks[i] = 7 + i;
    int32_t a, b, c;
    assert_int_equal(kvrt_bm_seq_create(bm, 0, &a), KVRT_OK);
    assert_int_equal(kvrt_bm_append(bm, a, toks, 32, NULL, NULL), KVRT_OK); /* 4 full blocks, registered */
    assert_int_equal(kvrt_bm_seq_fork(bm, a, &b), KVRT_OK);                  /* every block shared */
    assert_int_equal(kvrt_bm_seq_create(bm, 0, &c), KVRT_OK);
    assert_int_equal(kvrt_bm_append(bm, c, toks + 32, 8, NULL, NULL), KVRT_OK); /* 1 free block left */
    int32_t turn[16], n_turn = -1, copies[16][2], n_copies = -1, before[16], after[16];
    /* keep 1, drop 1: blocks 2 and 3 are shared, 2 copies need 2 blocks, 1 is free */
    assert_int_equal(kvrt_bm_block_tables(bm, &a, 1, before, 16), KVRT_OK);
    assert_int_equal(kvrt_bm_shift(bm, a, 1, 1, turn, &n_turn, copies, &n_copies), KVRT_ERR_OUT_OF_BLOCKS);
    assert_int_equal(kvrt_bm_block_tables(bm, &a, 1, after, 16), KVRT_OK);
    assert_memory_equal(before, after, sizeof(before)); /* nothing changed */
    assert_int_equal(free_count(bm), 1);
    check(bm);
    assert_int_equal(kvrt_bm_seq_free(bm, c), KVRT_OK);
    assert_int_equal(kvrt_bm_shift(bm, a, 1, 1, turn, &n_turn, copies, &n_copies), KVRT_OK);
    check(bm);
    assert_int_equal(n_copies, 2);
    assert_int_equal(n_turn, 2);
    assert_int_equal(kvrt_bm_block_tables(bm, &a, 1, after, 16), KVRT_OK);
    assert_int_equal(after[0], before[0]); /* the sink stays, shared */
    for (int32_t k = 0; k < 2; k++) {
        assert_int_equal(copies[k][0], before[2 + k]); /* copied from the shared block */
        assert_int_equal(copies[k][1], after[1 + k]);  /* into the entry that moved down */
        assert_int_equal(turn[k], after[1 + k]);       /* and that copy is what turns */
    }
    assert_int_equal(after[3], -1);
    kvrt_bm_seq_info info;
    assert_int_equal(kvrt_bm_get_seq_info(bm, a, &info), KVRT_OK);
    assert_int_equal(info.seq_len, 24);
    /* b now holds blocks 2 and 3 alone: turned in place, out of the cache */
    assert_int_equal(kvrt_bm_block_tables(bm, &b, 1, before, 16), KVRT_OK);
    assert_int_equal(kvrt_bm_shift(bm, b, 1, 1, turn, &n_turn, copies, &n_copies), KVRT_OK);
    check(bm);
    assert_int_equal(n_copies, 0);
    assert_int_equal(n_turn, 2);
    assert_int_equal(turn[0], before[2]);
    assert_int_equal(turn[1], before[3]);
    assert_false(bm->blocks[before[2]].registered);
    assert_false(bm->blocks[before[3]].registered);
    assert_true(bm->blocks[before[0]].registered); /* sink and the dropped block stay cached */
    assert_true(bm->blocks[before[1]].registered);
    /* a new sequence with the same 32 tokens finds blocks 0 and 1 only */
    int32_t d, matched = -1;
    assert_int_equal(kvrt_bm_seq_create(bm, 0, &d), KVRT_OK);
    assert_int_equal(kvrt_bm_match_prefix(bm, d, toks, 32, &matched), KVRT_OK);
    assert_int_equal(matched, 16);
    assert_int_equal(kvrt_bm_seq_free(bm, d), KVRT_OK);
    /* a shifted sequence's new full block is never registered */
    assert_int_equal(kvrt_bm_append(bm, b, toks + 32, 8, NULL, NULL), KVRT_OK);
    assert_int_equal(kvrt_bm_block_tables(bm, &b, 1, after, 16), KVRT_OK);
    assert_false(bm->blocks[after[3]].registered);
    check(bm);
    /* bad arguments */
    assert_int_equal(kvrt_bm_shift(bm, b, 1, 0, turn, &n_turn, copies, &n_copies), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_shift(bm, b, 3, 2, turn, &n_turn, copies, &n_copies), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_shift(bm, b, -1, 1, turn, &n_turn, copies, &n_copies), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_bm_shift(bm, b, 1, 1, NULL, &n_turn, copies, &n_copies), KVRT_ERR_INVALID_ARGUMENT);
    int32_t pairs[16][2], n = 0;
    assert_int_equal(kvrt_bm_offload(bm, b, 1, 1, pairs, 16, &n), KVRT_OK);
    assert_int_equal(kvrt_bm_shift(bm, b, 1, 1, turn, &n_turn, copies, &n_copies), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_block_manager_message(bm), "host tier"));
    assert_int_equal(kvrt_bm_seq_free(bm, a), KVRT_OK);
    assert_int_equal(kvrt_bm_seq_free(bm, b), KVRT_OK);
    check(bm);
    assert_int_equal(free_count(bm), 6);
    kvrt_block_manager_destroy(bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shift_copies_shared_and_uncaches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
