// ser_bench_step.c — `ser bench step`: a whole training step of an objective (both views,
// momentum encoder, heads, SER) on synthetic data, timed like `ser bench vit`.
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_cmd.h"
#include "ser_group.h"
#include "ser_kernels.h"
#include "ser_moco.h"
#include "ser_rng.h"
#include "ser_sched.h"

static int s_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser bench step [--method moco] [--ser on|off] [--model M] [--img N]\n"
            "                      [--patch P] [--batch B] [--ratio R | --eq N] [--threads T]\n"
            "                      [--runs R] [--mlp-dim D] [--json]\n"
            "  times one MoCo-v3 (+ SER) training step: student and momentum ViT on both\n"
            "  views, heads, losses, backward, momentum update. --ser off is MoCo-v3 alone on\n"
            "  the whole batch; on splits off round(R*B) equivariant samples (or --eq N).\n"
            "  defaults: moco, ser on, vit_small, 224, patch 16, batch 32, ratio 0.01, 2 threads,\n"
            "  5 runs, mlp-dim 4096\n");
}

static void s_fill(float *x, size_t n, uint32_t stream) {
    ser_rng r;
    ser_rng_init(&r, 77, stream, 0, SER_RNG_BENCH);
    for (size_t i = 0; i < n; i++) x[i] = (float)ser_rng_normal(&r);
}


int ser_bench_step(int argc, char **argv) {
    const char *method = "moco", *model = "vit_small";
    int ser = 1, img = 224, patch = 16, batch = 32, threads = 2, runs = 5, json = 0, eq = -1;
    int mlp_dim = 4096;
    double ratio = 0.01;
    static const struct option opts[] = {
        {"method", required_argument, 0, 'M'}, {"ser", required_argument, 0, 's'},
        {"model", required_argument, 0, 'm'},  {"img", required_argument, 0, 'i'},
        {"patch", required_argument, 0, 'p'},  {"batch", required_argument, 0, 'b'},
        {"ratio", required_argument, 0, 'r'},  {"eq", required_argument, 0, 'e'},
        {"threads", required_argument, 0, 't'}, {"runs", required_argument, 0, 'R'},
        {"mlp-dim", required_argument, 0, 'd'}, {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'M': method = optarg; break;
        case 's':
            if (strcmp(optarg, "on") && strcmp(optarg, "off")) {
                fprintf(stderr, "ser bench step: --ser takes on or off\n");
                return 2;
            }
            ser = strcmp(optarg, "on") == 0;
            break;
        case 'm': model = optarg; break;
        case 'i': img = atoi(optarg); break;
        case 'p': patch = atoi(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 'r': ratio = atof(optarg); break;
        case 'e': eq = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'R': runs = atoi(optarg); break;
        case 'd': mlp_dim = atoi(optarg); break;
        case 'j': json = 1; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (strcmp(method, "moco") != 0)
        return ser_cmd_unimplemented("bench step", "methods other than moco");
    if (batch < 2 || threads < 1 || runs < 1 || runs > 1000 || ratio < 0 || ratio > 1 ||
        mlp_dim < 1) {
        fprintf(stderr, "ser bench step: need --batch >= 2, --threads >= 1, 1 <= --runs <= 1000, "
                        "0 <= --ratio <= 1, --mlp-dim >= 1\n");
        return 2;
    }
    ser_moco_config cfg;
    ser_moco_config_default(&cfg);
    if (ser_vit_config_preset(&cfg.vit, model, img, patch)) {
        fprintf(stderr, "ser bench step: unknown model '%s'\n", model);
        return 2;
    }
    cfg.vit.freeze_patch_embed = 1;
    cfg.mlp_dim = mlp_dim;
    cfg.ser = ser;
    int n_eq = ser ? (eq >= 0 ? eq : ser_sched_equiv_count(ratio, batch)) : 0;
    if (n_eq > batch - 2 && n_eq != batch) n_eq = batch;
    ser_moco m;
    char err[SER_ERR_LEN];
    if (ser_moco_init(&m, &cfg, err)) {
        fprintf(stderr, "ser bench step: %s\n", err);
        return 2;
    }
    ser_kernels_set_threads(threads);
    ser_moco_init_weights(&m, 0);
    int n_inv = batch - n_eq, g0 = img / patch;
    size_t per = (size_t)3 * img * img;
    float *inv[2];
    for (int v = 0; v < 2; v++) {
        inv[v] = ser_xaligned(sizeof(float) * per * (size_t)(n_inv ? n_inv : 1));
        s_fill(inv[v], per * (size_t)n_inv, (uint32_t)v);
    }
    ser_group_elem *g[2] = {ser_xcalloc((size_t)n_eq + 1, sizeof(ser_group_elem)),
                            ser_xcalloc((size_t)n_eq + 1, sizeof(ser_group_elem))};
    float **eqimg[2] = {ser_xcalloc((size_t)n_eq + 1, sizeof(float *)),
                        ser_xcalloc((size_t)n_eq + 1, sizeof(float *))};
    for (int e = 0; e < n_eq; e++) {
        ser_group_sample_paper(&g[0][e], &g[1][e], g0, 5, 0, (uint32_t)e);
        for (int v = 0; v < 2; v++) {
            int H, W;
            ser_group_image_size(&g[v][e], patch, &H, &W);
            eqimg[v][e] = ser_xaligned(sizeof(float) * 3 * (size_t)H * W);
            s_fill(eqimg[v][e], (size_t)3 * H * W, (uint32_t)(100 + 2 * e + v));
        }
    }
    ser_batch b = {.n_inv = n_inv, .n_eq = n_eq, .img = img, .inv = {inv[0], inv[1]},
                   .eq = {(const float *const *)eqimg[0], (const float *const *)eqimg[1]},
                   .g = {g[0], g[1]}};
    double *t = ser_xcalloc((size_t)runs, sizeof(double));
    ser_moco_losses L = {0};
    int rc = 0;
    for (int r = -1; r < runs && !rc; r++) {
        double t0 = ser_time_sec();
        rc = ser_moco_forward_backward(&m, &b, 1, 0.99f, 0, (uint32_t)(r + 1), &L, err);
        if (r >= 0) t[r] = ser_time_sec() - t0;
    }
    if (rc) {
        fprintf(stderr, "ser bench step: %s\n", err);
    } else {
        qsort(t, (size_t)runs, sizeof *t, s_cmp);
        double med = runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
        if (json)
            printf("{\"bench\":\"step\",\"method\":\"moco\",\"ser\":%d,\"model\":\"%s\",\"img\":%d,"
                   "\"patch\":%d,\"batch\":%d,\"n_eq\":%d,\"threads\":%d,\"runs\":%d,"
                   "\"mlp_dim\":%d,\"median_step_s\":%.6f,\"images_per_s\":%.3f,\"loss\":%.6f}\n",
                   ser, model, img, patch, batch, n_eq, threads, runs, mlp_dim, med, batch / med,
                   L.loss);
        else
            printf("ser bench step: moco%s %s/%d img %d batch %d (%d equivariant) threads %d "
                   "(median of %d)\n  step %.4f s  %.2f images/s  loss %.4f\n",
                   ser ? "+ser" : "", model, patch, img, batch, n_eq, threads, runs, med,
                   batch / med, L.loss);
    }
    for (int v = 0; v < 2; v++) {
        for (int e = 0; e < n_eq; e++) free(eqimg[v][e]);
        free(eqimg[v]), free(g[v]), free(inv[v]);
    }
    free(t);
    ser_moco_free(&m);
    return rc ? 1 : 0;
}
