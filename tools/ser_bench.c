// ser_bench.c — `ser bench <what>`: benchmark programs (never timed unit tests).
//
// ser bench vit: forward+backward of the ViT on random images, reported as images/s, GFLOP/s
// and model FLOP utilisation (MFU) against an sgemm peak measured on this machine with the
// same thread count. FLOPs count matmuls only (2 per multiply-add); forward+backward = 3x the
// forward, the usual convention (the frozen input image gets no gradient, as in PyTorch).
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_cmd.h"
#include "ser_kernels.h"
#include "ser_rng.h"
#include "ser_vit.h"

static void s_fill(float *x, size_t n, uint32_t stream, float scale) {
    ser_rng r;
    ser_rng_init(&r, 1234, stream, 0, SER_RNG_BENCH);
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * ser_rng_uniform(&r) - 1.0f);
}

// Best-of-n GFLOP/s of a square sgemm large enough to reach the BLAS's steady state.
double ser_bench_sgemm_peak(int n, int reps);
double ser_bench_sgemm_peak(int n, int reps) {
    float *a = ser_xaligned(sizeof(float) * (size_t)n * n);
    float *b = ser_xaligned(sizeof(float) * (size_t)n * n);
    float *c = ser_xaligned(sizeof(float) * (size_t)n * n);
    s_fill(a, (size_t)n * n, 1, 1.0f);
    s_fill(b, (size_t)n * n, 2, 1.0f);
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = ser_time_sec();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
        double dt = ser_time_sec() - t0;
        double gf = 2.0 * n * n * (double)n / dt * 1e-9;
        if (r > 0 && gf > best) best = gf;  // the first call warms caches and threads up
    }
    free(a), free(b), free(c);
    return best;
}

static void s_vit_usage(FILE *f) {
    fprintf(f,
            "usage: ser bench vit [--model vit_tiny|vit_small|vit_base] [--img N] [--patch P]\n"
            "                     [--batch B] [--threads T] [--runs R] [--cls-layer K] [--json]\n"
            "  forward+backward images/s, GFLOP/s and MFU vs. a measured sgemm peak.\n"
            "  defaults: vit_small, img 224, patch 16, batch 32, threads 2, runs 5, cls-layer 3\n");
}

static int s_bench_vit(int argc, char **argv) {
    const char *model = "vit_small";
    int img = 224, patch = 16, batch = 32, threads = 2, runs = 5, cls_layer = 3, json = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"img", required_argument, 0, 'i'},
        {"patch", required_argument, 0, 'p'}, {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'}, {"runs", required_argument, 0, 'r'},
        {"cls-layer", required_argument, 0, 'k'}, {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'i': img = atoi(optarg); break;
        case 'p': patch = atoi(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'r': runs = atoi(optarg); break;
        case 'k': cls_layer = atoi(optarg); break;
        case 'j': json = 1; break;
        case 'h': s_vit_usage(stdout); return 0;
        default: s_vit_usage(stderr); return 2;
        }
    }
    if (batch < 1 || threads < 1 || runs < 1 || runs > 1000) {
        fprintf(stderr, "ser bench vit: --batch, --threads and --runs must be positive (runs <= 1000)\n");
        return 2;
    }
    ser_vit_config cfg;
    if (ser_vit_config_preset(&cfg, model, img, patch)) {
        fprintf(stderr, "ser bench vit: unknown model '%s' (vit_tiny, vit_small, vit_base)\n", model);
        return 2;
    }
    cfg.cls_layer = cls_layer;
    char err[SER_ERR_LEN];
    ser_vit v;
    if (ser_vit_init(&v, &cfg, err)) {
        fprintf(stderr, "ser bench vit: %s\n", err);
        return 2;
    }
    ser_kernels_set_threads(threads);
    ser_vit_init_weights(&v, SER_VIT_INIT_GENERIC, 0);
    int C = cfg.dim, g = img / patch, NP = g * g;
    size_t nimg = (size_t)batch * 3 * img * img;
    float *x = ser_xaligned(sizeof(float) * nimg);
    float *dcls = ser_xaligned(sizeof(float) * (size_t)batch * C);
    float *dmap = ser_xaligned(sizeof(float) * (size_t)batch * NP * C);
    s_fill(x, nimg, 3, 2.0f);
    s_fill(dcls, (size_t)batch * C, 4, 1.0f);
    s_fill(dmap, (size_t)batch * NP * C, 5, 1e-3f);
    double peak = ser_bench_sgemm_peak(2048, 3);
    ser_vit_acts a;
    memset(&a, 0, sizeof a);
    double *times = ser_xcalloc((size_t)runs, sizeof(double));
    double *tf = ser_xcalloc((size_t)runs, sizeof(double));
    int rc = 0;
    for (int r = -1; r < runs; r++) {  // r = -1: warm-up (allocation, page faults)
        double t0 = ser_time_sec();
        rc = ser_vit_forward(&v, &a, x, batch, img, img, NULL, err);
        if (rc) break;
        double t1 = ser_time_sec();
        ser_vit_zero_grad(&v);
        ser_vit_backward(&v, &a, dcls, v.baseline ? NULL : dmap);
        double t2 = ser_time_sec();
        if (r >= 0) times[r] = t2 - t0, tf[r] = t1 - t0;
    }
    if (rc) {
        fprintf(stderr, "ser bench vit: %s\n", err);
    } else {
        double med = ser_median(times, runs), medf = ser_median(tf, runs);
        double flops = 3.0 * ser_vit_flops(&cfg, batch, g, g);
        double gflops = flops / med * 1e-9;
        double ips = batch / med;
        if (json)
            printf("{\"bench\":\"vit\",\"model\":\"%s\",\"img\":%d,\"patch\":%d,\"batch\":%d,"
                   "\"threads\":%d,\"runs\":%d,\"cls_layer\":%d,\"median_step_s\":%.6f,"
                   "\"median_forward_s\":%.6f,\"images_per_s\":%.3f,\"gflop_per_step\":%.3f,"
                   "\"gflops\":%.2f,\"sgemm_peak_gflops\":%.2f,\"mfu\":%.4f}\n",
                   model, img, patch, batch, threads, runs, cls_layer, med, medf, ips,
                   flops * 1e-9, gflops, peak, gflops / peak);
        else
            printf("ser bench vit: %s/%d img %d batch %d threads %d (median of %d)\n"
                   "  step %.4f s (forward %.4f s)  %.2f images/s  %.1f GFLOP/s  "
                   "sgemm peak %.1f GFLOP/s  MFU %.1f%%\n",
                   model, patch, img, batch, threads, runs, med, medf, ips, gflops, peak,
                   100.0 * gflops / peak);
    }
    free(times), free(tf), free(x), free(dcls), free(dmap);
    ser_vit_acts_free(&a);
    ser_vit_free(&v);
    return rc ? 1 : 0;
}

int ser_cmd_bench(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: ser bench <vit|loader|step|cluster> [options]\n");
        s_vit_usage(f);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "vit") == 0) return s_bench_vit(argc - 1, argv + 1);
    if (strcmp(argv[1], "loader") == 0) return ser_bench_loader(argc - 1, argv + 1);
    if (strcmp(argv[1], "step") == 0) return ser_bench_step(argc - 1, argv + 1);
    if (strcmp(argv[1], "cluster") == 0) return ser_bench_cluster(argc - 1, argv + 1);
    fprintf(stderr, "ser bench: unknown benchmark '%s' (vit, loader, step, cluster)\n", argv[1]);
    return 2;
}
