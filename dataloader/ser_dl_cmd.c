// ser_dl_cmd.c — `ser dataloader` (the service and --preview) and `ser bench loader`.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "ser_base.h"
#include "ser_cmd.h"
#include "ser_config.h"
#include "ser_dl.h"
#include "ser_curve.h"
#include "ser_dl_service.h"
#include "ser_netdiag.h"

static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

// --- options -----------------------------------------------------------------------------------

typedef struct s_opts {
    ser_dl_config cfg;
    const char *bind, *endpoint_file, *preview;
    ser_config job;  // with --config: the job file, --set overrides applied
    int have_job;
    int prefetch, cache_shards, preview_samples, steps, repeat;
    int64_t step;
    double idle_exit;  // seconds; 0: serve until stopped
} s_opts;

static void s_usage(FILE *f, const char *cmd) {
    fprintf(f,
            "usage: %s (--config job.ini | --data DIR) [options]\n"
            "  --config F            take every setting from a job file (docs/config.md); later\n"
            "                        options override it\n"
            "  --set SECTION.KEY=V   override a key of that job file (after --config)\n"
            "  --data DIR            dataset root (ImageFolder, CIFAR-10 binary or Fashion-MNIST)\n"
            "  --kind K              auto|imagefolder|cifar10|fmnist|synthetic (auto)\n"
            "  --synthetic-images N  images of the synthetic dataset (4096; no --data)\n"
            "  --split S             train|val (train)\n"
            "  --cache DIR           index cache folder (~/.cache/ser; '' for none)\n"
            "  --job ID              job id the clients must present (default)\n"
            "  --img N --patch P     view size and patch size (224, 16)\n"
            "  --batch B --shards S  global batch and shards per step (256, 1)\n"
            "  --eq-ratio R          equivariant share of the global batch (0.01)\n"
            "  --seed N              job seed (0)\n"
            "  --policy P            torchvision|kornia photometric semantics (torchvision)\n"
            "  --group-sampling G    paper|reference (paper)\n"
            "  --interp I            bilinear|bicubic RandomResizedCrop resize (bilinear)\n"
            "  --crop-min X          RandomResizedCrop minimum scale (0.08)\n"
            "  --no-photometric      geometry only\n"
            "  --threads N           decode/augment threads (0 = all cores)\n"
            "  --log-level L         debug|info|warning|error (info); --quiet: warning\n",
            cmd);
    if (strcmp(cmd, "ser dataloader") == 0)
        fprintf(f,
                "service (docs/dataloader.md):\n"
                "  --bind EP             endpoint to serve on (tcp://127.0.0.1:5600; port * = any)\n"
                "  --endpoint-file F     write the bound endpoint to F\n"
                "  --prefetch N          steps of each shard index built ahead while idle (2)\n"
                "  --cache-shards N      shards kept in memory (8)\n"
                "  --idle-exit S         once shards were served, exit (0) after S seconds without\n"
                "                        a request: the job has ended (600; 0 = serve until\n"
                "                        stopped)\n"
                "preview (no service):\n"
                "  --preview OUT.jpg     write a grid of augmented pairs of one step and exit\n"
                "  --preview-samples N   rows of the grid (6)\n"
                "  --step N              the step drawn (0)\n"
                "Exit status: 0 stopped (SIGINT/SIGTERM) or idle after its job, 1 failed, 2 bad\n"
                "option or job file.\n");
    else
        fprintf(f, "  --steps K             steps per timed repeat (10)\n"
                   "  --repeat R            timed repeats; the median is reported (5)\n");
}

static int s_enum(const char *v, const char *const *names, int *out) {
    for (int i = 0; names[i]; i++)
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 1;
        }
    return 0;
}

// Parses the options shared by the service, --preview and the benchmark. Returns 0, or 2 on
// a usage error (message printed).
static int s_parse(int argc, char **argv, s_opts *o, const char *cmd) {
    static const char *const kinds[] = {"auto", "imagefolder", "cifar10", "fmnist", "synthetic",
                                        NULL};
    static const char *const splits[] = {"train", "val", NULL};
    static const char *const policies[] = {"torchvision", "kornia", NULL};
    static const char *const gsamp[] = {"paper", "reference", NULL};
    static const char *const interps[] = {"bilinear", "bicubic", NULL};
    ser_dl_config *c = &o->cfg;
    const char *home = getenv("HOME");
    if (home) snprintf(c->cache_dir, sizeof c->cache_dir, "%s/.cache/ser", home);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1, used = 1;
        // --name=value, as getopt_long takes it: the value is in this word.
        char name[32];
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            a = name, v = eq + 1, used = 0;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            s_usage(stdout, cmd);
            exit(0);
        } else if (strcmp(a, "--no-photometric") == 0 || strcmp(a, "--quiet") == 0) {
            if (eq) {
                fprintf(stderr, "%s: %s takes no value\n", cmd, a);
                return 2;
            }
            if (a[2] == 'q') ser_log_set_level(SER_LL_WARNING);
            else c->photometric = 0;
            used = 0;
        } else if (!v) {
            fprintf(stderr, "%s: %s needs a value\n", cmd, a);
            return 2;
        } else if (strcmp(a, "--config") == 0 || strcmp(a, "--set") == 0) {
            // A job file (and `section.key=value` overrides of it): the loader config every
            // process of the job derives. Options that follow still override it.
            char jerr[SER_ERR_LEN];
            int rc;
            if (a[2] == 'c') {
                ser_config_defaults(&o->job);
                rc = ser_config_load(&o->job, v, 0, NULL, jerr);
                o->have_job = 1;
            } else if (!o->have_job) {
                snprintf(jerr, sizeof jerr, "--set needs a --config before it");
                rc = SER_EINVAL;
            } else {
                rc = ser_config_set_arg(&o->job, v, jerr);
            }
            if (rc) {
                fprintf(stderr, "%s: %s\n", cmd, jerr);
                return 2;
            }
            char cache[sizeof c->cache_dir];
            memcpy(cache, c->cache_dir, sizeof cache);
            ser_dl_config_from_job(c, &o->job);
            memcpy(c->cache_dir, cache, sizeof cache);
        } else if (strcmp(a, "--data") == 0) {
            snprintf(c->data, sizeof c->data, "%s", v);
        } else if (strcmp(a, "--cache") == 0) {
            snprintf(c->cache_dir, sizeof c->cache_dir, "%s", v);
        } else if (strcmp(a, "--job") == 0) {
            snprintf(c->job_id, sizeof c->job_id, "%s", v);
        } else if (strcmp(a, "--kind") == 0) {
            ok = s_enum(v, kinds, &c->kind);
        } else if (strcmp(a, "--synthetic-images") == 0) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            ok = *v >= '0' && *v <= '9' && !*end && n >= 1 && n <= (1ul << 30);
            c->synthetic_images = (uint32_t)n;
        } else if (strcmp(a, "--split") == 0) {
            ok = s_enum(v, splits, &c->split);
        } else if (strcmp(a, "--policy") == 0) {
            ok = s_enum(v, policies, &c->policy);
        } else if (strcmp(a, "--group-sampling") == 0) {
            ok = s_enum(v, gsamp, &c->group_sampling);
        } else if (strcmp(a, "--interp") == 0) {
            ok = s_enum(v, interps, &c->interp);
        } else if (strcmp(a, "--img") == 0) {
            c->img = atoi(v);
        } else if (strcmp(a, "--patch") == 0) {
            c->patch = atoi(v);
        } else if (strcmp(a, "--batch") == 0) {
            c->global_batch = atoi(v);
        } else if (strcmp(a, "--shards") == 0) {
            c->shards = atoi(v);
        } else if (strcmp(a, "--eq-ratio") == 0) {
            c->eq_ratio = atof(v);
        } else if (strcmp(a, "--seed") == 0) {
            c->seed = strtoull(v, NULL, 10);
        } else if (strcmp(a, "--crop-min") == 0) {
            c->crop_min = atof(v);
        } else if (strcmp(a, "--threads") == 0) {
            c->threads = atoi(v);
        } else if (strcmp(a, "--bind") == 0) {
            o->bind = v;
        } else if (strcmp(a, "--endpoint-file") == 0) {
            o->endpoint_file = v;
        } else if (strcmp(a, "--prefetch") == 0) {
            o->prefetch = atoi(v);
        } else if (strcmp(a, "--cache-shards") == 0) {
            o->cache_shards = atoi(v);
        } else if (strcmp(a, "--preview") == 0) {
            o->preview = v;
        } else if (strcmp(a, "--preview-samples") == 0) {
            o->preview_samples = atoi(v);
        } else if (strcmp(a, "--step") == 0) {
            o->step = atoll(v);
        } else if (strcmp(a, "--steps") == 0) {
            o->steps = atoi(v);
        } else if (strcmp(a, "--repeat") == 0) {
            o->repeat = atoi(v);
        } else if (strcmp(a, "--idle-exit") == 0) {
            char *end;
            o->idle_exit = strtod(v, &end);
            ok = *v && !*end && o->idle_exit >= 0 && o->idle_exit <= 1e7;
        } else if (strcmp(a, "--log-level") == 0) {
            int l = ser_log_parse_level(v);
            ok = l >= 0;
            if (ok) ser_log_set_level(l);
        } else {
            fprintf(stderr, "%s: unknown option %s (see --help)\n", cmd, a);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "%s: bad value '%s' for %s\n", cmd, v, a);
            return 2;
        }
        i += used;
    }
    if (c->kind == SER_DL_KIND_SYNTHETIC && !c->synthetic_images)
        c->synthetic_images = 4096;  // data.synthetic_images' default
    if (!c->data[0] && c->kind != SER_DL_KIND_SYNTHETIC) {
        fprintf(stderr, "%s: --data DIR is required (or --kind synthetic)\n", cmd);
        return 2;
    }
    char berr[SER_ERR_LEN];
    if (ser_netdiag_check_bind(o->bind, berr)) {  // before any data is read or socket bound
        fprintf(stderr, "%s: --bind: %s\n", cmd, berr);
        return 2;
    }
    char err[256];
    if (ser_dl_config_check(c, err)) {
        fprintf(stderr, "%s: %s\n", cmd, err);
        return 2;
    }
    return 0;
}

static void s_opts_defaults(s_opts *o) {
    memset(o, 0, sizeof *o);
    ser_dl_config_defaults(&o->cfg);
    o->bind = "tcp://127.0.0.1:5600";
    o->prefetch = 2;
    o->cache_shards = 8;
    o->preview_samples = 6;
    o->steps = 10;
    o->repeat = 5;
    o->idle_exit = 600;  // past any pause of a live job (a checkpoint, the kNN monitor, a restart)
}

// --- preview -----------------------------------------------------------------------------------

static void s_blit(uint8_t *canvas, int cw, int x0, int y0, const uint8_t *img, int w, int h) {
    for (int y = 0; y < h; y++) memcpy(canvas + ((size_t)(y0 + y) * cw + x0) * 3,
                                       img + (size_t)y * w * 3, (size_t)w * 3);
}

// Rows are samples; columns: for torchvision then kornia semantics, the invariant pair
// (v0, v1) and the equivariant pair (v0, v1) of the same dataset position.
static int s_preview(const s_opts *o) {
    const int n = o->preview_samples < 1 ? 1 : o->preview_samples;
    ser_dl_shard sh[2][2];  // [policy][inv, eq]
    memset(sh, 0, sizeof sh);
    int rc = 1, cell = 0;
    uint8_t *canvas = NULL;
    for (int pol = 0; pol < 2; pol++)
        for (int eq = 0; eq < 2; eq++) {
            ser_dl_config c = o->cfg;
            c.policy = pol;
            c.global_batch = n;
            c.shards = 1;
            c.eq_ratio = eq ? 1.0 : 0.0;
            char err[256];
            ser_dl *dl = ser_dl_new(&c, err);
            if (!dl) {
                fprintf(stderr, "ser dataloader --preview: %s\n", err);
                goto done;
            }
            int r = ser_dl_make_shard(dl, (uint64_t)o->step, 0, &sh[pol][eq]);
            ser_dl_destroy(&dl);
            if (r) {
                fprintf(stderr, "ser dataloader --preview: %s\n", ser_strerror(r));
                goto done;
            }
            for (int k = 0; k < n; k++)
                for (int v = 0; v < 2; v++) {
                    const ser_dl_sample *s = &sh[pol][eq].samples[k];
                    if (s->h[v] > cell) cell = s->h[v];
                    if (s->w[v] > cell) cell = s->w[v];
                }
        }
    const int pad = 4, cols = 8, cw = cols * (cell + pad) + pad, ch = n * (cell + pad) + pad;
    canvas = ser_xmalloc((size_t)cw * ch * 3);
    memset(canvas, 48, (size_t)cw * ch * 3);
    for (int k = 0; k < n; k++)
        for (int col = 0; col < cols; col++) {
            int pol = col / 4, eq = (col / 2) & 1, v = col & 1;
            const ser_dl_sample *s = &sh[pol][eq].samples[k];
            s_blit(canvas, cw, pad + col * (cell + pad), pad + k * (cell + pad), s->view[v], s->w[v],
                   s->h[v]);
        }
    if (ser_dl_encode_jpeg(o->preview, canvas, cw, ch, 92) != SER_OK) {
        fprintf(stderr, "ser dataloader --preview: cannot write %s\n", o->preview);
        goto done;
    }
    printf("wrote %s (%dx%d): rows = %d samples of step %lld; columns = torchvision inv v0, v1, "
           "eq v0, v1 | kornia inv v0, v1, eq v0, v1\n",
           o->preview, cw, ch, n, (long long)o->step);
    for (int k = 0; k < n; k++) {
        const ser_dl_sample *s = &sh[0][1].samples[k];
        printf("  row %d: index %u label %d  g0 (rot180 %d, hflip %d, %dx%d tokens, rot90 %d)"
               "  g1 (rot180 %d, hflip %d, %dx%d tokens, rot90 %d)\n",
               k, s->index, s->label, s->g[0].rot180, s->g[0].hflip, s->g[0].gh, s->g[0].gw,
               s->g[0].rot90, s->g[1].rot180, s->g[1].hflip, s->g[1].gh, s->g[1].gw, s->g[1].rot90);
    }
    rc = 0;
done:
    free(canvas);
    for (int pol = 0; pol < 2; pol++)
        for (int eq = 0; eq < 2; eq++) ser_dl_shard_free(&sh[pol][eq]);
    return rc;
}

// --- the service -------------------------------------------------------------------------------

int ser_cmd_dataloader(int argc, char **argv) {
    s_opts o;
    s_opts_defaults(&o);
    int rc = s_parse(argc, argv, &o, "ser dataloader");
    if (rc) return rc;
    if (o.preview) return s_preview(&o);
    char err[256];
    if ((o.have_job ? ser_curve_setup(&o.job, err) : ser_curve_setup_env(err))) {
        fprintf(stderr, "ser dataloader: %s\n", err);
        return 2;
    }
    ser_dl *dl = ser_dl_new(&o.cfg, err);
    if (!dl) {
        fprintf(stderr, "ser dataloader: %s\n", err);
        return 1;
    }
    ser_dl_service *svc = ser_dl_service_new(dl, o.bind, o.prefetch, o.cache_shards, err);
    if (!svc) {
        fprintf(stderr, "ser dataloader: %s\n", err);
        ser_dl_destroy(&dl);
        return 1;
    }
    ser_dl_service_set_idle_exit(svc, (int64_t)(o.idle_exit * 1000));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (o.endpoint_file) {  // written atomically: a reader never sees half an endpoint
        char tmp[1100];
        snprintf(tmp, sizeof tmp, "%s.tmp", o.endpoint_file);
        FILE *f = fopen(tmp, "w");
        int ok = f && fprintf(f, "%s\n", ser_dl_service_endpoint(svc)) > 0;
        if (f) ok = fclose(f) == 0 && ok;
        if (!ok || rename(tmp, o.endpoint_file) != 0)
            ser_log(SER_LL_WARNING, "dataloader: cannot write %s", o.endpoint_file);
    }
    ser_log(SER_LL_INFO,
            "dataloader: job '%s' data hash %016llx (its shards' content; not the job's config hash): %u samples, %d threads, B %d in %d shards "
            "(%d equivariant), serving on %s",
            o.cfg.job_id, (unsigned long long)ser_dl_config_hash(&o.cfg), ser_dl_count(dl),
            ser_dl_threads(dl), o.cfg.global_batch, o.cfg.shards, ser_dl_num_eq(dl),
            ser_dl_service_endpoint(svc));
    if (o.idle_exit > 0)
        ser_log(SER_LL_INFO, "dataloader: exits when no request comes for %g s after it has "
                "served shards (--idle-exit)", o.idle_exit);
    rc = ser_dl_service_run(svc, &s_stop);
    ser_dl_service_stats st;
    ser_dl_service_get_stats(svc, &st);
    ser_log(SER_LL_INFO,
            "dataloader: stopping; requests:%llu served:%llu cache_hits:%llu dropped:%llu "
            "refused:%llu bad_files:%llu replacements:%llu",
            (unsigned long long)st.requests, (unsigned long long)st.served,
            (unsigned long long)st.cache_hits, (unsigned long long)st.dropped,
            (unsigned long long)st.refused, (unsigned long long)st.bad_files,
            (unsigned long long)st.replacements);
    ser_dl_service_destroy(&svc);
    ser_dl_destroy(&dl);
    return rc ? 1 : 0;
}

// --- benchmark ---------------------------------------------------------------------------------

int ser_bench_loader(int argc, char **argv) {
    s_opts o;
    s_opts_defaults(&o);
    o.cfg.global_batch = 64;
    o.cfg.eq_ratio = 0.0;  // the peer has no equivariant path
    int rc = s_parse(argc, argv, &o, "ser bench loader");
    if (rc) return rc;
    char err[256];
    ser_dl *dl = ser_dl_new(&o.cfg, err);
    if (!dl) {
        fprintf(stderr, "ser bench loader: %s\n", err);
        return 1;
    }
    const int B = o.cfg.global_batch, reps = o.repeat < 1 ? 1 : o.repeat;
    double *ips = ser_xcalloc((size_t)reps, sizeof *ips);
    uint64_t step = 0;
    ser_dl_shard sh;
    rc = 0;
    // Warm-up: the page cache, the permutation, the pool.
    for (uint32_t s = 0; s < (uint32_t)o.cfg.shards && !rc; s++) {
        rc = ser_dl_make_shard(dl, step, s, &sh);
        ser_dl_shard_free(&sh);
    }
    step++;
    for (int r = 0; r < reps && !rc; r++) {
        double t0 = ser_time_sec();
        for (int k = 0; k < o.steps && !rc; k++, step++)
            for (uint32_t s = 0; s < (uint32_t)o.cfg.shards && !rc; s++) {
                rc = ser_dl_make_shard(dl, step, s, &sh);
                ser_dl_shard_free(&sh);
            }
        ips[r] = (double)o.steps * B / (ser_time_sec() - t0);
        printf("repeat %d: %.1f images/s (%d images, 2 views each)\n", r, ips[r], o.steps * B);
    }
    if (!rc) {
        double med = ser_median(ips, reps);
        printf("ser loader: img %d, %s, %s, %d threads, batch %d: median %.1f images/s "
               "(decoded + augmented, 2 views each; %d repeats)\n",
               o.cfg.img, o.cfg.policy ? "kornia" : "torchvision",
               o.cfg.interp ? "bicubic" : "bilinear", ser_dl_threads(dl), B, med, reps);
        printf("bad_files:%llu replacements:%llu\n", (unsigned long long)ser_dl_bad_files(dl),
               (unsigned long long)ser_dl_replacements(dl));
    } else {
        fprintf(stderr, "ser bench loader: %s\n", ser_strerror(rc));
    }
    free(ips);
    ser_dl_destroy(&dl);
    return rc ? 1 : 0;
}
