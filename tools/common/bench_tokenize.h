/* kvrt-bench tokenize: tokenizer throughput on mixed text, and tokenizing a
 * long prompt as a share of its prefill (see bench_tokenize.c). */
#ifndef KVRT_TOOL_BENCH_TOKENIZE_H
#define KVRT_TOOL_BENCH_TOKENIZE_H

int kvrt_bench_tokenize_main(int argc, char **argv);

#endif /* KVRT_TOOL_BENCH_TOKENIZE_H */
