/* Fused Gaussian-mixture prior over weight tensors (SPEC sections 1-2).
 *
 * For every weight w the kernel needs, in double precision and log space,
 *   log p(w) = logsumexp_j l_j(w),   l_j(w) = logc_j - lam_j (w - mu_j)^2 / 2,
 *   logc_j   = log pi_j + log(lam_j) / 2 - log(2 pi) / 2,
 * the gradient g(w) = dC/dw = sum_j r_j lam_j (w - mu_j) of C = -log p(w),
 * and the per-component sums S0 = sum r, S1 = sum r d, S2 = sum r d^2
 * (d = w - mu_j) that give the gradients of C for the mixture parameters.
 *
 * A table over a grid of G cells covering the weights' range makes this cheap.
 * For each cell it lists the components whose responsibility can exceed
 * exp(-cut) of the best one anywhere in the cell (kernel.py passes cut = 20
 * plus a margin: dropped terms change log p by less than J exp(-20), below
 * float32 resolution), and classifies it:
 *  - EXPAND: log p is, across the cell, a quadratic in the offset delta from
 *    the cell centre: exactly so when one component is active; to second
 *    order when several are but the responsibilities vary slowly across the
 *    cell (bounds on the neglected third-order terms, relative to the
 *    responsibilities and to the gradient's local scale, are <= SMOOTH).  A
 *    weight then costs a few flops: its gradient is -(L1 + L2 delta), and it
 *    adds 1, delta, delta^2 to the cell's moments, from which sws_finish
 *    forms log p and S0, S1, S2 for the whole cell.
 *  - EXACT: near a sharp boundary between components each weight is
 *    evaluated exactly over the cell's active components.
 * Weights outside the grid use every component, exactly.
 *
 * No Python API is used: the shared object is loaded with ctypes (kernel.py).
 */
#include <math.h>
#include <stdint.h>
#include <pthread.h>
#include <Python.h>

#define SMOOTH 1e-4
#define MAXJ 256
#define PARALLEL_MIN 32768     /* weights below which a second thread does not pay */

typedef struct {        /* one grid cell, read for every weight in it; 32 bytes */
    double L1, L2;      /* d log p / dw and d2 log p / dw2 at the centre (EXPAND) */
    double centre;
    int64_t exact;
} cell_t;

typedef struct {
    int J, G;
    double lo, h;
    const double *mu, *lam, *logc;
    int32_t *cnt, *idx;             /* per cell c: cnt[c] active components in idx[c*J ...] */
    double *r, *r1, *r2;            /* per active entry of an EXPAND cell: r_j and derivatives */
    cell_t *cells;
    double *L0;                     /* per cell: log p at the centre */
    double *mom;                    /* per cell: moments m0, m1, m2 of the weights' offsets */
    double *mom2, *out2;            /* the second thread's moments and sums */
    int64_t n_exact;                /* out: weights evaluated exactly (EXACT cells, off grid) */
} table_t;

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

/* List the active components of cells c0..c1-1 (cut: log-responsibility margin). */
static void build_sets(table_t *t, double cut, int c0, int c1)
{
    int J = t->J;
    const double *mu = t->mu, *lam = t->lam, *logc = t->logc;
    for (int c = c0; c < c1; c++) {
        double a = t->lo + c * t->h, b = a + t->h, best_lower = -INFINITY;
        for (int j = 0; j < J; j++) {
            double far = fmax(fabs(a - mu[j]), fabs(b - mu[j]));
            double lower = logc[j] - 0.5 * lam[j] * far * far;
            best_lower = lower > best_lower ? lower : best_lower;
        }
        int n = 0;
        int32_t *idx = t->idx + (int64_t)c * J;
        for (int j = 0; j < J; j++) {
            double near = mu[j] < a ? a - mu[j] : (mu[j] > b ? mu[j] - b : 0.0);
            if (logc[j] - 0.5 * lam[j] * near * near >= best_lower - cut) idx[n++] = j;
        }
        t->cnt[c] = n;
    }
}

/* Cells c0..c1-1: EXPAND coefficients or the EXACT flag, for the current mixture. */
static void build_table(table_t *t, int c0, int c1)
{
    const double *mu = t->mu, *lam = t->lam, *logc = t->logc;
    double hh = 0.5 * t->h;
    for (int c = c0; c < c1; c++) {
        cell_t *cell = t->cells + c;
        double x = t->lo + c * t->h + hh;
        int first = c * t->J, k = t->cnt[c];
        const int32_t *ix = t->idx + first;
        t->mom[3 * c] = t->mom[3 * c + 1] = t->mom[3 * c + 2] = 0.0;
        t->mom2[3 * c] = t->mom2[3 * c + 1] = t->mom2[3 * c + 2] = 0.0;
        cell->centre = x;
        cell->exact = 0;
        if (k == 1) {               /* log p is exactly quadratic here */
            int j = ix[0];
            double d = x - mu[j];
            t->L0[c] = logc[j] - 0.5 * lam[j] * d * d;
            cell->L1 = -lam[j] * d;
            cell->L2 = -lam[j];
            t->r[first] = 1.0;
            t->r1[first] = t->r2[first] = 0.0;
            continue;
        }
        double l[MAXJ], abar = 0.0, a2 = 0.0, lbar = 0.0, err = 0.0;
        double lse = responsibilities(k, ix, mu, lam, logc, x, l);
        for (int q = 0; q < k; q++) {
            double aj = -lam[ix[q]] * (x - mu[ix[q]]);
            abar += l[q] * aj;
            a2 += l[q] * aj * aj;
            lbar += l[q] * lam[ix[q]];
        }
        double kappa = 0.0;  /* bounds |d3 log p / dw3| = |kappa3(a) - 3 cov(a, lam)| */
        for (int q = 0; q < k; q++) {
            double da = fabs(-lam[ix[q]] * (x - mu[ix[q]]) - abar);
            double dev = da * hh, lh2 = lam[ix[q]] * hh * hh;
            /* r_j varies by at most a factor exp(dev) over the half cell */
            double grow = dev < 1.0 ? 1.0 + 1.72 * dev : 1e300;
            err += l[q] * grow * (dev * dev * dev + 3.0 * lh2 * dev + lh2 * lh2) / 6.0;
            kappa += l[q] * grow * (da * da * da + 3.0 * da * fabs(lam[ix[q]] - lbar));
        }
        /* the interpolated gradient's error, against the gradient's local scale */
        err = fmax(err, 0.5 * hh * hh * kappa / (fabs(abar) + sqrt(lbar)));
        if (err > SMOOTH) {
            cell->exact = 1;
            continue;
        }
        double abar1 = (a2 - abar * abar) - lbar;   /* (log p)'' */
        t->L0[c] = lse;
        cell->L1 = abar;
        cell->L2 = abar1;
        for (int q = 0; q < k; q++) {
            double dev = -lam[ix[q]] * (x - mu[ix[q]]) - abar;
            t->r[first + q] = l[q];
            t->r1[first + q] = l[q] * dev;
            t->r2[first + q] = l[q] * (dev * dev - lam[ix[q]] - abar1);
        }
    }
}

typedef struct {
    table_t *t;
    double cut;     /* > 0: build the active sets first */
    int c0, c1;
} cells_job_t;

static void *cells_main(void *arg)
{
    cells_job_t *j = arg;
    if (j->cut > 0) build_sets(j->t, j->cut, j->c0, j->c1);
    build_table(j->t, j->c0, j->c1);
    return NULL;
}

/* Build the table for the current mixture: active sets too when cut > 0 (the
 * grid placement changed or they are due), then every cell's coefficients;
 * split over two threads when threads > 1. */
void sws_build(table_t *t, double cut, int threads)
{
    cells_job_t a = {t, cut, 0, t->G}, b = {t, cut, t->G / 2, t->G};
    pthread_t th;
    if (threads > 1 && t->G >= 1024) {
        a.c1 = t->G / 2;
        if (pthread_create(&th, NULL, cells_main, &b) == 0) {
            cells_main(&a);
            pthread_join(th, NULL);
            return;
        }
        a.c1 = t->G;
    }
    cells_main(&a);
}

/* One weight evaluated exactly over components idx[0..k-1]: adds log p to
 * out[0] and its S0, S1, S2 terms; returns dC/dw. */
static __attribute__((noinline)) double exact_one(const table_t *t, double x, const int32_t *idx,
                                                  int k, double *out)
{
    int J = t->J;
    double l[MAXJ], g = 0.0;
    out[0] += responsibilities(k, idx, t->mu, t->lam, t->logc, x, l);
    for (int a = 0; a < k; a++) {
        int j = idx[a];
        double d = x - t->mu[j];
        g += l[a] * t->lam[j] * d;
        out[1 + j] += l[a];
        out[1 + J + j] += l[a] * d;
        out[1 + 2 * J + j] += l[a] * d * d;
    }
    return g;
}

enum { NO_GRAD, SET_GRAD, ADD_GRAD };

static inline __attribute__((always_inline)) int64_t
eval_loop(const table_t *t, const float *w, int64_t n, float *grad, const int mode, float scale,
          double *out, double *mom, double *range, const int32_t *all)
{
    int64_t n_exact = 0;
    const cell_t *cells = t->cells;
    double lo = t->lo, inv_h = 1.0 / t->h;
    unsigned G = (unsigned)t->G;
    for (int64_t i = 0; i < n; i++) {
        double x = w[i], u = (x - lo) * inv_h, g;
        unsigned c = (unsigned)(int)u;      /* u < 0 or huge or NaN: off the grid */
        if (u >= 0.0 && c < G && !cells[c].exact) {
            const cell_t *cell = cells + c;
            double delta = x - cell->centre;
            double *m = mom + 3 * c;
            m[0] += 1.0;
            m[1] += delta;
            m[2] += delta * delta;
            g = -(cell->L1 + cell->L2 * delta);
        } else if (u >= 0.0 && c < G) {
            g = exact_one(t, x, t->idx + (int64_t)c * t->J, t->cnt[c], out);
            n_exact++;
            range[0] = x < range[0] ? x : range[0];
            range[1] = x > range[1] ? x : range[1];
        } else {
            g = exact_one(t, x, all, t->J, out);
            n_exact++;
            range[0] = x < range[0] ? x : range[0];
            range[1] = x > range[1] ? x : range[1];
        }
        if (mode == SET_GRAD) grad[i] = (float)g;
        if (mode == ADD_GRAD) grad[i] += scale * (float)g;
    }
    return n_exact;
}

typedef struct {
    const table_t *t;
    const float *w;
    int64_t n;
    float *grad;
    int mode;
    float scale;
    double *out, *mom, range[2];
    int64_t n_exact;
} job_t;

static void run_job(job_t *j)
{
    int32_t all[MAXJ];
    for (int q = 0; q < j->t->J; q++) all[q] = q;
    if (j->mode == NO_GRAD)
        j->n_exact = eval_loop(j->t, j->w, j->n, j->grad, NO_GRAD, j->scale, j->out, j->mom, j->range, all);
    else if (j->mode == ADD_GRAD)
        j->n_exact = eval_loop(j->t, j->w, j->n, j->grad, ADD_GRAD, j->scale, j->out, j->mom, j->range, all);
    else
        j->n_exact = eval_loop(j->t, j->w, j->n, j->grad, SET_GRAD, j->scale, j->out, j->mom, j->range, all);
}

static void *thread_main(void *arg)
{
    run_job((job_t *)arg);
    return NULL;
}

/* Evaluate n float32 weights, split over two threads when threads > 1.
 * grad: NULL, or receives dC/dw (accumulate = 0), or gets scale * dC/dw added
 * (accumulate = 1).  Adds sum log p to out[0] and S0, S1, S2 to out[1..J],
 * out[J+1..2J], out[2J+1..3J] for weights in EXACT cells or off the grid
 * (EXPAND cells are summed by sws_finish), and widens range[0..1] to those
 * weights. */
void sws_eval(table_t *t, const float *w, int64_t n, float *grad, int accumulate, float scale,
              double *out, double *range, int threads)
{
    int mode = !grad ? NO_GRAD : accumulate ? ADD_GRAD : SET_GRAD;
    job_t main_job = {t, w, n, grad, mode, scale, out, t->mom, {range[0], range[1]}, 0};
    pthread_t th;
    if (threads > 1 && n >= PARALLEL_MIN) {
        int64_t half = n / 2;
        job_t other = {t, w + half, n - half, grad ? grad + half : NULL, mode, scale, t->out2, t->mom2,
                       {range[0], range[1]}, 0};
        main_job.n = half;
        if (pthread_create(&th, NULL, thread_main, &other) == 0) {
            run_job(&main_job);
            pthread_join(th, NULL);
            main_job.range[0] = fmin(main_job.range[0], other.range[0]);
            main_job.range[1] = fmax(main_job.range[1], other.range[1]);
            t->n_exact += other.n_exact;
        } else {
            main_job.n = n;
            run_job(&main_job);
        }
    } else {
        run_job(&main_job);
    }
    t->n_exact += main_job.n_exact;
    range[0] = main_job.range[0];
    range[1] = main_job.range[1];
}

/* Add the second thread's sums, and the EXPAND cells' contributions from
 * their moments, to out; widen range[0..1] to the occupied cells. */
void sws_finish(table_t *t, double *out, double *range)
{
    int J = t->J;
    for (int q = 0; q < 3 * t->G; q++) t->mom[q] += t->mom2[q];
    for (int q = 0; q < 1 + 3 * J; q++) out[q] += t->out2[q];
    double *S0 = out + 1, *S1 = out + 1 + J, *S2 = out + 1 + 2 * J;
    for (int c = 0; c < t->G; c++) {
        cell_t *cell = t->cells + c;
        double m0 = t->mom[3 * c], m1 = t->mom[3 * c + 1], m2 = t->mom[3 * c + 2];
        if (cell->exact || m0 == 0.0) continue;
        double x = cell->centre;
        range[0] = fmin(range[0], x - 0.5 * t->h);
        range[1] = fmax(range[1], x + 0.5 * t->h);
        out[0] += t->L0[c] * m0 + cell->L1 * m1 + 0.5 * cell->L2 * m2;
        for (int e = c * J; e < c * J + t->cnt[c]; e++) {
            int j = t->idx[e];
            double r = t->r[e], r1 = t->r1[e], r2 = t->r2[e], d0 = x - t->mu[j];
            S0[j] += r * m0 + r1 * m1 + 0.5 * r2 * m2;
            S1[j] += r * d0 * m0 + (r1 * d0 + r) * m1 + (0.5 * r2 * d0 + r1) * m2;
            S2[j] += r * d0 * d0 * m0 + (r1 * d0 * d0 + 2 * r * d0) * m1
                   + (0.5 * r2 * d0 * d0 + 2 * r1 * d0 + r) * m2;
        }
    }
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
