/* Fused Gaussian-mixture prior over weight tensors (SPEC sections 1-2).
 *
 * For every weight w the kernel needs, in double precision and log space,
 *   log p(w) = logsumexp_j l_j(w),   l_j(w) = logc_j - lam_j (w - mu_j)^2 / 2,
 *   logc_j   = log pi_j + log(lam_j) / 2 - log(2 pi) / 2,
 * the gradient g(w) = dC/dw = sum_j r_j lam_j (w - mu_j) of C = -log p(w),
 * and the per-component sums S0 = sum r, S1 = sum r d, S2 = sum r d^2
 * (d = w - mu_j) that give the gradients of C for the mixture parameters.
 *
 * A table over a grid of G cells covering the weights' range makes this cheap:
 *  - it lists, per cell, the components whose responsibility can exceed
 *    exp(-CUT) = 2e-9 of the best one anywhere in the cell (dropped terms
 *    change log p by less than J exp(-CUT), below float32 resolution);
 *  - a cell with one active component needs no exp(): it is exact and cheap;
 *  - a cell where several components are active but the responsibilities
 *    vary slowly across it ("smooth": the bound on the neglected third-order
 *    terms is <= SMOOTH) is handled by a second-order expansion about the
 *    cell centre: weights only add their offsets' moments to the cell, and
 *    the gradient is interpolated linearly;
 *  - other cells (sharp boundaries between components) are evaluated exactly.
 * Weights outside the grid use every component, exactly.
 *
 * No Python API is used: the shared object is loaded with ctypes (kernel.py).
 */
#include <math.h>
#include <stdint.h>
#include <Python.h>

#define CUT 20.0
#define SMOOTH 1e-6
#define MAXJ 256

typedef struct {
    int J, G;
    double lo, h;
    const double *mu, *lam, *logc;
    int32_t *ptr, *idx;             /* active components, CSR over cells */
    int8_t *smooth;                 /* per cell */
    double *L, *L1, *L2;            /* per smooth cell: log p, its 1st, 2nd derivative at the centre */
    double *r, *r1, *r2;            /* per active entry of a smooth cell: r_j and derivatives */
    double *m0, *m1, *m2;           /* per cell: moments of offsets from the centre */
} table_t;

/* exp(x) for x <= 0 to about 1e-15 relative, branch-free so loops vectorise;
 * below -700 it returns 0 (then the term is negligible anyway). */
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

static void responsibilities(int k, const int32_t *idx, const double *mu, const double *lam,
                             const double *logc, double x, double *l, double *lse)
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
    *lse = m + log(s);
}

void sws_build_table(table_t *t)
{
    int J = t->J, n = 0;
    const double *mu = t->mu, *lam = t->lam, *logc = t->logc;
    t->ptr[0] = 0;
    for (int c = 0; c < t->G; c++) {
        double a = t->lo + c * t->h, b = a + t->h, best_lower = -INFINITY;
        for (int j = 0; j < J; j++) {
            double far = fmax(fabs(a - mu[j]), fabs(b - mu[j]));
            double lower = logc[j] - 0.5 * lam[j] * far * far;
            if (lower > best_lower) best_lower = lower;
        }
        int first = n;
        for (int j = 0; j < J; j++) {
            double near = mu[j] < a ? a - mu[j] : (mu[j] > b ? mu[j] - b : 0.0);
            double upper = logc[j] - 0.5 * lam[j] * near * near;
            if (upper >= best_lower - CUT) t->idx[n++] = j;
        }
        t->ptr[c + 1] = n;
        int k = n - first;
        t->smooth[c] = 0;
        t->m0[c] = t->m1[c] = t->m2[c] = 0.0;
        if (k == 1) continue;
        /* Second-order expansion of r_j about the centre x: r_j' = r_j (a_j - abar),
         * with a_j = dl_j/dw; the neglected third-order terms are bounded by err. */
        double x = a + 0.5 * t->h, hh = 0.5 * t->h, l[MAXJ], lse;
        double abar = 0.0, a2 = 0.0, lbar = 0.0, err = 0.0;
        const int32_t *ix = t->idx + first;
        responsibilities(k, ix, mu, lam, logc, x, l, &lse);
        for (int q = 0; q < k; q++) {
            double aj = -lam[ix[q]] * (x - mu[ix[q]]);
            abar += l[q] * aj;
            a2 += l[q] * aj * aj;
            lbar += l[q] * lam[ix[q]];
        }
        for (int q = 0; q < k; q++) {
            double dev = fabs(-lam[ix[q]] * (x - mu[ix[q]]) - abar) * hh;
            double lh2 = lam[ix[q]] * hh * hh;
            err += l[q] * exp(dev) * (dev * dev * dev + 3.0 * lh2 * dev + lh2 * lh2) / 6.0;
        }
        if (err > SMOOTH) continue;
        t->smooth[c] = 1;
        double abar1 = (a2 - abar * abar) - lbar;   /* (log p)'' */
        t->L[c] = lse;
        t->L1[c] = abar;
        t->L2[c] = abar1;
        for (int q = 0; q < k; q++) {
            double aj = -lam[ix[q]] * (x - mu[ix[q]]), dev = aj - abar;
            t->r[first + q] = l[q];
            t->r1[first + q] = l[q] * dev;
            t->r2[first + q] = l[q] * (dev * dev - lam[ix[q]] - abar1);
        }
    }
}

/* Evaluate n float32 weights; grad may be NULL.  Adds sum log p to out[0] and
 * S0, S1, S2 to out[1..J], out[J+1..2J], out[2J+1..3J] (smooth cells are
 * added by sws_finish); widens range[0..1] to the weights' min and max. */
void sws_eval(table_t *t, const float *w, int64_t n, float *grad, double *out, double *range)
{
    int J = t->J, G = t->G;
    const double *mu = t->mu, *lam = t->lam, *logc = t->logc;
    double logp_sum = 0.0, wmin = range[0], wmax = range[1], inv_h = 1.0 / t->h;
    double *S0 = out + 1, *S1 = out + 1 + J, *S2 = out + 1 + 2 * J, l[MAXJ], lse;
    int32_t all[MAXJ];
    for (int j = 0; j < J; j++) all[j] = j;
    for (int64_t i = 0; i < n; i++) {
        double x = w[i];
        if (x < wmin) wmin = x;
        if (x > wmax) wmax = x;
        double u = (x - t->lo) * inv_h;
        const int32_t *idx = all;
        int k = J;
        if (u >= 0.0 && u < (double)G) {
            int c = (int)u;
            idx = t->idx + t->ptr[c];
            k = t->ptr[c + 1] - t->ptr[c];
            if (t->smooth[c]) {
                double delta = x - (t->lo + (c + 0.5) * t->h);
                t->m0[c] += 1.0;
                t->m1[c] += delta;
                t->m2[c] += delta * delta;
                if (grad) grad[i] = (float)(-(t->L1[c] + t->L2[c] * delta));
                continue;
            }
        }
        if (k == 1) {
            int j = idx[0];
            double d = x - mu[j];
            logp_sum += logc[j] - 0.5 * lam[j] * d * d;
            if (grad) grad[i] = (float)(lam[j] * d);
            S0[j] += 1.0;
            S1[j] += d;
            S2[j] += d * d;
            continue;
        }
        responsibilities(k, idx, mu, lam, logc, x, l, &lse);
        logp_sum += lse;
        double g = 0.0;
        for (int a = 0; a < k; a++) {
            int j = idx[a];
            double r = l[a], d = x - mu[j];
            g += r * lam[j] * d;
            S0[j] += r;
            S1[j] += r * d;
            S2[j] += r * d * d;
        }
        if (grad) grad[i] = (float)g;
    }
    out[0] += logp_sum;
    range[0] = wmin;
    range[1] = wmax;
}

/* Add the smooth cells' contributions, from their moments, to out. */
void sws_finish(table_t *t, double *out)
{
    int J = t->J;
    double *S0 = out + 1, *S1 = out + 1 + J, *S2 = out + 1 + 2 * J;
    for (int c = 0; c < t->G; c++) {
        if (!t->smooth[c] || t->m0[c] == 0.0) continue;
        double m0 = t->m0[c], m1 = t->m1[c], m2 = t->m2[c];
        double x = t->lo + (c + 0.5) * t->h;
        out[0] += t->L[c] * m0 + t->L1[c] * m1 + 0.5 * t->L2[c] * m2;
        for (int e = t->ptr[c]; e < t->ptr[c + 1]; e++) {
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
