/* Fused Gaussian-mixture prior over weight tensors (SPEC sections 1-2).
 *
 * For every weight w the kernel needs, in double precision and log space,
 *   log p(w) = logsumexp_j l_j(w),   l_j(w) = logc_j - lam_j (w - mu_j)^2 / 2,
 *   logc_j   = log pi_j + log(lam_j) / 2 - log(2 pi) / 2,
 * the gradient g(w) = dC/dw = sum_j r_j lam_j (w - mu_j) of C = -log p(w),
 * and the per-component sums S0 = sum r, S1 = sum r d, S2 = sum r d^2
 * (d = w - mu_j) that give the gradients of C for the mixture parameters.
 *
 * Geometry (planned every few calls by sws_plan, kept in the workspace): the
 * weights' range is cut into G coarse cells, each split recursively into
 * halves where needed, down to a fine grid of F = G 2^D cells, into leaves
 * over which log p is a cubic in the offset d from the leaf's centre to within
 * PLAN_SMOOTH (exactly a quadratic where one component is active), and split
 * only as far as the weights the cell held at the last call make it pay.  Each
 * leaf lists the components whose responsibility can exceed exp(-cut) of the
 * best one anywhere in it (kernel.py passes cut = 20 plus a margin: dropped
 * terms change log p by less than J exp(-20), below float32 resolution).  A
 * map from fine cells to leaves finds a weight's leaf with one load.
 *
 * Per call (sws_eval) a leaf's coefficients are computed, for the current
 * mixture, before the pass if the leaf held weights at the last call, else the
 * first time a weight lands in it: log p and its first three
 * derivatives at the centre, the responsibilities and their first three
 * derivatives.  A weight in it then costs a few flops: its gradient is
 * A + B d + C d^2, and it adds (1, d, d^2, d^3) to the leaf's moments, from
 * which the leaf's contribution to log p and S0, S1, S2 follows at the end.
 * A leaf whose mixture has become too sharp for the expansion since the plan
 * (the bound on the neglected fourth-order terms exceeds SMOOTH) is EXACT for
 * this call: its weights are evaluated exactly over its active components;
 * weights off the grid use every component, exactly.
 *
 * The pass works on blocks of weights in three steps: fine indices and the
 * weights in float64 (vectors: AVX-512 or AVX2, chosen at run time, or the
 * portable loop), then per weight, without a branch, the leaf, its gradient
 * and one 256-bit add of its moments (scalar loads: on this kind of CPU a
 * gather costs more per element than the whole lookup; a leaf not built yet
 * gives a NaN gradient), then the NaN gradients again on the slow path (the hot path lists
 * them as it goes) and
 * the gradients into .grad (vectors); the weights and gradients a few blocks
 * ahead are asked for meanwhile (prefetch hints).
 * Every instruction set gives the same bits.  Two threads split the weights
 * when asked to (see run_two); the leaf table is shared (a leaf is built once
 * per call, by whichever thread needs it first), the moments are per half, in
 * K interleaved copies (consecutive weights in one leaf do not wait on each
 * other), so a call's result depends only on its inputs and the thread count.
 *
 * The shared object is loaded with ctypes (kernel.py); the Python API serves only the training
 * step's bound call (train_step, at the end), which saves that step the Python around a
 * ctypes call.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <dlfcn.h>
#include <time.h>
#include <Python.h>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SWS_X86 1
#include <immintrin.h>
#endif

#define SMOOTH 1e-4         /* per call: bound on the expansion's relative error */
#define PLAN_SMOOTH 2e-5    /* when planning: leaves finer than needed, for the mixture's drift */
#define MAXJ 256
#define FINE_BITS 17        /* at most 2^17 fine cells */
#define MAX_LEAVES 65534    /* leaf ids are uint16, the last one the off-grid dummy */
#ifndef K
#define K 8                 /* interleaved copies of the moments (8: the hot path's lanes) */
#endif
#if K == 8
#define UNROLL8(x) x
#else
#define UNROLL8(x)
#endif
#define MAXT 2
#define SPLIT_MIN 8.0       /* weights a leaf must have held for its halves to pay */
#define HOT 2               /* leaves of the hot window (the AVX-512 hot path) */
#define HOT_SHARE 0.5       /* share of the weights the window must have held to be used */

enum { UNBUILT = 0, EXPAND = 1, EXACT = 2, BUILDING = 3 };
enum { NO_GRAD = 0, SET_GRAD = 1, ADD_GRAD = 2 };

typedef struct { double A, B, C, c; } rec_t;    /* g = A + B d + C d^2, d = w - c; A, B, C NaN
                                                   unless EXPAND; c, the centre, from the plan */
typedef struct { double L[4]; int32_t state, pad; } coef_t;   /* log p and 3 derivatives at c */

typedef struct {                /* one thread's per-call data */
    double *mom;                /* (L + 1) x K x 4: moments m0 .. m3 of d (L: off the grid) */
    uint64_t *built;            /* bitmap of the leaves this thread built this call */
    double *acc;                /* 1 + 3J: sums of EXACT and off-grid weights */
    double lo, hi;              /* range of the finite weights seen */
    int64_t n_exact, n_built;
} thr_t;

typedef struct {
    int J, G, D, L, E;          /* components, coarse cells, depth, leaves, active entries */
    int64_t F;                  /* fine cells, G << D */
    double lo, h;               /* coarse cell c: [lo + c h, lo + (c + 1) h) */
    double flo, inv_hf;         /* fine index (int)((w - flo) inv_hf), 1..F on the grid */
    uint16_t *map;              /* F + 2: each fine cell's leaf; 0 and F + 1: the dummy L */
    int32_t *start;             /* L + 1: each leaf's first fine cell (1-based); F + 1 last */
    int32_t *off;               /* L + 1: active sets, offsets into idx */
    int32_t *idx;               /* E */
    int32_t *occ;               /* G: the weights each coarse cell held at the last call */
    double *centre, *half;      /* L */
    rec_t *rec;                 /* L + 1 (the last one, the off-grid dummy, is never ready) */
    int used;                   /* threads whose moments the last call left (reset clears them) */
    uint64_t *dirty;            /* the leaves the last call built: their moments, per job, cleared
                                   by that job before its pass (clear_moments) */
    int dirty_used;             /* the threads of that call */
    coef_t *coef;               /* L */
    double *r4;                 /* E x 4: r and its first three derivatives, each active entry */
    double *cnt;                /* L: the weights each leaf held at the last call */
    int hot0, hot_on;           /* the hot window's first leaf (-1: none); in use this call */
    thr_t th[MAXT];
    const double *mu, *lam, *logc;   /* the current call's mixture */
} ws_t;

/* ------------------------------------------------------------------ maths */

/* exp(x) for x <= 0 to about 1e-15 relative, without a libm call. */
static inline double exp_neg(double x)
{
    x = x < -700.0 ? -700.0 : x;
    double k = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
    double r = x - k * 0.6931471805599453;      /* |r| <= 0.35 */
    r = r - k * 2.3190468138462996e-17;
    double p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120
             + r * (1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880
             + r * (1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600))))))))))));
    union { double d; int64_t i; } u = { .d = p };
    u.i += (int64_t)k << 52;
    return u.d;
}

/* Normalised responsibilities l[a] of the k components idx at x; returns log p(x). */
static double responsibilities(int k, const int32_t *idx, const double *mu, const double *lam,
                               const double *logc, double x, double *l)
{
    double m = -INFINITY, s = 0.0;
    for (int a = 0; a < k; a++) {
        double d = x - mu[idx[a]];
        l[a] = logc[idx[a]] - 0.5 * lam[idx[a]] * d * d;
        if (l[a] > m) m = l[a];
    }
    for (int a = 0; a < k; a++) {
        l[a] = exp_neg(l[a] - m);
        s += l[a];
    }
    double inv_s = 1.0 / s;
    for (int a = 0; a < k; a++) l[a] *= inv_s;
    return m + log(s);
}

/* The components among cand[0..nc-1] that can matter in [a, b] (log-responsibility margin
 * cut); returns their count.  Where cand is the active set of an interval around [a, b],
 * the result is the same as from all J components. */
static int active_set(const ws_t *ws, double a, double b, double cut, const int32_t *cand, int nc,
                      int32_t *idx)
{
    const double *mu = ws->mu, *lam = ws->lam, *logc = ws->logc;
    double best_lower = -INFINITY;
    int n = 0;
    for (int q = 0; q < nc; q++) {
        int j = cand[q];
        double far = fmax(fabs(a - mu[j]), fabs(b - mu[j]));
        double lower = logc[j] - 0.5 * lam[j] * far * far;
        best_lower = lower > best_lower ? lower : best_lower;
    }
    for (int q = 0; q < nc; q++) {
        int j = cand[q];
        double near = mu[j] < a ? a - mu[j] : (mu[j] > b ? mu[j] - b : 0.0);
        if (logc[j] - 0.5 * lam[j] * near * near >= best_lower - cut) idx[n++] = j;
    }
    return n;
}

/* The expansion of log p = F at x over the k components ix, for a leaf of half width hh:
 * L[0..3] = F and its first three derivatives, the normalised responsibilities r and the
 * deviations Y_j = a_j - F' (a_j = -lam_j (x - mu_j)); returns a bound on the relative
 * error of the cubic expansion over the leaf.  With E over the responsibilities and
 * Z_j = lam_j - E lam,
 *   F' = E a,  F'' = E Y^2 - E lam,  F''' = E Y^3 - 3 E[Y Z],
 *   F'''' = (E Y^4 - 3 (E Y^2)^2) - 6 E[Y^2 Z] + 3 E Z^2.
 * Over the half leaf, log r_j varies by at most v_j = |Y_j| hh + |lam_j + F''| hh^2 / 2
 * + |F'''| hh^3 / 6 (to third order), so r_j by a factor e^v_j, and Y_j by at most
 * |lam_j + F''| hh + |F'''| hh^2 / 2.  Through these, |F''''| over the leaf is at most
 * max(M4, 2 M2^2) + 6 sqrt(M4 VZ) + 3 VZ, M4, M2 and VZ bounds on E Y^4, E Y^2 and E Z^2
 * there.  The bound returned is the larger of the responsibilities' fourth-order remainder
 * (sum_j r_j e^v_j v_j^4 / 24 plus the F'''' term) and the gradient's, |F''''| hh^3 / 6,
 * against the gradient's local scale |F'| + sqrt(E lam). */
static double expansion(const ws_t *ws, int k, const int32_t *ix, double x, double hh,
                        double *L, double *r, double *Y)
{
    const double *mu = ws->mu, *lam = ws->lam, *logc = ws->logc;
    if (k == 1) {               /* log p is exactly quadratic */
        int j = ix[0];
        double d = x - mu[j];
        L[0] = logc[j] - 0.5 * lam[j] * d * d;
        L[1] = -lam[j] * d;
        L[2] = -lam[j];
        L[3] = 0.0;
        r[0] = 1.0;
        Y[0] = 0.0;
        return 0.0;
    }
    double abar = 0.0, lbar = 0.0, y2 = 0.0, y3 = 0.0, ylam = 0.0;
    double lse = responsibilities(k, ix, mu, lam, logc, x, r);
    for (int q = 0; q < k; q++) {
        abar += r[q] * (-lam[ix[q]] * (x - mu[ix[q]]));
        lbar += r[q] * lam[ix[q]];
    }
    for (int q = 0; q < k; q++) {
        double y = -lam[ix[q]] * (x - mu[ix[q]]) - abar;
        Y[q] = y;
        y2 += r[q] * y * y;
        y3 += r[q] * y * y * y;
        ylam += r[q] * y * (lam[ix[q]] - lbar);
    }
    double F2 = y2 - lbar, F3 = y3 - 3.0 * ylam;
    double err_r = 0.0, M4 = 0.0, M2 = 0.0, VZ = 0.0, gsum = 0.0;
    double hh2 = hh * hh, hh3 = hh2 * hh, aF3 = fabs(F3);
    for (int q = 0; q < k; q++) {
        double lq = lam[ix[q]], ay = fabs(Y[q]), s = fabs(lq + F2), z = lq - lbar;
        double v = ay * hh + s * 0.5 * hh2 + aF3 * hh3 / 6.0;
        double grow = v < 1.0 ? 1.0 + 1.72 * v : 1e300;     /* e^v for v <= 1 */
        double yb = ay + s * hh + aF3 * 0.5 * hh2;
        err_r += r[q] * grow * v * v * v * v / 24.0;
        M4 += r[q] * grow * yb * yb * yb * yb;
        M2 += r[q] * grow * yb * yb;
        VZ += r[q] * grow * z * z;
        gsum += r[q] * grow;
    }
    double F4 = fmax(M4, 2.0 * M2 * M2) + 6.0 * sqrt(M4 * VZ) + 3.0 * VZ;   /* >= |F''''| */
    err_r += gsum * F4 * hh2 * hh2 / 24.0;
    double err_g = hh3 / 6.0 * F4 / (fabs(abar) + sqrt(lbar));
    L[0] = lse;
    L[1] = abar;
    L[2] = F2;
    L[3] = F3;
    return err_r > err_g ? err_r : err_g;
}

static const int32_t ALL[MAXJ] = {
#define R16(b) b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9, b + 10, b + 11, \
               b + 12, b + 13, b + 14, b + 15
    R16(0), R16(16), R16(32), R16(48), R16(64), R16(80), R16(96), R16(112), R16(128), R16(144),
    R16(160), R16(176), R16(192), R16(208), R16(224), R16(240)
#undef R16
};

/* ------------------------------------------------------------ workspace */

void *sws_new(void)
{
    return calloc(1, sizeof(ws_t));
}

static void free_threads(ws_t *ws)
{
    for (int t = 0; t < MAXT; t++) {
        thr_t *th = ws->th + t;
        free(th->mom); free(th->built); free(th->acc);
        memset(th, 0, sizeof(*th));
    }
    free(ws->rec); free(ws->coef); free(ws->r4); free(ws->cnt); free(ws->dirty);
    ws->dirty = NULL;
    ws->dirty_used = 0;
    ws->rec = NULL;
    ws->coef = NULL;
    ws->r4 = NULL;
    ws->cnt = NULL;
    ws->hot0 = -1;
    ws->hot_on = 0;
}

static void free_geometry(ws_t *ws)
{
    free(ws->map); free(ws->start); free(ws->off); free(ws->idx); free(ws->occ);
    free(ws->centre); free(ws->half);
    ws->map = NULL;
    ws->start = ws->off = ws->idx = ws->occ = NULL;
    ws->centre = ws->half = NULL;
    ws->G = ws->L = ws->E = 0;
    ws->F = 0;
    free_threads(ws);
}

void sws_free(void *p)
{
    if (!p) return;
    free_geometry((ws_t *)p);
    free(p);
}

static void *aligned(size_t bytes)
{
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : NULL;
}

/* The leaf table and the per-thread arrays for the current geometry, every leaf unbuilt. */
static int alloc_threads(ws_t *ws)
{
    free_threads(ws);
    int L = ws->L, J = ws->J;
    ws->rec = aligned(sizeof(rec_t) * (L + 1));
    ws->coef = calloc(L, sizeof(coef_t));
    ws->r4 = malloc(sizeof(double) * 4 * (ws->E > 0 ? ws->E : 1));
    ws->cnt = calloc(L > 0 ? L : 1, sizeof(double));
    ws->dirty = calloc((L + 63) / 64 + 1, sizeof(uint64_t));
    ws->dirty_used = 0;
    ws->hot0 = -1;
    ws->hot_on = 0;
    if (!ws->rec || !ws->coef || !ws->r4 || !ws->cnt || !ws->dirty) return -1;
    for (int l = 0; l <= L; l++) {
        ws->rec[l].A = ws->rec[l].B = ws->rec[l].C = NAN;
        ws->rec[l].c = l < L ? ws->centre[l] : 0.0;
    }
    ws->used = 0;
    for (int t = 0; t < MAXT; t++) {
        thr_t *th = ws->th + t;
        th->mom = aligned(sizeof(double) * 4 * K * (L + 1));
        th->built = calloc((L + 63) / 64, sizeof(uint64_t));
        th->acc = calloc(1 + 3 * J, sizeof(double));
        if (!th->mom || !th->built || !th->acc) return -1;
        memset(th->mom, 0, sizeof(double) * 4 * K * (L + 1));
    }
    return 0;
}

/* The map and the leaves' centres from ws->start. */
static int fill_leaves(ws_t *ws)
{
    int64_t F = ws->F;
    double hf = ws->h / (double)(1 << ws->D);
    ws->map = malloc(sizeof(uint16_t) * (F + 2));
    ws->centre = malloc(sizeof(double) * (ws->L > 0 ? ws->L : 1));
    ws->half = malloc(sizeof(double) * (ws->L > 0 ? ws->L : 1));
    if (!ws->map || !ws->centre || !ws->half) return -1;
    ws->map[0] = ws->map[F + 1] = (uint16_t)ws->L;
    for (int l = 0; l < ws->L; l++) {
        int32_t a = ws->start[l], b = ws->start[l + 1];
        for (int32_t f = a; f < b; f++) ws->map[f] = (uint16_t)l;
        ws->centre[l] = ws->lo + (0.5 * (a + b) - 1.0) * hf;
        ws->half[l] = 0.5 * (b - a) * hf;
    }
    ws->flo = ws->lo - hf;
    ws->inv_hf = 1.0 / hf;
    return 0;
}

/* The hot window: the HOT consecutive leaves that held the most weights at the last call
 * (ws->cnt), if they held at least HOT_SHARE of them; else none.  Only the speed of the
 * pass depends on it, never its results. */
static void choose_hot(ws_t *ws)
{
    ws->hot0 = -1;
    if (ws->L < HOT || !ws->cnt) return;
    double total = 0.0, win = 0.0, best = -1.0;
    int at = -1;
    for (int l = 0; l < ws->L; l++) {
        total += ws->cnt[l];
        win += ws->cnt[l];
        if (l >= HOT) win -= ws->cnt[l - HOT];
        if (l >= HOT - 1 && win > best) { best = win; at = l - HOT + 1; }
    }
    if (total > 0.0 && best >= HOT_SHARE * total) ws->hot0 = at;
}

typedef struct {                /* growing arrays while planning */
    int32_t *start, *off, *idx;
    int64_t n, cap, e, ecap;
} plan_t;

static int emit(plan_t *pl, int32_t first, const int32_t *ix, int k)
{
    if (pl->n + 2 > pl->cap) {
        pl->cap = 2 * pl->cap + 64;
        int32_t *s = realloc(pl->start, sizeof(int32_t) * pl->cap), *o;
        if (!s) return -1;
        pl->start = s;
        o = realloc(pl->off, sizeof(int32_t) * pl->cap);
        if (!o) return -1;
        pl->off = o;
    }
    if (pl->e + k > pl->ecap) {
        pl->ecap = 2 * pl->ecap + k + 256;
        int32_t *q = realloc(pl->idx, sizeof(int32_t) * pl->ecap);
        if (!q) return -1;
        pl->idx = q;
    }
    pl->start[pl->n] = first;
    pl->off[pl->n] = (int32_t)pl->e;
    memcpy(pl->idx + pl->e, ix, sizeof(int32_t) * k);
    pl->e += k;
    pl->n++;
    return 0;
}

/* The fine grid as coarse as the leaves allow: every leaf is 2^k fine cells at a multiple of
 * 2^k, so with s the smallest k the same leaves are 2^(k - s) cells of a grid 2^s times
 * coarser (the same centres and widths, to the bit); a smaller map, fewer cache misses
 * (at the start of retraining the leaves are the coarse cells and the map has G entries).
 * Rescales start[0..L] and returns the new depth. */
static int collapse(int32_t *start, int L, int D)
{
    uint32_t bits = 0;
    for (int l = 1; l <= L; l++) bits |= (uint32_t)(start[l] - 1);
    int s = bits ? __builtin_ctz(bits) : D;
    s = s < D ? s : D;
    for (int l = 0; l <= L && s > 0; l++) start[l] = 1 + ((start[l] - 1) >> s);
    return D - s;
}

#ifdef SWS_X86
static int have_avx512(void);
static int refine_batched(ws_t *ws, plan_t *pl, int G, int D, double lo, double h, double cut, const int32_t *occ);
#endif

/* Leaves for the fine cells first .. first + 2^depth - 1 ([a, a + w)), about n weights
 * there at the last call, cand[0..nc-1] the active set around it: this one if the
 * expansion holds over it, if it cannot be split or if it held too few weights for two
 * leaves to pay (they then take the exact path should the expansion not hold), else its
 * halves. */
static int refine(ws_t *ws, plan_t *pl, int32_t first, int depth, double a, double w, double cut,
                  double n, const int32_t *cand, int nc)
{
    int32_t ix[MAXJ];
    double L[4], l[MAXJ], dev[MAXJ];
    int k = active_set(ws, a, a + w, cut, cand, nc, ix);
    if (depth == 0 || n < SPLIT_MIN || k <= 1 || pl->n >= MAX_LEAVES - 2
        || expansion(ws, k, ix, a + 0.5 * w, 0.5 * w, L, l, dev) <= PLAN_SMOOTH)
        return emit(pl, first, ix, k);
    int32_t half = (int32_t)1 << (depth - 1);
    if (refine(ws, pl, first, depth - 1, a, 0.5 * w, cut, 0.5 * n, ix, k)) return -1;
    return refine(ws, pl, first + half, depth - 1, a + 0.5 * w, 0.5 * w, cut, 0.5 * n, ix, k);
}

/* Plan the geometry for the current mixture over [lo, lo + G h): refine the coarse cells
 * as far as the weights they held at the last call make it pay (all of them as far as
 * needed the first time), listing every leaf's active components.  Returns 0, or -1
 * when out of memory. */
int sws_plan(void *p, int J, const double *mu, const double *lam, const double *logc,
             double lo, double h, int G, double cut)
{
    ws_t *ws = p;
    ws->mu = mu; ws->lam = lam; ws->logc = logc;
    int D = 0;
    while ((G << (D + 1)) <= (1 << FINE_BITS)) D++;
    int32_t *occ = calloc(G, sizeof(int32_t));
    if (!occ) return -1;
    if (ws->occ && ws->G > 0 && ws->J == J) {    /* carry the counts over to the new cells */
        for (int c = 0; c < ws->G; c++) {
            if (!ws->occ[c]) continue;
            double a = ws->lo + c * ws->h, b = a + ws->h;
            long c0 = (long)floor((a - lo) / h), c1 = (long)floor((b - lo) / h);
            for (long q = c0 < 0 ? 0 : c0; q <= c1 && q < G; q++)
                occ[q] = occ[q] > INT32_MAX - ws->occ[c] ? INT32_MAX : occ[q] + ws->occ[c];
        }
    } else {
        for (int c = 0; c < G; c++) occ[c] = INT32_MAX;
    }
    int J_old = ws->J;
    ws->J = J;
    plan_t pl = {0};
    int rc = 0;
    int done = 0;
#ifdef SWS_X86
    if (have_avx512() && (rc = refine_batched(ws, &pl, G, D, lo, h, cut, occ)) != 1) done = 1;
    if (!done) {                     /* the depth-first limit reached: refine's order decides */
        free(pl.start); free(pl.off); free(pl.idx);
        memset(&pl, 0, sizeof(pl));
        rc = 0;
    }
#endif
    for (int c = 0; c < G && rc == 0 && !done; c++)
        rc = refine(ws, &pl, 1 + ((int32_t)c << D), D, lo + c * h, h, cut, (double)occ[c], ALL, J);
    if (rc == 0) rc = emit(&pl, 1 + (int32_t)(G << D), NULL, 0);   /* the end marker */
    if (rc != 0) {
        free(occ); free(pl.start); free(pl.off); free(pl.idx);
        ws->J = J_old;
        return -1;
    }
    /* the leaves' counts carried over to the new leaves (for the hot window) by their centres */
    int n_old = 0;
    double *old = NULL;
    if (ws->cnt && ws->L > 0 && (old = malloc(sizeof(double) * 2 * ws->L)) != NULL)
        for (int l = 0; l < ws->L; l++)
            if (ws->cnt[l] > 0.0) { old[2 * n_old] = ws->centre[l]; old[2 * n_old + 1] = ws->cnt[l]; n_old++; }
    free_geometry(ws);
    D = collapse(pl.start, (int)pl.n - 1, D);
    ws->J = J; ws->G = G; ws->D = D; ws->F = (int64_t)G << D; ws->lo = lo; ws->h = h;
    ws->L = (int)pl.n - 1;
    ws->E = (int)pl.e;
    ws->start = pl.start; ws->off = pl.off; ws->idx = pl.idx; ws->occ = occ;
    if (fill_leaves(ws) || alloc_threads(ws)) { free(old); return -1; }
    for (int q = 0; q < n_old; q++) {
        double u = (old[2 * q] - ws->flo) * ws->inv_hf;
        if (u >= 1.0 && u < (double)(ws->F + 1)) ws->cnt[ws->map[(int64_t)u]] += old[2 * q + 1];
    }
    free(old);
    choose_hot(ws);
    return 0;
}

/* Whether the last call took the hot path (for the tests). */
int sws_hot(void *p)
{
    return ((ws_t *)p)->hot_on;
}

/* The geometry's sizes and placement (for saving it). */
void sws_shape(void *p, int64_t *sizes, double *place)
{
    ws_t *ws = p;
    sizes[0] = ws->J; sizes[1] = ws->G; sizes[2] = ws->L; sizes[3] = ws->E; sizes[4] = ws->D;
    place[0] = ws->lo; place[1] = ws->h;
}

/* ptr: start[L + 1], off[L + 1], occ[G]; idx: E entries. */
void sws_export(void *p, int32_t *ptr, int32_t *idx)
{
    ws_t *ws = p;
    memcpy(ptr, ws->start, sizeof(int32_t) * (ws->L + 1));
    memcpy(ptr + ws->L + 1, ws->off, sizeof(int32_t) * (ws->L + 1));
    memcpy(ptr + 2 * (ws->L + 1), ws->occ, sizeof(int32_t) * ws->G);
    if (ws->E) memcpy(idx, ws->idx, sizeof(int32_t) * ws->E);
}

/* The inverse of sws_export; returns 0, -1 (out of memory) or -2 (inconsistent). */
int sws_import(void *p, int J, int G, int D, int L, int E, double lo, double h,
               const int32_t *ptr, const int32_t *idx)
{
    ws_t *ws = p;
    if (J < 1 || J > MAXJ || G < 1 || D < 0 || ((int64_t)G << D) > (1 << FINE_BITS) || L < 1
        || L > MAX_LEAVES || E < 0 || !(h > 0.0))
        return -2;
    const int32_t *start = ptr, *off = ptr + L + 1;
    if (start[0] != 1 || start[L] != 1 + (G << D) || off[0] != 0 || off[L] != E) return -2;
    for (int l = 0; l < L; l++)
        if (start[l + 1] <= start[l] || off[l + 1] < off[l]) return -2;
    for (int e = 0; e < E; e++) if (idx[e] < 0 || idx[e] >= J) return -2;
    free_geometry(ws);
    ws->J = J; ws->G = G; ws->D = D; ws->F = (int64_t)G << D; ws->L = L; ws->E = E;
    ws->lo = lo; ws->h = h;
    ws->start = malloc(sizeof(int32_t) * (L + 1));
    ws->off = malloc(sizeof(int32_t) * (L + 1));
    ws->occ = malloc(sizeof(int32_t) * G);
    ws->idx = malloc(sizeof(int32_t) * (E > 0 ? E : 1));
    if (!ws->start || !ws->off || !ws->occ || !ws->idx) { free_geometry(ws); return -1; }
    memcpy(ws->start, start, sizeof(int32_t) * (L + 1));
    ws->D = D = collapse(ws->start, L, D);
    ws->F = (int64_t)G << D;
    memcpy(ws->off, off, sizeof(int32_t) * (L + 1));
    memcpy(ws->occ, ptr + 2 * (L + 1), sizeof(int32_t) * G);
    if (E) memcpy(ws->idx, idx, sizeof(int32_t) * E);
    if (fill_leaves(ws)) { free_geometry(ws); return -1; }
    return alloc_threads(ws);
}

/* --------------------------------------------------------------- the pass */

/* The coefficients of leaf l, claimed by this thread (BUILDING), its k active components ix,
 * from its expansion (L, r, Y; err its bound): EXPAND, or EXACT where the bound exceeds
 * SMOOTH or there is no component; published to the other thread.  Returns the state. */
static int publish_leaf(const ws_t *ws, int l, int k, const int32_t *ix, const double *L,
                        const double *r, const double *Y, double err)
{
    coef_t *cf = ws->coef + l;
    if (k == 0 || err > SMOOTH) {
        __atomic_store_n(&cf->state, EXACT, __ATOMIC_RELEASE);     /* rec[l].A stays NaN */
        return EXACT;
    }
    double *r4 = ws->r4 + 4 * (int64_t)ws->off[l];
    for (int q = 0; q < k; q++) {
        double y = Y[q], s2 = ws->lam[ix[q]] + L[2];
        r4[4 * q] = r[q];
        r4[4 * q + 1] = r[q] * y;
        r4[4 * q + 2] = r[q] * (y * y - s2);
        r4[4 * q + 3] = r[q] * (y * y * y - 3.0 * y * s2 - L[3]);
    }
    for (int q = 0; q < 4; q++) cf->L[q] = L[q];
    /* The pass reads A, B and C with plain loads while this thread may be writing them: each
     * goes from NaN to its value once per call (aligned 8-byte stores), so a reader gets a NaN
     * gradient (and takes fix_one, which waits for the state) unless it saw all three. */
    rec_t *rc = ws->rec + l;
    double B = -L[2], C = -0.5 * L[3], A = -L[1];
    __atomic_store(&rc->B, &B, __ATOMIC_RELAXED);
    __atomic_store(&rc->C, &C, __ATOMIC_RELAXED);
    __atomic_store(&rc->A, &A, __ATOMIC_RELEASE);
    __atomic_store_n(&cf->state, EXPAND, __ATOMIC_RELEASE);
    return EXPAND;
}

/* Whether this thread gets to build leaf l (UNBUILT -> BUILDING); else *state is its state. */
static inline int claim_leaf(const ws_t *ws, thr_t *th, int l, int *state)
{
    *state = UNBUILT;
    if (!__atomic_compare_exchange_n(&ws->coef[l].state, state, BUILDING, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return 0;
    th->built[l >> 6] |= 1ull << (l & 63);
    th->n_built++;
    return 1;
}

/* Leaf l, claimed, built here from its expansion. */
static int build_claimed(const ws_t *ws, int l)
{
    int k = ws->off[l + 1] - ws->off[l];
    const int32_t *ix = ws->idx + ws->off[l];
    double L[4], r[MAXJ], Y[MAXJ];
    double err = k == 0 ? 0.0 : expansion(ws, k, ix, ws->centre[l], ws->half[l], L, r, Y);
    return publish_leaf(ws, l, k, ix, L, r, Y, err);
}

/* Coefficients of leaf l for the current mixture, in the shared table, by whichever thread
 * claims the leaf first (the other waits for them):
 * g = -F'(w) = A + B d + C d^2, and the responsibilities' Taylor coefficients
 *   r' = r Y,  r'' = r (Y^2 - lam - F''),  r''' = r (Y^3 - 3 Y (lam + F'') - F''').
 * The numbers depend on the leaf and the mixture only.  Returns the leaf's state. */
static __attribute__((noinline)) int build_leaf(const ws_t *ws, thr_t *th, int l)
{
    int state;
    if (!claim_leaf(ws, th, l, &state)) {
        while (state == BUILDING) {     /* the other thread is on it: a few hundred ns */
#ifdef SWS_X86
            _mm_pause();
#endif
            state = __atomic_load_n(&ws->coef[l].state, __ATOMIC_ACQUIRE);
        }
        return state;
    }
    return build_claimed(ws, l);
}

/* One weight evaluated exactly over the k components idx: adds log p to acc[0] and
 * its S0, S1, S2 terms; returns dC/dw. */
static double exact_one(const ws_t *ws, double x, const int32_t *idx, int k, double *acc)
{
    int J = ws->J;
    double l[MAXJ], g = 0.0;
    acc[0] += responsibilities(k, idx, ws->mu, ws->lam, ws->logc, x, l);
    for (int a = 0; a < k; a++) {
        int j = idx[a];
        double d = x - ws->mu[j];
        g += l[a] * ws->lam[j] * d;
        acc[1 + j] += l[a];
        acc[1 + J + j] += l[a] * d;
        acc[1 + 2 * J + j] += l[a] * d * d;
    }
    return g;
}


/* Adds (1, d, d^2, d^3) to m[0..3]. */
#define MOMENTS_SCALAR(m, d)                                                                    \
    do {                                                                                        \
        double *m_ = (m), d_ = (d), d2_ = d_ * d_;                                              \
        m_[0] += 1.0; m_[1] += d_; m_[2] += d2_; m_[3] += d2_ * d_;                             \
    } while (0)

/* The gradient of the weight x, fine index f (0 or F + 1: off the grid), where the pass got a
 * NaN: off the grid, in a leaf not built yet this call (or being built by the other thread),
 * or in an EXACT leaf.  The pass has added its moments already (to the off-grid dummy's
 * when off the grid; only their count is read for an EXACT leaf).  Widens the thread's
 * range to x off the grid (finish widens it to the leaves that held weights). */
static __attribute__((noinline)) double fix_one(const ws_t *ws, thr_t *th, double x, int32_t f)
{
    if ((uint32_t)f - 1u >= (uint32_t)ws->F) {
        if (x - x == 0.0) {     /* finite */
            th->lo = x < th->lo ? x : th->lo;
            th->hi = x > th->hi ? x : th->hi;
        }
        th->n_exact++;
        return exact_one(ws, x, ALL, ws->J, th->acc);
    }
    int l = ws->map[f];
    int state = __atomic_load_n(&ws->coef[l].state, __ATOMIC_ACQUIRE);
    if (state != EXPAND && state != EXACT) state = build_leaf(ws, th, l);
    if (state == EXACT) {
        th->n_exact++;
        return exact_one(ws, x, ws->idx + ws->off[l], ws->off[l + 1] - ws->off[l], th->acc);
    }
    const rec_t *r = ws->rec + l;
    double d = x - r->c;
    return r->A + d * (r->B + r->C * d);
}

/* The pass over n weights in blocks of BLOCK (weight j of a block adds to copy j mod K of
 * its leaf's moments; i0, the position in the thread's share, is not needed for that),
 * in three steps per block:
 *   A. the weights in float64 and their fine indices, clamped to 0 .. F + 1 (0 and
 *      F + 1: off the grid; NaN: 0);
 *   B. per weight, without a branch: leaf, gradient A + B d + C d^2 into gb, moments
 *      (the only scalar step); a leaf not ready this call (A, B or C NaN), an EXACT leaf
 *      and the off-grid dummy give a NaN gradient;
 *   C. the NaN gradients again by fix_one (which builds the leaf), then the gradients into
 *      grad.
 * The moments depend only on the leaf's centre (from the plan), so step B can add them
 * before the leaf is built.  As macros, for three instruction sets: INDICES, FIX and GRADS
 * do A and C for j0 .. j1 - 1, MOMENTS(m, d) adds (1, d, d^2, d^3) to m[0..3]; the numbers
 * are the same. */
#define BLOCK 256
#define AHEAD 4             /* blocks ahead that the pass asks the caches for */

/* Ask for the weights (and gradients) AHEAD blocks on: inside a training step the forward and
 * backward passes have pushed them out to memory, and the pass, with its lookups and stores
 * in between, does not read them fast enough for the hardware's prefetcher to keep ahead
 * (the ninth session's hot loop took twice as long there as alone).  Hints only: no bits. */
static inline __attribute__((always_inline)) void
ask_ahead(const float *w_, const float *grad_, int64_t b0, int64_t n)
{
    int64_t a = b0 + AHEAD * BLOCK;
    if (a >= n) return;
    int64_t stop = a + BLOCK < n ? a + BLOCK : n;
    for (int64_t q = a; q < stop; q += 16) {
        __builtin_prefetch(w_ + q, 0, 3);
        if (grad_) __builtin_prefetch(grad_ + q, 1, 3);
    }
}

/* The leaf's record at byte offset o = 32 l of rec, its moments (copy q) at K * 4 * 8 l =
 * K o of mom + 32 q: one shift per weight, the rest addressing. */
#define STEP_B(q, MOMENTS)                                                                      \
    do {                                                                                        \
        size_t o_ = (size_t)map[fb[j + (q)]] << 5;                                              \
        const double *r_ = (const double *)((const char *)rec + o_);                            \
        double d = xb[j + (q)] - r_[3];                                                         \
        gb[j + (q)] = r_[0] + d * (r_[1] + r_[2] * d);                                          \
        MOMENTS((double *)((char *)mom + o_ * K) + 4 * (q), d);                                 \
    } while (0)

#define PASS_LOOP(INDICES, MOMENTS, FIX, GRADS)                                                 \
    const uint16_t *map = ws->map;                                                              \
    const rec_t *rec = ws->rec;                                                                 \
    const double flo = ws->flo, inv_hf = ws->inv_hf, Fmax = (double)(ws->F + 1);                \
    int32_t fb[BLOCK];                                                                          \
    double xb[BLOCK], gb[BLOCK];                                                                \
    double *const mom = th->mom;                                                                \
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {                                                 \
        const float *w = w_ + b0;                                                               \
        float *grad = mode != NO_GRAD ? grad_ + b0 : NULL;                                      \
        ask_ahead(w_, mode != NO_GRAD ? grad_ : NULL, b0, n);                                   \
        int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK, j = 0;                                    \
        INDICES(0, nb);                                                                         \
        for (; j + K <= nb; j += K) {                                                           \
            STEP_B(0, MOMENTS);                                                                 \
            STEP_B(1, MOMENTS);                                                                 \
            STEP_B(2, MOMENTS);                                                                 \
            STEP_B(3, MOMENTS);                                                                 \
            UNROLL8(STEP_B(4, MOMENTS); STEP_B(5, MOMENTS); STEP_B(6, MOMENTS);                 \
                    STEP_B(7, MOMENTS);)                                                        \
        }                                                                                       \
        for (int q = 0; j < nb; j++, q++) {                                                     \
            size_t o_ = (size_t)map[fb[j]] << 5;                                                \
            const double *r_ = (const double *)((const char *)rec + o_);                        \
            double d = xb[j] - r_[3];                                                           \
            gb[j] = r_[0] + d * (r_[1] + r_[2] * d);                                            \
            MOMENTS((double *)((char *)mom + o_ * K) + 4 * q, d);                               \
        }                                                                                       \
        FIX(0, nb);                                                                             \
        if (mode != NO_GRAD) GRADS(0, nb);                                                      \
    }

#define FIX_SCALAR(j0, j1)                                                                      \
    for (int64_t s_ = (j0); s_ < (j1); s_++)                                                    \
        if (gb[s_] != gb[s_]) gb[s_] = fix_one(ws, th, xb[s_], fb[s_]);

#define INDICES_SCALAR(j0, j1)                                                                  \
    for (int64_t s_ = (j0); s_ < (j1); s_++) {                                                  \
        double x_ = (double)w[s_], u = (x_ - flo) * inv_hf;                                     \
        xb[s_] = x_;                                                                            \
        u = u > 0.0 ? u : 0.0;      /* NaN too */                                               \
        u = u < Fmax ? u : Fmax;                                                                \
        fb[s_] = (int32_t)u;                                                                    \
    }

#define GRADS_SCALAR(j0, j1)                                                                    \
    for (int64_t s_ = (j0); s_ < (j1); s_++) {                                                  \
        if (mode == SET_GRAD) grad[s_] = (float)gb[s_];                                         \
        else grad[s_] += scale * (float)gb[s_];                                                 \
    }


static inline __attribute__((always_inline)) void
pass_generic(const ws_t *ws, thr_t *th, const float *w_, float *grad_, int64_t n, int64_t i0,
             const int mode, float scale)
{
    PASS_LOOP(INDICES_SCALAR, MOMENTS_SCALAR, FIX_SCALAR, GRADS_SCALAR)
}

static void pass_modes_generic(const ws_t *ws, thr_t *th, const float *w, float *grad, int64_t n,
                               int64_t i0, int mode, float scale)
{
    if (mode == ADD_GRAD) pass_generic(ws, th, w, grad, n, i0, ADD_GRAD, scale);
    else if (mode == SET_GRAD) pass_generic(ws, th, w, grad, n, i0, SET_GRAD, scale);
    else pass_generic(ws, th, w, grad, n, i0, NO_GRAD, scale);
}

#ifdef SWS_X86
static int have_avx2(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && getenv("SWS_KERNEL_NO_SIMD") == NULL;
    }
    return known;
}

#define INDICES_AVX(j0, j1)                                                                     \
    do {                                                                                        \
        const __m256d vflo = _mm256_set1_pd(flo), vinv = _mm256_set1_pd(inv_hf);                \
        const __m256d vzero = _mm256_setzero_pd(), vmax = _mm256_set1_pd(Fmax);                 \
        int64_t t = (j0);                                                                       \
        for (; t + 4 <= (j1); t += 4) {                                                         \
            __m256d x_ = _mm256_cvtps_pd(_mm_loadu_ps(w + t));                                  \
            _mm256_storeu_pd(xb + t, x_);                                                       \
            __m256d u = _mm256_mul_pd(_mm256_sub_pd(x_, vflo), vinv);                           \
            u = _mm256_min_pd(_mm256_max_pd(u, vzero), vmax);   /* max(NaN, 0) is 0 */     \
            _mm_storeu_si128((__m128i *)(fb + t), _mm256_cvttpd_epi32(u));                     \
        }                                                                                       \
        INDICES_SCALAR(t, (j1));                                                                \
    } while (0)

#define GRADS_AVX(j0, j1)                                                                       \
    do {                                                                                        \
        const __m128 vscale = _mm_set1_ps(scale);                                               \
        int64_t t = (j0);                                                                       \
        for (; t + 4 <= (j1); t += 4) {                                                         \
            __m128 g = _mm256_cvtpd_ps(_mm256_loadu_pd(gb + t));                                \
            if (mode == SET_GRAD) _mm_storeu_ps(grad + t, g);                                   \
            else _mm_storeu_ps(grad + t, _mm_add_ps(_mm_loadu_ps(grad + t), _mm_mul_ps(vscale, g))); \
        }                                                                                       \
        GRADS_SCALAR(t, (j1));                                                                  \
    } while (0)

#define FIX_AVX(j0, j1)                                                                         \
    do {                                                                                        \
        int64_t t = (j0);                                                                       \
        for (; t + 4 <= (j1); t += 4) {                                                         \
            __m256d g_ = _mm256_loadu_pd(gb + t);                                               \
            unsigned m_ = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(g_, g_, _CMP_UNORD_Q));    \
            for (; m_; m_ &= m_ - 1) {                                                          \
                int64_t s_ = t + __builtin_ctz(m_);                                             \
                gb[s_] = fix_one(ws, th, xb[s_], fb[s_]);                                       \
            }                                                                                   \
        }                                                                                       \
        FIX_SCALAR(t, (j1));                                                                    \
    } while (0)

/* (1, d, d^2, d^3) = (1, d, d, d) (1, 1, d, d) (1, 1, 1, d) in one vector: the same four sums
 * as MOMENTS_SCALAR, one add. */
#define MOMENTS_AVX(m, d) do {                                                                  \
        __m256d bd_ = _mm256_set1_pd(d);                                                        \
        __m256d v_ = _mm256_mul_pd(_mm256_mul_pd(_mm256_blend_pd(bd_, ones_, 0x1),              \
                                                 _mm256_blend_pd(bd_, ones_, 0x3)),             \
                                   _mm256_blend_pd(bd_, ones_, 0x7));                           \
        _mm256_store_pd((m), _mm256_add_pd(_mm256_load_pd(m), v_));                             \
    } while (0)

__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void
pass_avx2(const ws_t *ws, thr_t *th, const float *w_, float *grad_, int64_t n, int64_t i0,
          const int mode, float scale)
{
    const __m256d ones_ = _mm256_set1_pd(1.0);
    PASS_LOOP(INDICES_AVX, MOMENTS_AVX, FIX_AVX, GRADS_AVX)
}

__attribute__((target("avx2"))) static void
pass_modes_avx2(const ws_t *ws, thr_t *th, const float *w, float *grad, int64_t n, int64_t i0,
                int mode, float scale)
{
    if (mode == ADD_GRAD) pass_avx2(ws, th, w, grad, n, i0, ADD_GRAD, scale);
    else if (mode == SET_GRAD) pass_avx2(ws, th, w, grad, n, i0, SET_GRAD, scale);
    else pass_avx2(ws, th, w, grad, n, i0, NO_GRAD, scale);
}

/* AVX-512 (F and VL): steps A and C eight weights at a time; step B as with AVX2. */
#define INDICES_AVX512(j0, j1)                                                                  \
    do {                                                                                        \
        const __m512d vflo = _mm512_set1_pd(flo), vinv = _mm512_set1_pd(inv_hf);                \
        const __m512d vzero = _mm512_setzero_pd(), vmax = _mm512_set1_pd(Fmax);                 \
        int64_t t = (j0);                                                                       \
        for (; t + 8 <= (j1); t += 8) {                                                         \
            __m512d x_ = _mm512_cvtps_pd(_mm256_loadu_ps(w + t));                               \
            _mm512_storeu_pd(xb + t, x_);                                                       \
            __m512d u = _mm512_mul_pd(_mm512_sub_pd(x_, vflo), vinv);                           \
            u = _mm512_min_pd(_mm512_max_pd(u, vzero), vmax);   /* max(NaN, 0) is 0 */     \
            _mm256_storeu_si256((__m256i *)(fb + t), _mm512_cvttpd_epi32(u));                  \
        }                                                                                       \
        INDICES_SCALAR(t, (j1));                                                                \
    } while (0)

#define GRADS_AVX512(j0, j1)                                                                    \
    do {                                                                                        \
        const __m256 vscale = _mm256_set1_ps(scale);                                            \
        int64_t t = (j0);                                                                       \
        for (; t + 8 <= (j1); t += 8) {                                                         \
            __m256 g = _mm512_cvtpd_ps(_mm512_loadu_pd(gb + t));                                \
            if (mode == SET_GRAD) _mm256_storeu_ps(grad + t, g);                                \
            else _mm256_storeu_ps(grad + t, _mm256_add_ps(_mm256_loadu_ps(grad + t), _mm256_mul_ps(vscale, g))); \
        }                                                                                       \
        GRADS_SCALAR(t, (j1));                                                                  \
    } while (0)

#define FIX_AVX512(j0, j1)                                                                      \
    do {                                                                                        \
        int64_t t = (j0);                                                                       \
        for (; t + 8 <= (j1); t += 8) {                                                         \
            __m512d g_ = _mm512_loadu_pd(gb + t);                                               \
            unsigned m_ = (unsigned)_mm512_cmp_pd_mask(g_, g_, _CMP_UNORD_Q);                   \
            for (; m_; m_ &= m_ - 1) {                                                          \
                int64_t s_ = t + __builtin_ctz(m_);                                             \
                gb[s_] = fix_one(ws, th, xb[s_], fb[s_]);                                       \
            }                                                                                   \
        }                                                                                       \
        FIX_SCALAR(t, (j1));                                                                    \
    } while (0)

/* (1, d, d, d), then d^2 into lanes 2 and 3, then d^3 into lane 3 (masked products): the
 * same products as MOMENTS_AVX. */
#define MOMENTS_AVX512(m, d) do {                                                               \
        __m256d bd_ = _mm256_set1_pd(d);                                                        \
        __m256d v_ = _mm256_blend_pd(bd_, ones_, 0x1);                                          \
        v_ = _mm256_mask_mul_pd(v_, 0xC, v_, bd_);                                              \
        v_ = _mm256_mask_mul_pd(v_, 0x8, v_, bd_);                                              \
        _mm256_store_pd((m), _mm256_add_pd(_mm256_load_pd(m), v_));                             \
    } while (0)

static int have_avx512(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                && getenv("SWS_KERNEL_NO_SIMD") == NULL && getenv("SWS_KERNEL_NO_AVX512") == NULL;
    }
    return known;
}

__attribute__((target("avx2,avx512f,avx512vl"))) static inline __attribute__((always_inline)) void
pass_avx512(const ws_t *ws, thr_t *th, const float *w_, float *grad_, int64_t n, int64_t i0,
            const int mode, float scale)
{
    const __m256d ones_ = _mm256_set1_pd(1.0);
    PASS_LOOP(INDICES_AVX512, MOMENTS_AVX512, FIX_AVX512, GRADS_AVX512)
}

__attribute__((target("avx2,avx512f,avx512vl"))) static void
pass_modes_avx512(const ws_t *ws, thr_t *th, const float *w, float *grad, int64_t n, int64_t i0,
                  int mode, float scale)
{
    if (mode == ADD_GRAD) pass_avx512(ws, th, w, grad, n, i0, ADD_GRAD, scale);
    else if (mode == SET_GRAD) pass_avx512(ws, th, w, grad, n, i0, SET_GRAD, scale);
    else pass_avx512(ws, th, w, grad, n, i0, NO_GRAD, scale);
}

/* The hot path (AVX-512): where one window of HOT consecutive leaves held most of the
 * weights at the last call (ws->hot0; at the end of retraining, the leaves around zero),
 * those leaves are built before the pass and step B takes eight weights at a time: a
 * weight's leaf within the window from three compares of the weight itself with thresholds
 * found once per call (threshold: exactly where its fine index reaches the leaf; compares
 * independent of each other, off the chain of the index's arithmetic), the leaf's
 * coefficients by a blend, its gradient, and its moments added to lane (j mod 8) of the
 * window's accumulators, which live in registers for the pass (from and back to copy
 * j mod 8 of the leaf's moments).  The other weights take the scalar step B, in order; those
 * of them with a NaN gradient are listed for fix_one (the window's weights never need it).
 * Every sum gets the same terms in the same order as in the scalar pass (copy j mod K of a
 * leaf's moments, K = 8), the gradients the same operations: the same bits.  (A window of
 * four leaves, the coefficients by permutes, was no faster: RESULTS.md, eleventh session.) */

/* The smallest float32 x (as a double) whose fine position (x - flo) inv_hf, computed as the
 * pass computes it, reaches s >= 1: the position rises with x, so for every float32 x it is
 * >= s exactly where x >= this.  By bisection over the floats in order. */
static double threshold(double flo, double inv_hf, double s)
{
    int64_t lo = -(int64_t)0x7F800000, hi = 0x7F800000;     /* -inf fails, +inf holds */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        union { uint32_t b; float f; } v = { .b = mid >= 0 ? (uint32_t)mid : (uint32_t)(-mid) | 0x80000000u };
        if (((double)v.f - flo) * inv_hf >= s) hi = mid;
        else lo = mid;
    }
    union { uint32_t b; float f; } v = { .b = hi >= 0 ? (uint32_t)hi : (uint32_t)(-hi) | 0x80000000u };
    return (double)v.f;
}

static int have_hot(void)
{
    static int known = -1;
    if (known < 0) known = K == 8 && have_avx512() && getenv("SWS_KERNEL_NO_HOT") == NULL;
    return known;
}

__attribute__((target("avx2,avx512f,avx512vl"))) static inline __attribute__((always_inline)) void
pass_hot(const ws_t *ws, thr_t *th, const float *w_, float *grad_, int64_t n, const int mode,
         float scale)
{
    const uint16_t *map = ws->map;
    const rec_t *rec = ws->rec;
    const double flo = ws->flo, inv_hf = ws->inv_hf, Fmax = (double)(ws->F + 1);
    const __m256d ones_ = _mm256_set1_pd(1.0);
    const __m512d vflo = _mm512_set1_pd(flo), vinv = _mm512_set1_pd(inv_hf);
    const __m512d vzero = _mm512_setzero_pd(), vmax = _mm512_set1_pd(Fmax);
    const int h0 = ws->hot0;
    const rec_t *r0 = rec + h0, *r1 = rec + h0 + 1;
    const __m512d A0 = _mm512_set1_pd(r0->A), B0 = _mm512_set1_pd(r0->B), C0 = _mm512_set1_pd(r0->C);
    const __m512d c0 = _mm512_set1_pd(r0->c), A1 = _mm512_set1_pd(r1->A), B1 = _mm512_set1_pd(r1->B);
    const __m512d C1 = _mm512_set1_pd(r1->C), c1 = _mm512_set1_pd(r1->c);
    /* the window's leaves by the weight itself: x >= T(s) exactly where fine position >= s */
    const __m512d E0 = _mm512_set1_pd(threshold(flo, inv_hf, ws->start[h0]));
    const __m512d E1 = _mm512_set1_pd(threshold(flo, inv_hf, ws->start[h0 + 1]));
    const __m512d E2 = _mm512_set1_pd(threshold(flo, inv_hf, ws->start[h0 + 2]));
    const __m512i one64 = _mm512_set1_epi64(1), lanes = _mm512_setr_epi64(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    double *const mom = th->mom;
    double *const m0p = mom + (int64_t)h0 * K * 4, *const m1p = m0p + K * 4;
    /* accumulators, lane q: copy q of the leaf's moments; the counts (sums of 1.0, exact
     * integers in either form) as integers */
    __m512i n0 = _mm512_setzero_si512(), n1 = _mm512_setzero_si512();
    __m512d a01 = _mm512_i64gather_pd(lanes, m0p + 1, 8), a02 = _mm512_i64gather_pd(lanes, m0p + 2, 8);
    __m512d a03 = _mm512_i64gather_pd(lanes, m0p + 3, 8), a11 = _mm512_i64gather_pd(lanes, m1p + 1, 8);
    __m512d a12 = _mm512_i64gather_pd(lanes, m1p + 2, 8), a13 = _mm512_i64gather_pd(lanes, m1p + 3, 8);
    int32_t fb[BLOCK], list[BLOCK + 8], nan[BLOCK];
    double xb[BLOCK], gb[BLOCK];
    /* Eight weights from j (those of mask valid): indices, the window's leaf by compares, the
     * gradient, the moments into the accumulators; the others' positions appended to list. */
#define HOT_STEP(valid, LOAD)                                                                   \
    do {                                                                                        \
        __m512d x = _mm512_cvtps_pd(LOAD);                                                      \
        _mm512_storeu_pd(xb + j, x);                                                            \
        __m512d u = _mm512_mul_pd(_mm512_sub_pd(x, vflo), vinv);                                \
        u = _mm512_min_pd(_mm512_max_pd(u, vzero), vmax);   /* max(NaN, 0) is 0 */             \
        _mm256_storeu_si256((__m256i *)(fb + j), _mm512_cvttpd_epi32(u));                      \
        /* f >= s (s >= 1) exactly where u >= s, where x >= T(s); NaN: never */              \
        __mmask8 g0 = _mm512_cmp_pd_mask(x, E0, _CMP_GE_OQ);                                     \
        __mmask8 g1 = _mm512_cmp_pd_mask(x, E1, _CMP_GE_OQ);                                     \
        __mmask8 g2 = _mm512_cmp_pd_mask(x, E2, _CMP_GE_OQ);                                     \
        __mmask8 k0 = (valid) & g0 & ~g1, k1 = (valid) & g1 & ~g2, cold = (valid) & ~(k0 | k1); \
        __m512d d = _mm512_sub_pd(x, _mm512_mask_blend_pd(g1, c0, c1));                         \
        __m512d t = _mm512_mul_pd(_mm512_mask_blend_pd(g1, C0, C1), d);                         \
        t = _mm512_mul_pd(d, _mm512_add_pd(_mm512_mask_blend_pd(g1, B0, B1), t));               \
        _mm512_storeu_pd(gb + j, _mm512_add_pd(_mm512_mask_blend_pd(g1, A0, A1), t));           \
        __m512d d2 = _mm512_mul_pd(d, d), d3 = _mm512_mul_pd(d2, d);                            \
        n0 = _mm512_mask_add_epi64(n0, k0, n0, one64);                                          \
        a01 = _mm512_mask_add_pd(a01, k0, a01, d);                                              \
        a02 = _mm512_mask_add_pd(a02, k0, a02, d2);                                             \
        a03 = _mm512_mask_add_pd(a03, k0, a03, d3);                                             \
        n1 = _mm512_mask_add_epi64(n1, k1, n1, one64);                                          \
        a11 = _mm512_mask_add_pd(a11, k1, a11, d);                                              \
        a12 = _mm512_mask_add_pd(a12, k1, a12, d2);                                             \
        a13 = _mm512_mask_add_pd(a13, k1, a13, d3);                                             \
        _mm256_storeu_si256((__m256i *)(list + nl), _mm256_maskz_compress_epi32(cold, pos));    \
        nl += __builtin_popcount((unsigned)cold);                                               \
        pos = _mm256_add_epi32(pos, eight);                                                     \
    } while (0)
    const __m256i eight = _mm256_set1_epi32(8);
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        const float *w = w_ + b0;
        float *grad = mode != NO_GRAD ? grad_ + b0 : NULL;
        ask_ahead(w_, mode != NO_GRAD ? grad_ : NULL, b0, n);
        int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK, j = 0;
        int nl = 0, nn = 0;
        __m256i pos = iota;
        for (; j + 8 <= nb; j += 8)
            HOT_STEP((__mmask8)0xFF, _mm256_loadu_ps(w + j));
        if (j < nb) {
            __mmask8 valid = (__mmask8)((1u << (nb - j)) - 1u);
            HOT_STEP(valid, _mm256_maskz_loadu_ps(valid, w + j));
        }
        /* the other weights: step B of the scalar pass; those with a NaN gradient (off the
         * grid, a leaf not built yet or EXACT) listed for fix_one, in order.  The window's
         * leaves are EXPAND (hot_on): its weights get what fix_one would give them. */
        for (int e = 0; e < nl; e++) {
            int s_ = list[e];
            size_t o_ = (size_t)map[fb[s_]] << 5;
            const double *r_ = (const double *)((const char *)rec + o_);
            double d = xb[s_] - r_[3], g = r_[0] + d * (r_[1] + r_[2] * d);
            gb[s_] = g;
            nan[nn] = s_;
            nn += g != g;
            MOMENTS_AVX512((double *)((char *)mom + o_ * K) + 4 * (s_ & 7), d);
        }
        for (int e = 0; e < nn; e++) {
            int s_ = nan[e];
            gb[s_] = fix_one(ws, th, xb[s_], fb[s_]);
        }
        if (mode != NO_GRAD) GRADS_AVX512(0, nb);
    }
#undef HOT_STEP
    int64_t cnt0[8], cnt1[8];
    _mm512_storeu_si512(cnt0, n0);
    _mm512_storeu_si512(cnt1, n1);
    for (int q = 0; q < 8; q++) {
        m0p[4 * q] += (double)cnt0[q];
        m1p[4 * q] += (double)cnt1[q];
    }
    _mm512_i64scatter_pd(m0p + 1, lanes, a01, 8);
    _mm512_i64scatter_pd(m0p + 2, lanes, a02, 8);
    _mm512_i64scatter_pd(m0p + 3, lanes, a03, 8);
    _mm512_i64scatter_pd(m1p + 1, lanes, a11, 8);
    _mm512_i64scatter_pd(m1p + 2, lanes, a12, 8);
    _mm512_i64scatter_pd(m1p + 3, lanes, a13, 8);
}

__attribute__((target("avx2,avx512f,avx512vl"))) static void
pass_modes_hot(const ws_t *ws, thr_t *th, const float *w, float *grad, int64_t n, int mode, float scale)
{
    if (mode == ADD_GRAD) pass_hot(ws, th, w, grad, n, ADD_GRAD, scale);
    else if (mode == SET_GRAD) pass_hot(ws, th, w, grad, n, SET_GRAD, scale);
    else pass_hot(ws, th, w, grad, n, NO_GRAD, scale);
}
#endif

typedef struct {
    ws_t *ws;
    int t, nt, mode;
    const float *const *w;
    float *const *grad;
    const int64_t *n;
    int64_t start, stop;        /* this job's share of the concatenated weights */
    float scale;
    int claimed;                /* by a thread, to run it (run_two) */
    int b0, b1;                 /* the leaves b0 .. b1 - 1: this job builds them first (prebuild) */
} job_t;

/* Clear what the last call left: the leaves built (by either thread), noted in ws->dirty for
 * the moments (a weight's leaf is always built in the call that adds its moments), which
 * each job clears in its own thread (clear_moments); then each thread's sums and counters. */
static void reset(ws_t *ws)
{
    int words = (ws->L + 63) / 64;
    for (int q = 0; q < words; q++) {
        uint64_t b = 0;
        for (int t = 0; t < MAXT; t++) {
            b |= ws->th[t].built[q];
            ws->th[t].built[q] = 0;
        }
        ws->dirty[q] = b;
        while (b) {
            int l = q * 64 + __builtin_ctzll(b);
            b &= b - 1;
            ws->coef[l].state = UNBUILT;
            ws->rec[l].A = ws->rec[l].B = ws->rec[l].C = NAN;
        }
    }
    ws->dirty_used = ws->used;
    for (int t = 0; t < MAXT; t++) {
        thr_t *th = ws->th + t;
        memset(th->acc, 0, sizeof(double) * (1 + 3 * ws->J));
        th->lo = INFINITY;
        th->hi = -INFINITY;
        th->n_exact = th->n_built = 0;
    }
}

/* Read the tables the pass looks up at random (the fine map, the leaves' records, this
 * thread's moments, the active sets and their expansions) once in order first: inside a
 * training step the forward and backward passes have pushed them out of the caches, and a
 * random lookup that misses waits far longer than a line brought in by a sequential read. */
static void touch(const void *p, size_t bytes)
{
    const volatile char *c = p;
    for (size_t i = 0; i < bytes; i += 64) (void)c[i];
}

static void warm(const ws_t *ws, const thr_t *th)
{
    touch(ws->map, sizeof(uint16_t) * (size_t)(ws->F + 2));
    touch(ws->rec, sizeof(rec_t) * (size_t)(ws->L + 1));
    touch(th->mom, sizeof(double) * 4 * K * (size_t)(ws->L + 1));
    touch(ws->coef, sizeof(coef_t) * (size_t)ws->L);
    touch(ws->off, sizeof(int32_t) * (size_t)(ws->L + 1));
    touch(ws->idx, sizeof(int32_t) * (size_t)ws->E);
    touch(ws->r4, sizeof(double) * 4 * (size_t)ws->E);
    touch(ws->centre, sizeof(double) * (size_t)ws->L);
    touch(ws->half, sizeof(double) * (size_t)ws->L);
}

#ifdef SWS_X86
/* ------------------------------------------- leaves built eight at a time (AVX-512) */

/* exp_neg on eight lanes, operation for operation (a NaN lane is done by exp_neg itself: the
 * integer step differs there). */
__attribute__((target("avx2,avx512f,avx512vl"))) static inline __attribute__((always_inline)) __m512d
exp_neg8(__m512d x)
{
    __mmask8 nan = _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q);
    const __m512d magic = _mm512_set1_pd(6755399441055744.0);
    x = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(x, _mm512_set1_pd(-700.0), _CMP_LT_OQ), x,
                             _mm512_set1_pd(-700.0));
    __m512d t = _mm512_add_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)), magic);
    __m512d k = _mm512_sub_pd(t, magic);
    __m512d r = _mm512_sub_pd(x, _mm512_mul_pd(k, _mm512_set1_pd(0.6931471805599453)));
    r = _mm512_sub_pd(r, _mm512_mul_pd(k, _mm512_set1_pd(2.3190468138462996e-17)));
    static const double c[13] = {1.0, 1.0, 0.5, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800,
                                 1.0 / 479001600};
    __m512d p = _mm512_set1_pd(c[12]);
    for (int i = 11; i >= 0; i--) p = _mm512_add_pd(_mm512_set1_pd(c[i]), _mm512_mul_pd(r, p));
    /* (int64_t)k: the integer in t's low bits (|k| < 2^51) */
    __m512i ki = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(magic));
    __m512d e = _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(p), _mm512_slli_epi64(ki, 52)));
    if (nan) {
        double in[8], out[8];
        _mm512_storeu_pd(in, x);
        _mm512_storeu_pd(out, e);
        for (int q = 0; q < 8; q++)
            if (nan >> q & 1) out[q] = exp_neg(in[q]);
        e = _mm512_loadu_pd(out);
    }
    return e;
}

/* fmax(a, b) as the C library's: the other operand where one is NaN. */
__attribute__((target("avx2,avx512f,avx512vl"))) static inline __attribute__((always_inline)) __m512d
fmax8(__m512d a, __m512d b)
{
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(b, b, _CMP_UNORD_Q), _mm512_max_pd(a, b), a);
}

static inline __m512d abs8(__m512d a) __attribute__((target("avx2,avx512f,avx512vl"), always_inline));
static inline __m512d abs8(__m512d a)
{
    return _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(a),
                                                _mm512_set1_epi64(0x7FFFFFFFFFFFFFFFll)));
}

static inline __m512d neg8(__m512d a) __attribute__((target("avx2,avx512f,avx512vl"), always_inline));
static inline __m512d neg8(__m512d a)      /* -a: the sign flipped, as C's unary minus */
{
    return _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a),
                                                _mm512_set1_epi64((long long)0x8000000000000000ull)));
}

/* expansion() for n <= 8 intervals (centres xs, half widths hs, kq >= 2 active components ixs
 * each), lane by lane with the same operations in the same order: their L[4] into L8
 * (lane-major), r and Y into r8, Y8 ([q][lane], J x 8), the bounds into err. */
__attribute__((target("avx2,avx512f,avx512vl"))) static void
expansion8x(const ws_t *ws, int n, const int *kq, const int32_t *const *ixs, const double *xs, const double *hs,
            double (*L8)[4], double *r8, double *Y8, double *err)
{
    const double *mu = ws->mu, *lam = ws->lam, *logc = ws->logc;
    int kmax = 0;
    for (int i = 0; i < n; i++) kmax = kq[i] > kmax ? kq[i] : kmax;
    /* the components' parameters, [q][lane] (0 where q >= k); sized by the call (a thread's
     * stack may be small) */
    double MU[kmax * 8], LAM[kmax * 8], LC[kmax * 8];
    __mmask8 act[MAXJ];
    for (int q = 0; q < kmax; q++) {
        act[q] = 0;
        for (int i = 0; i < 8; i++) {
            int on = i < n && q < kq[i];
            int j = on ? ixs[i][q] : 0;
            MU[8 * q + i] = on ? mu[j] : 0.0;
            LAM[8 * q + i] = on ? lam[j] : 0.0;
            LC[8 * q + i] = on ? logc[j] : 0.0;
            act[q] |= (__mmask8)(on << i);
        }
    }
    double xv[8] = {0}, hv[8] = {0};
    for (int i = 0; i < n; i++) {
        xv[i] = xs[i];
        hv[i] = hs[i];
    }
    const __m512d x = _mm512_loadu_pd(xv), hh = _mm512_loadu_pd(hv), zero = _mm512_setzero_pd();
    /* responsibilities */
    __m512d m = _mm512_set1_pd(-INFINITY), s = zero;
    for (int q = 0; q < kmax; q++) {
        __m512d d = _mm512_sub_pd(x, _mm512_loadu_pd(MU + 8 * q));
        __m512d lq = _mm512_sub_pd(_mm512_loadu_pd(LC + 8 * q),
                                   _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(0.5),
                                                                             _mm512_loadu_pd(LAM + 8 * q)), d), d));
        _mm512_storeu_pd(r8 + 8 * q, lq);
        m = _mm512_mask_blend_pd(_mm512_mask_cmp_pd_mask(act[q], lq, m, _CMP_GT_OQ), m, lq);
    }
    for (int q = 0; q < kmax; q++) {
        __m512d e = exp_neg8(_mm512_sub_pd(_mm512_loadu_pd(r8 + 8 * q), m));
        _mm512_storeu_pd(r8 + 8 * q, e);
        s = _mm512_mask_add_pd(s, act[q], s, e);
    }
    __m512d inv_s = _mm512_div_pd(_mm512_set1_pd(1.0), s);
    for (int q = 0; q < kmax; q++)
        _mm512_storeu_pd(r8 + 8 * q, _mm512_mul_pd(_mm512_loadu_pd(r8 + 8 * q), inv_s));
    double ms[8], ss[8], lse[8];
    _mm512_storeu_pd(ms, m);
    _mm512_storeu_pd(ss, s);
    for (int i = 0; i < n; i++) lse[i] = ms[i] + log(ss[i]);
    /* the derivatives */
    __m512d abar = zero, lbar = zero, y2 = zero, y3 = zero, ylam = zero;
    for (int q = 0; q < kmax; q++) {
        __m512d r = _mm512_loadu_pd(r8 + 8 * q), lq = _mm512_loadu_pd(LAM + 8 * q);
        __m512d a = _mm512_mul_pd(neg8(lq), _mm512_sub_pd(x, _mm512_loadu_pd(MU + 8 * q)));
        abar = _mm512_mask_add_pd(abar, act[q], abar, _mm512_mul_pd(r, a));
        lbar = _mm512_mask_add_pd(lbar, act[q], lbar, _mm512_mul_pd(r, lq));
    }
    for (int q = 0; q < kmax; q++) {
        __m512d r = _mm512_loadu_pd(r8 + 8 * q), lq = _mm512_loadu_pd(LAM + 8 * q);
        __m512d y = _mm512_sub_pd(_mm512_mul_pd(neg8(lq),
                                                _mm512_sub_pd(x, _mm512_loadu_pd(MU + 8 * q))), abar);
        _mm512_storeu_pd(Y8 + 8 * q, y);
        __m512d ry = _mm512_mul_pd(r, y), ryy = _mm512_mul_pd(ry, y);
        y2 = _mm512_mask_add_pd(y2, act[q], y2, ryy);
        y3 = _mm512_mask_add_pd(y3, act[q], y3, _mm512_mul_pd(ryy, y));
        ylam = _mm512_mask_add_pd(ylam, act[q], ylam, _mm512_mul_pd(ry, _mm512_sub_pd(lq, lbar)));
    }
    __m512d F2 = _mm512_sub_pd(y2, lbar), F3 = _mm512_sub_pd(y3, _mm512_mul_pd(_mm512_set1_pd(3.0), ylam));
    __m512d err_r = zero, M4 = zero, M2 = zero, VZ = zero, gsum = zero;
    __m512d hh2 = _mm512_mul_pd(hh, hh), hh3 = _mm512_mul_pd(hh2, hh), aF3 = abs8(F3);
    const __m512d half = _mm512_set1_pd(0.5), sixth = _mm512_set1_pd(6.0), one = _mm512_set1_pd(1.0);
    for (int q = 0; q < kmax; q++) {
        __m512d r = _mm512_loadu_pd(r8 + 8 * q), lq = _mm512_loadu_pd(LAM + 8 * q);
        __m512d ay = abs8(_mm512_loadu_pd(Y8 + 8 * q)), sq = abs8(_mm512_add_pd(lq, F2));
        __m512d z = _mm512_sub_pd(lq, lbar);
        __m512d v = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(ay, hh), _mm512_mul_pd(_mm512_mul_pd(sq, half), hh2)),
                                  _mm512_div_pd(_mm512_mul_pd(aF3, hh3), sixth));
        __m512d grow = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v, one, _CMP_LT_OQ), _mm512_set1_pd(1e300),
                                            _mm512_add_pd(one, _mm512_mul_pd(_mm512_set1_pd(1.72), v)));
        __m512d yb = _mm512_add_pd(_mm512_add_pd(ay, _mm512_mul_pd(sq, hh)),
                                   _mm512_mul_pd(_mm512_mul_pd(aF3, half), hh2));
        __m512d rg = _mm512_mul_pd(r, grow);
        __m512d e = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(rg, v), v), v), v);
        err_r = _mm512_mask_add_pd(err_r, act[q], err_r, _mm512_div_pd(e, _mm512_set1_pd(24.0)));
        __m512d rgy2 = _mm512_mul_pd(_mm512_mul_pd(rg, yb), yb);
        M4 = _mm512_mask_add_pd(M4, act[q], M4, _mm512_mul_pd(_mm512_mul_pd(rgy2, yb), yb));
        M2 = _mm512_mask_add_pd(M2, act[q], M2, rgy2);
        VZ = _mm512_mask_add_pd(VZ, act[q], VZ, _mm512_mul_pd(_mm512_mul_pd(rg, z), z));
        gsum = _mm512_mask_add_pd(gsum, act[q], gsum, rg);
    }
    __m512d F4 = _mm512_add_pd(_mm512_add_pd(fmax8(M4, _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(2.0), M2), M2)),
                                             _mm512_mul_pd(sixth, _mm512_sqrt_pd(_mm512_mul_pd(M4, VZ)))),
                               _mm512_mul_pd(_mm512_set1_pd(3.0), VZ));
    err_r = _mm512_add_pd(err_r, _mm512_div_pd(_mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(gsum, F4), hh2), hh2),
                                               _mm512_set1_pd(24.0)));
    __m512d err_g = _mm512_div_pd(_mm512_mul_pd(_mm512_div_pd(hh3, sixth), F4),
                                  _mm512_add_pd(abs8(abar), _mm512_sqrt_pd(lbar)));
    __m512d worst = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(err_r, err_g, _CMP_GT_OQ), err_g, err_r);
    double ab[8], f2[8], f3[8];
    _mm512_storeu_pd(ab, abar);
    _mm512_storeu_pd(f2, F2);
    _mm512_storeu_pd(f3, F3);
    _mm512_storeu_pd(err, worst);
    for (int i = 0; i < n; i++) {
        L8[i][0] = lse[i];
        L8[i][1] = ab[i];
        L8[i][2] = f2[i];
        L8[i][3] = f3[i];
    }
}

/* expansion8x for the leaves lv[0..n-1] of the plan. */
__attribute__((target("avx2,avx512f,avx512vl"))) static void
expansion8(const ws_t *ws, const int *lv, int n, double (*L8)[4], double *r8, double *Y8, double *err)
{
    int kq[8];
    const int32_t *ixs[8];
    double xs[8], hs[8];
    for (int i = 0; i < n; i++) {
        int l = lv[i];
        kq[i] = ws->off[l + 1] - ws->off[l];
        ixs[i] = ws->idx + ws->off[l];
        xs[i] = ws->centre[l];
        hs[i] = ws->half[l];
    }
    expansion8x(ws, n, kq, ixs, xs, hs, L8, r8, Y8, err);
}

/* Leaves lv[0..n-1] (claimed, n <= 8, two or more active components each) built together. */
__attribute__((target("avx2,avx512f,avx512vl"))) static void
build8(const ws_t *ws, const int *lv, int n)
{
    double L8[8][4], err[8], r8[ws->J * 8], Y8[ws->J * 8], r[MAXJ], Y[MAXJ];
    expansion8(ws, lv, n, L8, r8, Y8, err);
    for (int i = 0; i < n; i++) {
        int k = ws->off[lv[i] + 1] - ws->off[lv[i]];
        for (int q = 0; q < k; q++) {
            r[q] = r8[8 * q + i];
            Y[q] = Y8[8 * q + i];
        }
        publish_leaf(ws, lv[i], k, ws->idx + ws->off[lv[i]], L8[i], r, Y, err[i]);
    }
}

/* refine() over the G coarse cells breadth first, the expansions of each level eight at a time
 * (expansion8x: the same bounds): the same leaves, emitted in order.  Returns 0, -1 (out of
 * memory) or 1 where the leaves reach MAX_LEAVES - 2, whose limit depends on refine's depth-first
 * order (the caller then runs refine). */
typedef struct { int32_t first; int depth, nc, k; double a, w, n; int64_t cand, ix; } pnode_t;

static int by_first(const void *x, const void *y)
{
    int32_t a = ((const pnode_t *)x)->first, b = ((const pnode_t *)y)->first;
    return (a > b) - (a < b);
}

/* Appends a final leaf; -1 when out of memory. */
static int add_leaf(pnode_t **leaf, int64_t *n, int64_t *cap, const pnode_t *nd)
{
    if (*n == *cap) {
        pnode_t *q = realloc(*leaf, sizeof(pnode_t) * (size_t)(*cap * 2));
        if (!q) return -1;
        *leaf = q;
        *cap *= 2;
    }
    (*leaf)[(*n)++] = *nd;
    return 0;
}

__attribute__((target("avx2,avx512f,avx512vl"))) static int
refine_batched(ws_t *ws, plan_t *pl, int G, int D, double lo, double h, double cut, const int32_t *occ)
{
    int J = ws->J, rc = 0;
    int64_t ncur = G, nnext = 0, nleaf = 0, cap = 2 * (int64_t)G + 16, lcap = cap, pn = 0, pcap = 4096;
    pnode_t *cur = malloc(sizeof(pnode_t) * cap), *next = malloc(sizeof(pnode_t) * cap);
    pnode_t *leaf = malloc(sizeof(pnode_t) * lcap);
    int32_t *pool = malloc(sizeof(int32_t) * pcap);
    double (*L8)[4] = malloc(sizeof(double) * 32), *r8 = malloc(sizeof(double) * 8 * J);
    double *Y8 = malloc(sizeof(double) * 8 * J);
    if (!cur || !next || !leaf || !pool || !L8 || !r8 || !Y8) rc = -1;
    for (int c = 0; c < G && rc == 0; c++)
        cur[c] = (pnode_t){1 + ((int32_t)c << D), D, J, 0, lo + c * h, h, (double)occ[c], -1, 0};
    while (ncur > 0 && rc == 0) {
        int64_t batch[8];
        int nb = 0;
        nnext = 0;
        for (int64_t i = 0; i <= ncur && rc == 0; i++) {
            if (i < ncur) {
                pnode_t *nd = cur + i;
                if (pn + nd->nc > pcap) {
                    int32_t *q = realloc(pool, sizeof(int32_t) * (pcap = 2 * pcap + nd->nc));
                    if (!q) { rc = -1; break; }
                    pool = q;
                }
                const int32_t *cand = nd->cand < 0 ? ALL : pool + nd->cand;
                nd->ix = pn;
                nd->k = active_set(ws, nd->a, nd->a + nd->w, cut, cand, nd->nc, pool + pn);
                pn += nd->k;
                if (nd->depth == 0 || nd->n < SPLIT_MIN || nd->k <= 1) {
                    if (add_leaf(&leaf, &nleaf, &lcap, nd)) { rc = -1; break; }
                    continue;
                }
                batch[nb++] = i;
                if (nb < 8) continue;
            } else if (nb == 0) {
                break;
            }
            int kq[8];
            const int32_t *ixs[8];
            double xs[8], hs[8], err[8];
            for (int b = 0; b < nb; b++) {
                const pnode_t *nd = cur + batch[b];
                kq[b] = nd->k;
                ixs[b] = pool + nd->ix;
                xs[b] = nd->a + 0.5 * nd->w;
                hs[b] = 0.5 * nd->w;
            }
            expansion8x(ws, nb, kq, ixs, xs, hs, L8, r8, Y8, err);
            for (int b = 0; b < nb && rc == 0; b++) {
                const pnode_t *nd = cur + batch[b];
                if (err[b] <= PLAN_SMOOTH) {
                    if (add_leaf(&leaf, &nleaf, &lcap, nd)) { rc = -1; break; }
                    continue;
                }
                if (nnext + 2 > cap) {
                    cap = 2 * cap;
                    pnode_t *q = realloc(next, sizeof(pnode_t) * cap), *r = q ? realloc(cur, sizeof(pnode_t) * cap) : NULL;
                    if (q) next = q;
                    if (!q || !r) { rc = -1; break; }
                    cur = r;
                    nd = cur + batch[b];
                }
                int32_t half = (int32_t)1 << (nd->depth - 1);
                next[nnext++] = (pnode_t){nd->first, nd->depth - 1, nd->k, 0, nd->a, 0.5 * nd->w, 0.5 * nd->n, nd->ix, 0};
                next[nnext++] = (pnode_t){nd->first + half, nd->depth - 1, nd->k, 0, nd->a + 0.5 * nd->w, 0.5 * nd->w,
                                          0.5 * nd->n, nd->ix, 0};
            }
            nb = 0;
        }
        pnode_t *t = cur;
        cur = next;
        next = t;
        ncur = nnext;
    }
    if (rc == 0 && nleaf >= MAX_LEAVES - 2) rc = 1;
    if (rc == 0) {
        qsort(leaf, (size_t)nleaf, sizeof(pnode_t), by_first);
        for (int64_t i = 0; i < nleaf && rc == 0; i++) rc = emit(pl, leaf[i].first, pool + leaf[i].ix, leaf[i].k);
    }
    free(cur); free(next); free(leaf); free(pool); free(L8); free(r8); free(Y8);
    return rc;
}

/* prebuild's leaves (see there), those with two or more active components eight at a time
 * through expansion8: the same numbers.  A claimed leaf is published before this thread
 * waits for anything (it never does). */
__attribute__((target("avx2,avx512f,avx512vl"))) static void
prebuild_avx512(const ws_t *ws, thr_t *th, int b0, int b1)
{
    int lv[8], n = 0, state;
    for (int l = b0; l < b1; l++) {
        if (!(ws->cnt[l] > 0.0) || __atomic_load_n(&ws->coef[l].state, __ATOMIC_ACQUIRE) != UNBUILT
            || !claim_leaf(ws, th, l, &state))
            continue;
        if (ws->off[l + 1] - ws->off[l] < 2) {
            build_claimed(ws, l);
            continue;
        }
        lv[n++] = l;
        if (n == 8) {
            build8(ws, lv, n);
            n = 0;
        }
    }
    if (n) build8(ws, lv, n);
}
#endif

/* For the tests: every leaf of the plan with two or more active components through expansion8
 * and through expansion for the mixture (mu, lam, logc), compared bit for bit (L, the bound,
 * r, Y); returns the number of leaves that differ, or -1 without AVX-512. */
int64_t sws_check_builds(void *p, const double *mu, const double *lam, const double *logc)
{
#ifdef SWS_X86
    ws_t *ws = p;
    if (!have_avx512()) return -1;
    const double *smu = ws->mu, *slam = ws->lam, *slogc = ws->logc;
    ws->mu = mu; ws->lam = lam; ws->logc = logc;
    int64_t bad = 0;
    int lv[8], n = 0;
    double L8[8][4], err[8], r8[ws->J * 8], Y8[ws->J * 8];
    for (int l = 0; l <= ws->L; l++) {
        if (l < ws->L && ws->off[l + 1] - ws->off[l] >= 2) lv[n++] = l;
        if (n == 8 || (l == ws->L && n > 0)) {
            expansion8(ws, lv, n, L8, r8, Y8, err);
            for (int i = 0; i < n; i++) {
                int k = ws->off[lv[i] + 1] - ws->off[lv[i]];
                double L[4], r[MAXJ], Y[MAXJ];
                double e = expansion(ws, k, ws->idx + ws->off[lv[i]], ws->centre[lv[i]], ws->half[lv[i]], L, r, Y);
                int same = memcmp(L, L8[i], sizeof(L)) == 0 && memcmp(&e, err + i, sizeof(e)) == 0;
                for (int q = 0; q < k; q++)
                    same &= memcmp(r + q, r8 + 8 * q + i, sizeof(double)) == 0
                            && memcmp(Y + q, Y8 + 8 * q + i, sizeof(double)) == 0;
                bad += !same;
            }
            n = 0;
        }
    }
    ws->mu = smu; ws->lam = slam; ws->logc = slogc;
    return bad;
#else
    (void)p; (void)mu; (void)lam; (void)logc;
    return -1;
#endif
}

/* The leaf before which half of the leaves that held weights at the last call lie. */
static int half_of_builds(const ws_t *ws)
{
    int n = 0, m = 0;
    if (!ws->cnt) return ws->L / 2;
    for (int l = 0; l < ws->L; l++) n += ws->cnt[l] > 0.0;
    for (int l = 0; l < ws->L; l++)
        if ((m += ws->cnt[l] > 0.0) > n / 2) return l;
    return ws->L / 2;
}

/* Build, before the pass, the leaves that held weights at the last call (ws->cnt), those of
 * b0 .. b1 - 1 (the other job takes the rest, a range of its own: no cache line of the
 * tables is written by both threads but at the border): one after another the builds
 * overlap in the CPU, where inside the pass each waits for the one before.  A leaf that the
 * other thread has claimed is left to it; one without weights this time is only wasted work;
 * the numbers are build_leaf's either way. */
static void prebuild(const ws_t *ws, thr_t *th, int b0, int b1)
{
    if (!ws->cnt) return;
#ifdef SWS_X86
    if (have_avx512()) {
        prebuild_avx512(ws, th, b0, b1);
        return;
    }
#endif
    for (int l = b0; l < b1; l++)
        if (ws->cnt[l] > 0.0 && __atomic_load_n(&ws->coef[l].state, __ATOMIC_ACQUIRE) == UNBUILT)
            build_leaf(ws, th, l);
}

/* The moments the last call left in thread t's copy (of the leaves in ws->dirty and the
 * off-grid dummy, never read), zeroed by the job that adds to them next (or by sws_eval for
 * a thread this call does not use): in parallel, and into the cache of the core that uses them. */
static void clear_moments(const ws_t *ws, int t)
{
    if (t >= ws->dirty_used) return;
    double *mom = ws->th[t].mom;
    int words = (ws->L + 63) / 64;
    for (int q = 0; q < words; q++)
        for (uint64_t b = ws->dirty[q]; b; b &= b - 1)
            memset(mom + (int64_t)(q * 64 + __builtin_ctzll(b)) * K * 4, 0, sizeof(double) * K * 4);
    memset(mom + (int64_t)ws->L * K * 4, 0, sizeof(double) * K * 4);
}

static void run_job(job_t *j)
{
    ws_t *ws = j->ws;
    thr_t *th = ws->th + j->t;
    clear_moments(ws, j->t);
    if (getenv("SWS_NO_WARM") == NULL) warm(ws, th);
    prebuild(ws, th, j->b0, j->b1);
    int64_t base = 0;
    for (int q = 0; q < j->nt; q++) {
        int64_t a = j->start > base ? j->start - base : 0;
        int64_t b = j->stop - base < j->n[q] ? j->stop - base : j->n[q];
        if (b > a) {
            float *g = j->grad ? j->grad[q] + a : NULL;
            const float *w = j->w[q] + a;
            int64_t i0 = base + a - j->start;
#ifdef SWS_X86
            if (ws->hot_on) pass_modes_hot(ws, th, w, g, b - a, j->mode, j->scale);
            else if (have_avx512()) pass_modes_avx512(ws, th, w, g, b - a, i0, j->mode, j->scale);
            else if (have_avx2()) pass_modes_avx2(ws, th, w, g, b - a, i0, j->mode, j->scale);
            else
#endif
            pass_modes_generic(ws, th, w, g, b - a, i0, j->mode, j->scale);
        }
        base += j->n[q];
    }
}

/* Two jobs at once.  Job a runs on the calling thread; job b is claimed by the first
 * thread to get to it: a second thread, or the calling thread once it has finished a.
 * Each job keeps its own sums and moments (whichever thread runs it), so the result
 * does not depend on who ran what, only on the split.
 *
 * The second thread is preferably one of the OpenMP team of the process (PyTorch's,
 * found at run time through the GOMP entry points, so the extension links against no
 * OpenMP itself): those are the threads PyTorch just used, so job b starts at once
 * instead of waiting for a thread to wake or competing with a spinning one.  On a
 * machine so loaded that the team's second thread starts late or is descheduled (the
 * region lasting far longer than the calling thread's own job, twice in a row), the end
 * of the parallel region waits for it; the next 64 calls then use a persistent worker
 * thread of our own, which the calling thread never waits for unless it has started. */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_fn)(void);
static struct { gomp_parallel_fn parallel; omp_int_fn num, thread; int known, late, fallback; } omp;

static void find_omp(void)
{
    if (omp.known) return;
    if (getenv("SWS_KERNEL_NO_OMP") == NULL) {
        omp.parallel = (gomp_parallel_fn)dlsym(RTLD_DEFAULT, "GOMP_parallel");
        omp.num = (omp_int_fn)dlsym(RTLD_DEFAULT, "omp_get_num_threads");
        omp.thread = (omp_int_fn)dlsym(RTLD_DEFAULT, "omp_get_thread_num");
        if (!omp.num || !omp.thread) omp.parallel = NULL;
    }
    omp.known = 1;
}

static int claim(job_t *j)
{
    return __atomic_exchange_n(&j->claimed, 1, __ATOMIC_ACQ_REL) == 0;
}

typedef struct { job_t *a, *b; int late; double t_a; } pair_t;

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void omp_body(void *arg)
{
    pair_t *pr = arg;
    int t = omp.thread();
    if (t == 0) {
        double t0 = seconds();
        run_job(pr->a);
        pr->t_a = seconds() - t0;
        if (claim(pr->b)) {
            run_job(pr->b);
            pr->late = 1;
        }
    } else if (t == 1 && claim(pr->b)) {
        run_job(pr->b);
    }
}

/* A persistent second thread (created on first use; again after a fork).  The claim of
 * job b happens under the mutex, so that a late worker never touches a finished call's
 * jobs. */
static struct {
    pthread_mutex_t m;
    pthread_cond_t go, done;
    job_t *job;                 /* offered and not yet taken by the calling thread */
    int busy, started;          /* busy: the worker runs the job it claimed */
    pid_t pid;
} worker = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
            NULL, 0, 0, 0};
static pthread_mutex_t worker_use = PTHREAD_MUTEX_INITIALIZER;

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&worker.m);
    for (;;) {
        while (!worker.job) pthread_cond_wait(&worker.go, &worker.m);
        job_t *j = worker.job;
        worker.job = NULL;
        if (!claim(j)) continue;
        worker.busy = 1;
        pthread_mutex_unlock(&worker.m);
        run_job(j);
        pthread_mutex_lock(&worker.m);
        worker.busy = 0;
        pthread_cond_signal(&worker.done);
    }
    return NULL;
}

static int start_worker(void)
{
    if (worker.started && worker.pid == getpid()) return 0;
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_cond_init(&worker.go, NULL);
    pthread_cond_init(&worker.done, NULL);
    worker.job = NULL;
    worker.busy = 0;
    int err = pthread_create(&th, &attr, worker_main, NULL);
    pthread_attr_destroy(&attr);
    if (err) return -1;
    worker.started = 1;
    worker.pid = getpid();
    return 0;
}

/* Run jobs a and b, a here; returns 0, or -1 when no second thread could be had (then
 * nothing ran). */
static int run_two(job_t *a, job_t *b)
{
    find_omp();
    a->claimed = 1;
    b->claimed = 0;
    if (omp.parallel && omp.fallback == 0) {
        pair_t pr = {a, b, 0, 0.0};
        double t0 = seconds();
        omp.parallel(omp_body, &pr, 2, 0);
        /* late: the team's second thread did not start, or the region lasted far longer
         * than the calling thread's own job (its partner was descheduled) */
        if (seconds() - t0 > 3.0 * pr.t_a + 2e-4) pr.late = 1;
        omp.late = pr.late ? omp.late + 1 : 0;
        if (omp.late >= 2) {
            omp.fallback = 64;
            omp.late = 0;
        }
        return 0;
    }
    if (omp.fallback > 0) omp.fallback--;
    pthread_mutex_lock(&worker_use);
    pthread_mutex_lock(&worker.m);
    if (start_worker() != 0) {
        pthread_mutex_unlock(&worker.m);
        pthread_mutex_unlock(&worker_use);
        return -1;
    }
    worker.job = b;
    pthread_cond_signal(&worker.go);
    pthread_mutex_unlock(&worker.m);
    run_job(a);
    pthread_mutex_lock(&worker.m);
    int mine = worker.job == b && claim(b);     /* not taken yet: ours */
    if (worker.job == b) worker.job = NULL;
    pthread_mutex_unlock(&worker.m);
    if (mine) {
        run_job(b);
    } else {
        pthread_mutex_lock(&worker.m);
        while (worker.busy) pthread_cond_wait(&worker.done, &worker.m);
        pthread_mutex_unlock(&worker.m);
    }
    pthread_mutex_unlock(&worker_use);
    return 0;
}

/* Sum the threads' moments and sums into out (1 + 3J: log p, S0, S1, S2) and mark the
 * coarse cells that held weights. */
static void finish(ws_t *ws, int nthreads, double *out, double *range)
{
    int J = ws->J, words = (ws->L + 63) / 64;
    double *S0 = out + 1, *S1 = out + 1 + J, *S2 = out + 1 + 2 * J;
    memset(out, 0, sizeof(double) * (1 + 3 * J));
    memset(ws->occ, 0, sizeof(int32_t) * ws->G);
    memset(ws->cnt, 0, sizeof(double) * ws->L);
    for (int t = 0; t < nthreads; t++)
        for (int q = 0; q < 1 + 3 * J; q++) out[q] += ws->th[t].acc[q];
    for (int q = 0; q < words; q++) {
        uint64_t b = ws->th[0].built[q];
        if (nthreads > 1) b |= ws->th[1].built[q];
        while (b) {
            int l = q * 64 + __builtin_ctzll(b);
            b &= b - 1;
            const coef_t *cf = ws->coef + l;
            double m[4] = {0.0, 0.0, 0.0, 0.0};
            for (int t = 0; t < nthreads; t++) {   /* zero where thread t held none */
                const double *mt = ws->th[t].mom + (int64_t)l * K * 4;
                for (int k = 0; k < K; k++)
                    for (int p = 0; p < 4; p++) m[p] += mt[4 * k + p];
            }
            if (m[0] == 0.0) continue;             /* built for the hot window, no weights */
            ws->cnt[l] = m[0];
            range[0] = fmin(range[0], ws->centre[l] - ws->half[l]);
            range[1] = fmax(range[1], ws->centre[l] + ws->half[l]);
            int32_t *oc = ws->occ + ((ws->start[l] - 1) >> ws->D);
            *oc = (double)*oc + m[0] >= (double)INT32_MAX ? INT32_MAX : *oc + (int32_t)m[0];
            if (cf->state != EXPAND) continue;
            /* sum over the leaf's weights of the Taylor series in d, truncated after d^3:
             *   log p:  F + F' d + F'' d^2 / 2 + F''' d^3 / 6
             *   S0_j:   r + r' d + r'' d^2 / 2 + r''' d^3 / 6                      (= R(d))
             *   S1_j:   R(d) (d0 + d),   S2_j: R(d) (d0 + d)^2,   d0 = c - mu_j */
            double x = ws->centre[l];
            out[0] += cf->L[0] * m[0] + cf->L[1] * m[1] + 0.5 * cf->L[2] * m[2] + cf->L[3] * m[3] / 6.0;
            const double *r4 = ws->r4 + 4 * (int64_t)ws->off[l];
            for (int e = ws->off[l]; e < ws->off[l + 1]; e++, r4 += 4) {
                int j = ws->idx[e];
                double c0 = r4[0], c1 = r4[1], c2 = 0.5 * r4[2], c3 = r4[3] / 6.0, d0 = x - ws->mu[j];
                S0[j] += c0 * m[0] + c1 * m[1] + c2 * m[2] + c3 * m[3];
                S1[j] += c0 * d0 * m[0] + (c1 * d0 + c0) * m[1] + (c2 * d0 + c1) * m[2]
                       + (c3 * d0 + c2) * m[3];
                S2[j] += c0 * d0 * d0 * m[0] + (c1 * d0 * d0 + 2.0 * c0 * d0) * m[1]
                       + (c2 * d0 * d0 + 2.0 * c1 * d0 + c0) * m[2]
                       + (c3 * d0 * d0 + 2.0 * c2 * d0 + c1) * m[3];
            }
        }
    }
    choose_hot(ws);
}

/* Evaluate nt float32 tensors w[q] of n[q] weights (one logical sequence) for the
 * mixture (mu, lam, logc) on the planned geometry.  mode: 0 no gradient, 1 grad[q]
 * receives dC/dw, 2 grad[q] gets scale * dC/dw added.  Writes sum log p and S0, S1,
 * S2 to out (1 + 3J) and, to info: [0] the weights evaluated exactly, [1], [2] the
 * range of the finite weights (widened to the leaves that held them), [3] the leaves
 * built.  threads > 1: split over two threads when there are at
 * least min_parallel weights.  Returns 0, or -1 without a plan for J components. */
int sws_eval(void *p, int J, const double *mu, const double *lam, const double *logc,
             int nt, const float *const *w, const int64_t *n, float *const *grad, int mode,
             float scale, int threads, int64_t min_parallel, double *out, double *info)
{
    ws_t *ws = p;
    if (ws->J != J || ws->L == 0) return -1;
    ws->mu = mu; ws->lam = lam; ws->logc = logc;
    reset(ws);
    ws->hot_on = 0;
#ifdef SWS_X86
    if (ws->hot0 >= 0 && have_hot()) {     /* the hot window's leaves built first */
        int ok = 1;
        for (int i = 0; i < HOT; i++) ok &= build_leaf(ws, ws->th, ws->hot0 + i) == EXPAND;
        ws->hot_on = ok;
    }
#endif
    int64_t total = 0;
    for (int q = 0; q < nt; q++) total += n[q];
    job_t a = {ws, 0, nt, mode, w, mode == NO_GRAD ? NULL : grad, n, 0, total, scale, 0, 0, ws->L};
    int used = 1;
    if (threads > 1 && total >= min_parallel) {
        job_t b = a;
        b.t = 1;
        a.stop = b.start = total / 2;
        a.b1 = b.b0 = half_of_builds(ws);
        if (run_two(&a, &b) == 0) used = 2;
        else { a.stop = total; a.b1 = ws->L; run_job(&a); }
    } else {
        run_job(&a);
    }
    double range[2] = {ws->th[0].lo, ws->th[0].hi};
    if (used > 1) {
        range[0] = fmin(range[0], ws->th[1].lo);
        range[1] = fmax(range[1], ws->th[1].hi);
    }
    for (int t = used; t < ws->dirty_used; t++) clear_moments(ws, t);   /* not used this call */
    ws->used = used;
    finish(ws, used, out, range);
    info[0] = (double)ws->th[0].n_exact + (used > 1 ? (double)ws->th[1].n_exact : 0.0);
    info[1] = range[0];
    info[2] = range[1];
    info[3] = (double)ws->th[0].n_built + (used > 1 ? (double)ws->th[1].n_built : 0.0);
    return 0;
}

/* ------------------------------------------------- the mixture's parameters */

/* mu, lam, logc, log pi (J each, float64) from the parameters (float32): means (J-1),
 * log-precisions gamma (J), mixing logits rho (J-1) and pi0's logit. */
void sws_mixture(int J, const float *means, const float *gamma, const float *rho, double pi0_logit,
                 double *mu, double *lam, double *logc, double *logpi)
{
    double t = pi0_logit;
    /* log sigmoid(t) and log sigmoid(-t), accurate for large |t| */
    double ls_pos = t >= 0 ? -log1p(exp(-t)) : t - log1p(exp(t));
    double ls_neg = ls_pos - t;
    double m = -INFINITY, s = 0.0;
    for (int k = 0; k < J - 1; k++) m = rho[k] > m ? rho[k] : m;
    for (int k = 0; k < J - 1; k++) s += exp(rho[k] - m);
    double lse = m + log(s);
    mu[0] = 0.0;
    logpi[0] = ls_pos;
    for (int k = 1; k < J; k++) {
        mu[k] = means[k - 1];
        logpi[k] = ls_neg + (rho[k - 1] - lse);
    }
    for (int j = 0; j < J; j++) {
        lam[j] = exp((double)gamma[j]);
        logc[j] = logpi[j] + 0.5 * gamma[j] - 0.9189385332046728;   /* log(2 pi) / 2 */
    }
}

/* From out (sum log p, S0, S1, S2) of sws_eval: C = -sum log p + hyper-prior, returned,
 * and scale * dC/dp added to the float32 gradients of the parameters (any may be NULL):
 * means (J-1), gamma (J), rho (J-1), pi0's logit (when learned: Beta(a, b) prior on pi0).
 * Bit q of set (1 means, 2 gamma, 4 rho, 8 pi0) sets that gradient to 0 + its term instead
 * of adding to it (the same bits as adding to zeros). */
#define GRAD_TO(g, i, set, v) ((g)[i] = ((set) ? 0.0f : (g)[i]) + (v))
static double backward(int J, const double *out, const double *lam, const double *logpi,
                       const float *gamma, double pi0_logit, int learn_pi0, double pi0_a, double pi0_b,
                       const float *alpha, const float *beta, double scale, float *g_means,
                       float *g_gamma, float *g_rho, float *g_pi0, int set)
{
    const double *S0 = out + 1, *S1 = out + 1 + J, *S2 = out + 1 + 2 * J;
    double C = -out[0];
    for (int j = 0; j < J; j++) {
        C += (1.0 - alpha[j]) * gamma[j] + beta[j] * lam[j];
        if (g_gamma) {
            double d = 0.5 * lam[j] * S2[j] - 0.5 * S0[j] + (1.0 - alpha[j]) + beta[j] * lam[j];
            GRAD_TO(g_gamma, j, set & 2, (float)(scale * d));
        }
    }
    if (g_means)
        for (int k = 1; k < J; k++) GRAD_TO(g_means, k - 1, set & 1, (float)(scale * (-lam[k] * S1[k])));
    /* d/d log pi_j = -S0_j;  log pi_0 = log sigmoid(t), log pi_k = log sigmoid(-t) + log_softmax(rho)_k */
    double t = pi0_logit, rest = 0.0;
    double ls_pos = t >= 0 ? -log1p(exp(-t)) : t - log1p(exp(t)), ls_neg = ls_pos - t;
    for (int k = 1; k < J; k++) rest -= S0[k];
    if (g_rho)
        for (int k = 1; k < J; k++) {
            double soft = exp(logpi[k] - ls_neg);       /* softmax(rho)_k */
            GRAD_TO(g_rho, k - 1, set & 4, (float)(scale * (-S0[k] - soft * rest)));
        }
    if (learn_pi0) {
        double sig = exp(ls_pos), sig_neg = exp(ls_neg);
        C -= (pi0_a - 1.0) * ls_pos + (pi0_b - 1.0) * ls_neg;
        if (g_pi0) {
            double d = -S0[0] * sig_neg - sig * rest - (pi0_a - 1.0) * sig_neg + (pi0_b - 1.0) * sig;
            GRAD_TO(g_pi0, 0, set & 8, (float)(scale * d));
        }
    }
    return C;
}

/* ------------------------------------------------------------ one training step */

/* Plan over the weights' range [lo, hi] (widened by a margin) for the mixture (mu, lam,
 * logc): G, a power of two in [32, 1024], follows the range against the sharpest
 * component's standard deviation. */
int sws_plan_range(void *p, int J, const double *mu, const double *lam, const double *logc,
                   double lo, double hi, double cut)
{
    double margin = 0.05 * (hi - lo) + 1e-6, width = hi - lo + 2.0 * margin, lmax = 0.0;
    for (int j = 0; j < J; j++) lmax = lam[j] > lmax ? lam[j] : lmax;
    double cells = width * sqrt(lmax);
    int G = 32;
    while (G < 1024 && G < cells) G *= 2;
    return sws_plan(p, J, mu, lam, logc, lo - margin, width / G, G, cut);
}

/* The training loop's call: from the mixture's float32 parameters (means, gamma, rho and
 * pi0's logit; a Beta(a, b) prior on pi0 when learn_pi0), plan first when plan is set
 * (over the range [lo, hi]), evaluate the nt tensors w (n[q] weights each) adding
 * scale * dC/dw to grad[q], and add scale * dC/dp to the parameters' float32 gradients
 * (any may be NULL; bit q of set: that one set, as backward's).  mix: 4J float64
 * scratch (mu, lam, logc, log pi); out, info as for sws_eval, info[4] = 0 or the error
 * (-1: out of memory planning).  acc, when not NULL, gets C * acc_factor added (the
 * loop's running sum).  Returns C. */
double sws_train_step(void *p, int J, const float *means, const float *gamma, const float *rho,
                      const float *pi0_logit, int learn_pi0, double pi0_a, double pi0_b,
                      const float *alpha, const float *beta, int nt, const float *const *w,
                      const int64_t *n, float *const *grad, float scale, int threads,
                      int64_t min_parallel, int plan, double lo, double hi, double cut,
                      float *g_means, float *g_gamma, float *g_rho, float *g_pi0, int set,
                      double *mix, double *out, double *info, double *acc, double acc_factor)
{
    double *mu = mix, *lam = mix + J, *logc = mix + 2 * J, *logpi = mix + 3 * J;
    sws_mixture(J, means, gamma, rho, *pi0_logit, mu, lam, logc, logpi);
    info[4] = 0.0;
    if ((plan || ((ws_t *)p)->J != J) && sws_plan_range(p, J, mu, lam, logc, lo, hi, cut) != 0) {
        info[4] = -1.0;
        return NAN;
    }
    sws_eval(p, J, mu, lam, logc, nt, w, n, grad, ADD_GRAD, scale, threads, min_parallel, out, info);
    double C = backward(J, out, lam, logpi, gamma, *pi0_logit, learn_pi0, pi0_a, pi0_b, alpha, beta,
                        scale, g_means, g_gamma, g_rho, g_pi0, set);
    if (acc) *acc += C * acc_factor;
    return C;
}

/* ------------------------------------------------ the training step from Python, bound */

/* kernel.py's _Binding, for the training loop's call (prior_backward): the tensors it was
 * made for and what the call needs besides, so that a step checks them and calls
 * sws_train_step without the Python around a ctypes call (after a forward and backward pass
 * that Python's own lines cost about 70 us a step, the C call itself 600-1,000: RESULTS.md, tenth
 * session).  Every object here is
 * borrowed: the binding that owns the capsule holds them. */
static const char *const PRIOR_NAMES[6] = {"means", "log_precisions", "mixing_logits", "pi0_logit",
                                           "alpha", "beta"};
typedef struct {
    PyObject *prior, *ws, *params, *buffers, *nthreads, *acc;
    PyObject *t[6], *w[64], *learn[4], *gbuf[4];
    uintptr_t tp[6], wp[64], handle;
    int nt, nl, wanted[4], J, learn_pi0;
    const void *w_arr, *n_arr;
    void **g_arr;
    double cut, *mix, *out, *acc_ptr, info[5];
    long long n_total, min_parallel, sets_every;
} bind_t;

static PyObject *S_grad, *S_data_ptr, *S_is_contiguous, *S_requires_grad, *S_calls, *S_J, *S_lo,
    *S_hi, *S_n_exact, *S_n_seen, *S_n_built, *S_handle, *S_config, *S_pi0_a, *S_pi0_b;

static void unbind(PyObject *cap)
{
    PyMem_Free(PyCapsule_GetPointer(cap, "sws.bind"));
}

static int as_ptr(PyObject *o, uintptr_t *p)
{
    *p = (uintptr_t)PyLong_AsVoidPtr(o);
    return PyErr_Occurred() ? -1 : 0;
}

/* bind(prior, ws, params, buffers, tensors, weights, learn, wanted, grads, J, learn_pi0, cut, mix,
 *      out, w_arr, n_arr, g_arr, n_total, min_parallel, nthreads, acc, acc_ptr)
 * (tuples for tensors .. grads; addresses as ints; nthreads: torch.get_num_threads) */
static PyObject *py_bind(PyObject *self, PyObject *const *a, Py_ssize_t na)
{
    (void)self;
    if (na != 22 || !PyTuple_Check(a[4]) || PyTuple_GET_SIZE(a[4]) != 6 || !PyTuple_Check(a[5])
        || PyTuple_GET_SIZE(a[5]) > 64 || !PyTuple_Check(a[6]) || PyTuple_GET_SIZE(a[6]) > 4
        || !PyTuple_Check(a[7]) || !PyTuple_Check(a[8])
        || PyTuple_GET_SIZE(a[7]) != PyTuple_GET_SIZE(a[6]) || PyTuple_GET_SIZE(a[8]) != PyTuple_GET_SIZE(a[6])) {
        PyErr_SetString(PyExc_TypeError, "bind: bad arguments");
        return NULL;
    }
    bind_t *b = PyMem_Calloc(1, sizeof(bind_t));
    if (!b) return PyErr_NoMemory();
    b->prior = a[0]; b->ws = a[1]; b->params = a[2]; b->buffers = a[3];
    b->nt = (int)PyTuple_GET_SIZE(a[5]);
    b->nl = (int)PyTuple_GET_SIZE(a[6]);
    PyObject *h = PyObject_GetAttr(b->ws, S_handle), *ev = PyObject_GetAttrString(b->ws, "SETS_EVERY");
    int bad = !h || !ev || as_ptr(h, &b->handle);
    b->sets_every = ev ? PyLong_AsLongLong(ev) : 0;
    Py_XDECREF(h); Py_XDECREF(ev);
    for (int i = 0; i < 6 && !bad; i++) {
        PyObject *p = PyObject_CallMethodNoArgs(b->t[i] = PyTuple_GET_ITEM(a[4], i), S_data_ptr);
        bad = !p || as_ptr(p, b->tp + i);
        Py_XDECREF(p);
    }
    for (int i = 0; i < b->nt && !bad; i++) {
        PyObject *p = PyObject_CallMethodNoArgs(b->w[i] = PyTuple_GET_ITEM(a[5], i), S_data_ptr);
        bad = !p || as_ptr(p, b->wp + i);
        Py_XDECREF(p);
    }
    for (int i = 0; i < b->nl && !bad; i++) {
        b->learn[i] = PyTuple_GET_ITEM(a[6], i);
        b->wanted[i] = PyObject_IsTrue(PyTuple_GET_ITEM(a[7], i));
        b->gbuf[i] = PyTuple_GET_ITEM(a[8], i);
    }
    uintptr_t mix = 0, out = 0, w_arr = 0, n_arr = 0, g_arr = 0, accp = 0;
    if (!bad) {
        b->J = (int)PyLong_AsLong(a[9]);
        b->learn_pi0 = PyObject_IsTrue(a[10]);
        b->cut = PyFloat_AsDouble(a[11]);
        bad = as_ptr(a[12], &mix) || as_ptr(a[13], &out) || as_ptr(a[14], &w_arr) || as_ptr(a[15], &n_arr)
              || as_ptr(a[16], &g_arr);
        b->n_total = PyLong_AsLongLong(a[17]);
        b->min_parallel = PyLong_AsLongLong(a[18]);
        b->nthreads = a[19];
        b->acc = a[20];
        if (!bad && a[21] != Py_None) bad = as_ptr(a[21], &accp);
        bad = bad || PyErr_Occurred();
    }
    if (bad) {
        PyMem_Free(b);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "bind: bad arguments");
        return NULL;
    }
    b->mix = (double *)mix; b->out = (double *)out; b->acc_ptr = (double *)accp;
    b->w_arr = (const void *)w_arr; b->n_arr = (const void *)n_arr; b->g_arr = (void **)g_arr;
    PyObject *cap = PyCapsule_New(b, "sws.bind", unbind);
    if (!cap) PyMem_Free(b);
    return cap;
}

/* o.data_ptr() == want; -1 on an error */
static int same_ptr(PyObject *o, uintptr_t want)
{
    PyObject *p = PyObject_CallMethodNoArgs(o, S_data_ptr);
    if (!p) return -1;
    uintptr_t v = (uintptr_t)PyLong_AsVoidPtr(p);
    Py_DECREF(p);
    return PyErr_Occurred() ? -1 : v == want;
}

/* o.attr += v (an int) */
static int add_to(PyObject *o, PyObject *attr, long long v)
{
    PyObject *x = PyObject_GetAttr(o, attr), *d = x ? PyLong_FromLongLong(v) : NULL;
    PyObject *s = d ? PyNumber_Add(x, d) : NULL;
    int rc = s ? PyObject_SetAttr(o, attr, s) : -1;
    Py_XDECREF(x); Py_XDECREF(d); Py_XDECREF(s);
    return rc;
}

static int set_attr(PyObject *o, PyObject *attr, PyObject *v)
{
    if (!v) return -1;
    int rc = PyObject_SetAttr(o, attr, v);
    Py_DECREF(v);
    return rc;
}

/* train_step(capsule, prior, weights, scale, acc, factor): prior_backward's C-kernel call.
 * Returns C (a float), or None where the binding no longer fits or the call needs what only
 * the Python path does (a gradient to create, a tensor not contiguous, another running sum);
 * nothing has changed then. */
static PyObject *py_train_step(PyObject *self, PyObject *const *a, Py_ssize_t na)
{
    (void)self;
    bind_t *b = na == 6 ? PyCapsule_GetPointer(a[0], "sws.bind") : NULL;
    if (!b) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "train_step: bad arguments");
        return NULL;
    }
    PyObject *prior = a[1], *weights = a[2], *acc = a[4];
    double scale = PyFloat_AsDouble(a[3]), factor = PyFloat_AsDouble(a[5]);
    if (PyErr_Occurred()) return NULL;
    if (prior != b->prior || !(PyList_Check(weights) || PyTuple_Check(weights))
        || PySequence_Fast_GET_SIZE(weights) != b->nt || (acc != Py_None && (acc != b->acc || !b->acc_ptr)))
        Py_RETURN_NONE;
    PyObject **wl = PySequence_Fast_ITEMS(weights);
    /* the same tensors, the same storage */
    for (int i = 0; i < 6; i++) {
        PyObject *t = PyDict_GetItemString(b->params, PRIOR_NAMES[i]);
        if (!t) t = PyDict_GetItemString(b->buffers, PRIOR_NAMES[i]);
        int s = t == b->t[i] ? same_ptr(t, b->tp[i]) : 0;
        if (s <= 0) { if (s < 0) return NULL; Py_RETURN_NONE; }
    }
    for (int i = 0; i < b->nt; i++) {
        PyObject *w = wl[i];
        int s = w == b->w[i] ? same_ptr(w, b->wp[i]) : 0;
        if (s <= 0) { if (s < 0) return NULL; Py_RETURN_NONE; }
    }
    for (int q = 0; q < b->nl; q++) {
        PyObject *r = PyObject_GetAttr(b->learn[q], S_requires_grad);
        if (!r) return NULL;
        int on = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (on != b->wanted[q]) Py_RETURN_NONE;
    }
    PyObject *h = PyObject_GetAttr(b->ws, S_handle);
    if (!h) return NULL;
    uintptr_t hv = h == Py_None ? 0 : (uintptr_t)PyLong_AsVoidPtr(h);
    Py_DECREF(h);
    if (PyErr_Occurred()) return NULL;
    if (hv != b->handle) Py_RETURN_NONE;
    /* the weights' gradients (new tensors at every step), held until the call has run */
    PyObject *gw[64], *pg[4] = {NULL, NULL, NULL, NULL};
    int ng = 0, setting = 0, fail = 0;
    for (; ng < b->nt && !fail; ng++) {
        PyObject *g = gw[ng] = PyObject_GetAttr(wl[ng], S_grad);
        if (!g) { fail = -1; break; }
        PyObject *c = g == Py_None ? NULL : PyObject_CallMethodNoArgs(g, S_is_contiguous);
        PyObject *p = c == Py_True ? PyObject_CallMethodNoArgs(g, S_data_ptr) : NULL;
        Py_XDECREF(c);
        if (!p) { fail = PyErr_Occurred() ? -1 : 1; ng++; break; }
        b->g_arr[ng] = PyLong_AsVoidPtr(p);
        Py_DECREF(p);
        if (PyErr_Occurred()) fail = -1;
    }
    /* the mixture's: checked first, then a missing one given its buffer (set, not added to) */
    void *pp[4] = {NULL, NULL, NULL, NULL};
    for (int q = 0; q < b->nl && !fail; q++) {
        if (!b->wanted[q]) continue;
        if (!(pg[q] = PyObject_GetAttr(b->learn[q], S_grad))) { fail = -1; break; }
        if (pg[q] != Py_None && pg[q] != b->gbuf[q]) {
            PyObject *c = PyObject_CallMethodNoArgs(pg[q], S_is_contiguous);
            fail = !c ? -1 : c != Py_True;
            Py_XDECREF(c);
        }
    }
    for (int q = 0; q < b->nl && !fail; q++) {
        if (!b->wanted[q]) continue;
        if (pg[q] == Py_None) {
            if (PyObject_SetAttr(b->learn[q], S_grad, b->gbuf[q]) < 0) { fail = -1; break; }
            Py_DECREF(pg[q]);
            Py_INCREF(b->gbuf[q]);
            pg[q] = b->gbuf[q];
            setting |= 1 << q;
        }
        PyObject *p = PyObject_CallMethodNoArgs(pg[q], S_data_ptr);
        if (!p) { fail = -1; break; }
        pp[q] = PyLong_AsVoidPtr(p);
        Py_DECREF(p);
        if (PyErr_Occurred()) fail = -1;
    }
    PyObject *res = NULL;
    if (fail) {
        if (fail > 0) { Py_INCREF(Py_None); res = Py_None; }
        goto done;
    }
    /* the workspace's counters, as the Python path keeps them; the plan as Workspace.count_call decides */
    PyObject *calls = PyObject_GetAttr(b->ws, S_calls), *J = calls ? PyObject_GetAttr(b->ws, S_J) : NULL;
    PyObject *lo = J ? PyObject_GetAttr(b->ws, S_lo) : NULL, *hi = lo ? PyObject_GetAttr(b->ws, S_hi) : NULL;
    PyObject *nth = hi ? PyObject_CallNoArgs(b->nthreads) : NULL;
    PyObject *cfg = nth ? PyObject_GetAttr(prior, S_config) : NULL;
    PyObject *pa = cfg ? PyObject_GetAttr(cfg, S_pi0_a) : NULL, *pb = pa ? PyObject_GetAttr(cfg, S_pi0_b) : NULL;
    double pi0_a = pb ? PyFloat_AsDouble(pa) : 0.0, pi0_b = pb ? PyFloat_AsDouble(pb) : 0.0;
    Py_XDECREF(cfg); Py_XDECREF(pa); Py_XDECREF(pb);
    long long nc = calls ? PyLong_AsLongLong(calls) : 0;
    long Jv = J && J != Py_None ? PyLong_AsLong(J) : -1;
    double lov = lo ? PyFloat_AsDouble(lo) : 0.0, hiv = hi ? PyFloat_AsDouble(hi) : 0.0;
    long threads = nth ? PyLong_AsLong(nth) : 0;
    Py_XDECREF(calls); Py_XDECREF(J); Py_XDECREF(lo); Py_XDECREF(hi); Py_XDECREF(nth);
    if (!pb || PyErr_Occurred() || b->sets_every <= 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "train_step: bad workspace");
        goto done;
    }
    int plan = nc % b->sets_every == 0 || Jv != b->J;
    if (set_attr(b->ws, S_calls, PyLong_FromLongLong(nc + 1)) < 0) goto done;
    void *tp[6];
    for (int i = 0; i < 6; i++) tp[i] = (void *)b->tp[i];
    double C;
    Py_BEGIN_ALLOW_THREADS      /* as ctypes does: other Python threads run meanwhile */
    C = sws_train_step((void *)b->handle, b->J, tp[0], tp[1], tp[2], tp[3], b->learn_pi0, pi0_a,
                              pi0_b, tp[4], tp[5], b->nt, (const float *const *)b->w_arr,
                              (const int64_t *)b->n_arr, (float *const *)b->g_arr, (float)scale,
                              threads > 1 ? 2 : 1, b->min_parallel, plan, lov, hiv, b->cut, pp[0], pp[1],
                              pp[2], pp[3], setting, b->mix, b->out, b->info, acc == Py_None ? NULL : b->acc_ptr,
                              factor);
    Py_END_ALLOW_THREADS
    double *info = b->info;
    if (info[4] != 0.0) {
        PyErr_SetString(PyExc_MemoryError, "the prior's C kernel ran out of memory planning its grid");
        goto done;
    }
    if (set_attr(b->ws, S_J, PyLong_FromLong(b->J)) < 0 || add_to(b->ws, S_n_exact, (long long)info[0]) < 0
        || add_to(b->ws, S_n_seen, b->n_total) < 0 || set_attr(b->ws, S_n_built, PyLong_FromLongLong((long long)info[3])) < 0)
        goto done;
    if (info[1] - info[1] == 0.0 && info[2] - info[2] == 0.0
        && (set_attr(b->ws, S_lo, PyFloat_FromDouble(info[1])) < 0 || set_attr(b->ws, S_hi, PyFloat_FromDouble(info[2])) < 0))
        goto done;
    res = PyFloat_FromDouble(C);
done:
    for (int i = 0; i < ng; i++) Py_XDECREF(gw[i]);
    for (int q = 0; q < 4; q++) Py_XDECREF(pg[q]);
    return res;
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))py_bind, METH_FASTCALL, "Bind the training step's call (kernel.py)."},
    {"train_step", (PyCFunction)(void (*)(void))py_train_step, METH_FASTCALL,
     "The bound training step's call: C, or None where the Python path must run."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void)
{
    struct { PyObject **p; const char *s; } names[] = {
        {&S_grad, "grad"}, {&S_data_ptr, "data_ptr"}, {&S_is_contiguous, "is_contiguous"},
        {&S_requires_grad, "requires_grad"}, {&S_calls, "calls"}, {&S_J, "J"}, {&S_lo, "lo"}, {&S_hi, "hi"},
        {&S_n_exact, "n_exact"}, {&S_n_seen, "n_seen"}, {&S_n_built, "n_built"}, {&S_handle, "_handle"},
        {&S_config, "config"}, {&S_pi0_a, "pi0_a"}, {&S_pi0_b, "pi0_b"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!*names[i].p && !(*names[i].p = PyUnicode_InternFromString(names[i].s))) return NULL;
    return PyModule_Create(&module);
}

#ifdef SWS_X86
/* sws_snap with AVX-512, sixteen weights at a time: the count in a register (one compare and one
 * masked add per edge), the value by a permute (at most 16 values) or a gather. */
__attribute__((target("avx2,avx512f,avx512vl"))) static void
snap_avx512(float *w, float *saved, int64_t n, const float *edges, int ne, const float *values)
{
    const __m512i one = _mm512_set1_epi32(1);
    const __m512 table = _mm512_maskz_loadu_ps(ne + 1 >= 16 ? 0xFFFF : (__mmask16)((1u << (ne + 1)) - 1u), values);
    for (int64_t s = 0; s < n; s += 16) {
        __mmask16 valid = n - s >= 16 ? 0xFFFF : (__mmask16)((1u << (n - s)) - 1u);
        __m512 x = _mm512_maskz_loadu_ps(valid, w + s);
        _mm512_mask_storeu_ps(saved + s, valid, x);
        __m512i cnt = _mm512_setzero_si512();
        for (int j = 0; j < ne; j++) {
            __mmask16 gt = _mm512_cmp_ps_mask(x, _mm512_set1_ps(edges[j]), _CMP_GT_OQ);   /* NaN: false */
            cnt = _mm512_mask_add_epi32(cnt, gt, cnt, one);
        }
        __m512 v = ne + 1 <= 16 ? _mm512_permutexvar_ps(cnt, table)
                                : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, cnt, values, 4);
        _mm512_mask_storeu_ps(w + s, valid, v);
    }
}
#endif

/* The snap phase's swap (sws.method.snap): saved[i] = w[i], then w[i] = values[k] with k the
 * number of edges strictly below w[i] (torch.bucketize's convention; edges sorted ascending,
 * values has ne + 1 entries).  Per block of 256 weights (the last one padded), one compare per
 * edge over the block with a constant trip count, so the counting vectorises; NaN counts no edge. */
void sws_snap(float *w, float *saved, int64_t n, const float *edges, int ne, const float *values)
{
#ifdef SWS_X86
    if (have_avx512()) {
        snap_avx512(w, saved, n, edges, ne, values);
        return;
    }
#endif
    enum { B = 256 };
    int32_t cnt[B];
    float x[B];
    for (int64_t s = 0; s < n; s += B) {
        int m = (int)(n - s < B ? n - s : B);
        memcpy(x, w + s, (size_t)m * sizeof(float));
        memcpy(saved + s, x, (size_t)m * sizeof(float));
        for (int i = m; i < B; i++)
            x[i] = 0.0f;
        for (int i = 0; i < B; i++)
            cnt[i] = 0;
        for (int j = 0; j < ne; j++) {
            const float e = edges[j];
            for (int i = 0; i < B; i++)
                cnt[i] += x[i] > e;
        }
        for (int i = 0; i < m; i++)
            w[s + i] = values[cnt[i]];
    }
}
