// ser_dl.c — see ser_dl.h.
#include "ser_dl.h"

#include "ser_config.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "ser_base.h"
#include "ser_rng.h"

#define S_SHARD_STREAM 0x80000000u

// --- config ------------------------------------------------------------------------------------

void ser_dl_config_defaults(ser_dl_config *c) {
    memset(c, 0, sizeof *c);
    c->kind = SER_DL_KIND_AUTO;
    c->split = SER_DL_SPLIT_TRAIN;
    snprintf(c->job_id, sizeof c->job_id, "default");
    c->img = 224;
    c->patch = 16;
    c->global_batch = 256;
    c->shards = 1;
    c->eq_ratio = 0.01;
    c->policy = SER_DL_POLICY_TORCHVISION;
    c->group_sampling = SER_DL_GROUP_PAPER;
    c->interp = SER_DL_INTERP_BILINEAR;
    c->crop_min = 0.08;
    c->local_size = 96;
    c->local_crop_min = 0.05;
    c->local_crop_max = 0.4;
    c->photometric = 1;
    c->strength = ser_dl_photo_moco;
    c->max_bad_fraction = 0.01;
}

int ser_dl_config_check(const ser_dl_config *c, char err[256]) {
    const char *why = NULL;
    if (c->kind == SER_DL_KIND_SYNTHETIC && c->synthetic_images < 1)
        why = "synthetic data needs synthetic_images >= 1";
    else if (c->img < 8 || c->img > 4096) why = "img must be in [8, 4096]";
    else if (c->patch < 1 || c->img % c->patch) why = "img must be a multiple of patch";
    else if (c->patch > SER_GROUP_MAX_PATCH) why = "patch must be at most 2048";
    else if (c->global_batch < 1 || c->shards < 1 || c->global_batch % c->shards)
        why = "global_batch must be a positive multiple of shards";
    else if (!(c->eq_ratio >= 0 && c->eq_ratio <= 1)) why = "eq_ratio must be in [0, 1]";
    else if (c->policy != SER_DL_POLICY_TORCHVISION && c->policy != SER_DL_POLICY_KORNIA)
        why = "policy must be torchvision or kornia";
    else if (c->group_sampling != SER_DL_GROUP_PAPER && c->group_sampling != SER_DL_GROUP_REFERENCE)
        why = "group_sampling must be paper or reference";
    else if (c->interp != SER_DL_INTERP_BILINEAR && c->interp != SER_DL_INTERP_BICUBIC)
        why = "interp must be bilinear or bicubic";
    else if (!(c->crop_min > 0 && c->crop_min <= 1)) why = "crop_min must be in (0, 1]";
    else if (c->local_crops < 0 || c->local_crops > SER_MAX_LOCAL)
        why = "local_crops must be in [0, 10]";
    else if (c->local_crops && (c->local_size < c->patch || c->local_size % c->patch ||
                                c->local_size > 4096))
        why = "local_size must be a multiple of patch in [patch, 4096]";
    else if (c->local_pairs < 0 || c->local_pairs > SER_MAX_LOCAL_PAIRS)
        why = "local_pairs must be in [0, 4]";
    else if (c->local_pairs && (c->local_size < c->patch || c->local_size % c->patch ||
                                c->local_size > 4096 || !(c->local_crop_min > 0 &&
                                c->local_crop_min <= c->local_crop_max && c->local_crop_max <= 1)))
        why = "local SER pairs need local_size a multiple of patch in [patch, 4096] and "
              "0 < local_crop_min <= local_crop_max <= 1";
    else if (c->local_rotations && c->local_crops != 4)
        why = "local rotations need local_crops = 4";
    else if (c->local_center && (c->local_crops != 1 || c->local_rotations))
        why = "the centre view needs local_crops = 1 and no rotations";
    else if (c->local_crops && !(c->local_crop_min > 0 && c->local_crop_min <= c->local_crop_max &&
                                 c->local_crop_max <= 1))
        why = "local crop scale must satisfy 0 < local_crop_min <= local_crop_max <= 1";
    else if (c->aligned_pairs && (c->global_batch / (c->shards > 0 ? c->shards : 1)) % 2)
        why = "aligned pairs need an even shard size (global_batch / shards)";
    else if (c->threads < 0 || c->threads > 256) why = "threads must be in [0, 256]";
    else if (!(c->max_bad_fraction >= 0 && c->max_bad_fraction <= 1))
        why = "max_bad_fraction must be in [0, 1]";
    else if (!(c->strength.jitter >= 0 && c->strength.jitter <= 1)) why = "jitter must be in [0, 1]";
    else if (!(c->strength.blur_sigma == 0 || (c->strength.blur_sigma >= 0.1 && c->strength.blur_sigma <= 100)))
        why = "blur_sigma must be 0 (no blur) or in [0.1, 100]";
    else if (!(c->strength.gray_prob >= 0 && c->strength.gray_prob <= 1)) why = "gray_prob must be in [0, 1]";
    else if (!(c->strength.solarize_prob >= 0 && c->strength.solarize_prob <= 1))
        why = "solarize_prob must be in [0, 1]";
    if (!why) return SER_OK;
    snprintf(err, 256, "%s", why);
    return SER_ECONFIG;
}

static uint64_t s_fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

uint64_t ser_dl_config_hash(const ser_dl_config *c) {
    // v2: group elements drawn by common/nn/ser_group.c (v1 had the loader's own sampler and a
    // configurable scale range), so a v1 peer is refused rather than sent other content.
    // v3: photometric strengths. v4: PNG files are indexed and decoded (a v3 loader skips
    // them, so a tree that holds PNGs has another index there). v5: local views. v6: every
    // sample carries its views' parameters.
    char s[768];
    int n = snprintf(s, sizeof s,
                     "ser-dl-v6 kind=%d split=%d img=%d patch=%d B=%d S=%d eq=%.17g seed=%llu "
                     "policy=%d gs=%d interp=%d crop=%.17g photo=%d jit=%.17g blur=%.17g "
                     "gray=%.17g sol=%.17g local=%d",
                     c->kind, c->split, c->img, c->patch, c->global_batch, c->shards, c->eq_ratio,
                     (unsigned long long)c->seed, c->policy, c->group_sampling, c->interp,
                     c->crop_min, c->photometric, c->strength.jitter, c->strength.blur_sigma,
                     c->strength.gray_prob, c->strength.solarize_prob, c->local_crops);
    if (c->local_crops)  // the local views' geometry counts only when there are local views
        n += snprintf(s + n, sizeof s - (size_t)n, " ls=%d lmin=%.17g lmax=%.17g rot=%d ctr=%d",
                      c->local_size, c->local_crop_min, c->local_crop_max, c->local_rotations,
                      c->local_center);
    // The local SER pairs (ser.local_pairs): only when there are some, so other hashes stay.
    if (c->local_pairs && n > 0 && (size_t)n < sizeof s)
        n += snprintf(s + n, sizeof s - (size_t)n, " lpairs=%d ls=%d lmin=%.17g lmax=%.17g",
                      c->local_pairs, c->local_size, c->local_crop_min, c->local_crop_max);
    // The synthetic dataset's size keys its content (other kinds: the files'); left out of the
    // others' text, so their hashes stay what they were.
    if (c->kind == SER_DL_KIND_SYNTHETIC && n > 0 && (size_t)n < sizeof s)
        n += snprintf(s + n, sizeof s - (size_t)n, " synth=%u", c->synthetic_images);
    if (c->aligned_pairs && n > 0 && (size_t)n < sizeof s)  // likewise: only STL's text has it
        n += snprintf(s + n, sizeof s - (size_t)n, " pairs=1");
    return s_fnv(0xcbf29ce484222325ull, s, (size_t)n);
}

// --- thread pool -------------------------------------------------------------------------------
// Helper threads plus the calling thread split the items of one job through an atomic counter.
// Each thread has its own TurboJPEG handle, passed by address: the decoder replaces it after a
// failed image. The pool signals ready on start-up and exits on stop (the actor contract of
// STYLE.md rule 9, with a condition variable for a pipe).

typedef struct s_pool s_pool;
typedef void (*s_pool_fn)(void *arg, int item, void **tj);

struct s_pool {
    pthread_t *th;
    void **tj;  // (nthreads,) one handle per thread, [0] for the caller
    int nthreads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    uint64_t gen;
    int stop, busy, ready;
    s_pool_fn fn;
    void *arg;
    int count, next;
};

typedef struct s_pool_arg {
    s_pool *p;
    int tid;
} s_pool_arg;

static void s_pool_drain(s_pool *p, void **tj) {
    for (;;) {
        int i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (i >= p->count) break;
        p->fn(p->arg, i, tj);
    }
}

static void *s_pool_main(void *a) {
    s_pool_arg *pa = a;
    s_pool *p = pa->p;
    int tid = pa->tid;
    free(pa);
    pthread_mutex_lock(&p->mu);
    p->ready++;
    pthread_cond_broadcast(&p->cv_done);
    uint64_t seen = p->gen;
    for (;;) {
        while (!p->stop && p->gen == seen) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        s_pool_drain(p, &p->tj[tid]);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_broadcast(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void s_pool_init(s_pool *p, int nthreads) {
    memset(p, 0, sizeof *p);
    p->nthreads = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->tj = ser_xcalloc((size_t)nthreads, sizeof *p->tj);
    for (int i = 0; i < nthreads; i++) {
        p->tj[i] = tjInitDecompress();
        SER_ASSERT(p->tj[i]);
    }
    p->th = ser_xcalloc((size_t)nthreads, sizeof *p->th);
    for (int i = 1; i < nthreads; i++) {
        s_pool_arg *a = ser_xmalloc(sizeof *a);
        a->p = p;
        a->tid = i;
        SER_ASSERT(pthread_create(&p->th[i], NULL, s_pool_main, a) == 0);
    }
    pthread_mutex_lock(&p->mu);
    while (p->ready < nthreads - 1) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void s_pool_run(s_pool *p, s_pool_fn fn, void *arg, int count) {
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->count = count;
    p->next = 0;
    p->busy = p->nthreads - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    s_pool_drain(p, &p->tj[0]);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void s_pool_free(s_pool *p) {
    if (!p->tj) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->nthreads; i++) pthread_join(p->th[i], NULL);
    for (int i = 0; i < p->nthreads; i++)
        if (p->tj[i]) tjDestroy(p->tj[i]);
    free(p->tj);
    free(p->th);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    p->tj = NULL;
}

// --- the pipeline ------------------------------------------------------------------------------

struct ser_dl {
    ser_dl_config cfg;
    ser_dl_data *data;
    uint32_t n;
    int n_eq, per_shard;
    s_pool pool;
    // The permutations of the two most recent epochs (a step can straddle two).
    uint32_t *perm[2];
    int64_t perm_epoch[2];
    int perm_lru;
};

ser_dl *ser_dl_new(const ser_dl_config *cfg, char err[256]) {
    if (ser_dl_config_check(cfg, err)) return NULL;
    ser_dl_data *d = cfg->kind == SER_DL_KIND_SYNTHETIC
                         ? ser_dl_data_open_synthetic(cfg->synthetic_images, cfg->split, err)
                         : ser_dl_data_open(cfg->data, cfg->kind, cfg->split,
                                            cfg->cache_dir[0] ? cfg->cache_dir : NULL, err);
    if (!d) return NULL;
    ser_dl_data_set_max_bad(d, cfg->max_bad_fraction);
    ser_dl *dl = ser_xcalloc(1, sizeof *dl);
    dl->cfg = *cfg;
    dl->data = d;
    dl->n = ser_dl_data_count(d);
    dl->n_eq = (int)rint(cfg->eq_ratio * cfg->global_batch);  // round half to even
    dl->per_shard = cfg->global_batch / cfg->shards;
    int nt = cfg->threads;
    if (nt <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nt = c > 0 ? (int)c : 1;
    }
    s_pool_init(&dl->pool, nt);
    dl->perm_epoch[0] = dl->perm_epoch[1] = -1;
    return dl;
}

void ser_dl_destroy(ser_dl **dlp) {
    if (!dlp || !*dlp) return;
    ser_dl *dl = *dlp;
    s_pool_free(&dl->pool);
    ser_dl_data_destroy(&dl->data);
    free(dl->perm[0]);
    free(dl->perm[1]);
    free(dl);
    *dlp = NULL;
}

int ser_dl_num_eq(const ser_dl *dl) { return dl->n_eq; }
int ser_dl_shard_size(const ser_dl *dl) { return dl->per_shard; }
uint32_t ser_dl_count(const ser_dl *dl) { return dl->n; }
const ser_dl_config *ser_dl_config_of(const ser_dl *dl) { return &dl->cfg; }
int ser_dl_threads(const ser_dl *dl) { return dl->pool.nthreads; }
uint64_t ser_dl_bad_files(const ser_dl *dl) { return ser_dl_data_bad_files(dl->data); }
uint64_t ser_dl_replacements(const ser_dl *dl) { return ser_dl_data_replacements(dl->data); }
int ser_dl_bad_report(const ser_dl *dl, char *buf, size_t n) {
    return ser_dl_data_bad_report(dl->data, buf, n);
}

void ser_dl_shard_free(ser_dl_shard *s) {
    free(s->samples);
    free(s->data);
    s->samples = NULL;
    s->data = NULL;
    s->n = 0;
    s->nbytes = 0;
}

static const uint32_t *s_perm(ser_dl *dl, uint32_t epoch) {
    for (int k = 0; k < 2; k++)
        if (dl->perm_epoch[k] == (int64_t)epoch) return dl->perm[k];
    int k = dl->perm_lru;
    dl->perm_lru ^= 1;
    if (!dl->perm[k]) dl->perm[k] = ser_xmalloc(sizeof(uint32_t) * dl->n);
    ser_rng_permutation(dl->perm[k], dl->n, dl->cfg.seed, epoch);
    dl->perm_epoch[k] = epoch;
    return dl->perm[k];
}

// g0, g1 of an equivariant sample from the common samplers, keyed as ser_dl.h describes. In
// reference mode each sample redraws its shard's two geometry streams (cheap next to decoding):
// the result is the same for every sample of the shard, and no state is shared between threads.
// pair >= 0: local SER pair `pair`'s elements, on the local grid, from the streams of the seed
// offset by (SER_MAX_LOCAL + 1 + pair) x 0x9E3779B97F4A7C15 (the global pair's keys otherwise).
static void s_draw_groups(const ser_dl_config *c, uint64_t step, uint32_t shard, uint32_t epoch,
                          uint32_t index, int pair, ser_group_elem g[2]) {
    int g0grid = (pair < 0 ? c->img : c->local_size) / c->patch, rc;
    uint64_t seed = pair < 0 ? c->seed
                             : c->seed + (uint64_t)(SER_MAX_LOCAL + 1 + pair) * 0x9E3779B97F4A7C15ull;
    if (c->group_sampling == SER_DL_GROUP_PAPER) {
        rc = ser_group_sample_paper(&g[0], &g[1], g0grid, seed, epoch, index);
    } else {
        ser_group_key sample = {epoch, index}, shard_key = {(uint32_t)step, shard};
        rc = ser_group_sample_reference_keyed(&g[0], &g[1], 1, &sample, g0grid, seed, shard_key);
    }
    SER_ASSERT(rc == SER_OK);  // ser_dl_config_check keeps img / patch in 1..4096
}

// The view id of local SER pair k's view w: its crop's and photometric draws' streams (the crop
// is drawn with w = 0's id) and kornia op order.
#define S_PAIR_VIEW(k, w) (2 + SER_MAX_LOCAL + 2 * (k) + (w))
_Static_assert(SER_DL_MAX_PAIR_VIEWS == 2 * SER_MAX_LOCAL_PAIRS &&
                   SER_DL_MAX_LOCAL == SER_MAX_LOCAL,
               "every pair view has a photometric view id");

typedef struct s_job {
    ser_dl *dl;
    ser_dl_shard *sh;
    uint32_t *epochs;
    int kornia_order[2 + SER_MAX_LOCAL + 2 * SER_MAX_LOCAL_PAIRS][4];
    int rc;
} s_job;

// RandomResizedCrop + hflip of view v's draws, resized into out (side, side, 3): the global
// views (v 0, 1) at img with scale (crop_min, 1), the local ones (v >= 2) at local_size with
// scale (local_crop_min, local_crop_max). vp (NULL: not wanted) gets the crop box, the flip and
// the source size (ser_engine.h's SER_VIEW_PARAMS layout).
static void s_crop_view(const ser_dl_config *c, const ser_dl_image *im, uint32_t epoch,
                        uint32_t index, uint32_t fepoch, uint32_t findex, int v, uint8_t *out,
                        float *vp) {
    ser_rng r;
    int i, j, h, w, side = v < 2 ? c->img : c->local_size;
    double smin = v < 2 ? c->crop_min : c->local_crop_min, smax = v < 2 ? 1.0 : c->local_crop_max;
    ser_rng_init(&r, c->seed, epoch, index, (uint32_t)v << 16 | SER_RNG_CROP);
    ser_dl_rrc_params(&r, im->w, im->h, smin, smax, 3.0 / 4.0, 4.0 / 3.0, &i, &j, &h, &w);
    ser_dl_pil_resize(out, side, side, im->px, im->w * 3, j, i, w, h, c->interp);
    ser_rng_init(&r, c->seed, fepoch, findex, (uint32_t)v << 16 | SER_RNG_FLIP);
    int flip = ser_rng_uniform(&r) < 0.5f;
    if (flip) ser_dl_hflip_u8(out, side, side);
    if (vp) {
        vp[0] = (float)i, vp[1] = (float)j, vp[2] = (float)h, vp[3] = (float)w;
        vp[4] = (float)flip, vp[18] = (float)im->h, vp[19] = (float)im->w;
    }
}

// The photometric draw of view v keyed (epoch, index); with other aligned keys (aepoch, aindex)
// its colour jitter and grayscale come from their draw instead (STL's aligned pairs).
static void s_photo(const s_job *jb, uint8_t *img, int w, int h, uint32_t epoch, uint32_t index,
                    uint32_t aepoch, uint32_t aindex, int v, float *fbuf, float *ftmp, float *vp) {
    const ser_dl_config *c = &jb->dl->cfg;
    if (!c->photometric) return;
    ser_dl_photo p;
    int kornia = c->policy == SER_DL_POLICY_KORNIA;
    ser_dl_photo_draw(&p, c->policy, c->seed, epoch, index, v, kornia ? jb->kornia_order[v] : NULL,
                      &c->strength);
    if (aepoch != epoch || aindex != index) {
        ser_dl_photo q;
        ser_dl_photo_draw(&q, c->policy, c->seed, aepoch, aindex, v,
                          kornia ? jb->kornia_order[v] : NULL, &c->strength);
        p.jitter = q.jitter, p.b = q.b, p.c = q.c, p.s = q.s, p.h = q.h, p.gray = q.gray;
        memcpy(p.order, q.order, sizeof p.order);
    }
    if (vp) {  // SER_VIEW_PARAMS 5..17
        vp[5] = (float)p.jitter;
        for (int k = 0; k < 4; k++) vp[6 + k] = (float)p.order[k];
        vp[10] = p.b, vp[11] = p.c, vp[12] = p.s, vp[13] = p.h;
        vp[14] = (float)p.gray, vp[15] = (float)p.blur, vp[16] = p.sigma;
        vp[17] = (float)p.solarize, vp[20] = p.threshold;
    }
    if (!kornia) {
        ser_dl_photo_apply_u8(img, w, h, &p);
        return;
    }
    int n = w * h * 3;
    ser_dl_u8_to_f32(fbuf, img, n);
    ser_dl_photo_apply_f32(fbuf, w, h, &p, ftmp);
    ser_dl_f32_to_u8(img, fbuf, n);
}

// Local SER pair k of an equivariant sample: one local crop (its own RandomResizedCrop at
// local_size with the local scale, and flip), then per view w its own photometric draw and group
// element lg[k][w], applied in float as for the global pair.
static void s_make_pair(const s_job *jb, const ser_dl_image *im, ser_dl_sample *s, uint32_t epoch,
                        int k) {
    const ser_dl_config *c = &jb->dl->cfg;
    const int LS = c->local_size, n = LS * LS * 3;
    uint8_t *base = ser_xmalloc((size_t)n), *tmp8 = ser_xmalloc((size_t)n);
    s_crop_view(c, im, epoch, s->index, epoch, s->index, S_PAIR_VIEW(k, 0), base, NULL);
    int big = n;
    for (int w = 0; w < 2; w++)
        if (s->lh[k][w] * s->lw[k][w] * 3 > big) big = s->lh[k][w] * s->lw[k][w] * 3;
    float *fin = ser_xmalloc(sizeof(float) * n), *fout = ser_xmalloc(sizeof(float) * big);
    float *fk = ser_xmalloc(sizeof(float) * 2 * n);
    for (int w = 0; w < 2; w++) {
        memcpy(tmp8, base, (size_t)n);
        s_photo(jb, tmp8, LS, LS, epoch, s->index, epoch, s->index, S_PAIR_VIEW(k, w), fk, fk + n,
                NULL);
        ser_dl_u8_to_f32(fin, tmp8, n);
        int arc = ser_group_image_action_hwc(fout, fin, 3, LS, LS, c->patch, &s->lg[k][w]);
        SER_ASSERT(arc == SER_OK);
        ser_dl_f32_to_u8(s->lview[k][w], fout, s->lh[k][w] * s->lw[k][w] * 3);
    }
    free(base), free(tmp8), free(fin), free(fout), free(fk);
}

static void s_make_sample(void *arg, int k, void **tj) {
    s_job *jb = arg;
    ser_dl *dl = jb->dl;
    const ser_dl_config *c = &dl->cfg;
    ser_dl_sample *s = &jb->sh->samples[k];
    uint32_t epoch = jb->epochs[k];
    // The global views' crop and colour draws: the sample's own, or with aligned pairs at an odd
    // position those of the sample before it (both are in this shard: its size is even).
    uint32_t gepoch = epoch, gindex = s->index;
    if (c->aligned_pairs && (k & 1)) gepoch = jb->epochs[k - 1], gindex = jb->sh->samples[k - 1].index;
    ser_dl_image im = {0};
    int rc = ser_dl_data_load(dl->data, s->index, tj, &im, &s->source);
    if (rc) {
        __atomic_store_n(&jb->rc, rc, __ATOMIC_RELAXED);
        memset(s->view[0], 0, (size_t)s->h[0] * s->w[0] * 3);
        memset(s->view[1], 0, (size_t)s->h[1] * s->w[1] * 3);
        for (int l = 0; l < c->local_crops; l++)
            memset(s->local[l], 0, (size_t)c->local_size * c->local_size * 3);
        for (int p = 0; s->equivariant && p < c->local_pairs; p++)
            for (int v = 0; v < 2; v++)
                memset(s->lview[p][v], 0, (size_t)s->lh[p][v] * s->lw[p][v] * 3);
        return;
    }
    s->label = ser_dl_data_label(dl->data, s->source);
    const int S = c->img, n = S * S * 3;
    if (c->local_crops) {
        const int LS = c->local_size, ln = LS * LS * 3;
        float *f = c->policy == SER_DL_POLICY_KORNIA ? ser_xmalloc(sizeof(float) * 2 * ln) : NULL;
        for (int l = 0; l < c->local_crops; l++) {
            if (c->local_rotations && l > 0) {  // a quarter turn counter-clockwise of view l-1
                const uint8_t *in = s->local[l - 1];
                for (int i = 0; i < LS; i++)
                    for (int j = 0; j < LS; j++)
                        memcpy(s->local[l] + ((size_t)i * LS + j) * 3,
                               in + ((size_t)j * LS + (LS - 1 - i)) * 3, 3);
                continue;
            }
            if (c->local_center) {
                ser_dl_resize_center_crop(s->local[l], LS, im.px, im.w, im.h, c->interp);
                continue;
            }
            s_crop_view(c, &im, epoch, s->index, epoch, s->index, 2 + l, s->local[l], NULL);
            s_photo(jb, s->local[l], LS, LS, epoch, s->index, epoch, s->index, 2 + l, f,
                    f ? f + ln : NULL, NULL);
        }
        free(f);
    }
    if (!s->equivariant) {
        float *f = c->policy == SER_DL_POLICY_KORNIA ? ser_xmalloc(sizeof(float) * 2 * n) : NULL;
        for (int v = 0; v < 2; v++) {
            s_crop_view(c, &im, gepoch, gindex, epoch, s->index, v, s->view[v], s->vparams[v]);
            s_photo(jb, s->view[v], S, S, epoch, s->index, gepoch, gindex, v, f, f ? f + n : NULL,
                    s->vparams[v]);
        }
        free(f);
    } else {
        // One crop; both views made from it.
        uint8_t *base = ser_xmalloc((size_t)n), *tmp8 = ser_xmalloc((size_t)n);
        s_crop_view(c, &im, gepoch, gindex, epoch, s->index, 0, base, s->vparams[0]);
        memcpy(s->vparams[1], s->vparams[0], sizeof s->vparams[0]);  // the same crop and flip
        int big = n;
        for (int v = 0; v < 2; v++)
            if (s->h[v] * s->w[v] * 3 > big) big = s->h[v] * s->w[v] * 3;
        float *fin = ser_xmalloc(sizeof(float) * n), *fout = ser_xmalloc(sizeof(float) * big);
        float *fk = ser_xmalloc(sizeof(float) * 2 * n);
        for (int v = 0; v < 2; v++) {
            memcpy(tmp8, base, (size_t)n);
            s_photo(jb, tmp8, S, S, epoch, s->index, gepoch, gindex, v, fk, fk + n, s->vparams[v]);
            ser_dl_u8_to_f32(fin, tmp8, n);
            // (S, S, 3) -> (h[v], w[v], 3); g and P were checked when the shard was laid out.
            int arc = ser_group_image_action_hwc(fout, fin, 3, S, S, c->patch, &s->g[v]);
            SER_ASSERT(arc == SER_OK);
            ser_dl_f32_to_u8(s->view[v], fout, s->h[v] * s->w[v] * 3);
        }
        free(base);
        free(tmp8);
        free(fin);
        free(fout);
        free(fk);
        for (int q = 0; q < c->local_pairs; q++) s_make_pair(jb, &im, s, epoch, q);
    }
    ser_dl_image_free(&im);
}

static int s_view_fits(const ser_group_elem *g, int h, int w, int patch, int grid_max) {
    int eh, ew, r, c;
    if (ser_group_elem_check(g)) return 0;
    ser_group_image_size(g, patch, &eh, &ew);
    ser_group_view_grid(g, &r, &c);
    return eh == h && ew == w && r <= grid_max && c <= grid_max;
}

int ser_dl_shard_check(const ser_dl_shard *d, int patch, int grid_max, char err[256]) {
    for (int i = 0; i < d->n; i++) {
        const ser_dl_sample *x = &d->samples[i];
        if (!x->equivariant) continue;
        for (int v = 0; v < 2; v++) {
            if (!s_view_fits(&x->g[v], x->h[v], x->w[v], patch, grid_max)) {
                snprintf(err, 256, "sample %d view %d: %dx%d px is not its group element's view "
                         "(grid %dx%d) at patch %d, or its grid is above %d", i, v, x->h[v],
                         x->w[v], x->g[v].gh, x->g[v].gw, patch, grid_max);
                return SER_ESHAPE;
            }
            for (int k = 0; k < d->local_pairs; k++)
                if (!s_view_fits(&x->lg[k][v], x->lh[k][v], x->lw[k][v], patch, grid_max)) {
                    snprintf(err, 256, "sample %d local SER pair %d view %d: %dx%d px is not its "
                             "group element's view at patch %d, or its grid is above %d", i, k,
                             v, x->lh[k][v], x->lw[k][v], patch, grid_max);
                    return SER_ESHAPE;
                }
        }
    }
    return SER_OK;
}

int ser_dl_make_shard(ser_dl *dl, uint64_t step, uint32_t shard, ser_dl_shard *out) {
    const ser_dl_config *c = &dl->cfg;
    memset(out, 0, sizeof *out);
    if (shard >= (uint32_t)c->shards || step > UINT32_MAX) return SER_EINVAL;
    const int n = dl->per_shard, B = c->global_batch;
    out->step = step;
    out->shard = shard;
    out->n = n;
    out->samples = ser_xcalloc((size_t)n, sizeof *out->samples);
    uint32_t *epochs = ser_xmalloc(sizeof(uint32_t) * (size_t)n);
    // Pass 1 (serial, cheap): positions, indices, group elements, sizes.
    size_t total = 0;
    for (int k = 0; k < n; k++) {
        ser_dl_sample *s = &out->samples[k];
        uint64_t p = (uint64_t)shard * n + (uint64_t)k;
        uint64_t q = step * (uint64_t)B + p;
        uint64_t e = q / dl->n;
        SER_ASSERT(e <= UINT32_MAX);
        epochs[k] = (uint32_t)e;
        s->position = p;
        s->index = s_perm(dl, (uint32_t)e)[q % dl->n];
        s->source = s->index;
        s->equivariant = p >= (uint64_t)(B - dl->n_eq);
        for (int v = 0; v < 2; v++) s->h[v] = s->w[v] = c->img;
        if (s->equivariant) {
            s_draw_groups(c, step, shard, (uint32_t)e, s->index, -1, s->g);
            for (int v = 0; v < 2; v++) {
                SER_ASSERT(ser_group_elem_check(&s->g[v]) == SER_OK);
                ser_group_image_size(&s->g[v], c->patch, &s->h[v], &s->w[v]);
            }
            for (int pr = 0; pr < c->local_pairs; pr++) {
                s_draw_groups(c, step, shard, (uint32_t)e, s->index, pr, s->lg[pr]);
                for (int v = 0; v < 2; v++) {
                    SER_ASSERT(ser_group_elem_check(&s->lg[pr][v]) == SER_OK);
                    ser_group_image_size(&s->lg[pr][v], c->patch, &s->lh[pr][v], &s->lw[pr][v]);
                    total += (size_t)s->lh[pr][v] * s->lw[pr][v] * 3;
                }
            }
        }
        total += (size_t)(s->h[0] * s->w[0] + s->h[1] * s->w[1]) * 3;
        total += (size_t)c->local_crops * c->local_size * c->local_size * 3;
    }
    out->n_local = c->local_crops;
    out->local_size = c->local_crops ? c->local_size : 0;
    out->local_pairs = c->local_pairs;
    out->data = ser_xmalloc(total ? total : 1);
    out->nbytes = total;
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        ser_dl_sample *s = &out->samples[k];
        for (int v = 0; v < 2; v++) {
            s->view[v] = out->data + off;
            off += (size_t)s->h[v] * s->w[v] * 3;
        }
        for (int l = 0; l < c->local_crops; l++) {
            s->local[l] = out->data + off;
            off += (size_t)c->local_size * c->local_size * 3;
        }
        for (int q = 0; s->equivariant && q < c->local_pairs; q++)
            for (int v = 0; v < 2; v++) {
                s->lview[q][v] = out->data + off;
                off += (size_t)s->lh[q][v] * s->lw[q][v] * 3;
            }
    }
    // Pass 2 (parallel across samples): decode and augment.
    s_job jb = {.dl = dl, .sh = out, .epochs = epochs, .rc = SER_OK};
    if (c->policy == SER_DL_POLICY_KORNIA)
        for (int v = 0; v < 2 + SER_MAX_LOCAL + 2 * c->local_pairs; v++) {
            if (v >= 2 + c->local_crops && v < 2 + SER_MAX_LOCAL) continue;  // no such view
            ser_rng r;
            ser_rng_init(&r, c->seed, (uint32_t)step, shard,
                         S_SHARD_STREAM | (uint32_t)v << 16 | SER_RNG_COLOR);
            ser_dl_photo_draw_order(jb.kornia_order[v], &r);
        }
    s_pool_run(&dl->pool, s_make_sample, &jb, n);
    free(epochs);
    if (jb.rc) ser_dl_shard_free(out);
    return jb.rc;
}

void ser_dl_config_from_job(ser_dl_config *c, const ser_config *job) {
    ser_dl_config_defaults(c);
    snprintf(c->data, sizeof c->data, "%s", job->data.path);
    c->kind = job->data.kind == SER_CONFIG_DATA_IMAGEFOLDER   ? SER_DL_KIND_IMAGEFOLDER
              : job->data.kind == SER_CONFIG_DATA_CIFAR10       ? SER_DL_KIND_CIFAR10
              : job->data.kind == SER_CONFIG_DATA_FASHION_MNIST ? SER_DL_KIND_FMNIST
              : job->data.kind == SER_CONFIG_DATA_SYNTHETIC     ? SER_DL_KIND_SYNTHETIC
                                                                 : SER_DL_KIND_AUTO;
    c->synthetic_images =
        job->data.kind == SER_CONFIG_DATA_SYNTHETIC ? (uint32_t)job->data.synthetic_images : 0;
    snprintf(c->job_id, sizeof c->job_id, "%s", job->run.name[0] ? job->run.name : "ser");
    c->img = job->model.img_size;
    c->patch = job->model.patch;
    c->global_batch = job->data.global_batch;
    c->shards = job->data.shards;
    c->eq_ratio = job->ser.enabled ? job->ser.ratio : 0.0;
    c->local_pairs = job->ser.enabled ? job->ser.local_pairs : 0;
    c->seed = (uint64_t)job->data.seed;
    c->policy = job->data.policy == SER_CONFIG_POLICY_KORNIA ? SER_DL_POLICY_KORNIA
                                                             : SER_DL_POLICY_TORCHVISION;
    c->group_sampling = job->ser.group_sampling == SER_CONFIG_GROUP_REFERENCE
                            ? SER_DL_GROUP_REFERENCE
                            : SER_DL_GROUP_PAPER;
    c->interp = job->data.interpolation == SER_CONFIG_INTERP_BICUBIC ? SER_DL_INTERP_BICUBIC
                                                                    : SER_DL_INTERP_BILINEAR;
    c->crop_min = job->data.crop_min;
    c->local_crops = job->data.local_crops;
    c->local_size = ser_config_local_size(job);
    c->local_crop_min = job->data.local_crop_min;
    c->local_crop_max = job->data.local_crop_max;
    c->local_rotations = job->data.local_mode == SER_CONFIG_LOCAL_ROTATIONS;
    c->local_center = job->data.local_mode == SER_CONFIG_LOCAL_CENTER;
    c->aligned_pairs = job->method.name == SER_CONFIG_METHOD_STL;
    c->strength = (ser_dl_photo_strength){job->data.jitter, job->data.blur_sigma,
                                          job->data.gray_prob, job->data.solarize_prob};
    c->threads = job->data.workers;
    c->max_bad_fraction = job->data.max_bad_fraction;
}
