/* GGUF -> GGUF quantization (kvrt-quantize): every key and every tensor of
 * the input is kept, in its order; the matrices get the types of a preset
 * mix (model/quant_mix.h), general.file_type and
 * general.quantization_version say so. The input is F32, F16 or BF16;
 * an already-quantized input is refused unless allow_requantize, which
 * dequantizes it first (a second rounding: the caller warns). */
#ifndef KVRT_QUANTIZE_H
#define KVRT_QUANTIZE_H

#include "model/gguf.h"
#include "model/quant_mix.h"

typedef struct kvrt_quantize_params {
    const kvrt_quant_mix *mix;
    bool allow_requantize; /* quantized input matrices are dequantized, then quantized again */
    int32_t n_threads;     /* <= 0: the cores available */
    bool stats;            /* measure the error of each converted matrix (report.err2 / ref2) */
    /* Called before each tensor (may be NULL): its index of count, name, types in and out. */
    void (*progress)(void *user, int64_t index, int64_t count, const char *name, uint32_t from, uint32_t to);
    void *user;
} kvrt_quantize_params;

typedef struct kvrt_quantize_report {
    int64_t n_tensors;     /* in the file */
    int64_t n_converted;   /* matrices whose type changed */
    int64_t n_requantized; /* of those, ones that were quantized already */
    int64_t n_fallback;    /* matrices whose rows the mix type could not hold */
    uint64_t in_bytes, out_bytes; /* tensor data */
    /* with stats, per output type t (kvrt_dtype value < 32) over the converted
     * matrices: values, sum of squared errors of the dequantized values
     * against the input, sum of squared input values */
    int64_t values[32];
    double err2[32], ref2[32];
} kvrt_quantize_report;

/* The type each input tensor gets (in file order), and whether the input is
 * quantized already; a check without writing: UNSUPPORTED for a tensor type
 * kvrt cannot read, INVALID_ARGUMENT for quantized input without
 * allow_requantize, BAD_MODEL for keys the mix rules need. out_types may be NULL. */
kvrt_status kvrt_quantize_plan(const kvrt_gguf *in, const kvrt_quantize_params *p, uint32_t *out_types,
                               kvrt_quantize_report *rep, kvrt_error *err);

/* Writes the quantized file to `out`. A non-finite input value is refused
 * (BAD_MODEL, naming tensor and row). */
kvrt_status kvrt_quantize_gguf(const kvrt_gguf *in, const kvrt_quantize_params *p, const kvrt_allocator *alloc,
                               FILE *out, kvrt_quantize_report *rep, kvrt_error *err);

#endif /* KVRT_QUANTIZE_H */
