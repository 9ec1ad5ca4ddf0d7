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
#include "ser_config.h"
#include "ser_train.h"
#include "ser_rng.h"
#include "ser_sched.h"

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser bench step [--method moco|dino|barlow] [--ser on|off] [--model M]\n"
            "                      [--img N] [--patch P] [--batch B] [--ratio R | --eq N]\n"
            "                      [--threads T] [--runs R] [--mlp-dim D | --out-dim D |\n"
            "                      --proj-dim D] [--local L [--local-size S]] [--lpairs P]\n"
            "                      [--precision fp32|bf16|auto] [--json]\n"
            "  times one whole training step (student and teacher ViT on both views, heads,\n"
            "  losses, SER, backward, AdamW) on synthetic data. --ser off is the base method\n"
            "  alone on the whole batch; on splits off round(R*B) equivariant samples (or --eq N).\n"
            "  --local L adds L local views per image (multi-crop: DINO's local crops, MoCo's\n"
            "  2 + L queries) of S px (default img x 96/224 rounded to the patch). --lpairs P\n"
            "  adds P local SER pairs per equivariant sample (ser.local_pairs: the 2+4-view SER,\n"
            "  every pair student against student) at S px. --precision sets run.precision (the\n"
            "  linear layers' products: fp32 OpenBLAS, or bf16 on oneDNN where the CPU has it).\n"
            "  defaults: moco, ser on, vit_small, 224, patch 16, batch 32, ratio 0.01, 2 threads,\n"
            "  5 runs, the method's head widths (moco mlp 4096, dino out 65536, barlow 8192)\n");
}

static void s_fill(float *x, size_t n, uint32_t stream) {
    ser_rng r;
    ser_rng_init(&r, 77, stream, 0, SER_RNG_BENCH);
    for (size_t i = 0; i < n; i++) x[i] = (float)ser_rng_normal(&r);
}


int ser_bench_step(int argc, char **argv) {
    const char *method = "moco", *model = "vit_small";
    int ser = 1, img = 224, patch = 16, batch = 32, threads = 2, runs = 5, json = 0, eq = -1;
    int head = 0;  // moco: mlp_dim; barlow: proj_dim (0 = the method's default)
    int n_local = 0, local_size = 0, lpairs = 0;
    const char *precision = "fp32";
    double ratio = 0.01;
    static const struct option opts[] = {
        {"method", required_argument, 0, 'M'}, {"ser", required_argument, 0, 's'},
        {"model", required_argument, 0, 'm'},  {"img", required_argument, 0, 'i'},
        {"patch", required_argument, 0, 'p'},  {"batch", required_argument, 0, 'b'},
        {"ratio", required_argument, 0, 'r'},  {"eq", required_argument, 0, 'e'},
        {"threads", required_argument, 0, 't'}, {"runs", required_argument, 0, 'R'},
        {"mlp-dim", required_argument, 0, 'd'}, {"proj-dim", required_argument, 0, 'd'},
        {"out-dim", required_argument, 0, 'd'}, {"local", required_argument, 0, 'L'},
        {"local-size", required_argument, 0, 'S'}, {"lpairs", required_argument, 0, 'P'},
        {"precision", required_argument, 0, 'x'},
        {"json", no_argument, 0, 'j'},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
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
        case 'd': head = atoi(optarg); break;
        case 'L': n_local = atoi(optarg); break;
        case 'S': local_size = atoi(optarg); break;
        case 'P': lpairs = atoi(optarg); break;
        case 'x': precision = optarg; break;
        case 'j': json = 1; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (batch < 2 || threads < 1 || runs < 1 || runs > 1000 || ratio < 0 || ratio > 1 || head < 0 ||
        n_local < 0 || n_local > SER_MAX_LOCAL || local_size < 0 || lpairs < 0 ||
        lpairs > SER_MAX_LOCAL_PAIRS) {
        fprintf(stderr, "ser bench step: need --batch >= 2, --threads >= 1, 1 <= --runs <= 1000, "
                        "0 <= --ratio <= 1, head width >= 0, 0 <= --local <= %d, --local-size >= 0, "
                        "0 <= --lpairs <= %d\n",
                SER_MAX_LOCAL, SER_MAX_LOCAL_PAIRS);
        return 2;
    }
    // The job: defaults (the reference MoCo run) with the benchmark's overrides.
    ser_config cfg;
    ser_config_defaults(&cfg);
    char err[SER_ERR_LEN], kv[128];
    int n_eq = ser ? (eq >= 0 ? eq : ser_sched_equiv_count(ratio, batch)) : 0;
    const char *sets[24];
    char buf[24][128];
    int ns = 0;
#define SET(...) (snprintf(buf[ns], sizeof buf[ns], __VA_ARGS__), sets[ns] = buf[ns], ns++)
    SET("method.name=%s", method);
    SET("model.arch=%s", model);
    SET("model.img_size=%d", img);
    SET("model.patch=%d", patch);
    SET("data.global_batch=%d", batch);
    SET("data.shards=1");
    SET("run.threads=%d", threads);
    SET("run.precision=%s", precision);
    SET("ser.enabled=%s", ser && n_eq > 0 ? "true" : "false");
    SET("ser.ratio=%g", n_eq > 0 ? (double)n_eq / batch : 0.5);
    if (strcmp(method, "barlow") == 0) SET("ser.symmetric=false"), SET("ser.tau=0.4");
    if (head && strcmp(method, "moco") == 0) SET("moco.mlp_dim=%d", head);
    if (head && strcmp(method, "barlow") == 0) SET("barlow.proj_dim=%d", head);
    if (head && strcmp(method, "dino") == 0) SET("dino.out_dim=%d", head);
    if (strcmp(method, "dino") == 0) SET("optim.decay=no_bias_1d"), SET("model.init=generic");
    SET("data.local_crops=%d", n_local);
    SET("data.local_size=%d", local_size);
    SET("ser.local_pairs=%d", ser && n_eq > 0 ? lpairs : 0);
#undef SET
    int rc = 0;
    for (int i = 0; i < ns && !rc; i++) rc = ser_config_set_arg(&cfg, sets[i], err);
    if (!rc) rc = ser_config_validate(&cfg, err);
    (void)kv;
    ser_trainer tr;
    if (rc || (rc = ser_trainer_init(&tr, &cfg, 1000, err))) {
        fprintf(stderr, "ser bench step: %s\n", err);
        return 2;
    }
    ser_kernels_set_threads(threads);
    ser_trainer_init_weights(&tr, 0);
    tr.lr_fix = 1e-4, tr.wd_fix = 0.1, tr.mom_fix = 0.99;
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
    int ls = ser_config_local_size(&cfg);
    float *loc[SER_MAX_LOCAL] = {0};
    b.n_local = n_local, b.local_img = ls;
    for (int k = 0; k < n_local; k++) {
        size_t nl = (size_t)batch * 3 * ls * ls;
        loc[k] = ser_xaligned(sizeof(float) * nl);
        s_fill(loc[k], nl, (uint32_t)(1000 + k));
        b.local[k] = loc[k];
    }
    // The local SER pairs: on the local grid, their own group draws (stream 6).
    int P = cfg.ser.local_pairs, np = n_eq * P;
    ser_group_elem *lg[2] = {ser_xcalloc((size_t)np + 1, sizeof(ser_group_elem)),
                             ser_xcalloc((size_t)np + 1, sizeof(ser_group_elem))};
    float **lpimg[2] = {ser_xcalloc((size_t)np + 1, sizeof(float *)),
                        ser_xcalloc((size_t)np + 1, sizeof(float *))};
    for (int i = 0; i < np; i++) {
        ser_group_sample_paper(&lg[0][i], &lg[1][i], ls / patch, 6, 0, (uint32_t)i);
        for (int v = 0; v < 2; v++) {
            int H, W;
            ser_group_image_size(&lg[v][i], patch, &H, &W);
            lpimg[v][i] = ser_xaligned(sizeof(float) * 3 * (size_t)H * W);
            s_fill(lpimg[v][i], (size_t)3 * H * W, (uint32_t)(5000 + 2 * i + v));
        }
    }
    b.n_lpairs = P;
    for (int v = 0; v < 2; v++) b.lpair[v] = (const float *const *)lpimg[v], b.lg[v] = lg[v];
    double *t = ser_xcalloc((size_t)runs, sizeof(double)), L[3] = {0, 0, 0};
    for (int r = -1; r < runs && !rc; r++) {  // r = -1: warm-up
        double t0 = ser_time_sec(), lr, wd, mom;
        ser_trainer_values(&tr, r + 1, &lr, &wd, &mom);
        rc = ser_trainer_step_local(&tr, &b, 1, r + 1, lr, wd, mom, L, NULL, NULL, err);
        if (r >= 0) t[r] = ser_time_sec() - t0;
    }
    if (rc) {
        fprintf(stderr, "ser bench step: %s\n", err);
    } else {
        double med = ser_median(t, runs);
        if (json)
            printf("{\"bench\":\"step\",\"method\":\"%s\",\"ser\":%d,\"model\":\"%s\",\"img\":%d,"
                   "\"patch\":%d,\"batch\":%d,\"n_eq\":%d,\"local\":%d,\"local_size\":%d,"
                   "\"lpairs\":%d,\"threads\":%d,\"precision\":\"%s\",\"runs\":%d,"
                   "\"median_step_s\":%.6f,\"images_per_s\":%.3f,\"loss\":%.6f}\n",
                   method, ser && n_eq > 0, model, img, patch, batch, n_eq, n_local,
                   n_local ? ls : 0, P, threads,
                   cfg.run.precision == SER_PRECISION_BF16 ? "bf16" : "fp32", runs, med,
                   batch / med, L[0]);
        else
            printf("ser bench step: %s%s %s/%d img %d batch %d (%d equivariant, %d local of %d "
                   "px, %d local SER pairs) threads %d, %s (median of %d)\n  step %.4f s  %.2f "
                   "images/s  loss %.4f\n",
                   method, ser && n_eq > 0 ? "+ser" : "", model, patch, img, batch, n_eq, n_local,
                   n_local ? ls : 0, P, threads,
                   cfg.run.precision == SER_PRECISION_BF16 ? "bf16" : "fp32", runs, med,
                   batch / med, L[0]);
    }
    for (int v = 0; v < 2; v++) {
        for (int e = 0; e < n_eq; e++) free(eqimg[v][e]);
        free(eqimg[v]), free(g[v]), free(inv[v]);
    }
    for (int k = 0; k < n_local; k++) free(loc[k]);
    for (int v = 0; v < 2; v++) {
        for (int i = 0; i < np; i++) free(lpimg[v][i]);
        free(lpimg[v]), free(lg[v]);
    }
    free(t);
    ser_trainer_free(&tr);
    return rc ? 1 : 0;
}
