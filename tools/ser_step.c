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
#include "ser_ckpt.h"
#include "ser_config.h"
#include "ser_kernels.h"
#include "ser_moco.h"
#include "ser_optim.h"
#include "ser_safetensors.h"
#include "ser_batchfile.h"
#include "ser_sched.h"
#include "ser_train.h"

#define SER_STEP_MAX_SET 64

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser step --batch B.safetensors --out O.safetensors [--config F.ini]\n"
            "                [--weights W.safetensors] [--steps K] [--set section.key=value]...\n"
            "                [--iter N] [--iters-per-epoch N] [--lr X] [--wd X] [--momentum X]\n"
            "                [--resume DIR] [--save DIR]\n"
            "  Runs K training steps (default 1) of the configured objective in one process on\n"
            "  the same batch and writes loss terms, the first step's gradients, the updated\n"
            "  weights and the optimizer state. Without --weights the model is initialised from\n"
            "  data.seed. Schedules are evaluated at iterations N.. (default 0) for the given\n"
            "  iterations per epoch (default 1000); --lr/--wd/--momentum fix those values.\n"
            "  --resume DIR continues from the newest valid checkpoint in DIR (weights, optimizer\n"
            "  state and iteration, instead of --weights and --iter); --save DIR writes a\n"
            "  checkpoint after the K steps (docs/checkpoints.md).\n"
            "  File layouts: docs/step-format.md.\n");
}

int ser_cmd_step(int argc, char **argv) {
    const char *cfg_path = NULL, *weights = NULL, *batch_path = NULL, *out_path = NULL;
    const char *resume_dir = NULL, *save_dir = NULL;
    const char *sets[SER_STEP_MAX_SET];
    int nset = 0, steps = 1;
    long iter = 0, ipe = 0;  // 0: data.iters_per_epoch, else 1000
    double lr_fix = NAN, wd_fix = NAN, mom_fix = NAN;
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"weights", required_argument, 0, 'w'},
        {"batch", required_argument, 0, 'b'},  {"out", required_argument, 0, 'o'},
        {"steps", required_argument, 0, 'k'},  {"set", required_argument, 0, 's'},
        {"iter", required_argument, 0, 'i'},   {"iters-per-epoch", required_argument, 0, 'I'},
        {"lr", required_argument, 0, 'l'},     {"wd", required_argument, 0, 'd'},
        {"momentum", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'},
        {"resume", required_argument, 0, 'R'},   {"save", required_argument, 0, 'S'},
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
        case 'R': resume_dir = optarg; break;
        case 'S': save_dir = optarg; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (resume_dir && (weights || iter)) {
        fprintf(stderr, "ser step: --resume takes the weights and the iteration from the "
                        "checkpoint (no --weights, no --iter)\n");
        return 2;
    }
    if (!batch_path || !out_path || optind != argc || steps < 1 || iter < 0 || ipe < 0 ||
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
    if (ipe == 0) ipe = cfg.data.iters_per_epoch > 0 ? (long)cfg.data.iters_per_epoch : 1000;
    int threads = cfg.run.threads > 0 ? cfg.run.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    ser_kernels_set_threads(threads);
    ser_trainer tr;
    ser_batchfile sb;
    memset(&sb, 0, sizeof sb);
    float *grads0 = NULL, *losses = NULL;
    ser_ckpt *ck = NULL;
    int status = 1;
    if ((rc = ser_trainer_init(&tr, &cfg, ipe, err))) {
        fprintf(stderr, "ser step: %s\n", err);
        return 2;
    }
    tr.lr_fix = lr_fix, tr.wd_fix = wd_fix, tr.mom_fix = mom_fix;
    ck = ser_trainer_ckpt(&tr);
    if (resume_dir) {
        ser_ckpt_pos pos;
        char from[4096];
        if ((rc = ser_ckpt_load_latest_valid(ck, resume_dir, &cfg, &pos, from, sizeof from, err)))
            goto fail;
        iter = (long)pos.step;
        printf("resumed from %s at iteration %ld\n", from, iter);
        if (pos.iters_per_epoch > 0 && pos.iters_per_epoch != ipe) {
            printf("keeping the checkpoint's %lld iterations per epoch (not %lld)\n",
                   (long long)pos.iters_per_epoch, (long long)ipe);
            ipe = pos.iters_per_epoch;
            ser_trainer_set_ipe(&tr, ipe);
        }
    } else if (weights) {
        if ((rc = ser_trainer_load(&tr, weights, err))) goto fail;
    } else {
        ser_trainer_init_weights(&tr, cfg.data.seed);
    }
    if ((rc = ser_batchfile_load(&sb, batch_path, cfg.model.patch, err))) goto fail;
    int want_pairs = cfg.ser.enabled ? cfg.ser.local_pairs : 0;
    if (sb.b.n_lpairs != want_pairs && sb.b.n_eq > 0) {
        rc = ser_errf(err, SER_ESHAPE, "%s holds %d local SER pairs per equivariant sample, the "
                      "job's ser.local_pairs is %d", batch_path, sb.b.n_lpairs, want_pairs);
        goto fail;
    }
    grads0 = ser_xaligned(sizeof(float) * tr.tab->total);
    losses = ser_xcalloc((size_t)steps * 3, sizeof(float));
    for (int k = 0; k < steps; k++) {
        int64_t it = iter + k;
        double lr, wd, mom, gnorm;
        ser_trainer_values(&tr, it, &lr, &wd, &mom);
        double L[3];
        rc = ser_trainer_step_local(&tr, &sb.b, cfg.data.shards, it, lr, wd, mom, L,
                                    k == 0 ? grads0 : NULL, &gnorm, err);
        if (rc) goto fail;
        for (int j = 0; j < 3; j++) losses[k * 3 + j] = (float)L[j];
        printf("step %lld: loss %.6f  inv %.6f  equiv %.6f  lr %.3g  wd %.3g  m %.6f  |g| %.4g\n",
               (long long)it, L[0], L[1], L[2], lr, wd, mom, gnorm);
    }
    if ((rc = ser_trainer_write(&tr, out_path, grads0, losses, steps, iter, err))) goto fail;
    char hs[SER_HUMAN_BYTES_LEN];
    printf("wrote %s (%s)\n", out_path, ser_human_file_size(out_path, hs));
    if (save_dir) {
        int64_t next = iter + steps;
        ser_ckpt_pos pos = {next, next / ipe, next * (sb.b.n_inv + sb.b.n_eq), ipe};
        char saved[4096];
        if ((rc = ser_ckpt_save(ck, save_dir, &pos, &cfg, cfg.run.keep_checkpoints, saved,
                                sizeof saved, err)))
            goto fail;
        printf("wrote checkpoint %s (%s)\n", saved, ser_human_file_size(saved, hs));
    }
    status = 0;
fail:
    if (rc) fprintf(stderr, "ser step: %s\n", err);
    free(grads0), free(losses);
    ser_batchfile_free(&sb);
    ser_ckpt_destroy(&ck);
    ser_trainer_free(&tr);
    return status;
}
