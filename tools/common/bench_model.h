/* kvrt-bench model: whole-model prefill and decode throughput (bench_model.c).
 * argv[0] is the subcommand's name; returns the process exit status: 0 ok,
 * 1 a run failed, KVRT_CLI_USAGE (2) a usage error. */
#ifndef KVRT_TOOL_BENCH_MODEL_H
#define KVRT_TOOL_BENCH_MODEL_H

/* Prefill and decode tokens/s of synthetic (or given) models per weight type
 * and thread count, decode weight traffic against the memory bandwidth
 * measured in the same run, and generation time with and without the KV
 * cache as the sequence grows. */
int kvrt_bench_model_main(int argc, char **argv);

#endif /* KVRT_TOOL_BENCH_MODEL_H */
