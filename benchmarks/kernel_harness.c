/* Times the prior's C kernel (sws_train_step, or an older build's sws_step) without Python, for profiling: callgrind, or the
 * calling thread's CPU time.  Several builds of the kernel alternate in one process.
 *
 *   python benchmarks/dump_prior_state.py RUN OUT      (OUT.start.bin, OUT.end.bin)
 *   PYLIB=$(python -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
 *   gcc -O2 -fopenmp -rdynamic -o kernel_harness benchmarks/kernel_harness.c -Wl,--no-as-needed -L$PYLIB -lpython3.11 -lm -ldl
 *   LD_LIBRARY_PATH=$PYLIB ./kernel_harness KERNEL.so OUT.end.bin THREADS CALLS BLOCKS [OTHER_KERNEL.so ...]
 *
 * (The kernel's shared object also holds its Python functions, train_step and bind: linked against
 * libpython, never called here.)  A plan every 8 calls, as kernel.py does; only the calls are timed.
 * WALL=1: wall time instead of CPU time; N0=n: only the first n weights of the first tensor.  Before
 * each call, untimed: EVICT=MB streams a buffer of MB megabytes (TOUCH=1: then reads the weights and
 * gradients back); SPIN=us spins that long (SPIN_ODD=1: only before the calls of the 2nd, 4th, ...
 * build, so that one build named twice gives both cases in the same alternation); SLEEP=us sleeps. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <dlfcn.h>
#include <time.h>
#include <math.h>
#include <omp.h>
typedef double (*step_fn)(void *, int, const float *, const float *, const float *, const float *, int, double, double,
    const float *, const float *, int, const float *const *, const int64_t *, float *const *, float, int, int64_t, int,
    double, double, double, float *, float *, float *, float *, double *, double *, double *);
typedef double (*train_fn)(void *, int, const float *, const float *, const float *, const float *, int, double, double,
    const float *, const float *, int, const float *const *, const int64_t *, float *const *, float, int, int64_t, int,
    double, double, double, float *, float *, float *, float *, int, double *, double *, double *, double *, double);
static double now(clockid_t c) { struct timespec ts; clock_gettime(c, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv)
{
    const char *data = argv[2];
    int threads = atoi(argv[3]), calls = atoi(argv[4]), reps = atoi(argv[5]);
    FILE *f = fopen(data, "rb");
    int64_t hdr[2]; fread(hdr, 8, 2, f);
    int J = hdr[0], nt = hdr[1];
    int64_t *n = malloc(8 * nt); fread(n, 8, nt, f);
    float *means = malloc(4 * J), *gamma = malloc(4 * J), *rho = malloc(4 * J), pi0, *alpha = malloc(4 * J), *beta = malloc(4 * J);
    fread(means, 4, J - 1, f); fread(gamma, 4, J, f); fread(rho, 4, J - 1, f); fread(&pi0, 4, 1, f);
    fread(alpha, 4, J, f); fread(beta, 4, J, f);
    float **w = malloc(sizeof(float *) * nt), **g = malloc(sizeof(float *) * nt);
    int64_t total = 0;
    for (int q = 0; q < nt; q++) { w[q] = aligned_alloc(64, 4 * n[q] + 64); g[q] = aligned_alloc(64, 4 * n[q] + 64);
        fread(w[q], 4, n[q], f); memset(g[q], 0, 4 * n[q]); total += n[q]; }
    fclose(f);
    if (getenv("N0")) { n[0] = atol(getenv("N0")); total = 0; for (int q = 0; q < nt; q++) total += n[q]; }
    int nso = argc - 6 + 1;
    const char *sos[8]; sos[0] = argv[1]; for (int i = 6; i < argc; i++) sos[i - 5] = argv[i];
    step_fn step[8]; train_fn train[8]; void *ws[8]; double lo[8], hi[8]; int ncall[8];
    double *res[8];
    float gm[256], gg[256], gr[256];
    double mix[4 * 256], out[1 + 3 * 256], info[5];
    #pragma omp parallel
    { (void)0; }
    for (int s = 0; s < nso; s++) {
        void *h = dlopen(sos[s], RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        train[s] = (train_fn)dlsym(h, "sws_train_step");   /* this tree's entry point */
        step[s] = (step_fn)dlsym(h, "sws_step");           /* builds before it */
        void *(*nw)(void) = (void *(*)(void))dlsym(h, "sws_new");
        ws[s] = nw(); lo[s] = -1; hi[s] = 1; ncall[s] = 0;
        res[s] = malloc(sizeof(double) * reps);
    }
    int ev = getenv("EVICT") != NULL;
    size_t evn = ev ? (size_t)atol(getenv("EVICT")) << 18 : 0;
    float *evb = ev ? calloc(evn, 4) : NULL;
    double spin = getenv("SPIN") ? 1e-6 * atof(getenv("SPIN")) : 0.0;
    long sleep_us = getenv("SLEEP") ? atol(getenv("SLEEP")) : 0;
    for (int r = 0; r < reps + 1; r++)
        for (int s = 0; s < nso; s++) {
            double wsum = 0.0, csum = 0.0;
            for (int c = 0; c < calls; c++) {
                if (spin > 0.0 && (s % 2 == 1 || !getenv("SPIN_ODD"))) {
                    volatile long z = 0;
                    for (double t = now(CLOCK_MONOTONIC) + spin; now(CLOCK_MONOTONIC) < t;) z++;
                }
                if (sleep_us) { struct timespec q = {sleep_us / 1000000, 1000L * (sleep_us % 1000000)}; nanosleep(&q, NULL); }
                if (ev) {
                    for (size_t q = 0; q < evn; q += 8) evb[q] += 1.0f;
                    if (getenv("TOUCH")) {
                        volatile float z = 0;
                        for (int q2 = 0; q2 < nt; q2++) for (int64_t i = 0; i < n[q2]; i += 16) z += w[q2][i] + g[q2][i];
                    }
                }
                double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_THREAD_CPUTIME_ID);
                int plan = ncall[s] % 8 == 0; ncall[s]++;
                if (train[s])
                    train[s](ws[s], J, means, gamma, rho, &pi0, 0, 1.0, 1.0, alpha, beta, nt, (const float *const *)w, n,
                             g, 1e-8f, threads, 1 << 15, plan, lo[s], hi[s], 24.0, gm, gg, gr, NULL, 0, mix, out, info,
                             NULL, 0.0);
                else
                    step[s](ws[s], J, means, gamma, rho, &pi0, 0, 1.0, 1.0, alpha, beta, nt, (const float *const *)w, n,
                            g, 1e-8f, threads, 1 << 15, plan, lo[s], hi[s], 24.0, gm, gg, gr, NULL, mix, out, info);
                if (isfinite(info[1]) && isfinite(info[2])) { lo[s] = info[1]; hi[s] = info[2]; }
                wsum += now(CLOCK_MONOTONIC) - t0;
                csum += now(CLOCK_THREAD_CPUTIME_ID) - c0;
            }
            double wall = wsum / calls, cpu = csum / calls;
            if (r > 0) res[s][r - 1] = getenv("WALL") ? wall : cpu;
        }
    for (int s = 0; s < nso; s++) {
        qsort(res[s], reps, sizeof(double), cmp);
        printf("%-50s %s med %.1f us  min %.1f us  (%.2f ns/weight) exact %g built %g\n", sos[s], getenv("WALL") ? "wall" : "cpu",
               1e6 * res[s][reps / 2], 1e6 * res[s][0], 1e9 * res[s][reps / 2] / total, info[0], info[3]);
    }
    return 0;
}
