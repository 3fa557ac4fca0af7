/* Greedy generation on the session API: load a model, tokenize a prompt,
 * evaluate it, then repeatedly take the most likely next token, print its
 * text and feed it back. The whole loop an embedder writes.
 *
 *   generate MODEL.gguf "Once upon a time" [N]
 *
 * Build against an installed kvrt:
 *   cc generate.c $(pkg-config --cflags --libs kvrt) -o generate
 * or with CMake: find_package(kvrt) and link kvrt::kvrt (examples/CMakeLists.txt). */
#include <kvrt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, const char *message)
{
    fprintf(stderr, "generate: %s: %s\n", what, message);
    return 1;
}

/* Prints a token's text; a buffer too small for it says how much it needs. */
static int print_token(kvrt_model *model, int32_t prev, int32_t tok, char **buf, size_t *cap)
{
    size_t len = 0;
    kvrt_status s = kvrt_token_to_text(model, prev, tok, *buf, *cap, &len);
    if (s == KVRT_ERR_INVALID_ARGUMENT && len + 1 > *cap) {
        char *bigger = realloc(*buf, len + 1);
        if (!bigger)
            return fail("text", "out of memory");
        *buf = bigger;
        *cap = len + 1;
        s = kvrt_token_to_text(model, prev, tok, *buf, *cap, &len);
    }
    if (s != KVRT_OK)
        return fail("text", kvrt_model_message(model));
    fwrite(*buf, 1, len, stdout);
    return 0;
}

static int32_t argmax(const float *logits, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: generate MODEL PROMPT [N]\n");
        return 2;
    }
    int n_predict = argc > 3 ? atoi(argv[3]) : 32;
    kvrt_error err;
    kvrt_context *ctx = NULL; /* NULL params: the CPU backend on every core */
    if (kvrt_context_create(NULL, &ctx, &err) != KVRT_OK)
        return fail("context", err.message);
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = argv[1];
    kvrt_model *model = NULL;
    if (kvrt_model_load(ctx, &mp, &model, &err) != KVRT_OK) {
        kvrt_context_destroy(ctx);
        return fail("model", err.message);
    }
    kvrt_model_info info;
    kvrt_model_get_info(model, &info);
    kvrt_session *session = NULL;
    if (kvrt_session_create(model, NULL, &session, &err) != KVRT_OK) { /* NULL: the defaults */
        kvrt_model_destroy(model);
        kvrt_context_destroy(ctx);
        return fail("session", err.message);
    }

    /* tokenize: ask for the size first, then fill (BOS as the file says) */
    const char *prompt = argv[2];
    int32_t n_prompt = 0;
    kvrt_tokenize(model, prompt, strlen(prompt), 1, NULL, 0, &n_prompt);
    int32_t *ids = malloc((size_t)(n_prompt > 0 ? n_prompt : 1) * sizeof(int32_t));
    float *logits = malloc((size_t)info.n_vocab * sizeof(float));
    char *text = NULL;
    size_t text_cap = 0;
    int rc = 0;
    if (!ids || !logits)
        rc = fail("setup", "out of memory");
    else if (kvrt_tokenize(model, prompt, strlen(prompt), 1, ids, n_prompt, &n_prompt) != KVRT_OK)
        rc = fail("tokenize", kvrt_model_message(model));
    for (int32_t i = 0; rc == 0 && i < n_prompt; i++)
        rc = print_token(model, i > 0 ? ids[i - 1] : -1, ids[i], &text, &text_cap);

    /* the prompt, then one token at a time: logits of the last token come back */
    if (rc == 0 && kvrt_session_eval(session, ids, n_prompt, logits, NULL) != KVRT_OK)
        rc = fail("prompt", kvrt_session_message(session));
    int32_t prev = n_prompt > 0 ? ids[n_prompt - 1] : -1;
    for (int i = 0; rc == 0 && i < n_predict; i++) {
        int32_t tok = argmax(logits, info.n_vocab);
        if (tok == info.eos_id)
            break;
        rc = print_token(model, prev, tok, &text, &text_cap);
        prev = tok;
        if (rc == 0 && i + 1 < n_predict && kvrt_session_eval(session, &tok, 1, logits, NULL) != KVRT_OK)
            rc = fail("decode", kvrt_session_message(session)); /* e.g. the context is full */
    }
    printf("\n");
    free(text);
    free(logits);
    free(ids);
    /* destroy in reverse order of creation: session, model, context */
    kvrt_session_destroy(session);
    kvrt_model_destroy(model);
    kvrt_context_destroy(ctx);
    return rc;
}
