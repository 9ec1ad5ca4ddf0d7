// ser_export.c — `ser export`: the student backbone of a checkpoint, run directory or state file
// as a safetensors file with timm's vision_transformer names (docs/export.md), and optionally
// the method's full model state with the reference names (no optimizer state).
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ser_backbone.h"
#include "ser_base.h"
#include "ser_cmd.h"
#include "ser_config.h"
#include "ser_safetensors.h"
#include "ser_train.h"

#define SER_EXPORT_FORMAT "ser-timm-vit"         // metadata "format" of --out
#define SER_EXPORT_FULL_FORMAT "ser-full-state"  // metadata "format" of --full
#define SER_EXPORT_VERSION "1"
#define SER_EXPORT_EXTRA_PREFIX "ser."  // tensors timm's VisionTransformer does not have

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser export CHECKPOINT|RUN_DIR|STATE --out backbone.safetensors\n"
            "                  [--config job.ini] [--full full.safetensors]\n"
            "  Writes the student backbone with timm's vision_transformer names and shapes; the\n"
            "  layout (timm kwargs, [CLS] inserted after block k) is in the file's metadata.\n"
            "  ser's own norm_equiv LayerNorm goes under ser.norm_equiv.* (load with\n"
            "  strict=False, or drop it). RUN_DIR: its newest valid checkpoint. A state file of\n"
            "  `ser step --out` has no config: give --config (it also overrides a checkpoint's).\n"
            "  --full writes every table of the method (trainable, teacher / momentum encoder,\n"
            "  buffers) with the reference state_dict names, without optimizer state.\n"
            "  Both files are written atomically. How to load them: docs/export.md.\n");
}

static const char *s_method_name(int method) {
    const ser_objective_i *o = ser_objective_get(method);
    return o ? o->name : "unknown";
}

static void s_meta_common(ser_st_writer *w, const ser_backbone *b, const char *file,
                          const char *config_text) {
    char buf[64], hash[17];
    ser_st_writer_meta(w, "ser_method", s_method_name(b->method));
    snprintf(buf, sizeof buf, "%lld", (long long)b->step);
    ser_st_writer_meta(w, "ser_step", buf);
    ser_st_writer_meta(w, "ser_source", file);
    ser_st_writer_meta(w, "config_hash", ser_config_hash_hex(&b->cfg, hash));
    if (config_text) ser_st_writer_meta(w, "config", config_text);
}

// The backbone under timm's names: every ViT tensor keeps its name (they are timm's), except
// ser's own norm_equiv, which goes under "ser.". names must hold tab->n entries.
static void s_backbone_writer(ser_st_writer *w, const ser_backbone *b, const char *file,
                              const char *config_text, char (*names)[SER_TINFO_NAME_LEN + 8]) {
    const ser_vit *v = &b->vit;
    const ser_vit_config *c = &v->cfg;
    const ser_ptab *tab = v->tabp;
    char extras[256] = "";
    size_t used = 0;
    for (int i = 0; i < tab->n; i++) {
        const ser_tinfo *t = &tab->t[i];
        int extra = strncmp(t->name, "norm_equiv.", 11) == 0;
        snprintf(names[i], sizeof names[0], "%s%s", extra ? SER_EXPORT_EXTRA_PREFIX : "", t->name);
        if (extra && used < sizeof extras)
            used += (size_t)snprintf(extras + used, sizeof extras - used, "%s%s", used ? "," : "",
                                     names[i]);
        ser_st_writer_add(w, names[i], SER_DT_F32, t->ndim, t->shape, v->params + t->offset);
    }
    // timm.models.vision_transformer.VisionTransformer(**timm_kwargs) has exactly these tensors
    // (besides the ser.* extras) with these shapes; LayerNorm eps is timm's default 1e-6.
    char kw[512], ratio[48];
    double r = (double)c->mlp_hidden / c->dim;
    if (c->mlp_hidden % c->dim == 0)
        snprintf(ratio, sizeof ratio, "%d.0", c->mlp_hidden / c->dim);
    else
        snprintf(ratio, sizeof ratio, "%.17g", r);
    snprintf(kw, sizeof kw,
             "{\"img_size\": %d, \"patch_size\": %d, \"embed_dim\": %d, \"depth\": %d, "
             "\"num_heads\": %d, \"mlp_ratio\": %s, \"qkv_bias\": true, \"class_token\": true, "
             "\"no_embed_class\": %s, \"global_pool\": \"token\", \"num_classes\": 0}",
             c->img_size, c->patch, c->dim, c->depth, c->heads, ratio,
             v->baseline ? "false" : "true");
    char model[64], k[16], eps[32], note[400];
    int exact = ser_backbone_timm_name(b->cfg.model.arch, c, model, sizeof model, note, sizeof note);
    snprintf(k, sizeof k, "%d", v->baseline ? 0 : c->cls_layer);
    snprintf(eps, sizeof eps, "%g", (double)c->ln_eps);
    ser_st_writer_meta(w, "format", SER_EXPORT_FORMAT);
    ser_st_writer_meta(w, "format_version", SER_EXPORT_VERSION);
    ser_st_writer_meta(w, "timm_model", model);
    ser_st_writer_meta(w, "timm_model_exact", exact ? "true" : "false");
    ser_st_writer_meta(w, "timm_model_note", note);
    ser_st_writer_meta(w, "timm_kwargs", kw);
    ser_st_writer_meta(w, "ser_layout", v->baseline ? "baseline" : "ser");
    ser_st_writer_meta(w, "ser_cls_after_block", k);
    ser_st_writer_meta(w, "ser_ln_eps", eps);
    ser_st_writer_meta(w, "ser_extras", extras);
    ser_st_writer_meta(w, "ser_pos_embed_resample",
                       "bicubic, scale_factor (g+0.1)/g0, align_corners=False");
    s_meta_common(w, b, file, config_text);
}

// Loads every table of t from the file (the reference names, no prefix): every tensor must be
// present; counters (num_batches_tracked) come as 0-d integers or floats.
static int s_load_tables(ser_trainer *t, const ser_st_file *f, const char *file, char *err) {
    for (int k = 0; k < t->ntabs; k++)
        for (int i = 0; i < t->tabs[k]->n; i++) {
            const ser_tinfo *ti = &t->tabs[k]->t[i];
            const ser_st_entry *e = ser_st_find(f, ti->name);
            if (!e)
                return ser_errf(err, SER_ENOENT, "%s: tensor '%s' of the %s model is missing",
                                file, ti->name, s_method_name(t->method));
            float *dst = t->arenas[k] + ti->offset;
            if ((ti->flags & SER_TINFO_COUNTER) && e->ndim == 0 &&
                (e->dtype == SER_DT_I64 || e->dtype == SER_DT_I32)) {
                int64_t v = 0;
                if (e->dtype == SER_DT_I64) {
                    memcpy(&v, e->data, sizeof v);
                } else {
                    int32_t v32;
                    memcpy(&v32, e->data, sizeof v32);
                    v = v32;
                }
                *dst = (float)v;
                continue;
            }
            int rc = ser_st_read_f32(f, ti->name, dst, ti->ndim, ti->shape, err);
            if (rc) return rc;
        }
    return SER_OK;
}

// The full state: every table, counters as 0-d I64 (as PyTorch stores num_batches_tracked).
// counters must hold one slot per tensor of all tables.
// An objective may write tensors under a second name (its table's alias_from / alias_to): DINO's
// teacher shares the student's projector_equiv module (set_projector_equiv), so torch's
// state_dict lists it twice: teacher.projector_equiv.* repeats student.projector_equiv.*.
// aliases must hold one name per tensor of all tables. Returns the number of tensors added.
static int s_full_writer(ser_st_writer *w, const ser_trainer *t, const ser_backbone *b,
                         const char *file, const char *config_text, int64_t *counters,
                         char (*aliases)[SER_TINFO_NAME_LEN + 8]) {
    const char *from = t->obj->alias_from, *to = t->obj->alias_to;
    int c = 0, a = 0, n = 0;
    for (int k = 0; k < t->ntabs; k++)
        for (int i = 0; i < t->tabs[k]->n; i++, n++) {
            const ser_tinfo *ti = &t->tabs[k]->t[i];
            const float *src = t->arenas[k] + ti->offset;
            if ((ti->flags & SER_TINFO_COUNTER) && ti->numel == 1) {
                counters[c] = (int64_t)src[0];
                ser_st_writer_add(w, ti->name, SER_DT_I64, 0, NULL, &counters[c++]);
                continue;
            }
            ser_st_writer_add(w, ti->name, SER_DT_F32, ti->ndim, ti->shape, src);
            if (from && strncmp(ti->name, from, strlen(from)) == 0) {
                snprintf(aliases[a], sizeof aliases[0], "%s%s", to, ti->name + strlen(from));
                ser_st_writer_add(w, aliases[a++], SER_DT_F32, ti->ndim, ti->shape, src);
                n++;
            }
        }
    ser_st_writer_meta(w, "format", SER_EXPORT_FULL_FORMAT);
    ser_st_writer_meta(w, "format_version", SER_EXPORT_VERSION);
    s_meta_common(w, b, file, config_text);
    return n;
}

static void s_fsync_parent(const char *path) {
    char *copy = ser_xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(copy);
}

// 1 if a and b name the same existing file.
static int s_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    if (strcmp(a, b) == 0) return 1;
    if (stat(a, &sa) != 0 || stat(b, &sb) != 0) return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int ser_cmd_export(int argc, char **argv) {
    const char *cfg_path = NULL, *out_path = NULL, *full_path = NULL;
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"out", required_argument, 0, 'o'},
        {"full", required_argument, 0, 'f'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': cfg_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'f': full_path = optarg; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (optind != argc - 1 || !out_path || !*out_path || (full_path && !*full_path)) {
        fprintf(stderr, "ser export: %s\n",
                optind == argc       ? "no CHECKPOINT, RUN_DIR or STATE given"
                : optind < argc - 1  ? "exactly one CHECKPOINT, RUN_DIR or STATE expected"
                : !out_path          ? "--out is required"
                                     : "empty output path");
        s_usage(stderr);
        return 2;
    }
    const char *in_path = argv[optind];
    if (full_path && s_same_file(out_path, full_path)) {
        fprintf(stderr, "ser export: --out and --full name the same file (%s)\n", out_path);
        return 2;
    }
    char err[SER_ERR_LEN];
    ser_config cfg;
    ser_config_defaults(&cfg);
    if (cfg_path && ser_config_load(&cfg, cfg_path, 0, NULL, err) != SER_OK) {
        fprintf(stderr, "ser export: %s\n", err);
        return 2;
    }

    int status = 1, rc, have_tr = 0, n_full = 0;
    ser_backbone b;
    ser_trainer tr;
    ser_st_file *f = NULL;
    ser_st_writer *wo = NULL, *wf = NULL;
    char file[4096], tmp_out[4200] = "", tmp_full[4200] = "";
    char (*names)[SER_TINFO_NAME_LEN + 8] = NULL, (*aliases)[SER_TINFO_NAME_LEN + 8] = NULL;
    int64_t *counters = NULL;
    char *config_text = NULL;
    memset(&b, 0, sizeof b);
    memset(&tr, 0, sizeof tr);

    if ((rc = ser_backbone_resolve(in_path, file, sizeof file, err)) != SER_OK) goto fail;
    if (s_same_file(file, out_path) || (full_path && s_same_file(file, full_path))) {
        fprintf(stderr, "ser export: the output would overwrite the input %s\n", file);
        status = 2;
        goto done;
    }
    if ((rc = ser_backbone_load(&b, file, cfg_path ? &cfg : NULL, err)) != SER_OK) goto fail;
    config_text = ser_config_text(&b.cfg);

    wo = ser_st_writer_new();
    names = ser_xcalloc((size_t)b.vit.tabp->n, sizeof *names);
    s_backbone_writer(wo, &b, file, config_text, names);

    if (full_path) {
        if ((rc = ser_trainer_init_model(&tr, &b.cfg, err)) != SER_OK) goto fail;  // tables only
        have_tr = 1;
        if ((rc = ser_st_open(&f, file, err)) != SER_OK) goto fail;
        if ((rc = s_load_tables(&tr, f, file, err)) != SER_OK) goto fail;
        int n = 0;
        for (int k = 0; k < tr.ntabs; k++) n += tr.tabs[k]->n;
        counters = ser_xcalloc((size_t)n + 1, sizeof *counters);
        aliases = ser_xcalloc((size_t)n + 1, sizeof *aliases);
        wf = ser_st_writer_new();
        n_full = s_full_writer(wf, &tr, &b, file, config_text, counters, aliases);
        snprintf(tmp_full, sizeof tmp_full, "%s.export-tmp.%ld", full_path, (long)getpid());
        if ((rc = ser_st_writer_save(wf, tmp_full, err)) != SER_OK) {
            tmp_full[0] = 0;  // the writer removed its own tmp file
            goto fail;
        }
    }
    // Both files complete under temporary names first, then renamed: a failure leaves neither.
    snprintf(tmp_out, sizeof tmp_out, "%s.export-tmp.%ld", out_path, (long)getpid());
    if ((rc = ser_st_writer_save(wo, tmp_out, err)) != SER_OK) {
        tmp_out[0] = 0;
        goto fail;
    }
    if (rename(tmp_out, out_path) != 0) {
        rc = ser_errf(err, SER_EIO, "cannot rename %s to %s: %s", tmp_out, out_path,
                      strerror(errno));
        goto fail;
    }
    tmp_out[0] = 0;
    s_fsync_parent(out_path);
    char hs[SER_HUMAN_BYTES_LEN];
    printf("wrote %s (%s): %s backbone (%d tensors, timm names, [CLS] after block %d) of %s, "
           "step %lld\n", out_path, ser_human_file_size(out_path, hs), s_method_name(b.method),
           b.vit.tabp->n,
           b.vit.baseline ? 0 : b.vit.cfg.cls_layer, file, (long long)b.step);
    if (full_path) {
        if (rename(tmp_full, full_path) != 0) {
            rc = ser_errf(err, SER_EIO, "cannot rename %s to %s: %s", tmp_full, full_path,
                          strerror(errno));
            goto fail;
        }
        tmp_full[0] = 0;
        s_fsync_parent(full_path);
        printf("wrote %s (%s): the full %s model state (%d tensors, reference names)\n",
               full_path, ser_human_file_size(full_path, hs), s_method_name(b.method), n_full);
    }
    status = 0;
    goto done;
fail:
    fprintf(stderr, "ser export: %s\n", err);
done:
    if (tmp_out[0]) unlink(tmp_out);
    if (tmp_full[0]) unlink(tmp_full);
    ser_st_writer_destroy(&wo);
    ser_st_writer_destroy(&wf);
    ser_st_destroy(&f);
    if (have_tr) ser_trainer_free(&tr);
    ser_backbone_free(&b);
    free(names);
    free(aliases);
    free(counters);
    free(config_text);
    return status;
}
