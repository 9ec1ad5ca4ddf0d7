// ser_backbone.c — see ser_backbone.h.
#include "ser_backbone.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ser_ckpt.h"
#include "ser_objective.h"
#include "ser_safetensors.h"

const char *ser_backbone_prefix(int method) {
    const ser_objective_i *o = ser_objective_get(method);
    return o ? o->student_prefix : NULL;
}

static const char *s_method_name(int method) {
    const ser_objective_i *o = ser_objective_get(method);
    return o ? o->name : "unknown";
}

// The student ViT of the job and its init scheme, exactly as every objective builds it.
static int s_student_config(const ser_config *cfg, ser_vit_config *vc, int *scheme, char *err) {
    if (!ser_objective_get(cfg->method.name))
        return ser_errf(err, SER_ECONFIG, "method.name: unknown method %d", cfg->method.name);
    *scheme = cfg->model.init == SER_CONFIG_INIT_MOCO ? SER_VIT_INIT_MOCO : SER_VIT_INIT_GENERIC;
    return ser_config_to_vit(cfg, vc, err);
}

int ser_backbone_init_random(ser_backbone *b, const ser_config *cfg, uint64_t seed,
                             char err[SER_ERR_LEN]) {
    memset(b, 0, sizeof *b);
    ser_vit_config vc;
    int scheme = SER_VIT_INIT_GENERIC, rc;
    if ((rc = s_student_config(cfg, &vc, &scheme, err))) return rc;
    if ((rc = ser_vit_init(&b->vit, &vc, err))) return rc;
    b->cfg = *cfg;
    b->method = cfg->method.name;
    b->step = -1;
    // The RNG streams are keyed by (seed, index of the tensor within the ViT), so the standalone
    // ViT gets bitwise the weights of the method's registered student.
    ser_vit_init_weights(&b->vit, scheme, seed);
    return SER_OK;
}

void ser_backbone_free(ser_backbone *b) {
    if (!b) return;
    ser_vit_free(&b->vit);
    memset(b, 0, sizeof *b);
}

// path itself, or the checkpoint of a run directory; *verified = 1 when that one was verified.
static int s_resolve(const char *path, char *file, size_t file_len, int *verified, char *err) {
    struct stat st;
    *verified = 0;
    if (!path || !*path) return ser_errf(err, SER_EINVAL, "backbone: no path given");
    if (stat(path, &st) != 0)
        return ser_errf(err, errno == ENOENT || errno == ENOTDIR ? SER_ENOENT : SER_EIO,
                        "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        int rc = ser_ckpt_find_latest_valid(path, file, file_len, err);  // as resume picks
        *verified = rc == SER_OK;
        return rc;
    }
    int k = snprintf(file, file_len, "%s", path);
    if (k < 0 || (size_t)k >= file_len) return ser_errf(err, SER_EINVAL, "%s: path too long", path);
    return SER_OK;
}

int ser_backbone_resolve(const char *path, char *file, size_t file_len, char err[SER_ERR_LEN]) {
    int verified;
    return s_resolve(path, file, file_len, &verified, err);
}

int ser_backbone_load(ser_backbone *b, const char *path, const ser_config *cfg,
                      char err[SER_ERR_LEN]) {
    memset(b, 0, sizeof *b);
    char file[4096], why[SER_ERR_LEN];
    int rc, verified = 0;
    ser_st_file *f = NULL;
    if ((rc = s_resolve(path, file, sizeof file, &verified, err)) != SER_OK) return rc;

    if ((rc = ser_st_open(&f, file, err)) != SER_OK) return rc;
    const char *fmt = ser_st_meta(f, "format");
    if (fmt && strcmp(fmt, SER_CKPT_FORMAT) == 0 && !verified &&
        (rc = ser_ckpt_verify(file, NULL, NULL, err)) != SER_OK)
        goto fail;

    // The configuration: the given one, else the file's.
    const char *text = ser_st_meta(f, "config"), *stored_hash = ser_st_meta(f, "config_hash");
    if (cfg) {
        b->cfg = *cfg;
        char mine[17];
        ser_config_hash_hex(cfg, mine);
        if (stored_hash && strcmp(stored_hash, mine) != 0)
            ser_log(SER_LL_WARNING,
                    "backbone: %s was written by config %.16s, the given config is %s; using "
                    "the given one (shapes are checked)",
                    file, stored_hash, mine);
    } else if (text) {
        ser_config_defaults(&b->cfg);
        if ((rc = ser_config_load_string(&b->cfg, text, "stored config", why)) != SER_OK) {
            rc = ser_errf(err, SER_ECONFIG, "%s: its stored config cannot be read: %s", file, why);
            goto fail;
        }
    } else {
        rc = ser_errf(err, SER_ECONFIG,
                      "%s: the file has no config metadata (a `ser step --out` / `ser local "
                      "--out` state file?): give the job's configuration (--config job.ini)",
                      file);
        goto fail;
    }
    b->method = b->cfg.method.name;
    const char *prefix = ser_backbone_prefix(b->method);
    if (!prefix) {
        rc = ser_errf(err, SER_ECONFIG, "%s: unknown method %d", file, b->method);
        goto fail;
    }

    b->step = -1;
    const ser_st_entry *se = ser_st_find(f, "train.step");
    if (se && se->dtype == SER_DT_I64 && se->ndim == 0) memcpy(&b->step, se->data, sizeof b->step);

    ser_vit_config vc;
    int scheme = SER_VIT_INIT_GENERIC;
    if ((rc = s_student_config(&b->cfg, &vc, &scheme, why)) != SER_OK) {
        rc = ser_errf(err, rc, "%s: %s", file, why);
        goto fail;
    }
    if ((rc = ser_vit_init(&b->vit, &vc, why)) != SER_OK) {
        rc = ser_errf(err, rc, "%s: %s", file, why);
        goto fail;
    }

    // Every tensor present first (count the missing ones), then shapes, dtypes and copies.
    const ser_ptab *tab = b->vit.tabp;
    char full[SER_TINFO_NAME_LEN + 64], first_miss[SER_TINFO_NAME_LEN + 64] = "";
    int nmiss = 0;
    for (int i = 0; i < tab->n; i++) {
        snprintf(full, sizeof full, "%s%s", prefix, tab->t[i].name);
        if (ser_st_find(f, full)) continue;
        if (!nmiss++) snprintf(first_miss, sizeof first_miss, "%s", full);
    }
    if (nmiss) {
        rc = ser_errf(err, SER_ENOENT,
                      "%s: backbone tensor '%s' is missing (%d of the %d tensors of the %s "
                      "student under '%s' are absent)",
                      file, first_miss, nmiss, tab->n, s_method_name(b->method), prefix);
        goto fail;
    }
    for (int i = 0; i < tab->n; i++) {
        const ser_tinfo *t = &tab->t[i];
        snprintf(full, sizeof full, "%s%s", prefix, t->name);
        if ((rc = ser_st_read_f32(f, full, b->vit.params + t->offset, t->ndim, t->shape, err)))
            goto fail;
    }
    ser_st_destroy(&f);
    return SER_OK;
fail:
    ser_st_destroy(&f);
    ser_backbone_free(b);
    return rc;
}

// --- timm names --------------------------------------------------------------------------------

// The plain ViTs timm registers (timm.models.vision_transformer) of the three widths ser has:
// width, depth 12, heads, 4x MLP; patch and image size in the name.
static const struct {
    int arch, patch, img;
} s_timm_vits[] = {
    {SER_CONFIG_ARCH_VIT_TINY, 16, 224},  {SER_CONFIG_ARCH_VIT_TINY, 16, 384},
    {SER_CONFIG_ARCH_VIT_SMALL, 32, 224}, {SER_CONFIG_ARCH_VIT_SMALL, 32, 384},
    {SER_CONFIG_ARCH_VIT_SMALL, 16, 224}, {SER_CONFIG_ARCH_VIT_SMALL, 16, 384},
    {SER_CONFIG_ARCH_VIT_SMALL, 8, 224},  {SER_CONFIG_ARCH_VIT_BASE, 32, 224},
    {SER_CONFIG_ARCH_VIT_BASE, 32, 384},  {SER_CONFIG_ARCH_VIT_BASE, 16, 224},
    {SER_CONFIG_ARCH_VIT_BASE, 16, 384},  {SER_CONFIG_ARCH_VIT_BASE, 8, 224},
};

int ser_backbone_timm_name(int arch, const ser_vit_config *c, char *name, size_t n, char *note,
                           size_t nn) {
    static const char *const archs[3] = {"vit_tiny", "vit_small", "vit_base"};
    static const int dims[3] = {192, 384, 768}, heads[3] = {3, 6, 12};
    if (arch < 0 || arch > 2) arch = SER_CONFIG_ARCH_VIT_BASE;
    int best = -1, best_score = 0;
    for (int i = 0; i < (int)(sizeof s_timm_vits / sizeof s_timm_vits[0]); i++) {
        if (s_timm_vits[i].arch != arch) continue;
        int d = s_timm_vits[i].img - c->img_size;
        int score = (s_timm_vits[i].patch != c->patch) * 100000 + (d < 0 ? -d : d);
        if (best < 0 || score < best_score) best = i, best_score = score;
    }
    snprintf(name, n, "%s_patch%d_%d", archs[arch], s_timm_vits[best].patch, s_timm_vits[best].img);
    int grid = best_score == 0;
    int dims_ok = c->dim == dims[arch] && c->depth == 12 && c->heads == heads[arch] &&
                  c->mlp_hidden == 4 * c->dim;
    if (note && nn) {
        note[0] = 0;
        if (!grid || !dims_ok)
            snprintf(note, nn, "no timm name fits this model (patch %d at %d px; %d wide, %d "
                     "blocks, %d heads, MLP %d): %s is the closest; "
                     "timm.create_model(timm_model, **timm_kwargs) builds it with the export's "
                     "sizes", c->patch, c->img_size, c->dim, c->depth, c->heads, c->mlp_hidden,
                     name);
    }
    return grid && dims_ok;
}
