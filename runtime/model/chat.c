/* Built-in chat formatters, chosen by the markers of a model's template
 * (see chat.h). Each writes the conversation the way the model's own
 * template does; the marker checks and the layouts are those of the
 * published templates (Llama 2/3, Mistral's v1/v3/v7 forms, ChatML, Phi-3/4,
 * Gemma, Zephyr, Vicuna, DeepSeek). */
#include "model/chat.h"

#include <ctype.h>
#include <string.h>

typedef enum chat_kind {
    CHAT_CHATML,
    CHAT_LLAMA2,
    CHAT_LLAMA2_SYS,
    CHAT_LLAMA2_SYS_BOS,
    CHAT_LLAMA2_SYS_STRIP,
    CHAT_LLAMA3,
    CHAT_MISTRAL_V1,
    CHAT_MISTRAL_V3,
    CHAT_MISTRAL_V3_TEKKEN,
    CHAT_MISTRAL_V7,
    CHAT_PHI3,
    CHAT_PHI4,
    CHAT_GEMMA,
    CHAT_ZEPHYR,
    CHAT_VICUNA,
    CHAT_DEEPSEEK,
    CHAT_DEEPSEEK2,
    CHAT_DEEPSEEK3,
} chat_kind;

struct kvrt_chat_def {
    const char *name;
    chat_kind kind;
    const char *end;     /* the piece that ends an assistant turn; NULL: see kvrt_chat_end_marker */
    bool any_role;       /* the role is written out: any [A-Za-z0-9_] name works */
};

#define DS_END "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>" /* <｜end▁of▁sentence｜> */
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"                                   /* <｜User｜> */
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"                       /* <｜Assistant｜> */

static const kvrt_chat_def k_defs[] = {
    {"chatml", CHAT_CHATML, "<|im_end|>", true},
    {"llama2", CHAT_LLAMA2, "</s>", false},
    {"llama2-sys", CHAT_LLAMA2_SYS, "</s>", false},
    {"llama2-sys-bos", CHAT_LLAMA2_SYS_BOS, "</s>", false},
    {"llama2-sys-strip", CHAT_LLAMA2_SYS_STRIP, "</s>", false},
    {"llama3", CHAT_LLAMA3, "<|eot_id|>", true},
    {"mistral-v1", CHAT_MISTRAL_V1, "</s>", false},
    {"mistral-v3", CHAT_MISTRAL_V3, "</s>", false},
    {"mistral-v3-tekken", CHAT_MISTRAL_V3_TEKKEN, "</s>", false},
    {"mistral-v7", CHAT_MISTRAL_V7, "</s>", false},
    {"phi3", CHAT_PHI3, "<|end|>", true},
    {"phi4", CHAT_PHI4, "<|im_end|>", true},
    {"gemma", CHAT_GEMMA, "<end_of_turn>", false},
    {"zephyr", CHAT_ZEPHYR, NULL, true},
    {"vicuna", CHAT_VICUNA, "</s>", false},
    {"deepseek", CHAT_DEEPSEEK, "<|EOT|>", false},
    {"deepseek2", CHAT_DEEPSEEK2, DS_END, false},
    {"deepseek3", CHAT_DEEPSEEK3, DS_END, false},
};

static const char *const k_names[] = {
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "llama3", "mistral-v1", "mistral-v3",
    "mistral-v3-tekken", "mistral-v7", "phi3", "phi4", "gemma", "zephyr", "vicuna", "deepseek", "deepseek2",
    "deepseek3", NULL,
};

const char *const *kvrt_chat_template_names(void)
{
    return k_names;
}

const char *kvrt_chat_name(const kvrt_chat_def *def)
{
    return def->name;
}

const char *kvrt_chat_end_marker(const kvrt_chat_def *def, const kvrt_tokenizer *tok)
{
    if (def->end)
        return def->end;
    /* Zephyr: StableLM's ends turns with <|endoftext|>, Mistral-based ones with their EOS (</s>) */
    if (tok && kvrt_tokenizer_special_id(tok, "<|endoftext|>", 13) < 0 && kvrt_tokenizer_eos(tok) >= 0)
        return kvrt_tokenizer_piece(tok, kvrt_tokenizer_eos(tok), NULL);
    return "<|endoftext|>";
}

/* ---- recognising a template --------------------------------------------------------------- */

static const kvrt_chat_def *by_kind(chat_kind k)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(k_defs); i++)
        if (k_defs[i].kind == k)
            return &k_defs[i];
    return NULL;
}

static bool has(const char *t, const char *marker)
{
    return strstr(t, marker) != NULL;
}

/* Mistral's templates and Llama 2's, which all write [INST]. */
static chat_kind detect_inst(const char *t)
{
    if (has(t, "[SYSTEM_PROMPT]"))
        return CHAT_MISTRAL_V7;
    if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
        if (has(t, " [INST]"))
            return CHAT_MISTRAL_V1;
        return has(t, "\"[INST]\"") ? CHAT_MISTRAL_V3_TEKKEN : CHAT_MISTRAL_V3;
    }
    if (has(t, "content.strip()"))
        return CHAT_LLAMA2_SYS_STRIP;
    if (has(t, "bos_token + '[INST]"))
        return CHAT_LLAMA2_SYS_BOS;
    return has(t, "<<SYS>>") ? CHAT_LLAMA2_SYS : CHAT_LLAMA2;
}

/* -1 when no formatter's markers are there. */
static int detect(const char *t)
{
    if (has(t, "<|im_start|>"))
        return has(t, "<|im_sep|>") ? CHAT_PHI4 : CHAT_CHATML;
    if (has(t, "[INST]") || strncmp(t, "mistral", 7) == 0)
        return detect_inst(t);
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>"))
        return CHAT_LLAMA3;
    if (has(t, "<|assistant|>") && has(t, "<|end|>"))
        return CHAT_PHI3;
    if (has(t, "<|user|>") && (has(t, "<|assistant|>") || has(t, "<|endoftext|>")))
        return CHAT_ZEPHYR;
    if (has(t, "<start_of_turn>"))
        return CHAT_GEMMA;
    if (has(t, "USER: ") && has(t, "ASSISTANT: "))
        return CHAT_VICUNA;
    if (has(t, "### Instruction:") && has(t, "<|EOT|>"))
        return CHAT_DEEPSEEK;
    if (has(t, "'Assistant: ' + message['content'] + eos_token"))
        return CHAT_DEEPSEEK2;
    if (has(t, DS_ASSISTANT) && has(t, DS_USER))
        return CHAT_DEEPSEEK3;
    return -1;
}

static void names_list(char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (const char *const *n = k_names; *n && o < cap; n++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? ", " : "", *n);
}

kvrt_status kvrt_chat_find(const char *tmpl, const char *file_template, const kvrt_chat_def **out, kvrt_error *err)
{
    char names[512];
    names_list(names, sizeof(names));
    *out = NULL;
    bool from_file = !tmpl || !*tmpl;
    const char *t = from_file ? file_template : tmpl;
    if (!t || !*t)
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED,
                         "the model file has no chat template (tokenizer.chat_template): name one of %s", names);
    for (size_t i = 0; i < KVRT_ARRAY_LEN(k_defs); i++)
        if (strcmp(t, k_defs[i].name) == 0) {
            *out = &k_defs[i];
            return KVRT_OK;
        }
    int k = detect(t);
    if (k < 0)
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "%s '%.60s%s' is not one kvrt recognises; known: %s",
                         from_file ? "the model's chat template" : "chat template", t, strlen(t) > 60 ? "..." : "",
                         names);
    *out = by_kind((chat_kind)k);
    return KVRT_OK;
}

/* ---- rendering -------------------------------------------------------------------------------- */

typedef struct chat_out {
    const kvrt_allocator *alloc;
    kvrt_chat_text *t;
    size_t cap, cap_ranges;
    bool oom;
} chat_out;

static void put_n(chat_out *o, const char *s, size_t n)
{
    kvrt_chat_text *t = o->t;
    if (o->oom)
        return;
    if (t->len + n + 1 > o->cap) {
        size_t cap = KVRT_MAX(t->len + n + 1, 2 * o->cap);
        if (!kvrt_grow_array(o->alloc, (void **)&t->text, t->len, cap, 1)) {
            o->oom = true;
            return;
        }
        o->cap = cap;
    }
    memcpy(t->text + t->len, s, n);
    t->len += n;
    t->text[t->len] = '\0';
}

static void put(chat_out *o, const char *s)
{
    put_n(o, s, strlen(s));
}

/* A message's content: recorded as text that never becomes special tokens. */
static void put_content(chat_out *o, const char *s, bool trim)
{
    size_t n = strlen(s);
    if (trim) {
        while (n > 0 && isspace((unsigned char)*s)) {
            s++;
            n--;
        }
        while (n > 0 && isspace((unsigned char)s[n - 1]))
            n--;
    }
    kvrt_chat_text *t = o->t;
    size_t start = t->len;
    put_n(o, s, n);
    if (o->oom || n == 0)
        return;
    if (t->n_content == o->cap_ranges) {
        size_t cap = KVRT_MAX(8, 2 * o->cap_ranges);
        if (!kvrt_grow_array(o->alloc, (void **)&t->content, t->n_content, cap, sizeof(*t->content))) {
            o->oom = true;
            return;
        }
        o->cap_ranges = cap;
    }
    t->content[t->n_content][0] = start;
    t->content[t->n_content][1] = t->len;
    t->n_content++;
}

static bool is(const kvrt_chat_message *m, const char *role)
{
    return strcmp(m->role, role) == 0;
}

static void render_chatml(chat_out *o, const kvrt_chat_message *m, size_t n, bool gen, bool phi4)
{
    for (size_t i = 0; i < n; i++) {
        put(o, "<|im_start|>");
        put(o, m[i].role);
        put(o, phi4 ? "<|im_sep|>" : "\n");
        put_content(o, m[i].content, false);
        put(o, phi4 ? "<|im_end|>" : "<|im_end|>\n");
    }
    if (gen)
        put(o, phi4 ? "<|im_start|>assistant<|im_sep|>" : "<|im_start|>assistant\n");
}

static void render_llama2(chat_out *o, const kvrt_chat_message *m, size_t n, chat_kind k)
{
    bool sys = k != CHAT_LLAMA2, bos_inside = k == CHAT_LLAMA2_SYS_BOS, strip = k == CHAT_LLAMA2_SYS_STRIP;
    bool in_turn = true; /* the first [INST] follows the BOS the tokenizer adds */
    put(o, "[INST] ");
    for (size_t i = 0; i < n; i++) {
        if (!in_turn) {
            put(o, bos_inside ? "<s>[INST] " : "[INST] ");
            in_turn = true;
        }
        if (is(&m[i], "system")) {
            put(o, sys ? "<<SYS>>\n" : "");
            put_content(o, m[i].content, strip);
            put(o, sys ? "\n<</SYS>>\n\n" : "\n");
        } else if (is(&m[i], "user")) {
            put_content(o, m[i].content, strip);
            put(o, " [/INST]");
        } else {
            put_content(o, m[i].content, strip);
            put(o, "</s>");
            in_turn = false;
        }
    }
}

/* Mistral v1 / v3 / v3-tekken differ in the spaces around [INST] and whether replies are trimmed. */
static void render_mistral(chat_out *o, const kvrt_chat_message *m, size_t n, chat_kind k)
{
    const char *lead = k == CHAT_MISTRAL_V1 ? " " : "", *trail = k == CHAT_MISTRAL_V3_TEKKEN ? "" : " ";
    bool in_turn = false;
    for (size_t i = 0; i < n; i++) {
        if (!in_turn) {
            put(o, lead);
            put(o, "[INST]");
            put(o, trail);
            in_turn = true;
        }
        if (is(&m[i], "system")) {
            put_content(o, m[i].content, false);
            put(o, "\n\n");
        } else if (is(&m[i], "user")) {
            put_content(o, m[i].content, false);
            put(o, lead);
            put(o, "[/INST]");
        } else {
            put(o, trail);
            put_content(o, m[i].content, k == CHAT_MISTRAL_V3);
            put(o, "</s>");
            in_turn = false;
        }
    }
}

static void render_mistral_v7(chat_out *o, const kvrt_chat_message *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool sys = is(&m[i], "system"), user = is(&m[i], "user");
        put(o, sys ? "[SYSTEM_PROMPT] " : user ? "[INST] " : " ");
        put_content(o, m[i].content, false);
        put(o, sys ? "[/SYSTEM_PROMPT]" : user ? "[/INST]" : "</s>");
    }
}

/* "<|role|>\n" content END "\n" (Phi-3: <|end|>, Zephyr: its end marker). */
static void render_tagged(chat_out *o, const kvrt_chat_message *m, size_t n, bool gen, const char *end)
{
    for (size_t i = 0; i < n; i++) {
        put(o, "<|");
        put(o, m[i].role);
        put(o, "|>\n");
        put_content(o, m[i].content, false);
        put(o, end);
        put(o, "\n");
    }
    if (gen)
        put(o, "<|assistant|>\n");
}

static void render_llama3(chat_out *o, const kvrt_chat_message *m, size_t n, bool gen)
{
    for (size_t i = 0; i < n; i++) {
        put(o, "<|start_header_id|>");
        put(o, m[i].role);
        put(o, "<|end_header_id|>\n\n");
        put_content(o, m[i].content, true);
        put(o, "<|eot_id|>");
    }
    if (gen)
        put(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Gemma has no system turn: the system text opens the next user turn. */
static void render_gemma(chat_out *o, const kvrt_chat_message *m, size_t n, bool gen)
{
    const char *system = NULL;
    for (size_t i = 0; i < n; i++) {
        if (is(&m[i], "system")) {
            system = m[i].content;
            continue;
        }
        bool model = is(&m[i], "assistant");
        put(o, model ? "<start_of_turn>model\n" : "<start_of_turn>user\n");
        if (system && !model) {
            put_content(o, system, true);
            put(o, "\n\n");
            system = NULL;
        }
        put_content(o, m[i].content, true);
        put(o, "<end_of_turn>\n");
    }
    if (gen)
        put(o, "<start_of_turn>model\n");
}

/* Plain-text role prefixes: Vicuna and DeepSeek's chat forms. */
static void render_prefixed(chat_out *o, const kvrt_chat_message *m, size_t n, bool gen, chat_kind k)
{
    static const struct {
        chat_kind kind;
        const char *sys_end, *user, *user_end, *asst, *asst_end, *gen;
    } forms[] = {
        {CHAT_VICUNA, "\n\n", "USER: ", "\n", "ASSISTANT: ", "</s>\n", "ASSISTANT:"},
        {CHAT_DEEPSEEK, "", "### Instruction:\n", "\n", "### Response:\n", "\n<|EOT|>\n", "### Response:\n"},
        {CHAT_DEEPSEEK2, "\n\n", "User: ", "\n\n", "Assistant: ", DS_END, "Assistant:"},
        {CHAT_DEEPSEEK3, "\n\n", DS_USER, "", DS_ASSISTANT, DS_END, DS_ASSISTANT},
    };
    size_t f = 0;
    while (forms[f].kind != k)
        f++;
    for (size_t i = 0; i < n; i++) {
        bool sys = is(&m[i], "system"), user = is(&m[i], "user");
        put(o, sys ? "" : user ? forms[f].user : forms[f].asst);
        put_content(o, m[i].content, false);
        put(o, sys ? forms[f].sys_end : user ? forms[f].user_end : forms[f].asst_end);
    }
    if (gen)
        put(o, forms[f].gen);
}

static bool role_ok(const kvrt_chat_def *def, const char *role)
{
    if (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant"))
        return true;
    if (!def->any_role)
        return false;
    size_t n = strlen(role);
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)role[i]) && role[i] != '_')
            return false;
    return true;
}

kvrt_status kvrt_chat_render(const kvrt_chat_def *def, const kvrt_tokenizer *tok, const kvrt_chat_message *m,
                             size_t n, bool gen, const kvrt_allocator *alloc, kvrt_chat_text *out, kvrt_error *err)
{
    memset(out, 0, sizeof(*out));
    if (n > 0 && !m)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "chat: messages is NULL");
    for (size_t i = 0; i < n; i++) {
        if (!m[i].role || !m[i].content)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "chat: message %zu has a NULL role or content", i);
        if (!role_ok(def, m[i].role))
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "chat: message %zu has role '%.32s'; template %s takes %s", i, m[i].role, def->name,
                             def->any_role ? "names of letters, digits and '_'" : "system, user and assistant");
    }
    chat_out o = {alloc, out, 0, 0, false};
    put(&o, ""); /* an empty conversation is still a string */
    switch (def->kind) {
    case CHAT_CHATML:
    case CHAT_PHI4:
        render_chatml(&o, m, n, gen, def->kind == CHAT_PHI4);
        break;
    case CHAT_LLAMA2:
    case CHAT_LLAMA2_SYS:
    case CHAT_LLAMA2_SYS_BOS:
    case CHAT_LLAMA2_SYS_STRIP:
        render_llama2(&o, m, n, def->kind);
        break;
    case CHAT_MISTRAL_V1:
    case CHAT_MISTRAL_V3:
    case CHAT_MISTRAL_V3_TEKKEN:
        render_mistral(&o, m, n, def->kind);
        break;
    case CHAT_MISTRAL_V7:
        render_mistral_v7(&o, m, n);
        break;
    case CHAT_PHI3:
        render_tagged(&o, m, n, gen, "<|end|>");
        break;
    case CHAT_ZEPHYR:
        render_tagged(&o, m, n, gen, kvrt_chat_end_marker(def, tok));
        break;
    case CHAT_LLAMA3:
        render_llama3(&o, m, n, gen);
        break;
    case CHAT_GEMMA:
        render_gemma(&o, m, n, gen);
        break;
    case CHAT_VICUNA:
    case CHAT_DEEPSEEK:
    case CHAT_DEEPSEEK2:
    case CHAT_DEEPSEEK3:
        render_prefixed(&o, m, n, gen, def->kind);
        break;
    }
    if (o.oom) {
        kvrt_chat_text_free(alloc, out);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "chat: no memory to render %zu messages", n);
    }
    return KVRT_OK;
}

void kvrt_chat_text_free(const kvrt_allocator *alloc, kvrt_chat_text *t)
{
    kvrt_free(alloc, t->text);
    kvrt_free(alloc, t->content);
    memset(t, 0, sizeof(*t));
}
