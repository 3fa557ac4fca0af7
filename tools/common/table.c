#include "table.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

bool kvrt_table_init(kvrt_table *t, int n_cols, const char *const *headers, const char *align)
{
    memset(t, 0, sizeof(*t));
    if (n_cols < 1 || n_cols > KVRT_TABLE_MAX_COLS)
        return false;
    t->n_cols = n_cols;
    for (int c = 0; c < n_cols; c++) {
        t->headers[c] = headers[c];
        t->align[c] = align ? align[c] : (c == 0 ? 'l' : 'r');
    }
    return true;
}

void kvrt_table_free(kvrt_table *t)
{
    free(t->cells);
    t->cells = NULL;
    t->n_rows = t->cap_rows = 0;
}

bool kvrt_table_row(kvrt_table *t)
{
    if (t->n_rows == t->cap_rows) {
        int cap = t->cap_rows ? t->cap_rows * 2 : 16;
        void *p = realloc(t->cells, (size_t)cap * (size_t)t->n_cols * KVRT_TABLE_CELL_MAX);
        if (!p)
            return false;
        t->cells = p;
        t->cap_rows = cap;
    }
    memset(t->cells[(size_t)t->n_rows * (size_t)t->n_cols], 0, (size_t)t->n_cols * KVRT_TABLE_CELL_MAX);
    t->n_rows++;
    t->cur_col = 0;
    return true;
}

void kvrt_table_cell(kvrt_table *t, const char *fmt, ...)
{
    if (t->n_rows == 0 || t->cur_col >= t->n_cols)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->cells[(size_t)(t->n_rows - 1) * (size_t)t->n_cols + (size_t)t->cur_col],
              KVRT_TABLE_CELL_MAX, fmt, ap);
    va_end(ap);
    t->cur_col++;
}

static void print_cell(FILE *f, const char *s, int width, char align)
{
    if (align == 'l')
        fprintf(f, " %-*s |", width, s);
    else
        fprintf(f, " %*s |", width, s);
}

void kvrt_table_print(const kvrt_table *t, FILE *f)
{
    int width[KVRT_TABLE_MAX_COLS];
    for (int c = 0; c < t->n_cols; c++) {
        width[c] = (int)strlen(t->headers[c]);
        for (int r = 0; r < t->n_rows; r++) {
            int w = (int)strlen(t->cells[(size_t)r * (size_t)t->n_cols + (size_t)c]);
            width[c] = KVRT_MAX(width[c], w);
        }
    }
    fputc('|', f);
    for (int c = 0; c < t->n_cols; c++)
        print_cell(f, t->headers[c], width[c], t->align[c]);
    fputs("\n|", f);
    for (int c = 0; c < t->n_cols; c++) {
        /* markdown alignment marker: "----:" for right-aligned columns */
        fputc(' ', f);
        for (int k = 0; k < width[c] - 1; k++)
            fputc('-', f);
        fputs(t->align[c] == 'r' ? ":" : "-", f);
        fputs(" |", f);
    }
    fputc('\n', f);
    for (int r = 0; r < t->n_rows; r++) {
        fputc('|', f);
        for (int c = 0; c < t->n_cols; c++)
            print_cell(f, t->cells[(size_t)r * (size_t)t->n_cols + (size_t)c], width[c], t->align[c]);
        fputc('\n', f);
    }
}
