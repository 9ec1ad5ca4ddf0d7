// ser_step.c — `ser step`: K training steps in one process, no network, on given weights and a
// given batch; writes every loss term, every gradient of the first step, and the updated
// weights and optimizer state. The reference interface of the project (docs/step-format.md).
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ser_base.h"
#include "ser_cmd.h"
#include "ser_config.h"
#include "ser_kernels.h"
#include "ser_moco.h"
#include "ser_optim.h"
#include "ser_safetensors.h"
#include "ser_sched.h"

#define SER_STEP_MAX_SET 64

// ImageNet normalisation applied to uint8 images (the worker normalises; loaders ship uint8).
static const float s_mean[3] = {0.485f, 0.456f, 0.406f}, s_std[3] = {0.229f, 0.224f, 0.225f};

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser step --batch B.safetensors --out O.safetensors [--config F.ini]\n"
            "                [--weights W.safetensors] [--steps K] [--set section.key=value]...\n"
            "                [--iter N] [--iters-per-epoch N] [--lr X] [--wd X] [--momentum X]\n"
            "  Runs K training steps (default 1) of the configured objective in one process on\n"
            "  the same batch and writes loss terms, the first step's gradients, the updated\n"
            "  weights and the optimizer state. Without --weights the model is initialised from\n"
            "  data.seed. Schedules are evaluated at iterations N.. (default 0) for the given\n"
            "  iterations per epoch (default 1000); --lr/--wd/--momentum fix those values.\n"
            "  File layouts: docs/step-format.md.\n");
}

// Images of one tensor: F32 (n,3,H,W) already normalised, or U8 (n,H,W,3) raw RGB. With
// single = 1 the leading n is absent. Writes n*3*H*W floats to *out (malloc'ed).
static int s_images(const ser_st_file *f, const char *name, int single, int *n, int *H, int *W,
                    float **out, char *err) {
    const ser_st_entry *e = ser_st_find(f, name);
    if (!e) {
        snprintf(err, SER_ERR_LEN, "batch: tensor '%s' missing", name);
        return SER_ENOENT;
    }
    int nd = single ? 3 : 4, o = single ? 0 : 1;
    int64_t cnt = single ? 1 : e->shape[0];
    if (e->ndim != nd || cnt < 1) goto shape;
    if (e->dtype == SER_DT_F32) {
        if (e->shape[o] != 3) goto shape;
        *H = (int)e->shape[o + 1], *W = (int)e->shape[o + 2];
        *out = ser_xmalloc(e->nbytes ? e->nbytes : 4);
        memcpy(*out, e->data, e->nbytes);
    } else if (e->dtype == SER_DT_U8) {
        if (e->shape[o + 2] != 3) goto shape;
        *H = (int)e->shape[o], *W = (int)e->shape[o + 1];
        size_t hw = (size_t)*H * *W;
        float *x = ser_xmalloc(sizeof(float) * 3 * hw * (size_t)cnt);
        const uint8_t *u = e->data;
        for (int64_t i = 0; i < cnt; i++)
            for (size_t p = 0; p < hw; p++)
                for (int c = 0; c < 3; c++)
                    x[((size_t)i * 3 + c) * hw + p] =
                        ((float)u[((size_t)i * hw + p) * 3 + c] / 255.0f - s_mean[c]) / s_std[c];
        *out = x;
    } else {
        snprintf(err, SER_ERR_LEN, "batch: tensor '%s' has dtype %s (F32 CHW or U8 HWC expected)",
                 name, ser_dtype_name(e->dtype));
        return SER_EDTYPE;
    }
    *n = (int)cnt;
    return SER_OK;
shape:
    snprintf(err, SER_ERR_LEN, "batch: tensor '%s' has the wrong shape (%s expected)", name,
             single ? "F32 (3,H,W) or U8 (H,W,3)" : "F32 (n,3,H,W) or U8 (n,H,W,3)");
    return SER_ESHAPE;
}

static int s_int_at(const ser_st_entry *e, size_t i, int64_t *v) {
    switch (e->dtype) {
    case SER_DT_I64: *v = ((const int64_t *)e->data)[i]; return 0;
    case SER_DT_I32: *v = ((const int32_t *)e->data)[i]; return 0;
    case SER_DT_U8: *v = ((const uint8_t *)e->data)[i]; return 0;
    case SER_DT_F32: {
        float x = ((const float *)e->data)[i];
        if (x != floorf(x)) return -1;
        *v = (int64_t)x;
        return 0;
    }
    default: return -1;
    }
}

typedef struct s_batch {
    ser_batch b;
    float *inv[2];
    float **eq[2];
    ser_group_elem *g[2];
    uint32_t *ids;
} s_batch;

// Releases everything; leaves *sb zeroed, so a second call does nothing.
static void s_batch_free(s_batch *sb) {
    for (int v = 0; v < 2; v++) {
        free(sb->inv[v]);
        for (int e = 0; sb->eq[v] && e < sb->b.n_eq; e++) free(sb->eq[v][e]);
        free(sb->eq[v]), free(sb->g[v]);
    }
    free(sb->ids);
    memset(sb, 0, sizeof *sb);  // safe to call again
}

static int s_batch_load(s_batch *sb, const char *path, int patch, char *err) {
    memset(sb, 0, sizeof *sb);
    ser_st_file *f = NULL;
    int rc = ser_st_open(&f, path, err);
    if (rc) return rc;
    int n[2] = {0, 0}, H[2] = {0, 0}, W[2] = {0, 0};
    for (int v = 0; v < 2 && !rc; v++) {
        char name[32];
        snprintf(name, sizeof name, "inv.view%d", v);
        if (ser_st_find(f, name)) rc = s_images(f, name, 0, &n[v], &H[v], &W[v], &sb->inv[v], err);
    }
    if (!rc && (n[0] != n[1] || H[0] != H[1] || W[0] != W[1] || H[0] != W[0])) {
        snprintf(err, SER_ERR_LEN, "batch: inv.view0 and inv.view1 must hold the same number of "
                 "square images of one size (got %d of %dx%d and %d of %dx%d)", n[0], H[0], W[0],
                 n[1], H[1], W[1]);
        rc = SER_ESHAPE;
    }
    sb->b.n_inv = n[0], sb->b.img = H[0];
    const ser_st_entry *ge = rc ? NULL : ser_st_find(f, "eq.g");
    if (ge) {
        if (ge->ndim != 3 || ge->shape[1] != 2 || ge->shape[2] != 5) {
            snprintf(err, SER_ERR_LEN, "batch: eq.g must be (n_eq, 2, 5): [rot180, hflip, rot90, "
                     "gh, gw] per view");
            rc = SER_ESHAPE;
        }
        int ne = rc ? 0 : (int)ge->shape[0];
        sb->b.n_eq = ne;
        for (int v = 0; v < 2 && !rc; v++) {
            sb->g[v] = ser_xcalloc((size_t)ne + 1, sizeof(ser_group_elem));
            sb->eq[v] = ser_xcalloc((size_t)ne + 1, sizeof(float *));
        }
        for (int e = 0; e < ne && !rc; e++)
            for (int v = 0; v < 2 && !rc; v++) {
                int64_t q[5];
                for (int k = 0; k < 5 && !rc; k++)
                    if (s_int_at(ge, ((size_t)e * 2 + v) * 5 + k, &q[k]) || q[k] < 0 || q[k] > 8192)
                        rc = SER_EINVAL;
                if (rc) {
                    snprintf(err, SER_ERR_LEN, "batch: eq.g[%d][%d] is not a list of small "
                             "non-negative integers", e, v);
                    break;
                }
                ser_group_elem *g = &sb->g[v][e];
                *g = (ser_group_elem){(uint8_t)q[0], (uint8_t)q[1], (uint8_t)q[2], (int16_t)q[3],
                                      (int16_t)q[4]};
                if (ser_group_elem_check(g)) {
                    snprintf(err, SER_ERR_LEN, "batch: eq.g[%d][%d] = (%d,%d,%d,%d,%d) is not a "
                             "group element", e, v, g->rot180, g->hflip, g->rot90, g->gh, g->gw);
                    rc = SER_EINVAL;
                    break;
                }
                char name[48];
                snprintf(name, sizeof name, "eq.view%d.%d", v, e);
                int one, h, w, eh, ew;
                rc = s_images(f, name, 1, &one, &h, &w, &sb->eq[v][e], err);
                ser_group_image_size(g, patch, &eh, &ew);
                if (!rc && (h != eh || w != ew)) {
                    snprintf(err, SER_ERR_LEN, "batch: %s is %dx%d but its group element gives "
                             "%dx%d (patch %d)", name, h, w, eh, ew, patch);
                    rc = SER_ESHAPE;
                }
            }
    }
    const ser_st_entry *ie = rc ? NULL : ser_st_find(f, "ids");
    if (ie) {
        int B = sb->b.n_inv + sb->b.n_eq;
        if (ie->ndim != 1 || ie->shape[0] != B) {
            snprintf(err, SER_ERR_LEN, "batch: ids must have shape (%d,)", B);
            rc = SER_ESHAPE;
        } else {
            sb->ids = ser_xcalloc((size_t)B, sizeof(uint32_t));
            for (int i = 0; i < B && !rc; i++) {
                int64_t v;
                if (s_int_at(ie, (size_t)i, &v) || v < 0 || v > UINT32_MAX) {
                    snprintf(err, SER_ERR_LEN, "batch: ids[%d] is not a sample id", i);
                    rc = SER_EINVAL;
                } else {
                    sb->ids[i] = (uint32_t)v;
                }
            }
        }
    }
    ser_st_destroy(&f);
    if (rc) {
        s_batch_free(sb);
        return rc;
    }
    sb->b.inv[0] = sb->inv[0], sb->b.inv[1] = sb->inv[1];
    for (int v = 0; v < 2; v++) {
        sb->b.eq[v] = (const float *const *)sb->eq[v];
        sb->b.g[v] = sb->g[v];
    }
    sb->b.ids = sb->ids;
    return SER_OK;
}

int ser_cmd_step(int argc, char **argv) {
    const char *cfg_path = NULL, *weights = NULL, *batch_path = NULL, *out_path = NULL;
    const char *sets[SER_STEP_MAX_SET];
    int nset = 0, steps = 1;
    long iter = 0, ipe = 1000;
    double lr_fix = NAN, wd_fix = NAN, mom_fix = NAN;
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"weights", required_argument, 0, 'w'},
        {"batch", required_argument, 0, 'b'},  {"out", required_argument, 0, 'o'},
        {"steps", required_argument, 0, 'k'},  {"set", required_argument, 0, 's'},
        {"iter", required_argument, 0, 'i'},   {"iters-per-epoch", required_argument, 0, 'I'},
        {"lr", required_argument, 0, 'l'},     {"wd", required_argument, 0, 'd'},
        {"momentum", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    optind = 1;
    char *end;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': cfg_path = optarg; break;
        case 'w': weights = optarg; break;
        case 'b': batch_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'k': steps = (int)strtol(optarg, &end, 10); if (*end || steps < 1 || steps > 1000000) steps = -1; break;
        case 's':
            if (nset == SER_STEP_MAX_SET) {
                fprintf(stderr, "ser step: at most %d --set options\n", SER_STEP_MAX_SET);
                return 2;
            }
            sets[nset++] = optarg;
            break;
        case 'i': iter = strtol(optarg, &end, 10); if (*end || iter < 0) iter = -1; break;
        case 'I': ipe = strtol(optarg, &end, 10); if (*end || ipe < 1) ipe = -1; break;
        case 'l': lr_fix = strtod(optarg, &end); if (*end || !(lr_fix >= 0)) lr_fix = -1; break;
        case 'd': wd_fix = strtod(optarg, &end); if (*end || !(wd_fix >= 0)) wd_fix = -1; break;
        case 'm': mom_fix = strtod(optarg, &end); if (*end || !(mom_fix >= 0 && mom_fix <= 1)) mom_fix = -1; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (!batch_path || !out_path || optind != argc || steps < 1 || iter < 0 || ipe < 1 ||
        lr_fix < 0 || wd_fix < 0 || mom_fix < 0) {
        fprintf(stderr, "ser step: %s\n", !batch_path || !out_path
                                              ? "--batch and --out are required"
                                              : "bad value for --steps, --iter, --iters-per-epoch, "
                                                "--lr, --wd or --momentum (or a stray argument)");
        s_usage(stderr);
        return 2;
    }
    char err[SER_ERR_LEN];
    ser_config cfg;
    ser_config_defaults(&cfg);
    int rc = 0;
    if (cfg_path) {
        rc = ser_config_load(&cfg, cfg_path, nset, sets, err);
    } else {
        for (int i = 0; i < nset && !rc; i++) rc = ser_config_set_arg(&cfg, sets[i], err);
        if (!rc) rc = ser_config_validate(&cfg, err);
    }
    if (rc) {
        fprintf(stderr, "ser step: %s\n", err);
        return 2;
    }
    int threads = cfg.run.threads > 0 ? cfg.run.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    ser_kernels_set_threads(threads);
    ser_moco_config mc;
    if ((rc = ser_moco_config_from_job(&mc, &cfg, err))) {
        fprintf(stderr, "ser step: %s\n", err);
        return 2;
    }
    ser_moco m;
    ser_optim opt;
    memset(&opt, 0, sizeof opt);
    s_batch sb;
    memset(&sb, 0, sizeof sb);
    float *grads0 = NULL, *losses = NULL;
    int status = 1;
    if ((rc = ser_moco_init(&m, &mc, err))) {
        fprintf(stderr, "ser step: %s\n", err);
        return 2;
    }
    if (weights) {
        ser_st_file *wf = NULL;
        rc = ser_st_open(&wf, weights, err);
        const ser_ptab *tabs[3] = {&m.tab, &m.mtab, &m.btab};
        float *arenas[3] = {m.params, m.mparams, m.buffers};
        if (!rc) rc = ser_st_load_ptabs(wf, tabs, arenas, 3, "", 1, err);
        ser_st_destroy(&wf);
        if (rc) goto fail;
    } else {
        ser_moco_init_weights(&m, cfg.data.seed);
    }
    if ((rc = s_batch_load(&sb, batch_path, mc.vit.patch, err))) goto fail;
    ser_optim_config oc;
    ser_config_to_optim(&cfg, &oc);
    if ((rc = ser_optim_init(&opt, &m.tab, &oc, err))) goto fail;
    ser_sched_params sp;
    ser_config_to_sched(&cfg, ipe, &sp);
    grads0 = ser_xaligned(sizeof(float) * m.tab.total);
    losses = ser_xcalloc((size_t)steps * 3, sizeof(float));
    for (int k = 0; k < steps; k++) {
        int64_t it = iter + k;
        ser_sched_values sv;
        ser_sched_eval(&sp, it, &sv);
        double lr = isnan(lr_fix) ? sv.lr : lr_fix, wd = isnan(wd_fix) ? sv.wd : wd_fix;
        double mom = isnan(mom_fix) ? sv.momentum : mom_fix;
        ser_moco_losses L;
        rc = ser_moco_forward_backward(&m, &sb.b, cfg.data.shards, (float)mom, cfg.data.seed,
                                       (uint32_t)it, &L, err);
        if (rc) goto fail;
        if (k == 0) memcpy(grads0, m.grads, sizeof(float) * m.tab.total);
        double gnorm = ser_optim_clip_grad(&m.tab, m.grads, cfg.optim.clip, cfg.optim.clip_mode,
                                           NULL, NULL, NULL);
        if (!isfinite(gnorm)) {
            snprintf(err, SER_ERR_LEN, "step %lld: non-finite gradient (norm %g); not applied",
                     (long long)it, gnorm);
            rc = SER_ENONFINITE;
            goto fail;
        }
        ser_optim_step(&opt, m.params, m.grads, lr, wd, NULL);
        losses[k * 3 + 0] = (float)L.loss, losses[k * 3 + 1] = (float)L.loss_inv;
        losses[k * 3 + 2] = (float)L.loss_equiv;
        printf("step %lld: loss %.6f  inv %.6f  equiv %.6f  lr %.3g  wd %.3g  m %.6f  |g| %.4g\n",
               (long long)it, L.loss, L.loss_inv, L.loss_equiv, lr, wd, mom, gnorm);
    }
    // Output: losses, first-step gradients, weights, buffers, optimizer state.
    ser_st_writer *w = ser_st_writer_new();
    float *lcol[3];
    for (int j = 0; j < 3; j++) {
        lcol[j] = ser_xcalloc((size_t)steps, sizeof(float));
        for (int k = 0; k < steps; k++) lcol[j][k] = losses[k * 3 + j];
    }
    int64_t kshape[1] = {steps};
    ser_st_writer_add(w, "loss", SER_DT_F32, 1, kshape, lcol[0]);
    ser_st_writer_add(w, "loss_inv", SER_DT_F32, 1, kshape, lcol[1]);
    ser_st_writer_add(w, "loss_equiv", SER_DT_F32, 1, kshape, lcol[2]);
    ser_st_writer_add_ptab(w, &m.tab, grads0, "grad.");
    ser_st_writer_add_ptab(w, &m.tab, m.params, "");
    ser_st_writer_add_ptab(w, &m.mtab, m.mparams, "");
    ser_st_writer_add_ptab(w, &m.btab, m.buffers, "");
    char key[SER_TINFO_NAME_LEN + 48];
    char (*names)[SER_TINFO_NAME_LEN + 48] = ser_xcalloc((size_t)m.tab.n * 3, sizeof *names);
    for (int i = 0; i < m.tab.n; i++) {
        const ser_tinfo *t = &m.tab.t[i];
        if (opt.step[i] == 0) continue;  // frozen: no state, as torch keeps none
        for (int part = 0; part < 3; part++) {
            ser_optim_state_key(&opt, i, part, key, sizeof key);
            memcpy(names[i * 3 + part], key, sizeof key);
            if (part == SER_OPTIM_STATE_STEP)
                ser_st_writer_add(w, names[i * 3 + part], SER_DT_I64, 0, NULL, &opt.step[i]);
            else
                ser_st_writer_add(w, names[i * 3 + part], SER_DT_F32, t->ndim, t->shape,
                                  (part ? opt.exp_avg_sq : opt.exp_avg) + t->offset);
        }
    }
    char hash[17], nbuf[32];
    ser_config_hash_hex(&cfg, hash);
    ser_st_writer_meta(w, "config_hash", hash);
    snprintf(nbuf, sizeof nbuf, "%d", steps);
    ser_st_writer_meta(w, "steps", nbuf);
    snprintf(nbuf, sizeof nbuf, "%ld", iter);
    ser_st_writer_meta(w, "first_iter", nbuf);
    ser_st_writer_meta(w, "format", "ser-step-v1");
    rc = ser_st_writer_save(w, out_path, err);
    ser_st_writer_destroy(&w);
    for (int j = 0; j < 3; j++) free(lcol[j]);
    free(names);
    if (rc) goto fail;
    printf("wrote %s\n", out_path);
    status = 0;
fail:
    if (rc) fprintf(stderr, "ser step: %s\n", err);
    free(grads0), free(losses);
    s_batch_free(&sb);
    ser_optim_free(&opt);
    ser_moco_free(&m);
    return status;
}
