/* kvrt-bench attn --host-tier (bench_tier.c): decode attention split by
 * tier (issue 18) vs every block on the device. Returns the exit status. */
#ifndef KVRT_TOOL_BENCH_TIER_H
#define KVRT_TOOL_BENCH_TIER_H

int kvrt_bench_attn_tier_main(int argc, char **argv);

#endif /* KVRT_TOOL_BENCH_TIER_H */
