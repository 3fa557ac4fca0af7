/* kvrt-bench kv: accuracy of each KV storage type (and K/V pair) against
 * F16 KV on whole models: teacher-forced logits NMSE, max abs, mean KL of
 * the next-token distribution and top-1 agreement (bench_kv.c). argv[0] is
 * the subcommand's name; returns the process exit status: 0 ok, 1 a run
 * failed, KVRT_CLI_USAGE (2) a usage error. */
#ifndef KVRT_TOOL_BENCH_KV_H
#define KVRT_TOOL_BENCH_KV_H

int kvrt_bench_kv_main(int argc, char **argv);

#endif /* KVRT_TOOL_BENCH_KV_H */
