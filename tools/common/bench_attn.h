/* The kvrt-bench subcommands, one entry point each (argv[0] is the
 * subcommand's name). They return the process exit status: 0 ok, 1 a run
 * failed, KVRT_CLI_USAGE (2) a usage error. */
#ifndef KVRT_TOOL_BENCH_ATTN_H
#define KVRT_TOOL_BENCH_ATTN_H

/* kvrt-bench attn: paged decode and prefill attention throughput against the
 * measured memory bandwidth and a contiguous KV layout (bench_attn.c). */
int kvrt_bench_attn_main(int argc, char **argv);

#endif /* KVRT_TOOL_BENCH_ATTN_H */
