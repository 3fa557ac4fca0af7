#include "token_text.h"

#include <stdlib.h>

/* Makes room for `want` bytes in *buf. */
static kvrt_status grow(char **buf, size_t *cap, size_t want)
{
    size_t grown = *cap ? *cap : 256;
    while (grown < want)
        grown = grown > SIZE_MAX / 2 ? want : grown * 2;
    char *bigger = realloc(*buf, grown);
    if (!bigger)
        return KVRT_ERR_OUT_OF_HOST_MEMORY;
    *buf = bigger;
    *cap = grown;
    return KVRT_OK;
}

kvrt_status kvrt_tool_append_token_text(kvrt_model *m, int32_t prev, int32_t tok, char **buf, size_t *len,
                                        size_t *cap)
{
    /* room counts the NUL; *cap > *len whenever *buf is set */
    size_t room = *buf ? *cap - *len : 0, n = 0;
    kvrt_status s = kvrt_token_to_text(m, prev, tok, room ? *buf + *len : NULL, room, &n);
    if (s == KVRT_ERR_INVALID_ARGUMENT && n + 1 > room) { /* too small: the only error more room cures */
        s = grow(buf, cap, *len + n + 1);
        if (s == KVRT_OK)
            s = kvrt_token_to_text(m, prev, tok, *buf + *len, *cap - *len, &n);
    }
    if (s == KVRT_OK)
        *len += n;
    return s;
}
