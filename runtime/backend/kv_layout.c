/* The KV block layout (kv_layout.h): dtype descriptors, block bytes, the
 * visibility rule and the checks every caller of the backends shares. */
#include "backend/kv_layout.h"

#include "common/fp16.h"

#include <math.h>

/* Every dtype kvrt stores KV in. A quantized one adds a row with its scales
 * (e.g. groups of 32 values with one 2-byte scale each, in the block). */
static const kvrt_kv_dtype_desc KV_DTYPES[] = {
    {KVRT_DTYPE_F32, 32, KVRT_KV_SCALES_NONE, 0, 0},
    {KVRT_DTYPE_F16, 16, KVRT_KV_SCALES_NONE, 0, 0},
    {KVRT_DTYPE_Q8_0, 8, KVRT_KV_SCALES_IN_BLOCK, KVRT_KV_QGROUP, 2},
    {KVRT_DTYPE_Q4_0, 4, KVRT_KV_SCALES_IN_BLOCK, KVRT_KV_QGROUP, 2},
    {KVRT_DTYPE_FP8_E4M3, 8, KVRT_KV_SCALES_NONE, 0, 0}, /* scale fixed at 1: nothing stored */
    {KVRT_DTYPE_FP8_E5M2, 8, KVRT_KV_SCALES_NONE, 0, 0},
};

const kvrt_kv_dtype_desc *kvrt_kv_dtype(kvrt_dtype dtype)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(KV_DTYPES); i++)
        if (KV_DTYPES[i].dtype == dtype)
            return &KV_DTYPES[i];
    return NULL;
}

/* ---- quantized KV: the rule of kv_layout.h ------------------------------------------- */

/* Step 1: NaN -> 0, then clamped to the F16 range. */
static float kvq_saturate(float x)
{
    if (x != x)
        return 0.0f;
    return x > 65504.0f ? 65504.0f : x < -65504.0f ? -65504.0f : x;
}

/* Step 3: round-to-nearest-even of x / d by exact midpoint comparisons. */
static int32_t kvq_round(float x, float d, int32_t lo, int32_t hi)
{
    if (d == 0.0f)
        return 0;
    int32_t q = (int32_t)rintf(x * (1.0f / d)); /* within one of the answer */
    float half = 0.5f * d, up = (float)(2 * q + 1) * half, down = (float)(2 * q - 1) * half;
    if (x > up || (x == up && (q & 1)))
        q++;
    else if (x < down || (x == down && (q & 1)))
        q--;
    return q < lo ? lo : q > hi ? hi : q;
}

/* ---- fp8: the rule of kv_layout.h ---------------------------------------------------------- */

uint8_t kvrt_kv_fp8_encode(kvrt_dtype t, float x)
{
    bool e4 = t == KVRT_DTYPE_FP8_E4M3;
    const int man = e4 ? 3 : 2, bias = e4 ? 7 : 15;
    const float max = e4 ? 448.0f : 57344.0f;
    if (x != x)
        return e4 ? 0x7f : 0x7e;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    a = a > max ? max : a;
    int e;
    frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1): the exponent of a is e - 1 */
    int exp = a == 0.0f || e - 1 < 1 - bias ? 1 - bias : e - 1;
    /* q = a / 2^(exp - man), exactly scaled, rounded to nearest even (the
     * default rounding mode); code = (exp + bias - 1) * 2^man + q covers
     * subnormals (exp field 0), normals and a carry into the next exponent,
     * and stays <= max's code because a <= max */
    int q = (int)rintf(ldexpf(a, man - exp));
    return (uint8_t)(sign | ((exp + bias - 1) * (1 << man) + q));
}

float kvrt_kv_fp8_decode(kvrt_dtype t, uint8_t b)
{
    if (t == KVRT_DTYPE_FP8_E5M2)
        return kvrt_fp16_to_f32((uint16_t)(b << 8));
    if ((b & 0x7f) == 0x7f)
        return NAN;
    return kvrt_fp16_to_f32((uint16_t)(((b & 0x80) << 8) | ((b & 0x7f) << 7))) * 256.0f;
}

void kvrt_kv_quantize_row(kvrt_dtype dtype, const float *x, int32_t head_dim, uint8_t *values, uint8_t *scales)
{
    if (kvrt_kv_dtype_fp8(dtype)) {
        for (int32_t i = 0; i < head_dim; i++)
            values[i] = kvrt_kv_fp8_encode(dtype, x[i]);
        return;
    }
    bool q4 = dtype == KVRT_DTYPE_Q4_0;
    float r = q4 ? 0x1.24924ap-3f : 0x1.020408p-7f; /* nearest F32 to 1/7, 1/127 */
    for (int32_t g = 0; g < head_dim / KVRT_KV_QGROUP; g++) {
        float xs[KVRT_KV_QGROUP], amax = 0.0f;
        for (int i = 0; i < KVRT_KV_QGROUP; i++) {
            xs[i] = kvq_saturate(x[g * KVRT_KV_QGROUP + i]);
            amax = fabsf(xs[i]) > amax ? fabsf(xs[i]) : amax;
        }
        uint16_t dh = kvrt_f32_to_fp16(amax * r);
        float d = kvrt_fp16_to_f32(dh);
        scales[2 * g] = (uint8_t)(dh & 0xff);
        scales[2 * g + 1] = (uint8_t)(dh >> 8);
        if (!q4) {
            for (int i = 0; i < KVRT_KV_QGROUP; i++)
                values[g * KVRT_KV_QGROUP + i] = (uint8_t)(int8_t)kvq_round(xs[i], d, -127, 127);
            continue;
        }
        uint8_t *v = values + g * (KVRT_KV_QGROUP / 2);
        for (int i = 0; i < KVRT_KV_QGROUP / 2; i++)
            v[i] = (uint8_t)((kvq_round(xs[i], d, -8, 7) + 8) | ((kvq_round(xs[i + 16], d, -8, 7) + 8) << 4));
    }
}

void kvrt_kv_dequantize_row(kvrt_dtype dtype, const uint8_t *values, const uint8_t *scales, int32_t head_dim,
                            float *out)
{
    if (kvrt_kv_dtype_fp8(dtype)) {
        for (int32_t i = 0; i < head_dim; i++)
            out[i] = kvrt_kv_fp8_decode(dtype, values[i]);
        return;
    }
    for (int32_t g = 0; g < head_dim / KVRT_KV_QGROUP; g++) {
        float d = kvrt_fp16_to_f32((uint16_t)(scales[2 * g] | (scales[2 * g + 1] << 8)));
        float *o = out + g * KVRT_KV_QGROUP;
        if (dtype == KVRT_DTYPE_Q8_0) {
            for (int i = 0; i < KVRT_KV_QGROUP; i++)
                o[i] = (float)(int8_t)values[g * KVRT_KV_QGROUP + i] * d;
            continue;
        }
        const uint8_t *v = values + g * (KVRT_KV_QGROUP / 2);
        for (int i = 0; i < KVRT_KV_QGROUP / 2; i++) {
            o[i] = (float)((v[i] & 15) - 8) * d;
            o[i + 16] = (float)((v[i] >> 4) - 8) * d;
        }
    }
}

size_t kvrt_kv_dtype_block_bytes(const kvrt_kv_dtype_desc *t, int32_t n_kv_heads, int32_t block_size,
                                 int32_t head_dim)
{
    if (!t || n_kv_heads < 1 || block_size < 1 || head_dim < 1)
        return 0;
    size_t rows = (size_t)n_kv_heads * (size_t)block_size, row_bits, bytes;
    if (!kvrt_mul_size((size_t)head_dim, t->value_bits, &row_bits) || row_bits % 8 != 0 ||
        !kvrt_mul_size(rows, row_bits / 8, &bytes))
        return 0;
    if (t->scales == KVRT_KV_SCALES_IN_BLOCK) {
        if (t->group < 1 || head_dim % t->group != 0)
            return 0;
        size_t scales;
        if (!kvrt_mul_size(rows * (size_t)(head_dim / t->group), t->scale_bytes, &scales) ||
            !kvrt_add_size(bytes, scales, &bytes))
            return 0;
    }
    return bytes;
}

size_t kvrt_kv_block_bytes_which(const kvrt_kv_pool_desc *d, bool v)
{
    return kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(kvrt_kv_pool_dtype(d, v)), d->n_kv_heads, d->block_size,
                                     d->head_dim);
}

size_t kvrt_kv_block_bytes(const kvrt_kv_pool_desc *d)
{
    return kvrt_kv_block_bytes_which(d, false);
}

size_t kvrt_kv_block_bytes_pair(const kvrt_kv_pool_desc *d)
{
    size_t k = kvrt_kv_block_bytes_which(d, false), v = kvrt_kv_block_bytes_which(d, true), sum;
    return k && v && kvrt_add_size(k, v, &sum) ? sum : 0;
}

const char *kvrt_kv_pool_types_name(const kvrt_kv_pool_desc *d, char *buf, size_t size)
{
    if (kvrt_kv_pool_mixed(d))
        snprintf(buf, size, "K %s / V %s", kvrt_dtype_name(d->dtype), kvrt_dtype_name(kvrt_kv_pool_dtype(d, true)));
    else
        snprintf(buf, size, "%s", kvrt_dtype_name(d->dtype));
    return buf;
}

kvrt_status kvrt_kv_check_block_size(kvrt_error *err, int32_t block_size)
{
    if (block_size != 8 && block_size != 16 && block_size != 32)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "KV block size: block_size %d is not 8, 16 or 32",
                         (int)block_size);
    return KVRT_OK;
}

kvrt_status kvrt_kv_check_dtype(kvrt_error *err, kvrt_dtype dtype)
{
    if (kvrt_kv_dtype(dtype))
        return KVRT_OK;
    char names[96] = "";
    for (size_t i = 0, at = 0; i < KVRT_ARRAY_LEN(KV_DTYPES) && at < sizeof(names); i++)
        at += (size_t)snprintf(names + at, sizeof(names) - at, "%s%s", i ? ", " : "",
                               kvrt_dtype_name(KV_DTYPES[i].dtype));
    return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "dtype %s is not supported as a KV type (%s)",
                     kvrt_dtype_name(dtype), names);
}

/* A head_dim the dtype's scale groups divide (the rule for head_dim not a
 * multiple of 32: refused, naming it). which: "K" or "V". */
static kvrt_status check_dtype_shape(kvrt_error *err, const kvrt_kv_dtype_desc *t, int32_t head_dim,
                                     const char *which)
{
    if (t->scales == KVRT_KV_SCALES_IN_BLOCK && head_dim % t->group != 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: head_dim %d is not a multiple of %d, which %s KV needs (one scale per %d values)",
                         which, (int)head_dim, (int)t->group, kvrt_dtype_name(t->dtype), (int)t->group);
    return KVRT_OK;
}

kvrt_status kvrt_kv_check_pool_desc(kvrt_error *err, const kvrt_kv_pool_desc *d)
{
    if (d->n_layers < 1 || d->n_kv_heads < 1 || d->head_dim < 1 || d->block_size < 1 || d->num_blocks < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "n_layers %d, n_kv_heads %d, head_dim %d, block_size %d, num_blocks %d must all be >= 1",
                         (int)d->n_layers, (int)d->n_kv_heads, (int)d->head_dim, (int)d->block_size,
                         (int)d->num_blocks);
    for (int w = 0; w < 2; w++) {
        kvrt_dtype t = kvrt_kv_pool_dtype(d, w == 1);
        kvrt_error why;
        if (kvrt_kv_check_dtype(&why, t) != KVRT_OK) /* no layout for it: unsupported, not a bad argument */
            return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "%s: %s", w ? "V" : "K", why.message);
        KVRT_TRY(check_dtype_shape(err, kvrt_kv_dtype(t), d->head_dim, w ? "V" : "K"));
    }
    /* every position of every block must stay addressable by an int32 slot */
    if ((int64_t)d->num_blocks * d->block_size > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%d blocks x %d positions overflow int32 slots",
                         (int)d->num_blocks, (int)d->block_size);
    size_t block = kvrt_kv_block_bytes_pair(d), total;
    if (block == 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "head_dim %d does not fit the KV layout", (int)d->head_dim);
    if (!kvrt_mul_size(block, (size_t)d->num_blocks, &total) || !kvrt_mul_size(total, (size_t)d->n_layers, &total))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "KV pool size overflows");
    return KVRT_OK;
}

kvrt_status kvrt_kv_check_block(kvrt_error *err, const kvrt_kv_pool_desc *d, int32_t block, const char *what)
{
    if (block < 0 || block >= d->num_blocks)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%s block %d outside [0, %d)", what, (int)block,
                         (int)d->num_blocks);
    return KVRT_OK;
}

kvrt_status kvrt_kv_check_layer(kvrt_error *err, const kvrt_kv_pool_desc *d, int32_t layer)
{
    if (layer < 0 || layer >= d->n_layers)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "layer %d outside [0, %d)", (int)layer,
                         (int)d->n_layers);
    return KVRT_OK;
}

/* ---- attention ---------------------------------------------------------------------- */

int kvrt_attn_visible_ranges(int32_t q_lo, int32_t q_hi, int32_t window, int32_t sinks, int32_t ranges[2][2])
{
    int32_t end = q_hi + 1;
    int32_t win_lo = window > 0 && q_lo - window + 1 > 0 ? q_lo - window + 1 : 0;
    int32_t sink_end = sinks < end ? sinks : end;
    if (win_lo <= sink_end) { /* sinks and window touch: one range */
        ranges[0][0] = 0;
        ranges[0][1] = end;
        return 1;
    }
    int n = 0;
    if (sink_end > 0) {
        ranges[n][0] = 0;
        ranges[n++][1] = sink_end;
    }
    ranges[n][0] = win_lo;
    ranges[n++][1] = end;
    return n;
}

kvrt_status kvrt_attn_check_desc(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d)
{
    if (d->num_seqs < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "num_seqs %d < 0", (int)d->num_seqs);
    if (d->n_heads < 1 || d->n_heads % pool->n_kv_heads != 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "n_heads %d is not a positive multiple of n_kv_heads %d",
                         (int)d->n_heads, (int)pool->n_kv_heads);
    if (d->max_blocks_per_seq < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "max_blocks_per_seq %d < 1", (int)d->max_blocks_per_seq);
    if ((int64_t)d->max_blocks_per_seq * pool->block_size > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "max_blocks_per_seq %d: rows of %d positions overflow int32",
                         (int)d->max_blocks_per_seq, (int)pool->block_size);
    if (d->window < 0 || d->sinks < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "window %d and sinks %d must be >= 0",
                         (int)d->window, (int)d->sinks);
    if (!isfinite(d->scale))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "scale %g is not finite", (double)d->scale);
    if (d->num_tokens < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "num_tokens %d < 0", (int)d->num_tokens);
    return KVRT_OK;
}

/* Checks sequence s's table row for the keys visible to queries [q_lo, q_hi]
 * (none when q_lo > q_hi). */
static kvrt_status check_table_row(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                   int32_t s, int32_t seq_len, int32_t q_lo, int32_t q_hi, const int32_t *row)
{
    int64_t capacity = (int64_t)d->max_blocks_per_seq * pool->block_size;
    if (seq_len < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "seq_lens[%d] = %d < 1", (int)s, (int)seq_len);
    if (seq_len > capacity)
        return kvrt_fail(err, KVRT_ERR_CONTEXT_OVERFLOW,
                         "seq_lens[%d] = %d exceeds its block table (%d blocks x %d positions)",
                         (int)s, (int)seq_len, (int)d->max_blocks_per_seq, (int)pool->block_size);
    int32_t n_blocks = (seq_len + pool->block_size - 1) / pool->block_size;
    for (int32_t b = 0; b < n_blocks; b++) {
        if (row[b] != -1 && (row[b] < 0 || row[b] >= pool->num_blocks))
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "block_tables[%d][%d] = %d outside [0, %d) (num_blocks)",
                             (int)s, (int)b, (int)row[b], (int)pool->num_blocks);
    }
    if (q_lo > q_hi)
        return KVRT_OK;
    int32_t ranges[2][2];
    int n = kvrt_attn_visible_ranges(q_lo, q_hi, d->window, d->sinks, ranges);
    for (int r = 0; r < n; r++) {
        for (int32_t b = ranges[r][0] / pool->block_size; b * pool->block_size < ranges[r][1]; b++) {
            if (row[b] == -1)
                return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                                 "block_tables[%d][%d] = -1 but positions %d..%d of sequence %d are visible",
                                 (int)s, (int)b, (int)(b * pool->block_size),
                                 (int)(b * pool->block_size + pool->block_size - 1), (int)s);
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_attn_check_decode(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                   const int32_t *seq_lens, const int32_t *block_tables)
{
    KVRT_TRY(kvrt_attn_check_desc(err, pool, d));
    for (int32_t s = 0; s < d->num_seqs; s++) {
        int32_t len = seq_lens[s];
        KVRT_TRY(check_table_row(err, pool, d, s, len, len - 1, len - 1,
                                 block_tables + (size_t)s * (size_t)d->max_blocks_per_seq));
    }
    return KVRT_OK;
}

/* Sequence s (named s_name in messages) with query rows [q0, q1) of a prefill. */
static kvrt_status check_prefill_seq(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                     int32_t s, int32_t q0, int32_t q1, int32_t len, const int32_t *row)
{
    int64_t n_new = (int64_t)q1 - q0;
    if (n_new < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "query_start_loc decreases at %d (%d -> %d)", (int)s,
                         (int)q0, (int)q1);
    if (n_new > len)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "sequence %d has %lld query tokens but seq_lens[%d] = %d",
                         (int)s, (long long)n_new, (int)s, (int)len);
    return check_table_row(err, pool, d, s, len, len - (int32_t)n_new, len - 1, row);
}

kvrt_status kvrt_attn_check_prefill(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                    const int32_t *query_start_loc, const int32_t *seq_lens,
                                    const int32_t *block_tables)
{
    KVRT_TRY(kvrt_attn_check_desc(err, pool, d));
    if (query_start_loc[0] < 0) /* rows are absolute: a mixed batch's prefills start after its decodes */
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "query_start_loc[0] = %d, must be >= 0",
                         (int)query_start_loc[0]);
    for (int32_t s = 0; s < d->num_seqs; s++)
        KVRT_TRY(check_prefill_seq(err, pool, d, s, query_start_loc[s], query_start_loc[s + 1], seq_lens[s],
                                   block_tables + (size_t)s * (size_t)d->max_blocks_per_seq));
    return KVRT_OK;
}

int32_t kvrt_attn_max_len(const int32_t *seq_lens, int32_t n)
{
    int32_t m = 0;
    for (int32_t s = 0; s < n; s++)
        m = KVRT_MAX(m, seq_lens[s]);
    return m;
}

kvrt_status kvrt_kv_check_slots(kvrt_error *err, const kvrt_kv_pool_desc *pool, const int32_t *slots, int32_t n)
{
    int64_t n_slots = (int64_t)pool->num_blocks * pool->block_size;
    for (int32_t t = 0; t < n; t++) {
        if (slots[t] >= n_slots)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "slot_mapping[%d] = %d outside the pool (%lld slots = %d blocks x %d)",
                             (int)t, (int)slots[t], (long long)n_slots, (int)pool->num_blocks,
                             (int)pool->block_size);
    }
    return KVRT_OK;
}

/* ---- a step's batch -------------------------------------------------------------------- */

int32_t kvrt_batch_num_decodes(const kvrt_batch *b)
{
    int32_t n = 0;
    while (n < b->num_seqs && b->query_start_loc[n + 1] - b->query_start_loc[n] == 1)
        n++;
    return n;
}

kvrt_status kvrt_batch_check(kvrt_error *err, const kvrt_kv_pool_desc *pool, int32_t n_heads, const kvrt_batch *b)
{
    return kvrt_batch_check_window(err, pool, n_heads, 0, b);
}

kvrt_status kvrt_batch_check_window(kvrt_error *err, const kvrt_kv_pool_desc *pool, int32_t n_heads, int32_t window,
                                    const kvrt_batch *b)
{
    if (b->num_seqs < 1 || b->num_tokens < 1 || b->num_logits < 0 || b->max_blocks_per_seq < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "batch: num_seqs %d, num_tokens %d, num_logits %d, max_blocks %d",
                         (int)b->num_seqs, (int)b->num_tokens, (int)b->num_logits, (int)b->max_blocks_per_seq);
    if (b->query_start_loc[0] != 0 || b->query_start_loc[b->num_seqs] != b->num_tokens)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "batch: query_start_loc must run from 0 to num_tokens");
    if (b->num_decode_seqs < 0 || b->num_decode_seqs > kvrt_batch_num_decodes(b))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "batch: %d decodes, but only the first %d sequences have one new token",
                         (int)b->num_decode_seqs, (int)kvrt_batch_num_decodes(b));
    for (int32_t i = 0; i < b->num_logits; i++) {
        if (b->logits_indices[i] < 0 || b->logits_indices[i] >= b->num_tokens)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "logits index %d outside [0, %d)",
                             (int)b->logits_indices[i], (int)b->num_tokens);
    }
    KVRT_TRY(kvrt_kv_check_slots(err, pool, b->slot_mapping, b->num_tokens));
    /* a decode is a prefill of one token: one rule for every sequence, indices as the caller's */
    kvrt_attn_desc d = {.num_seqs = b->num_seqs, .n_heads = n_heads, .max_blocks_per_seq = b->max_blocks_per_seq,
                        .num_tokens = b->num_tokens, .window = window};
    KVRT_TRY(kvrt_attn_check_desc(err, pool, &d));
    for (int32_t s = 0; s < b->num_seqs; s++)
        KVRT_TRY(check_prefill_seq(err, pool, &d, s, b->query_start_loc[s], b->query_start_loc[s + 1], b->seq_lens[s],
                                   b->block_tables + (size_t)s * (size_t)b->max_blocks_per_seq));
    return KVRT_OK;
}
