/* Every backend and feature pass this build has, for the cross-backend
 * suites (test_backend_ops, test_attention_cases): the CPU at 1 and 2
 * threads, Vulkan with every device feature and with none (validation layer
 * on), OpenCL. A new backend joins those suites by one row of
 * test_passes.c. A backend that is built in but cannot start fails the
 * test: CI has lavapipe and PoCL. */
#ifndef KVRT_TEST_PASSES_H
#define KVRT_TEST_PASSES_H

#include "attn_cases.h"
#include "kvrt.h"

#define KVRT_TEST_MAX_PASSES 8

typedef struct kvrt_test_pass {
    const char *name;  /* "cpu/1", "vulkan/none", ... */
    kvrt_context *ctx;
    int same_bits_as;  /* an earlier pass whose outputs this one equals bit for bit; -1: none */
    bool quant_kv;     /* stores q8_0 / q4_0 KV; false: must refuse them with UNSUPPORTED */
} kvrt_test_pass;

/* The passes of this run, opened by the group setup below. */
extern kvrt_test_pass kvrt_test_pass_list[KVRT_TEST_MAX_PASSES];
extern int kvrt_test_n_passes;

/* A fresh context of pass i (as the setup opens it), for tests that need
 * one of their own (nothing held from earlier tests); NULL when it cannot
 * start. Destroy it with kvrt_context_destroy. */
kvrt_context *kvrt_test_pass_open(int i);

/* cmocka group setup and teardown: opens every pass; closes them, failing
 * when Vulkan's validation layer spoke. */
int kvrt_test_passes_setup(void **state);
int kvrt_test_passes_teardown(void **state);

/* Builds an attention case's data and reference once and runs it on every
 * pass (attn_case_run): the same bound everywhere, bit for bit where
 * same_bits_as says. A quantized KV case on a pass without quant_kv must be
 * refused: UNSUPPORTED, the message naming the type and the backend. Keeps each pass's worst max abs and NMSE in worst_abs /
 * worst_nmse ([KVRT_TEST_MAX_PASSES], may be NULL). Fails the test on a miss. */
void kvrt_test_attn_case_everywhere(const attn_case *c, double *worst_abs, double *worst_nmse);

#endif /* KVRT_TEST_PASSES_H */
