/* Status strings and per-object error messages. */
#include "common/kvrt_internal.h"

#include <stdio.h>
#include <string.h>

const char *kvrt_status_str(kvrt_status status)
{
    switch (status) {
    case KVRT_OK: return "ok";
    case KVRT_ERR_INVALID_ARGUMENT: return "invalid argument";
    case KVRT_ERR_UNSUPPORTED: return "unsupported";
    case KVRT_ERR_OUT_OF_HOST_MEMORY: return "out of host memory";
    case KVRT_ERR_IO: return "I/O error";
    case KVRT_ERR_INTERNAL: return "internal error";
    case KVRT_ERR_OUT_OF_BLOCKS: return "out of KV blocks";
    case KVRT_ERR_CONTEXT_OVERFLOW: return "context overflow";
    case KVRT_ERR_NO_SUCH_SEQUENCE: return "no such sequence";
    case KVRT_ERR_BAD_MODEL: return "bad model file";
    case KVRT_ERR_BAD_TOKENIZER: return "bad tokenizer";
    case KVRT_ERR_BAD_TOKEN: return "token id out of range";
    case KVRT_ERR_BACKEND_UNAVAILABLE: return "backend unavailable";
    case KVRT_ERR_OUT_OF_DEVICE_MEMORY: return "out of device memory";
    case KVRT_ERR_KERNEL_BUILD: return "kernel build failed";
    case KVRT_ERR_DEVICE_LOST: return "device lost";
    case KVRT_ERR_REQUEST_REJECTED: return "request rejected";
    case KVRT_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

kvrt_status kvrt_failv(kvrt_error *err, kvrt_status status, const char *fmt, va_list ap)
{
    if (err) {
        err->status = status;
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
    }
    return status;
}

kvrt_status kvrt_fail(kvrt_error *err, kvrt_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvrt_failv(err, status, fmt, ap);
    va_end(ap);
    return status;
}

void kvrt_error_clear(kvrt_error *err)
{
    if (err) {
        err->status = KVRT_OK;
        err->message[0] = '\0';
    }
}

kvrt_status kvrt_error_copy(kvrt_error *dst, const kvrt_error *src)
{
    if (!src)
        return KVRT_OK;
    if (dst && dst != src)
        memcpy(dst, src, sizeof(*dst));
    return src->status;
}

const char *kvrt_version(void)
{
    return KVRT_VERSION_STRING;
}

int kvrt_version_number(void)
{
    return KVRT_VERSION_NUMBER;
}

const char *kvrt_dtype_name(kvrt_dtype dtype)
{
    switch (dtype) {
    case KVRT_DTYPE_F32: return "f32";
    case KVRT_DTYPE_F16: return "f16";
    case KVRT_DTYPE_Q4_0: return "q4_0";
    case KVRT_DTYPE_Q8_0: return "q8_0";
    case KVRT_DTYPE_BF16: return "bf16";
    case KVRT_DTYPE_Q4_1: return "q4_1";
    case KVRT_DTYPE_Q5_0: return "q5_0";
    case KVRT_DTYPE_Q5_1: return "q5_1";
    case KVRT_DTYPE_Q2_K: return "q2_K";
    case KVRT_DTYPE_Q3_K: return "q3_K";
    case KVRT_DTYPE_Q4_K: return "q4_K";
    case KVRT_DTYPE_Q5_K: return "q5_K";
    case KVRT_DTYPE_Q6_K: return "q6_K";
    case KVRT_DTYPE_IQ4_NL: return "iq4_nl";
    case KVRT_DTYPE_IQ4_XS: return "iq4_xs";
    case KVRT_DTYPE_FP8_E4M3: return "fp8";
    case KVRT_DTYPE_FP8_E5M2: return "fp8_e5m2";
    }
    return "?";
}
