// fuzz_fixtures.c — see fuzz_fixtures.h (setups shared by harnesses and the corpus generator).
#include "fuzz_fixtures.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"

void ser_fuzz_loader_config(ser_dl_config *c, const char *root) {
    ser_dl_config_defaults(c);
    snprintf(c->data, sizeof c->data, "%s", root);
    c->kind = SER_DL_KIND_IMAGEFOLDER;
    snprintf(c->job_id, sizeof c->job_id, "%s", SER_FUZZ_JOB);
    c->img = 16;
    c->patch = 8;
    c->global_batch = 4;
    c->shards = 2;
    c->eq_ratio = 0.5;
    c->seed = 5;
    c->threads = 1;
}

int ser_fuzz_loader_data(const char *root, char err[256]) {
    return ser_dl_data_make_synthetic(root, 2, 2, 24, 20, 9, err);
}

void ser_fuzz_ckpt_init(ser_fuzz_ckpt *b) {
    memset(b, 0, sizeof *b);
    ser_ptab_init(&b->tab);
    int64_t w[2] = {3, 4}, v[1] = {5};
    ser_ptab_add(&b->tab, "blocks.0.weight", 0, 2, w);
    ser_ptab_add(&b->tab, "blocks.0.bias", SER_TINFO_NO_DECAY, 1, v);
    ser_ptab_add(&b->tab, "bn.num_batches_tracked", SER_TINFO_COUNTER | SER_TINFO_FROZEN, 0, NULL);
    b->arena = ser_xaligned(sizeof(float) * (b->tab.total ? b->tab.total : 1));
    memset(b->arena, 0, sizeof(float) * b->tab.total);
    for (int i = 0; i < b->tab.n; i++)
        for (size_t k = 0; k < b->tab.t[i].numel; k++)
            b->arena[b->tab.t[i].offset + k] = 0.25f * (float)(i + 1) + (float)k;
    ser_optim_config oc;
    ser_optim_config_default(&oc);
    char err[SER_ERR_LEN];
    if (ser_optim_init(&b->opt, &b->tab, &oc, err) != SER_OK) {
        fprintf(stderr, "fuzz fixtures: %s\n", err);
        abort();
    }
    b->opt.step[0] = 3;  // the weight has AdamW state, the bias none yet
    for (size_t k = 0; k < b->tab.t[0].numel; k++) {
        b->opt.exp_avg[b->tab.t[0].offset + k] = 0.5f;
        b->opt.exp_avg_sq[b->tab.t[0].offset + k] = 0.125f;
    }
    for (int k = 0; k < 6; k++) b->center[k] = (float)k - 2.5f;
    b->skipped = 2;
    b->ck = ser_ckpt_new();
    ser_ckpt_add_table(b->ck, &b->tab, b->arena, "base_encoder.");
    ser_ckpt_add_optim(b->ck, &b->opt);
    int64_t cs[2] = {1, 6};
    ser_ckpt_add_f32(b->ck, "dino_loss.center", b->center, 2, cs);
    ser_ckpt_add_i64(b->ck, "train.skipped_steps", &b->skipped);
    ser_config_defaults(&b->cfg);
}

void ser_fuzz_ckpt_free(ser_fuzz_ckpt *b) {
    ser_ckpt_destroy(&b->ck);
    ser_optim_free(&b->opt);
    free(b->arena);
    ser_ptab_free(&b->tab);
    memset(b, 0, sizeof *b);
}
