/* Keeps the helper library non-empty before any helper exists. */
typedef int kvrt_placeholder_keep;
