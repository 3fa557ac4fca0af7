/* A token's text for the tools, however long it is: a buffer that grows
 * (issue: a 300-byte piece was silently dropped by 256-byte buffers). */
#ifndef KVRT_TOOL_TOKEN_TEXT_H
#define KVRT_TOOL_TOKEN_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt.h"

/* Appends the text of `tok` (after `prev`, as kvrt_token_to_text) at
 * (*buf)[*len], growing *buf (malloc'd, *cap bytes; NULL/0 to start) as it
 * needs, and keeps a NUL after it. On success *len counts the new bytes too.
 * Errors: OUT_OF_HOST_MEMORY, or the model's (kvrt_model_message), with
 * *buf and *len unchanged in meaning. */
kvrt_status kvrt_tool_append_token_text(kvrt_model *m, int32_t prev, int32_t tok, char **buf, size_t *len,
                                        size_t *cap);

#endif /* KVRT_TOOL_TOKEN_TEXT_H */
