/* Byte-level BPE (GPT-2's scheme, used by Llama 3, Qwen, SmolLM, DeepSeek):
 * pre-tokenizer regular expressions through PCRE2 (Unicode properties, JIT),
 * bytes as the characters of GPT-2's byte-to-unicode table, merges by rank.
 * See tokenizer.h for the rules. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model/tokenizer_internal.h"

#include <pcre2.h>
#include <string.h>

#define BPE_MAX_EXPRS 6

/* ---- pre-tokenizers ---------------------------------------------------------------------- */

/* Each pre-tokenizer is a list of expressions applied in turn: every piece
 * of text the previous ones produced is split again into the matches of the
 * next one and the text between them (both kept). The expressions are those
 * of the tokenizers' own definitions (tokenizer.json), in the forms
 * llama.cpp runs: case-insensitive contractions spelled out, which PCRE2's
 * Unicode case folding would otherwise widen ("'ſ" matching "'s"). */
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                                                              \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
                    "\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                            \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
                    "\\s+(?!\\S)|\\s+"
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"
/* DeepSeek LLM's letters: Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee and a few more scripts. */
#define RE_DEEPSEEK_LETTERS                                                                                          \
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"             \
    "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}"    \
    "\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}"        \
    "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}"                 \
    "\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}"                 \
    "\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}"         \
    "\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}"        \
    "\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}"         \
    "\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}"                   \
    "\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}"         \
    "\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"                  \
    "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}"                 \
    "\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}"           \
    "\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+"

typedef struct bpe_pre_def {
    const char *const *names;   /* tokenizer.ggml.pre values, NULL-terminated */
    const char *const *exprs;   /* NULL-terminated */
    bool ignore_merges;         /* a word that is a token is that token, merges or not */
    bool add_bos;               /* BOS when the file does not say */
} bpe_pre_def;

#define LIST(...) ((const char *const[]){__VA_ARGS__, NULL})

static const bpe_pre_def k_pre_defs[] = {
    {LIST("llama3", "llama-bpe", "llama-v3", "falcon3"), LIST(RE_LLAMA3), true, true},
    {LIST("dbrx", "smaug-bpe"), LIST(RE_LLAMA3), false, false},
    {LIST("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"), LIST(RE_QWEN2), false, false},
    {LIST("gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais", "gigachat", "jina-es", "jina-de",
          "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code"),
     LIST(RE_GPT2), false, false},
    {LIST("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
     LIST("\\p{N}", RE_GPT2), false, false},
    {LIST("falcon"), LIST("[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"), false, false},
    {LIST("deepseek-llm"),
     LIST("[\\r\\n]", RE_DEEPSEEK_LETTERS,
          "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+", "\\s+$", RE_CJK,
          "\\p{N}+"),
     false, false},
    {LIST("deepseek-coder"), LIST("[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK, "\\p{N}"), false, false},
    {LIST("deepseek-v3"),
     LIST("\\p{N}{1,3}", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
          "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
          " ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
     false, false},
    /* Mistral's tekken, as llama.cpp runs it (upper/lower case through lookaheads). */
    {LIST("tekken"),
     LIST("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?"
          "((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|"
          "\\s+(?!\\S)|\\s+"),
     true, true},
    /* GPT-2's expression after punctuation and digit splits; also what a file without the key gets. */
    {LIST("default", ""), LIST("[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"), false, false},
};

static const bpe_pre_def *find_pre(const char *name)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(k_pre_defs); i++)
        for (const char *const *n = k_pre_defs[i].names; *n; n++)
            if (strcmp(*n, name) == 0)
                return &k_pre_defs[i];
    return NULL;
}

bool kvrt_bpe_pre_adds_bos(const char *pre)
{
    const bpe_pre_def *d = pre ? find_pre(pre) : NULL;
    return d && d->add_bos;
}

/* "a, b, c" of every known name, for the unknown-name message. */
static void known_names(char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < KVRT_ARRAY_LEN(k_pre_defs); i++)
        for (const char *const *n = k_pre_defs[i].names; *n && o < cap; n++)
            if (**n)
                o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? ", " : "", *n);
}

/* ---- state ----------------------------------------------------------------------------------- */

/* A merge: (left id, right id) -> rank, merged id. */
typedef struct bpe_pair {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty slot */
    int32_t rank, result;
} bpe_pair;

/* A symbol of the word being merged: a token, linked to its neighbours. */
typedef struct bpe_sym {
    int32_t id, prev, next; /* id -1: merged into its left neighbour */
} bpe_sym;

typedef struct bpe_cand {
    int32_t rank, left, right, result;
    int32_t left_id, right_id; /* the pair it was made for: stale when either side changed */
} bpe_cand;

struct kvrt_bpe {
    const bpe_pre_def *pre;
    pcre2_general_context *gctx;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    pcre2_code *re[BPE_MAX_EXPRS];
    pcre2_match_data *md[BPE_MAX_EXPRS]; /* one per expression: a level's matches outlive the next level's */
    int n_re;
    bpe_pair *pairs;        /* [pair_mask + 1] */
    uint32_t pair_mask;
    char *bytes;            /* the bytes each token stands for, token i at bytes[bytes_off[i] .. [i + 1]) */
    uint32_t *bytes_off;    /* [n_tokens + 1] */
    uint16_t cp[256];       /* byte -> its character in the table */
    int16_t byte_of[0x144]; /* character -> byte, -1 for characters outside the table */
    /* scratch of one word, grown as needed */
    bpe_sym *syms;
    bpe_cand *heap;
    char *word;
    size_t cap;             /* syms and word: cap entries; heap: 3 * cap */
};

/* GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68
 * (controls, space, DEL, NBSP, soft hyphen) for U+0100 onwards in byte order. */
static void byte_table(kvrt_bpe *b)
{
    int next = 256;
    for (int i = 0; i < 0x144; i++)
        b->byte_of[i] = -1;
    for (int c = 0; c < 256; c++) {
        bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
        b->cp[c] = (uint16_t)(printable ? c : next++);
        b->byte_of[b->cp[c]] = (int16_t)c;
    }
}

/* UTF-8 of a table character (< 0x144: one or two bytes). */
static size_t cp_utf8(uint16_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* ---- PCRE2 through the embedder's allocator ------------------------------------------------------------ */

static void *pcre_alloc(size_t size, void *user)
{
    return kvrt_alloc(user, size, 0);
}

static void pcre_free(void *ptr, void *user)
{
    if (ptr)
        kvrt_free(user, ptr);
}

/* Unicode's White_Space property. PCRE2's \s (with UCP) also takes U+180E,
 * which left White_Space in Unicode 6.3, and the tokenizers' own splitters
 * do not: \s and \S are spelled out with this set before compiling. */
#define WHITE_SPACE "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* Copies pattern into out (cap bytes) with \s and \S replaced by WHITE_SPACE
 * classes (\s inside a class contributes its ranges). False when it does
 * not fit or \S sits inside a class (no pattern here does that). */
static bool spell_white_space(const char *pattern, char *out, size_t cap)
{
    static const char ws[] = WHITE_SPACE;
    size_t o = 0;
    bool in_class = false;
    for (const char *p = pattern; *p; p++) {
        const char *add = NULL;
        char one[3] = {p[0], 0, 0};
        if (p[0] == '\\' && (p[1] == 's' || p[1] == 'S')) {
            if (p[1] == 'S' && in_class)
                return false;
            add = p[1] == 's' ? (in_class ? ws : "[" WHITE_SPACE "]") : "[^" WHITE_SPACE "]";
            p++;
        } else if (p[0] == '\\' && p[1]) {
            one[1] = p[1]; /* any other escape, \[ and \] included, is copied whole */
            p++;
            add = one;
        } else {
            if (p[0] == '[' && !in_class)
                in_class = true;
            else if (p[0] == ']' && in_class)
                in_class = false;
            add = one;
        }
        size_t n = strlen(add);
        if (o + n >= cap)
            return false;
        memcpy(out + o, add, n);
        o += n;
    }
    out[o] = '\0';
    return true;
}

static kvrt_status compile_expr(pcre2_general_context *gctx, const char *pattern, pcre2_code **out, bool *jit,
                                kvrt_error *err)
{
    int code;
    PCRE2_SIZE offset;
    char spelled[4096];
    if (!spell_white_space(pattern, spelled, sizeof(spelled)))
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "pre-tokenizer expression too long or \\S in a class: '%.*s'",
                         160, pattern);
    pcre2_compile_context *cctx = pcre2_compile_context_create(gctx);
    if (!cctx)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "pre-tokenizer: no memory to compile");
    const uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY;
    *out = pcre2_compile((PCRE2_SPTR)spelled, PCRE2_ZERO_TERMINATED, opts, &code, &offset, cctx);
    pcre2_compile_context_free(cctx);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        if (pcre2_get_error_message(code, msg, sizeof(msg)) < 0)
            snprintf((char *)msg, sizeof(msg), "error %d", code);
        return kvrt_fail(err, code == PCRE2_ERROR_NOMEMORY ? KVRT_ERR_OUT_OF_HOST_MEMORY : KVRT_ERR_BAD_TOKENIZER,
                         "pre-tokenizer expression does not compile at offset %zu: %s (expression '%.*s')",
                         (size_t)offset, (const char *)msg, 160, pattern);
    }
    /* JIT where PCRE2 has it for this machine; the interpreter gives the same matches. */
    int rc = pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE);
    *jit = rc == 0;
    if (rc == PCRE2_ERROR_NOMEMORY) {
        pcre2_code_free(*out);
        *out = NULL;
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "pre-tokenizer: no memory for the JIT");
    }
    return KVRT_OK;
}

kvrt_status kvrt_bpe_check_expression(const char *pattern, kvrt_error *err)
{
    pcre2_code *re = NULL;
    bool jit;
    kvrt_status s = compile_expr(NULL, pattern, &re, &jit, err);
    pcre2_code_free(re);
    return s;
}

static kvrt_status compile_pre(kvrt_tokenizer *tok, kvrt_bpe *b, kvrt_error *err)
{
    b->gctx = pcre2_general_context_create(pcre_alloc, pcre_free, (void *)tok->alloc);
    b->mctx = b->gctx ? pcre2_match_context_create(b->gctx) : NULL;
    /* Long runs of one class backtrack on the JIT stack: give it room (1 MiB). */
    b->jit_stack = b->gctx ? pcre2_jit_stack_create(32 * 1024, 1024 * 1024, b->gctx) : NULL;
    if (!b->mctx || !b->jit_stack)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "pre-tokenizer: no memory");
    pcre2_jit_stack_assign(b->mctx, NULL, b->jit_stack);
    for (const char *const *e = b->pre->exprs; *e; e++) {
        bool jit;
        int i = b->n_re;
        kvrt_error cerr;
        kvrt_status s = compile_expr(b->gctx, *e, &b->re[i], &jit, &cerr);
        if (s != KVRT_OK)
            return kvrt_fail(err, s, "pre-tokenizer '%s': %s", tok->vocab->pre, cerr.message);
        b->md[i] = pcre2_match_data_create_from_pattern(b->re[i], b->gctx);
        if (!b->md[i])
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "pre-tokenizer: no memory");
        b->n_re++;
    }
    return KVRT_OK;
}

/* ---- merges -------------------------------------------------------------------------------------------- */

static uint32_t pair_hash(uint64_t key)
{
    key ^= key >> 31;
    key *= 0x9E3779B97F4A7C15ull;
    return (uint32_t)(key >> 32);
}

static const bpe_pair *pair_find(const kvrt_bpe *b, int32_t left, int32_t right)
{
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (uint32_t i = pair_hash(key) & b->pair_mask;; i = (i + 1) & b->pair_mask) {
        const bpe_pair *p = &b->pairs[i];
        if (p->key == key)
            return p;
        if (p->key == UINT64_MAX)
            return NULL;
    }
}

/* Merge `rank` (its text m[0..n)) into the table, checked. */
static kvrt_status add_merge(kvrt_tokenizer *tok, int32_t rank, const char *m, size_t n, char *scratch,
                             kvrt_error *err)
{
    kvrt_bpe *b = tok->bpe;
    /* The parts are split at the first space after the first byte: no piece holds a plain space. */
    const char *sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
    int shown = (int)KVRT_MIN(n, 80);
    if (!sp)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "BPE merge %d ('%.*s') is not two pieces separated by a space",
                         rank, shown, m);
    size_t ln = (size_t)(sp - m), rn = n - ln - 1;
    int32_t left = kvrt_tok_find(tok, m, ln), right = kvrt_tok_find(tok, sp + 1, rn);
    if (left < 0 || right < 0)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "BPE merge %d ('%.*s'): '%.*s' is not a token", rank, shown, m,
                         (int)KVRT_MIN(left < 0 ? ln : rn, 80), left < 0 ? m : sp + 1);
    memcpy(scratch, m, ln);
    memcpy(scratch + ln, sp + 1, rn);
    int32_t result = kvrt_tok_find(tok, scratch, ln + rn);
    if (result < 0)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "BPE merge %d ('%.*s'): the merged piece '%.*s' is not a token",
                         rank, shown, m, (int)KVRT_MIN(ln + rn, 80), scratch);
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t i = pair_hash(key) & b->pair_mask;
    for (; b->pairs[i].key != UINT64_MAX; i = (i + 1) & b->pair_mask)
        if (b->pairs[i].key == key)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "BPE merge %d ('%.*s') repeats merge %d", rank, shown, m,
                             b->pairs[i].rank);
    b->pairs[i] = (bpe_pair){key, rank, result};
    return KVRT_OK;
}

static kvrt_status build_merges(kvrt_tokenizer *tok, kvrt_error *err)
{
    kvrt_bpe *b = tok->bpe;
    const kvrt_vocab *v = tok->vocab;
    if (v->n_merges < 0 || (v->n_merges > 0 && (!v->merge_text || !v->merge_offsets)))
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "BPE vocabulary: merges missing");
    uint32_t size = 16;
    while (size < 2u * (uint32_t)v->n_merges + 2u)
        size *= 2;
    b->pairs = kvrt_alloc(tok->alloc, (size_t)size * sizeof(bpe_pair), 0);
    size_t longest = 0;
    for (int32_t i = 0; i < v->n_merges; i++)
        longest = KVRT_MAX(longest, (size_t)(v->merge_offsets[i + 1] - v->merge_offsets[i]));
    char *scratch = kvrt_alloc(tok->alloc, longest + 1, 1);
    if (!b->pairs || !scratch) {
        kvrt_free(tok->alloc, scratch);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for %d BPE merges", v->n_merges);
    }
    memset(b->pairs, 0xff, (size_t)size * sizeof(bpe_pair));
    b->pair_mask = size - 1;
    kvrt_status s = KVRT_OK;
    for (int32_t i = 0; i < v->n_merges && s == KVRT_OK; i++) {
        uint32_t o = v->merge_offsets[i], e = v->merge_offsets[i + 1];
        s = e < o ? kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "BPE merge %d: bad offsets", i)
                  : add_merge(tok, i, v->merge_text + o, e - o, scratch, err);
    }
    kvrt_free(tok->alloc, scratch);
    return s;
}

/* ---- the byte alphabet and decoded bytes ------------------------------------------------------------------ */

static kvrt_status find_bytes(kvrt_tokenizer *tok, kvrt_error *err)
{
    kvrt_bpe *b = tok->bpe;
    for (int c = 0; c < 256; c++) {
        char u[2];
        size_t n = cp_utf8(b->cp[c], u);
        tok->byte_ids[c] = kvrt_tok_find(tok, u, n);
    }
    /* Every byte-level vocabulary has at least the printable ASCII bytes, the
     * space and the newline; one without them is no byte-level vocabulary
     * (some leave out bytes that never occur in UTF-8 text: those fail when
     * a text has them). */
    for (int c = 0; c < 128; c++) {
        bool needed = (c >= 0x20 && c <= 0x7E) || c == '\n';
        if (needed && tok->byte_ids[c] < 0) {
            char u[3] = {0};
            cp_utf8(b->cp[c], u);
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER,
                             "byte-level BPE vocabulary has no token for byte 0x%02X (piece '%s'): its byte alphabet is "
                             "missing",
                             c, u);
        }
    }
    return KVRT_OK;
}

/* Undoes the table for every normal token: a character outside it (no
 * tokenizer writes one) stands for its own UTF-8 bytes. */
static kvrt_status decode_pieces(kvrt_tokenizer *tok, kvrt_error *err)
{
    kvrt_bpe *b = tok->bpe;
    const kvrt_vocab *v = tok->vocab;
    uint64_t total = 0;
    for (int32_t i = 0; i < v->n_tokens; i++)
        total += (uint64_t)v->piece_lens[i];
    if (total > UINT32_MAX - 1)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "BPE vocabulary: %llu bytes of pieces, more than 4 GiB",
                         (unsigned long long)total);
    b->bytes = kvrt_alloc(tok->alloc, (size_t)total + 1, 1);
    b->bytes_off = kvrt_calloc(tok->alloc, (size_t)v->n_tokens + 1, sizeof(uint32_t));
    if (!b->bytes || !b->bytes_off)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for the BPE byte table");
    uint32_t o = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        b->bytes_off[i] = o;
        if (tok->types[i] != KVRT_TOKEN_NORMAL)
            continue;
        const unsigned char *p = (const unsigned char *)v->pieces[i];
        size_t n = (size_t)v->piece_lens[i];
        for (size_t k = 0; k < n;) {
            uint32_t cl = kvrt_utf8_char_len(p + k, n - k);
            uint32_t cp = cl == 2 ? ((uint32_t)(p[k] & 0x1F) << 6 | (p[k + 1] & 0x3F)) : p[k];
            if (cl <= 2 && cp < 0x144 && b->byte_of[cp] >= 0) {
                b->bytes[o++] = (char)b->byte_of[cp];
            } else {
                memcpy(b->bytes + o, p + k, cl);
                o += cl;
            }
            k += cl;
        }
    }
    b->bytes_off[v->n_tokens] = o;
    return KVRT_OK;
}

const char *kvrt_bpe_token_bytes(const kvrt_tokenizer *tok, int32_t id, size_t *len)
{
    const kvrt_bpe *b = tok->bpe;
    *len = b->bytes_off[id + 1] - b->bytes_off[id];
    return b->bytes + b->bytes_off[id];
}

/* ---- create / destroy ------------------------------------------------------------------------------------- */

kvrt_status kvrt_bpe_create(kvrt_tokenizer *tok, kvrt_error *err)
{
    const bpe_pre_def *pre = find_pre(tok->vocab->pre);
    if (!pre) {
        char names[1024];
        known_names(names, sizeof(names));
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "pre-tokenizer '%s' is unknown (kvrt knows %s)", tok->vocab->pre,
                         names);
    }
    tok->bpe = kvrt_calloc(tok->alloc, 1, sizeof(kvrt_bpe));
    if (!tok->bpe)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for the BPE tokenizer");
    tok->bpe->pre = pre;
    byte_table(tok->bpe);
    KVRT_TRY(find_bytes(tok, err));
    KVRT_TRY(build_merges(tok, err));
    KVRT_TRY(decode_pieces(tok, err));
    return compile_pre(tok, tok->bpe, err);
}

void kvrt_bpe_destroy(kvrt_tokenizer *tok)
{
    kvrt_bpe *b = tok->bpe;
    if (!b)
        return;
    for (int i = 0; i < BPE_MAX_EXPRS; i++) {
        pcre2_match_data_free(b->md[i]);
        pcre2_code_free(b->re[i]);
    }
    pcre2_jit_stack_free(b->jit_stack);
    pcre2_match_context_free(b->mctx);
    pcre2_general_context_free(b->gctx);
    kvrt_free(tok->alloc, b->pairs);
    kvrt_free(tok->alloc, b->bytes);
    kvrt_free(tok->alloc, b->bytes_off);
    kvrt_free(tok->alloc, b->syms);
    kvrt_free(tok->alloc, b->heap);
    kvrt_free(tok->alloc, b->word);
    kvrt_free(tok->alloc, b);
    tok->bpe = NULL;
}

/* ---- encoding --------------------------------------------------------------------------------------------- */

static kvrt_status reserve(kvrt_tokenizer *tok, size_t n)
{
    kvrt_bpe *b = tok->bpe;
    if (n <= b->cap)
        return KVRT_OK;
    size_t cap = KVRT_MAX(n, 2 * b->cap), heap_bytes;
    if (cap > (size_t)INT32_MAX / 4 || !kvrt_mul_size(cap, 3 * sizeof(bpe_cand), &heap_bytes))
        return kvrt_fail(&tok->err, KVRT_ERR_INVALID_ARGUMENT, "tokenize: a word of %zu bytes is too long", n);
    kvrt_free(tok->alloc, b->syms);
    kvrt_free(tok->alloc, b->heap);
    kvrt_free(tok->alloc, b->word);
    b->syms = kvrt_alloc(tok->alloc, cap * sizeof(bpe_sym), 0);
    b->heap = kvrt_alloc(tok->alloc, heap_bytes, 0);
    b->word = kvrt_alloc(tok->alloc, 2 * cap, 1);
    b->cap = b->syms && b->heap && b->word ? cap : 0;
    if (!b->cap)
        return kvrt_fail(&tok->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenize: no memory for a word of %zu bytes", n);
    return KVRT_OK;
}

/* Lower rank first; equal ranks: the leftmost pair. */
static bool cand_before(const bpe_cand *a, const bpe_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void cand_push(bpe_cand *h, size_t *n, bpe_cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_before(&c, &h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = c;
}

static bpe_cand cand_pop(bpe_cand *h, size_t *n)
{
    bpe_cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && cand_before(&h[c + 1], &h[c]))
            c++;
        if (!cand_before(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

static void try_pair(kvrt_bpe *b, size_t *n_heap, int32_t left)
{
    if (left < 0 || b->syms[left].next < 0)
        return;
    int32_t right = b->syms[left].next;
    const bpe_pair *p = pair_find(b, b->syms[left].id, b->syms[right].id);
    if (p)
        cand_push(b->heap, n_heap,
                  (bpe_cand){p->rank, left, right, p->result, b->syms[left].id, b->syms[right].id});
}

/* One pre-tokenized word: its bytes' tokens, merged by rank. */
static kvrt_status encode_word(kvrt_tokenizer *tok, const unsigned char *w, size_t n, kvrt_tok_out *out)
{
    kvrt_bpe *b = tok->bpe;
    for (size_t i = 0; i < n; i++)
        if (tok->byte_ids[w[i]] < 0)
            return kvrt_fail(&tok->err, KVRT_ERR_BAD_TOKENIZER,
                             "tokenize: byte 0x%02X has no token in this vocabulary", w[i]);
    if (n == 1) {
        kvrt_tok_emit(out, tok->byte_ids[w[0]]);
        return KVRT_OK;
    }
    KVRT_TRY(reserve(tok, n));
    if (b->pre->ignore_merges) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++)
            o += cp_utf8(b->cp[w[i]], b->word + o);
        int32_t id = kvrt_tok_find(tok, b->word, o);
        if (id >= 0) {
            kvrt_tok_emit(out, id);
            return KVRT_OK;
        }
    }
    for (size_t i = 0; i < n; i++)
        b->syms[i] = (bpe_sym){tok->byte_ids[w[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        try_pair(b, &n_heap, (int32_t)i);
    while (n_heap > 0) {
        bpe_cand c = cand_pop(b->heap, &n_heap);
        bpe_sym *l = &b->syms[c.left], *r = &b->syms[c.right];
        if (l->id != c.left_id || l->next != c.right || r->id != c.right_id)
            continue; /* stale: a side was merged since */
        l->id = c.result;
        l->next = r->next;
        if (r->next >= 0)
            b->syms[r->next].prev = c.left;
        r->id = -1;
        r->next = -1;
        try_pair(b, &n_heap, l->prev);
        try_pair(b, &n_heap, c.left);
    }
    for (int32_t s = 0; s >= 0; s = b->syms[s].next)
        kvrt_tok_emit(out, b->syms[s].id);
    return KVRT_OK;
}

/* Splits text[start .. start + len) with expression `level` into its matches
 * and the text between them, each passed on to the next level; past the
 * last expression a piece is a word. */
static kvrt_status split(kvrt_tokenizer *tok, const unsigned char *text, size_t start, size_t len, int level,
                         kvrt_tok_out *out)
{
    kvrt_bpe *b = tok->bpe;
    if (len == 0)
        return KVRT_OK;
    if (level == b->n_re)
        return encode_word(tok, text + start, len, out);
    size_t pos = 0, done = 0;
    while (pos < len) {
        int rc = pcre2_match(b->re[level], text + start, len, pos, 0, b->md[level], b->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            if (pcre2_get_error_message(rc, msg, sizeof(msg)) < 0)
                snprintf((char *)msg, sizeof(msg), "error %d", rc);
            return kvrt_fail(&tok->err, rc == PCRE2_ERROR_NOMEMORY ? KVRT_ERR_OUT_OF_HOST_MEMORY : KVRT_ERR_INTERNAL,
                             "tokenize: pre-tokenizer '%s' failed: %s", tok->vocab->pre, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(b->md[level]);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* no expression here matches empty text; step over a character anyway */
            if (ms >= len)
                break;
            pos = ms + kvrt_utf8_char_len(text + start + ms, len - ms);
            continue;
        }
        KVRT_TRY(split(tok, text, start + done, ms - done, level + 1, out));
        KVRT_TRY(split(tok, text, start + ms, me - ms, level + 1, out));
        done = pos = me;
    }
    return split(tok, text, start + done, len - done, level + 1, out);
}

kvrt_status kvrt_bpe_encode(kvrt_tokenizer *tok, const char *text, size_t len, kvrt_tok_out *out)
{
    return split(tok, (const unsigned char *)text, 0, len, 0, out);
}
