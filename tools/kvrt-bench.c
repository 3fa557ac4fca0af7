/*
 * kvrt-bench: the benchmarks, one subcommand each.
 *
 *   kvrt-bench attn   [options]   attention kernels vs memory bandwidth, paged vs contiguous
 *   kvrt-bench kv     [options]   accuracy of each KV type (and K/V pair) against f16 KV
 *   kvrt-bench model  [options]   model forward pass (prefill / decode tokens per second)
 *   kvrt-bench serve  [options]   serving workloads (continuous batching, KV utilisation)
 *   kvrt-bench threads [options]  decode across thread settings; where splitting work pays
 *   kvrt-bench tokenize [options] tokenizer MB/s; a long prompt's tokenizing vs its prefill
 *
 * Every subcommand takes --json: exactly one JSON document on stdout, the
 * table on stderr. To add one, write `int kvrt_bench_NAME_main(int, char **)`
 * in tools/common/ and fill in its row of SUBCOMMANDS.
 */
#include "bench_attn.h"
#include "bench_kv.h"
#include "bench_model.h"
#include "bench_serve.h"
#include "bench_threads.h"
#include "bench_tokenize.h"
#include "cli.h"

#include <stdio.h>
#include <string.h>

typedef struct bench_subcommand {
    const char *name;
    const char *summary;
    int (*main)(int argc, char **argv);
} bench_subcommand;

static const bench_subcommand SUBCOMMANDS[] = {
    {"attn", "attention throughput vs measured memory bandwidth; paged vs contiguous KV", kvrt_bench_attn_main},
    {"kv", "KV types vs f16 KV on whole models: logits NMSE, max abs, KL, top-1 agreement", kvrt_bench_kv_main},
    {"model", "model forward pass: prefill and decode tokens/s vs measured memory bandwidth", kvrt_bench_model_main},
    {"serve", "serving workloads: continuous batching, KV utilisation", kvrt_bench_serve_main},
    {"threads", "decode at 1, all and 4x all cores and beside a busy process; where splitting pays",
     kvrt_bench_threads_main},
    {"tokenize", "tokenizer MB/s on mixed text; tokenizing a long prompt vs its prefill", kvrt_bench_tokenize_main},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: kvrt-bench SUBCOMMAND [options]   (kvrt-bench SUBCOMMAND --help for its options)\n\n");
    for (size_t i = 0; i < KVRT_ARRAY_LEN(SUBCOMMANDS); i++)
        fprintf(f, "  %-8s %s\n", SUBCOMMANDS[i].name, SUBCOMMANDS[i].summary);
    fprintf(f, "\n  --version  the version, then exit\n");
    fprintf(f, "\nEvery subcommand takes the common flags --backend (default auto) --device -t\n"
               "--pipeline-cache --kv-type --block-size -v, as kvrt-run does.\n");
    fprintf(f, "\nexit status: 0 ok, 1 a benchmark failed, 2 usage error\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return KVRT_CLI_USAGE;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        kvrt_cli_print_version("kvrt-bench");
        return 0;
    }
    for (size_t i = 0; i < KVRT_ARRAY_LEN(SUBCOMMANDS); i++) {
        const bench_subcommand *sc = &SUBCOMMANDS[i];
        if (strcmp(argv[1], sc->name) != 0)
            continue;
        return sc->main(argc - 1, argv + 1);
    }
    kvrt_cli_error("kvrt-bench", "unknown subcommand '%s' (attn, kv, model, serve, threads, tokenize; see --help)",
                   argv[1]);
    return KVRT_CLI_USAGE;
}
