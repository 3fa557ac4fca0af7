/* kvrt-bench serve: serving workloads on the engine (continuous batching,
 * prefix caching, parallel sampling, preemption) with llama-bench-style
 * output; see bench_serve.c for the workloads and their parameters. */
#ifndef KVRT_TOOL_BENCH_SERVE_H
#define KVRT_TOOL_BENCH_SERVE_H

int kvrt_bench_serve_main(int argc, char **argv);

#endif /* KVRT_TOOL_BENCH_SERVE_H */
