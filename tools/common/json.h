/* A minimal streaming JSON writer for the tools' --json output: objects,
 * arrays, strings (escaped), numbers (non-finite ones become null), booleans.
 * Keys are given inside objects and NULL inside arrays / at the top level. */
#ifndef KVRT_TOOL_JSON_H
#define KVRT_TOOL_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define KVRT_JSON_MAX_DEPTH 16

typedef struct kvrt_json {
    FILE *f;
    int depth;
    bool has_items[KVRT_JSON_MAX_DEPTH]; /* per level: a comma is needed before the next item */
} kvrt_json;

void kvrt_json_init(kvrt_json *j, FILE *f);
void kvrt_json_begin_object(kvrt_json *j, const char *key);
void kvrt_json_end_object(kvrt_json *j);
void kvrt_json_begin_array(kvrt_json *j, const char *key);
void kvrt_json_end_array(kvrt_json *j);
void kvrt_json_str(kvrt_json *j, const char *key, const char *value); /* NULL value = null */
void kvrt_json_num(kvrt_json *j, const char *key, double value);
void kvrt_json_int(kvrt_json *j, const char *key, int64_t value);
void kvrt_json_bool(kvrt_json *j, const char *key, bool value);

#endif /* KVRT_TOOL_JSON_H */
