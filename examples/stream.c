/* Streaming generation on the engine API, the simpler path: the engine
 * tokenizes the prompt, samples, stops and turns tokens into text; the
 * program only steps it and prints what the text callback hands over
 * (whole UTF-8 characters). Several requests could run at once the same way.
 *
 *   stream MODEL.gguf "Once upon a time" [N]
 *
 * Build against an installed kvrt:
 *   cc stream.c $(pkg-config --cflags --libs kvrt) -o stream
 * or with CMake: find_package(kvrt) and link kvrt::kvrt (examples/CMakeLists.txt). */
#include <kvrt.h>

#include <stdio.h>
#include <stdlib.h>

/* Runs inside kvrt_engine_step, on the caller's thread. */
static void on_text(void *user, int64_t request_id, int32_t sample, const char *text, size_t len,
                    kvrt_finish_reason finish)
{
    (void)user, (void)request_id, (void)sample;
    fwrite(text, 1, len, stdout);
    if (finish != KVRT_FINISH_NONE)
        fprintf(stderr, "\n[%s]\n", kvrt_finish_reason_name(finish));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: stream MODEL PROMPT [N]\n");
        return 2;
    }
    kvrt_error err;
    kvrt_context *ctx = NULL;
    if (kvrt_context_create(NULL, &ctx, &err) != KVRT_OK) {
        fprintf(stderr, "stream: context: %s\n", err.message);
        return 1;
    }
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = argv[1];
    kvrt_model *model = NULL;
    kvrt_engine *engine = NULL;
    int rc = 1;
    if (kvrt_model_load(ctx, &mp, &model, &err) != KVRT_OK)
        fprintf(stderr, "stream: model: %s\n", err.message);
    else if (kvrt_engine_create(model, NULL, &engine, &err) != KVRT_OK) /* NULL: default params */
        fprintf(stderr, "stream: engine: %s\n", err.message);
    else
        rc = 0;

    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt_text = argv[2];          /* copied by submit: the engine keeps no caller memory */
    rp.max_tokens = argc > 3 ? atoi(argv[3]) : 32;
    rp.temperature = 0.0f;             /* greedy */
    rp.on_text = on_text;
    int64_t id = 0;
    if (rc == 0 && kvrt_engine_submit(engine, &rp, &id) != KVRT_OK) {
        fprintf(stderr, "stream: submit: %s\n", kvrt_engine_message(engine));
        rc = 1;
    }
    while (rc == 0 && kvrt_engine_has_work(engine))
        if (kvrt_engine_step(engine, NULL) != KVRT_OK) { /* a step that failed is retried, or the
                                                           * request finishes with KVRT_FINISH_ERROR */
            fprintf(stderr, "stream: step: %s\n", kvrt_engine_message(engine));
        }
    kvrt_request_output out;
    if (rc == 0 && kvrt_engine_get_output(engine, id, &out) == KVRT_OK && out.samples[0].finish_reason == KVRT_FINISH_ERROR)
        rc = 1;
    printf("\n");
    kvrt_engine_destroy(engine); /* NULL is a no-op */
    kvrt_model_destroy(model);
    kvrt_context_destroy(ctx);
    return rc;
}
