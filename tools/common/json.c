#include "json.h"

#include <inttypes.h>
#include <math.h>

void kvrt_json_init(kvrt_json *j, FILE *f)
{
    j->f = f;
    j->depth = 0;
    j->has_items[0] = false;
}

static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* Comma, newline and indentation before an item, then its key. */
static void item(kvrt_json *j, const char *key)
{
    if (j->depth > 0) {
        if (j->has_items[j->depth])
            fputc(',', j->f);
        fputc('\n', j->f);
        for (int i = 0; i < j->depth; i++)
            fputs("  ", j->f);
    }
    j->has_items[j->depth] = true;
    if (key) {
        put_string(j->f, key);
        fputs(": ", j->f);
    }
}

static void json_open(kvrt_json *j, const char *key, char c)
{
    item(j, key);
    fputc(c, j->f);
    if (j->depth + 1 < KVRT_JSON_MAX_DEPTH)
        j->depth++;
    j->has_items[j->depth] = false;
}

static void json_close(kvrt_json *j, char c)
{
    bool had = j->has_items[j->depth];
    if (j->depth > 0)
        j->depth--;
    if (had) {
        fputc('\n', j->f);
        for (int i = 0; i < j->depth; i++)
            fputs("  ", j->f);
    }
    fputc(c, j->f);
    if (j->depth == 0)
        fputc('\n', j->f);
}

void kvrt_json_begin_object(kvrt_json *j, const char *key) { json_open(j, key, '{'); }
void kvrt_json_end_object(kvrt_json *j) { json_close(j, '}'); }
void kvrt_json_begin_array(kvrt_json *j, const char *key) { json_open(j, key, '['); }
void kvrt_json_end_array(kvrt_json *j) { json_close(j, ']'); }

void kvrt_json_str(kvrt_json *j, const char *key, const char *value)
{
    item(j, key);
    if (value)
        put_string(j->f, value);
    else
        fputs("null", j->f);
}

void kvrt_json_num(kvrt_json *j, const char *key, double value)
{
    item(j, key);
    if (isfinite(value))
        fprintf(j->f, "%.6g", value);
    else
        fputs("null", j->f);
}

void kvrt_json_int(kvrt_json *j, const char *key, int64_t value)
{
    item(j, key);
    fprintf(j->f, "%" PRId64, value);
}

void kvrt_json_bool(kvrt_json *j, const char *key, bool value)
{
    item(j, key);
    fputs(value ? "true" : "false", j->f);
}
