/* The adaptive binary range coder of .sws format version 3 (docs/FORMAT.md, "A sparse tensor,
 * version 3"); sws/format/rangecoder.py holds the exact pure-Python twin and the model's
 * description.  Loaded with ctypes (the Python module object below is a stub).
 *
 * One stream per tensor: the live rows (gaps), the live columns (gaps), then per entry its gap
 * in the live submatrix and its codebook index.  Gaps are Elias-gamma binarised (unary bit
 * length, then the bits below the leading one), indices as a bit tree; every binary decision
 * has an adaptive probability (16 bits, rate 1/(n+2) up to 1/64).  The coder is LZMA's
 * (32-bit range, carry through a cached byte) without its leading zero byte, the final value
 * chosen with the most trailing zero bits and trailing zero bytes dropped: a reader pads the
 * stream with zero bytes.
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PROB_INIT 32768u
#define PROB_MIN 32u
#define PROB_MAX 65504u
#define COUNT_MAX 62u          /* rate 1/(n + 2): at most 1/64 */
#define TOP (1u << 24)
#define MAX_NB 32              /* gaps below 2^32 - 1: bit lengths of gap + 1 up to 32 */
#define MAX_IBITS 12

typedef struct { uint16_t p; uint8_t n; } bitmodel;

typedef struct {               /* the contexts of one kind of gap */
    bitmodel u[MAX_NB];        /* unary: bit length continues */
    bitmodel m[MAX_NB + 1][4]; /* mantissa: [nb][first bit], [nb][1 + first][second], [nb][rest] */
} gapmodel;

typedef struct {
    gapmodel rows, cols, ents;
    bitmodel tree[1 << MAX_IBITS];
} model;

static void model_init(model *md) {
    bitmodel *b = (bitmodel *)md;
    size_t n = sizeof(model) / sizeof(bitmodel);
    for (size_t i = 0; i < n; i++) { b[i].p = PROB_INIT; b[i].n = 0; }
}

static inline void update(bitmodel *b, int bit) {
    uint32_t rate = (uint32_t)b->n + 2u, p = b->p;
    if (bit) p -= p / rate; else p += (65536u - p) / rate;
    if (p < PROB_MIN) p = PROB_MIN;
    if (p > PROB_MAX) p = PROB_MAX;
    b->p = (uint16_t)p;
    if (b->n < COUNT_MAX) b->n++;
}

/* --- encoder ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t low;
    uint32_t range;
    uint8_t cache;
    int64_t cache_size;
    int first;                 /* the first byte LZMA writes is always 0: not written */
    uint8_t *out;
    int64_t len, cap;
    int overflow;
} encoder;

static inline void emit(encoder *e, uint8_t byte) {
    if (e->first) { e->first = 0; return; }
    if (e->len < e->cap) e->out[e->len++] = byte; else e->overflow = 1;
}

static inline void shift_low(encoder *e) {
    if (e->low < 0xFF000000u || e->low >= (1ull << 32)) {
        uint8_t carry = (uint8_t)(e->low >> 32), temp = e->cache;
        do { emit(e, (uint8_t)(temp + carry)); temp = 0xFF; } while (--e->cache_size);
        e->cache = (uint8_t)(e->low >> 24);
    }
    e->cache_size++;
    e->low = (e->low & 0x00FFFFFFu) << 8;
}

static inline void enc_bit(encoder *e, bitmodel *b, int bit) {
    uint32_t bound = (e->range >> 16) * b->p;
    if (bit) { e->low += bound; e->range -= bound; } else e->range = bound;
    while (e->range < TOP) { e->range <<= 8; shift_low(e); }
    update(b, bit);
}

static void enc_gap(encoder *e, gapmodel *g, uint64_t v) {
    uint64_t x = v + 1;
    int nb = 0;
    while (nb < 64 && (x >> nb) > 1) nb++;
    nb++;                                   /* bit length of x, 1..32 */
    for (int k = 1; k < nb; k++) enc_bit(e, &g->u[k - 1], 1);
    enc_bit(e, &g->u[nb - 1], 0);
    int first = 0;
    for (int k = nb - 2, i = 0; k >= 0; k--, i++) {
        int bit = (int)((x >> k) & 1);
        bitmodel *b = i == 0 ? &g->m[nb][0] : i == 1 ? &g->m[nb][1 + first] : &g->m[nb][3];
        if (i == 0) first = bit;
        enc_bit(e, b, bit);
    }
}

static void enc_list(encoder *e, gapmodel *g, const int64_t *pos, int64_t n) {
    int64_t prev = -1;
    for (int64_t i = 0; i < n; i++) { enc_gap(e, g, (uint64_t)(pos[i] - prev - 1)); prev = pos[i]; }
}

/* Returns the stream's length in bytes, or -1 when it does not fit cap bytes. */
int64_t sws_rc_encode(const int64_t *rows, int64_t nr, const int64_t *cols, int64_t nc,
                      const int64_t *pos, const int32_t *idx, int64_t n, int ibits,
                      uint8_t *out, int64_t cap) {
    model *md = (model *)malloc(sizeof(model));
    if (!md) return -2;
    model_init(md);
    encoder e = {0, 0xFFFFFFFFu, 0, 1, 1, out, 0, cap, 0};
    enc_list(&e, &md->rows, rows, nr);
    enc_list(&e, &md->cols, cols, nc);
    int64_t prev = -1;
    for (int64_t i = 0; i < n; i++) {
        enc_gap(&e, &md->ents, (uint64_t)(pos[i] - prev - 1));
        prev = pos[i];
        uint32_t s = (uint32_t)(idx[i] - 1), node = 1;
        for (int k = ibits - 1; k >= 0; k--) {
            int bit = (int)((s >> k) & 1);
            enc_bit(&e, &md->tree[node], bit);
            node = 2 * node + (uint32_t)bit;
        }
    }
    free(md);
    /* the value in [low, low + range) with the most trailing zero bits */
    for (int k = 32; k >= 0; k--) {
        uint64_t mask = (1ull << k) - 1, v = (e.low + mask) & ~mask;
        if (v <= e.low + e.range - 1) { e.low = v; break; }
    }
    for (int i = 0; i < 5; i++) shift_low(&e);
    if (e.overflow) return -1;
    while (e.len > 0 && out[e.len - 1] == 0) e.len--;
    return e.len;
}

/* --- decoder ------------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *data;
    int64_t len, at;           /* bytes past len read as 0 */
    uint32_t range, code;
} decoder;

static inline uint8_t next_byte(decoder *d) {
    uint8_t b = d->at < d->len ? d->data[d->at] : 0;
    d->at++;
    return b;
}

static inline int dec_bit(decoder *d, bitmodel *b) {
    uint32_t bound = (d->range >> 16) * b->p;
    int bit;
    if (d->code < bound) { d->range = bound; bit = 0; }
    else { d->code -= bound; d->range -= bound; bit = 1; }
    while (d->range < TOP) { d->range <<= 8; d->code = (d->code << 8) | next_byte(d); }
    update(b, bit);
    return bit;
}

/* the next gap, or -1 when its bit length passes MAX_NB */
static int64_t dec_gap(decoder *d, gapmodel *g) {
    int nb = 1;
    while (dec_bit(d, &g->u[nb - 1])) { if (++nb > MAX_NB) return -1; }
    uint64_t x = 1;
    int first = 0;
    for (int i = 0; i < nb - 1; i++) {
        bitmodel *b = i == 0 ? &g->m[nb][0] : i == 1 ? &g->m[nb][1 + first] : &g->m[nb][3];
        int bit = dec_bit(d, b);
        if (i == 0) first = bit;
        x = (x << 1) | (uint64_t)bit;
    }
    return (int64_t)(x - 1);
}

static int dec_list(decoder *d, gapmodel *g, int64_t *pos, int64_t n, int64_t bound) {
    int64_t p = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = dec_gap(d, g);
        if (v < 0) return -4;
        if (v >= bound - p - 1) return -2;  /* p + v + 1 >= bound */
        p += v + 1;
        pos[i] = p;
    }
    return 0;
}

/* Returns the bytes the decoder read (past len too), or a negative error:
 * -1 the first four bytes are not a code value, -2 a position outside its bound,
 * -3 an index outside the codebook, -4 a gap of more than 32 bits, -5 no memory. */
int64_t sws_rc_decode(const uint8_t *data, int64_t len, int64_t nr, int64_t r_bound, int64_t nc,
                      int64_t c_bound, int64_t n, int64_t area, int ibits, int64_t n_index,
                      int64_t *rows, int64_t *cols, int64_t *pos, int16_t *idx) {
    decoder d = {data, len, 0, 0xFFFFFFFFu, 0};
    for (int i = 0; i < 4; i++) d.code = (d.code << 8) | next_byte(&d);
    if (d.code >= d.range) return -1;
    model *md = (model *)malloc(sizeof(model));
    if (!md) return -5;
    model_init(md);
    int rc = dec_list(&d, &md->rows, rows, nr, r_bound);
    if (!rc) rc = dec_list(&d, &md->cols, cols, nc, c_bound);
    int64_t p = -1;
    for (int64_t i = 0; i < n && !rc; i++) {
        int64_t v = dec_gap(&d, &md->ents);
        if (v < 0) { rc = -4; break; }
        if (v >= area - p - 1) { rc = -2; break; }
        p += v + 1;
        pos[i] = p;
        uint32_t node = 1;
        for (int k = 0; k < ibits; k++) node = 2 * node + (uint32_t)dec_bit(&d, &md->tree[node]);
        int64_t s = (int64_t)(node - (1u << ibits)) + 1;
        if (s >= n_index) { rc = -3; break; }
        idx[i] = (int16_t)s;
    }
    free(md);
    return rc ? rc : d.at;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_coder",
    "The range coder of .sws format version 3 (loaded with ctypes).", -1, NULL};

PyMODINIT_FUNC PyInit__coder(void) { return PyModule_Create(&module); }
