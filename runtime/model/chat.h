/* Chat templates: a template text (tokenizer.chat_template) is recognised
 * by its markers and rendered by a built-in formatter; there is no Jinja
 * engine. Internal API behind kvrt_chat_format / kvrt_chat_tokenize. */
#ifndef KVRT_CHAT_H
#define KVRT_CHAT_H

#include "model/tokenizer.h"

/* One built-in formatter (see chat.c for the list). */
typedef struct kvrt_chat_def kvrt_chat_def;

/* The formatter for `tmpl`: a built-in name, or a template text recognised
 * by its markers; NULL or "" means file_template (the model's, may be
 * NULL). UNSUPPORTED with a message naming the known formatters otherwise. */
kvrt_status kvrt_chat_find(const char *tmpl, const char *file_template, const kvrt_chat_def **out, kvrt_error *err);
const char *kvrt_chat_name(const kvrt_chat_def *def);
/* The piece that ends an assistant turn in this template, as the vocabulary
 * spells it (zephyr's depends on the vocabulary: <|endoftext|> or its EOS). */
const char *kvrt_chat_end_marker(const kvrt_chat_def *def, const kvrt_tokenizer *tok);

/* A rendered conversation: the text, and where the messages' contents are
 * in it (byte ranges, increasing), which are text even where they spell a
 * special token. */
typedef struct kvrt_chat_text {
    char *text; /* NUL-terminated */
    size_t len;
    size_t (*content)[2]; /* [n_content] {start, end} */
    size_t n_content;
} kvrt_chat_text;

/* Renders messages with the formatter. INVALID_ARGUMENT naming a message
 * whose role the template has no place for, or a NULL role or content. */
kvrt_status kvrt_chat_render(const kvrt_chat_def *def, const kvrt_tokenizer *tok, const kvrt_chat_message *messages,
                             size_t n, bool add_generation_prompt, const kvrt_allocator *alloc, kvrt_chat_text *out,
                             kvrt_error *err);
void kvrt_chat_text_free(const kvrt_allocator *alloc, kvrt_chat_text *t);

#endif /* KVRT_CHAT_H */
