/* A llama-bench-style text table: rows are added cell by cell (printf
 * formats), column widths are computed when the table is printed:
 *   | config | batch |  ctx |
 *   | ------ | ----: | ---: |  */
#ifndef KVRT_TOOL_TABLE_H
#define KVRT_TOOL_TABLE_H

#include <stdbool.h>
#include <stdio.h>

#include "common/kvrt_internal.h"

#define KVRT_TABLE_MAX_COLS 20
#define KVRT_TABLE_CELL_MAX 48 /* longer cells are truncated */

typedef struct kvrt_table {
    int n_cols;
    const char *headers[KVRT_TABLE_MAX_COLS]; /* caller-owned, static strings */
    char align[KVRT_TABLE_MAX_COLS];          /* 'l' or 'r' */
    char (*cells)[KVRT_TABLE_CELL_MAX];       /* [cap_rows * n_cols] */
    int n_rows, cap_rows;
    int cur_col;                              /* next cell of the last row */
} kvrt_table;

/* headers: n_cols static strings; align: n_cols chars of 'l'/'r' (NULL = all 'r'
 * but the first). False when n_cols is out of range. */
bool kvrt_table_init(kvrt_table *t, int n_cols, const char *const *headers, const char *align);
void kvrt_table_free(kvrt_table *t);
/* Starts a new row; false when out of memory. */
bool kvrt_table_row(kvrt_table *t);
/* Appends a cell to the current row (extra cells are ignored). */
void kvrt_table_cell(kvrt_table *t, const char *fmt, ...) KVRT_PRINTF(2, 3);
void kvrt_table_print(const kvrt_table *t, FILE *f);

#endif /* KVRT_TOOL_TABLE_H */
