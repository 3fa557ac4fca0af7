/* kvrt-bench threads: decode speed across thread settings, oversubscribed
 * and beside a busy process, and where splitting work across threads starts
 * to pay (bench_threads.c). argv[0] is the subcommand's name; returns the
 * process exit status: 0 ok, 1 a run failed, KVRT_CLI_USAGE (2) a usage error. */
#ifndef KVRT_TOOL_BENCH_THREADS_H
#define KVRT_TOOL_BENCH_THREADS_H

int kvrt_bench_threads_main(int argc, char **argv);

#endif /* KVRT_TOOL_BENCH_THREADS_H */
