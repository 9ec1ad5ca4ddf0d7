// ser_ckpt.c — see ser_ckpt.h; the file layout and the guarantees are in docs/checkpoints.md.
//
// A binding is a list of bindings (tables, the optimizer, extras). Saving and loading both
// expand it into slots, one per tensor of the file, sorted by name: the same list gives the
// tensors to write, the order of the content hash and the expected set that a strict load
// checks the file against.
//
// The content hash is XXH3-64 (libxxhash, compiled inline so it uses the build's SIMD level)
// over a canonical stream, so it does not depend on the file's layout:
//   "ser-checkpoint-hash-v1" NUL
//   for every tensor in byte-wise name order:
//       name NUL dtype-name NUL u64le(ndim) u64le(shape[0..ndim)) u64le(nbytes) bytes
//   for key in format, format_version, config_hash, config:  key NUL value NUL
// A 64-bit non-cryptographic hash detects corruption (a flipped bit, a torn or truncated
// write, a tensor swapped in from another file) with probability 1 - 2^-64; it is not meant
// to resist a deliberate forgery.
#include "ser_ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "ser_safetensors.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ser_ckpt.c assumes a little-endian host (checkpoint data is little-endian)"
#endif

#define S_HASH_TAG "ser-checkpoint-hash-v1"
#define S_LOCK ".ckpt.lock"
#define S_PREFIX "ckpt-"
#define S_SUFFIX ".safetensors"
#define S_LABEL_LEN 100
#define S_NPOS 4

// The training position's tensors, in ser_ckpt_pos field order.
static const char *const s_pos_names[S_NPOS] = {"train.step", "train.epoch", "train.data_cursor",
                                                 "train.iters_per_epoch"};
// The metadata values covered by the content hash, in hash order.
static const char *const s_hashed_meta[4] = {"format", "format_version", "config_hash", "config"};

// --- small helpers ---------------------------------------------------------------------------
// The path as messages show it: shortened from the left so the reason still fits.
static void s_label(char *buf, const char *path) {
    size_t n = strlen(path);
    if (n < S_LABEL_LEN)
        snprintf(buf, S_LABEL_LEN, "%s", path);
    else
        snprintf(buf, S_LABEL_LEN, "...%s", path + n - (S_LABEL_LEN - 4));
}

// dir + "/" + name into buf; 0 if it does not fit.
static int s_join(char *buf, size_t n, const char *dir, const char *name) {
    int k = snprintf(buf, n, "%s/%s", dir, name);
    return k >= 0 && (size_t)k < n;
}

// Strict UTF-8 (the safetensors header is JSON text): no overlong forms, no surrogates.
static int s_utf8_valid(const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s;
        int len;
        uint32_t cp, min;
        if (c < 0x80) {
            s++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        for (int k = 1; k < len; k++) {
            if ((s[k] & 0xc0) != 0x80) return 0;  // also stops at the NUL
            cp = (cp << 6) | (s[k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        s += len;
    }
    return 1;
}

// fsync a directory so that renames and unlinks in it are durable.
static int s_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    int rc = fsync(fd) != 0 && errno != EINVAL ? errno : 0;  // EINVAL: not supported here
    close(fd);
    return rc;
}

// --- the binding -----------------------------------------------------------------------------
enum { S_BIND_TABLE, S_BIND_OPTIM, S_BIND_F32, S_BIND_I64 };

typedef struct s_bind {
    int kind;
    const ser_ptab *tab;  // TABLE
    float *arena;
    char name[SER_TINFO_NAME_LEN];  // TABLE: the prefix; F32, I64: the tensor name
    ser_optim *opt;                 // OPTIM
    float *f;                       // F32
    int64_t *i;                     // I64
    int ndim;
    int64_t shape[SER_TINFO_MAX_DIM];
} s_bind;

struct ser_ckpt {
    s_bind *b;
    int n, cap;
};

ser_ckpt *ser_ckpt_new(void) {
    return ser_xcalloc(1, sizeof(ser_ckpt));
}

void ser_ckpt_destroy(ser_ckpt **cp) {
    if (!cp || !*cp) return;
    free((*cp)->b);
    free(*cp);
    *cp = NULL;
}

static s_bind *s_bind_new(ser_ckpt *c, int kind) {
    SER_ASSERT(c);
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 8;
        c->b = realloc(c->b, (size_t)c->cap * sizeof *c->b);
        if (!c->b) SER_ABORT("out of memory");
    }
    s_bind *b = &c->b[c->n++];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    return b;
}

void ser_ckpt_add_table(ser_ckpt *c, const ser_ptab *tab, float *arena, const char *prefix) {
    SER_ASSERT(tab && (arena || tab->n == 0));
    if (!prefix) prefix = "";
    SER_ASSERT(strlen(prefix) < SER_TINFO_NAME_LEN);
    s_bind *b = s_bind_new(c, S_BIND_TABLE);
    b->tab = tab, b->arena = arena;
    snprintf(b->name, sizeof b->name, "%s", prefix);
}

void ser_ckpt_add_optim(ser_ckpt *c, ser_optim *o) {
    SER_ASSERT(o && o->tab && o->step && o->exp_avg && o->exp_avg_sq);
    for (int k = 0; k < c->n; k++)
        if (c->b[k].kind == S_BIND_OPTIM) SER_ABORT("checkpoint binding: a second optimizer");
    s_bind_new(c, S_BIND_OPTIM)->opt = o;
}

void ser_ckpt_add_f32(ser_ckpt *c, const char *name, float *data, int ndim, const int64_t *shape) {
    SER_ASSERT(name && strlen(name) < SER_TINFO_NAME_LEN && data);
    SER_ASSERT(ndim >= 0 && ndim <= SER_TINFO_MAX_DIM);
    s_bind *b = s_bind_new(c, S_BIND_F32);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->f = data;
    b->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        SER_ASSERT(shape[d] > 0);
        b->shape[d] = shape[d];
    }
}

void ser_ckpt_add_i64(ser_ckpt *c, const char *name, int64_t *value) {
    SER_ASSERT(name && strlen(name) < SER_TINFO_NAME_LEN && value);
    s_bind *b = s_bind_new(c, S_BIND_I64);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->i = value;
}

// --- slots: one per tensor of the file ---------------------------------------------------------
enum {
    S_SLOT_F32,      // table entry, extra tensor: F32, exact shape
    S_SLOT_COUNTER,  // SER_TINFO_COUNTER: 0-d I64 (written) or F32
    S_SLOT_I64,      // extra scalar or position: 0-d I64
    S_SLOT_OPT_M,    // optimizer exp_avg / exp_avg_sq: F32, the tensor's shape
    S_SLOT_OPT_V,
    S_SLOT_OPT_STEP,  // optimizer step: 0-d I64
};

typedef struct s_slot {
    char name[SER_TINFO_NAME_LEN];
    int kind;
    int ndim;
    int64_t shape[SER_ST_MAX_DIM];
    size_t numel;
    float *f;    // F32, COUNTER, OPT_M, OPT_V
    int64_t *i;  // I64, OPT_STEP
    int oi;      // OPT_*: the tensor's index in the optimizer's table
} s_slot;

typedef struct s_slots {
    s_slot *s;  // n slots sorted by name
    int n;
    ser_optim *opt;  // the bound optimizer or NULL
} s_slots;

static s_slot *s_slot_push(s_slots *S, int *cap, const char *prefix, const char *name, int kind) {
    if (S->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        S->s = realloc(S->s, (size_t)*cap * sizeof *S->s);
        if (!S->s) SER_ABORT("out of memory");
    }
    s_slot *s = &S->s[S->n++];
    memset(s, 0, sizeof *s);
    int k = snprintf(s->name, sizeof s->name, "%s%s", prefix, name);
    if (k < 0 || k >= (int)sizeof s->name)
        SER_ABORT("checkpoint tensor name '%s%s' is too long", prefix, name);
    s->kind = kind;
    s->numel = 1;
    s->oi = -1;
    return s;
}

static void s_slot_shape(s_slot *s, int ndim, const int64_t *shape) {
    s->ndim = ndim;
    s->numel = 1;
    for (int d = 0; d < ndim; d++) {
        s->shape[d] = shape[d];
        s->numel *= (size_t)shape[d];
    }
}

static int s_cmp_slot(const void *a, const void *b) {
    return strcmp(((const s_slot *)a)->name, ((const s_slot *)b)->name);
}

// Expands the binding; the position tensors are bound to pos[S_NPOS]. Names bound twice are a
// programming error (SER_ABORT).
static void s_slots_make(s_slots *S, const ser_ckpt *c, int64_t *pos) {
    memset(S, 0, sizeof *S);
    int cap = 0;
    char key[SER_TINFO_NAME_LEN + 64];
    for (int k = 0; k < c->n; k++) {
        const s_bind *b = &c->b[k];
        switch (b->kind) {
            case S_BIND_TABLE:
                for (int i = 0; i < b->tab->n; i++) {
                    const ser_tinfo *t = &b->tab->t[i];
                    int counter = (t->flags & SER_TINFO_COUNTER) && t->numel == 1;
                    s_slot *s = s_slot_push(S, &cap, b->name, t->name,
                                            counter ? S_SLOT_COUNTER : S_SLOT_F32);
                    s_slot_shape(s, t->ndim, t->shape);
                    s->f = b->arena + t->offset;
                }
                break;
            case S_BIND_OPTIM: {
                ser_optim *o = b->opt;
                S->opt = o;
                for (int i = 0; i < o->tab->n; i++) {
                    const ser_tinfo *t = &o->tab->t[i];
                    if (t->flags & SER_TINFO_FROZEN) continue;  // never has state
                    static const int kinds[3] = {S_SLOT_OPT_M, S_SLOT_OPT_V, S_SLOT_OPT_STEP};
                    for (int part = 0; part < 3; part++) {
                        ser_optim_state_key(o, i, part, key, sizeof key);
                        s_slot *s = s_slot_push(S, &cap, "", key, kinds[part]);
                        s->oi = i;
                        if (part == SER_OPTIM_STATE_STEP) {
                            s->i = &o->step[i];
                        } else {
                            s_slot_shape(s, t->ndim, t->shape);
                            s->f = (part == SER_OPTIM_STATE_EXP_AVG ? o->exp_avg : o->exp_avg_sq) +
                                   t->offset;
                        }
                    }
                }
                break;
            }
            case S_BIND_F32: {
                s_slot *s = s_slot_push(S, &cap, "", b->name, S_SLOT_F32);
                s_slot_shape(s, b->ndim, b->shape);
                s->f = b->f;
                break;
            }
            case S_BIND_I64:
                s_slot_push(S, &cap, "", b->name, S_SLOT_I64)->i = b->i;
                break;
            default:
                SER_ABORT("bad binding kind %d", b->kind);
        }
    }
    for (int p = 0; p < S_NPOS; p++)
        s_slot_push(S, &cap, "", s_pos_names[p], S_SLOT_I64)->i = &pos[p];
    if (S->n) qsort(S->s, (size_t)S->n, sizeof *S->s, s_cmp_slot);
    for (int k = 1; k < S->n; k++)
        if (strcmp(S->s[k - 1].name, S->s[k].name) == 0)
            SER_ABORT("checkpoint binding: tensor name '%s' is bound twice", S->s[k].name);
}

static void s_slots_free(s_slots *S) {
    free(S->s);
    memset(S, 0, sizeof *S);
}

static const s_slot *s_slots_find(const s_slots *S, const char *name) {
    int lo = 0, hi = S->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int cmp = strcmp(name, S->s[mid].name);
        if (cmp == 0) return &S->s[mid];
        if (cmp < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

// 1 if the optimizer slot's tensor has state (torch keeps none before the first step).
static int s_opt_has_state(const s_slots *S, const s_slot *s) {
    return s->oi < 0 || S->opt->step[s->oi] != 0;
}

// --- the content hash ------------------------------------------------------------------------
typedef struct s_hitem {
    const char *name;
    ser_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
    size_t nbytes;
} s_hitem;

static int s_cmp_hitem(const void *a, const void *b) {
    return strcmp(((const s_hitem *)a)->name, ((const s_hitem *)b)->name);
}

static void s_hash_u64(XXH3_state_t *st, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    XXH3_64bits_update(st, b, 8);
}

static void s_hash_str(XXH3_state_t *st, const char *s) {
    XXH3_64bits_update(st, s, strlen(s) + 1);  // with the NUL: "ab","c" != "a","bc"
}

// items sorted by name; meta[4]: the values of s_hashed_meta.
static uint64_t s_content_hash(const s_hitem *it, int n, const char *const meta[4]) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    s_hash_str(&st, S_HASH_TAG);
    for (int k = 0; k < n; k++) {
        s_hash_str(&st, it[k].name);
        s_hash_str(&st, ser_dtype_name(it[k].dtype));
        s_hash_u64(&st, (uint64_t)it[k].ndim);
        for (int d = 0; d < it[k].ndim; d++) s_hash_u64(&st, (uint64_t)it[k].shape[d]);
        s_hash_u64(&st, it[k].nbytes);
        if (it[k].nbytes) XXH3_64bits_update(&st, it[k].data, it[k].nbytes);
    }
    for (int k = 0; k < 4; k++) {
        s_hash_str(&st, s_hashed_meta[k]);
        s_hash_str(&st, meta[k]);
    }
    return XXH3_64bits_digest(&st);
}

static void s_hash_hex(char out[32], uint64_t h) {
    snprintf(out, 32, "%s:%016llx", SER_CKPT_HASH_ALGO, (unsigned long long)h);
}

// --- names and the directory -----------------------------------------------------------------
const char *ser_ckpt_name(char *buf, size_t n, int64_t step) {
    SER_ASSERT(step >= 0);
    snprintf(buf, n, S_PREFIX "%010lld" S_SUFFIX, (long long)step);
    return buf;
}

int ser_ckpt_parse_name(const char *name, int64_t *step) {
    size_t lp = strlen(S_PREFIX), ls = strlen(S_SUFFIX), n = strlen(name);
    if (n < lp + 10 + ls || n > lp + 19 + ls || strncmp(name, S_PREFIX, lp) != 0 ||
        strcmp(name + n - ls, S_SUFFIX) != 0)
        return 0;
    uint64_t v = 0;
    for (size_t i = lp; i < n - ls; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        v = v * 10 + (uint64_t)(name[i] - '0');  // at most 19 digits: no overflow of u64
    }
    if (v > INT64_MAX) return 0;
    char canon[64];
    if (strcmp(ser_ckpt_name(canon, sizeof canon, (int64_t)v), name) != 0) return 0;
    if (step) *step = (int64_t)v;
    return 1;
}

static int s_cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int ser_ckpt_list(const char *dir, int64_t **steps, int *n, char err[SER_ERR_LEN]) {
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return ser_errf(err, errno == ENOENT ? SER_ENOENT : SER_EIO, "%s: cannot open: %s", dir,
                      strerror(errno));
    int64_t *v = NULL;
    int cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int64_t step;
        struct stat st;
        if (!ser_ckpt_parse_name(de->d_name, &step)) continue;
        if (fstatat(dirfd(d), de->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode)) continue;
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) {
                free(v);
                closedir(d);
                return ser_errf(err, SER_ENOMEM, "%s: out of memory listing checkpoints", dir);
            }
            v = nv;
        }
        v[cnt++] = step;
    }
    closedir(d);
    if (cnt) qsort(v, (size_t)cnt, sizeof *v, s_cmp_i64);
    *steps = v;
    *n = cnt;
    return SER_OK;
}

// The step named by <dir>/latest if that file holds a checkpoint name whose file exists.
static int s_read_latest(const char *dir, int64_t *step) {
    char p[4096], buf[128];
    if (!s_join(p, sizeof p, dir, SER_CKPT_LATEST)) return 0;
    FILE *fp = fopen(p, "rb");
    if (!fp) return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[k] = 0;
    while (k && (buf[k - 1] == '\n' || buf[k - 1] == '\r' || buf[k - 1] == ' ')) buf[--k] = 0;
    struct stat st;
    if (!ser_ckpt_parse_name(buf, step) || !s_join(p, sizeof p, dir, buf) || stat(p, &st) != 0 ||
        !S_ISREG(st.st_mode))
        return 0;
    return 1;
}

int ser_ckpt_find_latest(const char *dir, char *path, size_t path_len, int64_t *step,
                         char err[SER_ERR_LEN]) {
    int64_t s, *steps = NULL;
    int n = 0, rc;
    if (!s_read_latest(dir, &s)) {
        if ((rc = ser_ckpt_list(dir, &steps, &n, err)) != SER_OK) return rc;
        if (n == 0) return ser_errf(err, SER_ENOENT, "%s: no checkpoint", dir);
        s = steps[n - 1];
        free(steps);
    }
    if (step) *step = s;
    if (path) {
        char name[64];
        if (!s_join(path, path_len, dir, ser_ckpt_name(name, sizeof name, s)))
            return ser_errf(err, SER_EINVAL, "%s: path buffer too small", dir);
    }
    return SER_OK;
}

// Writes <dir>/latest = name (tmp, fsync, rename, fsync dir).
static int s_write_latest(const char *dir, const char *name, char *err) {
    char tmp[4096], dst[4096], line[80];
    if (!s_join(dst, sizeof dst, dir, SER_CKPT_LATEST) ||
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dst, (long)getpid()) >= (int)sizeof tmp)
        return ser_errf(err, SER_EINVAL, "%s: path too long", dir);
    int n = snprintf(line, sizeof line, "%s\n", name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ser_errf(err, SER_EIO, "cannot create %s: %s", tmp, strerror(errno));
    int ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0 && ok) ok = 0, e = errno;
    if (!ok || rename(tmp, dst) != 0) {
        if (ok) e = errno;
        unlink(tmp);
        return ser_errf(err, SER_EIO, "cannot update %s: %s", dst, strerror(e));
    }
    if ((e = s_fsync_dir(dir)) != 0)
        return ser_errf(err, SER_EIO, "cannot fsync %s: %s", dir, strerror(e));
    return SER_OK;
}

// Removes what a killed save leaves: ckpt-*.safetensors.tmp.<pid> and latest.tmp.<pid>. Only
// called with the directory lock held, so no live save owns them.
static void s_remove_stale_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    size_t ll = strlen(SER_CKPT_LATEST ".tmp.");
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        int ours = (strncmp(nm, S_PREFIX, strlen(S_PREFIX)) == 0 &&
                    strstr(nm, S_SUFFIX ".tmp.") != NULL) ||
                   strncmp(nm, SER_CKPT_LATEST ".tmp.", ll) == 0;
        if (!ours) continue;
        if (unlinkat(dirfd(d), nm, 0) == 0)
            ser_log(SER_LL_INFO, "checkpoint: removed %s/%s left by an interrupted save", dir, nm);
    }
    closedir(d);
}

// Keeps the newest keep_last checkpoints up to `step` (which is one of them), oldest deleted
// first; newer files than `step` are left alone.
static void s_rotate(const char *dir, int64_t step, int keep_last) {
    int64_t *steps = NULL;
    int n = 0;
    char err[SER_ERR_LEN], name[64], p[4096];
    if (ser_ckpt_list(dir, &steps, &n, err) != SER_OK) {
        ser_log(SER_LL_WARNING, "checkpoint rotation skipped: %s", err);
        return;
    }
    int older = 0, removed = 0;
    for (int k = 0; k < n; k++) older += steps[k] < step;
    for (int k = 0; k < n; k++) {
        if (steps[k] > step) {
            ser_log(SER_LL_WARNING,
                    "checkpoint: %s/%s is newer than the step just saved (%lld); it is left in "
                    "place and `latest` names step %lld",
                    dir, ser_ckpt_name(name, sizeof name, steps[k]), (long long)step,
                    (long long)step);
            continue;
        }
        if (keep_last < 1 || steps[k] >= step || k >= older - (keep_last - 1)) continue;
        if (s_join(p, sizeof p, dir, ser_ckpt_name(name, sizeof name, steps[k])) && unlink(p) == 0)
            removed++;
        else
            ser_log(SER_LL_WARNING, "checkpoint: cannot remove %s: %s", p, strerror(errno));
    }
    if (removed) s_fsync_dir(dir);  // best effort: an undone unlink only leaves an extra file
    free(steps);
}

static int s_lock(const char *dir, char *err) {
    char p[4096];
    if (!s_join(p, sizeof p, dir, S_LOCK)) {
        ser_errf(err, SER_EINVAL, "%s: path too long", dir);
        return -1;
    }
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        ser_errf(err, SER_EIO, "cannot open %s: %s", p, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        ser_errf(err, SER_EIO, "%s: %s", p,
               e == EWOULDBLOCK ? "another process is saving checkpoints into this directory"
                                : strerror(e));
        return -1;
    }
    return fd;
}

// --- saving ----------------------------------------------------------------------------------
int ser_ckpt_save(ser_ckpt *c, const char *dir, const ser_ckpt_pos *pos, const ser_config *cfg,
                  int keep_last, char *path, size_t path_len, char err[SER_ERR_LEN]) {
    SER_ASSERT(c && dir && pos && cfg);
    if (pos->step < 0 || pos->epoch < 0 || pos->data_cursor < 0 || pos->iters_per_epoch < 0)
        return ser_errf(err, SER_EINVAL,
                      "checkpoint position must be >= 0 (step %lld, epoch %lld, "
                      "data cursor %lld)",
                      (long long)pos->step, (long long)pos->epoch, (long long)pos->data_cursor);
    int rc = SER_OK, lockfd = -1;
    int64_t posv[S_NPOS] = {pos->step, pos->epoch, pos->data_cursor, pos->iters_per_epoch};
    s_slots S;
    s_slots_make(&S, c, posv);
    s_hitem *items = ser_xcalloc((size_t)S.n + 1, sizeof *items);
    int64_t *counters = ser_xcalloc((size_t)S.n + 1, sizeof *counters);
    ser_st_writer *w = NULL;
    char *cfgtext = NULL;
    char name[64], file[4096];

    if (!s_join(file, sizeof file, dir, ser_ckpt_name(name, sizeof name, pos->step))) {
        rc = ser_errf(err, SER_EINVAL, "checkpoint directory name is too long");
        goto done;
    }
    cfgtext = ser_config_text(cfg);
    if (!cfgtext) {
        rc = ser_errf(err, SER_ENOMEM, "checkpoint step %lld: cannot format the config",
                    (long long)pos->step);
        goto done;
    }
    if (!s_utf8_valid(cfgtext)) {
        rc = ser_errf(err, SER_EINVAL,
                    "checkpoint step %lld: the config holds a string that is "
                    "not UTF-8 (a path?); safetensors metadata must be UTF-8",
                    (long long)pos->step);
        goto done;
    }
    if ((rc = ser_mkdir_p(dir, err)) != SER_OK) goto done;
    if ((lockfd = s_lock(dir, err)) < 0) {
        rc = SER_EIO;
        goto done;
    }
    s_remove_stale_tmp(dir);

    // The tensors, in name order (which also fixes the file layout: see ser_st_writer_save).
    w = ser_st_writer_new();
    int ni = 0;
    for (int k = 0; k < S.n; k++) {
        const s_slot *s = &S.s[k];
        if (!s_opt_has_state(&S, s)) continue;
        s_hitem *h = &items[ni++];
        h->name = s->name;
        h->ndim = s->ndim;
        h->shape = s->shape;
        switch (s->kind) {
            case S_SLOT_COUNTER: {
                // PyTorch's num_batches_tracked is an int64; store it as one when the float holds
                // an integer exactly (always: it counts steps), else keep the float bits.
                float v = *s->f, back;
                int exact = v > -9.2e18f && v < 9.2e18f;
                if (exact) {
                    counters[k] = (int64_t)v;
                    back = (float)counters[k];
                    exact = memcmp(&back, &v, sizeof v) == 0;
                }
                h->dtype = exact ? SER_DT_I64 : SER_DT_F32;
                h->data = exact ? (const void *)&counters[k] : (const void *)s->f;
                h->nbytes = exact ? 8 : 4;
                break;
            }
            case S_SLOT_I64:
            case S_SLOT_OPT_STEP:
                h->dtype = SER_DT_I64, h->data = s->i, h->nbytes = 8;
                break;
            default:
                h->dtype = SER_DT_F32, h->data = s->f, h->nbytes = s->numel * sizeof(float);
        }
        ser_st_writer_add(w, h->name, h->dtype, h->ndim, h->shape, h->data);
    }
    char hash[17], ver[16], content[32];
    snprintf(ver, sizeof ver, "%d", SER_CKPT_VERSION);
    const char *meta[4] = {SER_CKPT_FORMAT, ver, ser_config_hash_hex(cfg, hash), cfgtext};
    s_hash_hex(content, s_content_hash(items, ni, meta));
    for (int k = 0; k < 4; k++) ser_st_writer_meta(w, s_hashed_meta[k], meta[k]);
    ser_st_writer_meta(w, "content_hash", content);

    if ((rc = ser_st_writer_save(w, file, err)) != SER_OK) goto done;
    if ((rc = s_write_latest(dir, name, err)) != SER_OK) goto done;
    s_rotate(dir, pos->step, keep_last);
    if (path && !s_join(path, path_len, dir, name)) path[0] = 0;

done:
    if (lockfd >= 0) close(lockfd);  // releases the flock
    ser_st_writer_destroy(&w);
    free(cfgtext);
    free(counters);
    free(items);
    s_slots_free(&S);
    return rc;
}

// --- checking a file -------------------------------------------------------------------------
// The options that change results (hashed ones) and differ between a (the checkpoint's) and b
// (this job's), as "optim.lr, data.shards" into buf; each is also logged with both values.
static int s_config_diff_keys(const ser_config *a, const ser_config *b, const char *label,
                              char *buf, size_t n) {
    int nopt, count = 0;
    const ser_config_option *o = ser_config_options(&nopt);
    const char *const *methods = NULL;
    char ma[64], mb[64], key[160], va[SER_CONFIG_STR_LEN + 32], vb[SER_CONFIG_STR_LEN + 32];
    for (int i = 0; i < nopt; i++)
        if (strcmp(o[i].section, "method") == 0 && strcmp(o[i].name, "name") == 0)
            methods = o[i].choices;
    ser_config_get(a, "method.name", ma, sizeof ma);
    ser_config_get(b, "method.name", mb, sizeof mb);
    size_t used = 0;
    int full = 0;
    buf[0] = 0;
    for (int i = 0; i < nopt; i++) {
        if (o[i].flags & SER_CONFIG_F_NOHASH) continue;
        int method_sec = 0;
        for (int k = 0; methods && methods[k]; k++)
            method_sec |= strcmp(o[i].section, methods[k]) == 0;
        // The sections of methods that neither job runs change nothing (ser_config_hash).
        if (method_sec && strcmp(o[i].section, ma) != 0 && strcmp(o[i].section, mb) != 0) continue;
        snprintf(key, sizeof key, "%s.%s", o[i].section, o[i].name);
        ser_config_get(a, key, va, sizeof va);
        ser_config_get(b, key, vb, sizeof vb);
        if (strcmp(va, vb) == 0) continue;
        ser_log(SER_LL_WARNING, "%s: %s = %s in the checkpoint, %s in this job", label, key, va,
                vb);
        // Whole keys only; when the next one would not fit (with room for ", ..."), "...".
        const char *sep = count ? ", " : "";
        if (!full && used + strlen(sep) + strlen(key) + 6 < n) {
            used += (size_t)snprintf(buf + used, n - used, "%s%s", sep, key);
        } else if (!full) {
            full = 1;
            snprintf(buf + used, n - used, "%s...", sep);
        }
        count++;
    }
    return count;
}

static int s_check_config(const ser_st_file *f, const char *label, const ser_config *cfg,
                          char *err) {
    char mine[17];
    const char *stored = ser_st_meta(f, "config_hash"), *text = ser_st_meta(f, "config");
    ser_config_hash_hex(cfg, mine);
    if (strcmp(stored, mine) == 0) return SER_OK;
    ser_config old;
    char head[SER_ERR_LEN], why[SER_ERR_LEN], keys[SER_ERR_LEN];
    snprintf(head, sizeof head, "checkpoint %s was written by config %.16s; this job is %s", label,
             stored, mine);
    ser_config_defaults(&old);
    if (ser_config_load_string(&old, text, "stored config", why) != SER_OK)
        return ser_errf(err, SER_ECONFIG, "%s (the stored config cannot be read by this ser: %s)",
                      head, why);
    // The key list gets the room the rest of the line leaves (every key is also logged).
    size_t room = SER_ERR_LEN - strlen(head) - strlen(" (differs: )");
    int nd = s_config_diff_keys(&old, cfg, label, keys, room > 16 ? room : 16);
    if (nd == 0)
        return ser_errf(err, SER_ECONFIG,
                      "%s (no option differs: the config hash of this ser is "
                      "defined differently)",
                      head);
    return ser_errf(err, SER_ECONFIG, "%s (differs: %s)", head, keys);
}

static int s_is_i64_scalar(const ser_st_entry *e) {
    return e && e->dtype == SER_DT_I64 && e->ndim == 0;
}

static int64_t s_i64(const ser_st_entry *e) {
    int64_t v;
    memcpy(&v, e->data, sizeof v);
    return v;
}

// Opens path and runs every check that needs no binding. On success *out is the open file and
// pos[S_NPOS] the stored position.
static int s_open_checked(const char *path, const ser_config *cfg, ser_st_file **out,
                          int64_t pos[S_NPOS], char *err) {
    char label[S_LABEL_LEN];
    s_label(label, path);
    *out = NULL;
    ser_st_file *f = NULL;
    s_hitem *items = NULL;
    int rc = ser_st_open(&f, path, err);
    if (rc != SER_OK) return rc;  // the message names the file and what is wrong

    const char *fmt = ser_st_meta(f, "format"), *ver = ser_st_meta(f, "format_version");
    if (!fmt || strcmp(fmt, SER_CKPT_FORMAT) != 0) {
        rc = ser_errf(err, SER_EFORMAT,
                    "%s: not a ser checkpoint (metadata format is %s%.40s%s, "
                    "expected \"" SER_CKPT_FORMAT "\")",
                    label, fmt ? "\"" : "", fmt ? fmt : "absent", fmt ? "\"" : "");
        goto fail;
    }
    char *end = NULL;
    long v = ver ? strtol(ver, &end, 10) : -1;
    if (!ver || !*ver || *end || v != SER_CKPT_VERSION) {
        const char *hint = !ver || !*ver || *end  ? "the version is not a number: a damaged file"
                           : v > SER_CKPT_VERSION ? "it was written by a newer ser; resume with "
                                                    "that version"
                                                  : "it was written by an older ser; resume with "
                                                    "that version, or start a new run directory";
        rc = ser_errf(err, SER_EVERSION,
                    "%s: checkpoint format version %.20s, this ser reads "
                    "version %d ---> HINT: %s",
                    label, ver ? ver : "(absent)", SER_CKPT_VERSION, hint);
        goto fail;
    }
    const char *meta[4];
    for (int k = 0; k < 4; k++) {
        meta[k] = ser_st_meta(f, s_hashed_meta[k]);
        if (!meta[k]) {
            rc =
                ser_errf(err, SER_EFORMAT, "%s: metadata \"%s\" is missing", label, s_hashed_meta[k]);
            goto fail;
        }
    }
    const char *stored = ser_st_meta(f, "content_hash");
    if (!stored) {
        rc = ser_errf(err, SER_EFORMAT, "%s: metadata \"content_hash\" is missing", label);
        goto fail;
    }
    int n = ser_st_count(f);
    items = ser_xcalloc((size_t)n + 1, sizeof *items);
    for (int k = 0; k < n; k++) {
        const ser_st_entry *e = ser_st_at(f, k);
        items[k] = (s_hitem){e->name, e->dtype, e->ndim, e->shape, e->data, e->nbytes};
    }
    if (n) qsort(items, (size_t)n, sizeof *items, s_cmp_hitem);
    char content[32];
    s_hash_hex(content, s_content_hash(items, n, meta));
    if (strcmp(content, stored) != 0) {
        rc = ser_errf(err, SER_EHASH,
                    "%s: content hash mismatch (stored %.40s, computed %s): the "
                    "file is corrupt or was modified; not loaded",
                    label, stored, content);
        goto fail;
    }

    for (int p = 0; p < S_NPOS; p++) {
        const ser_st_entry *e = ser_st_find(f, s_pos_names[p]);
        if (!s_is_i64_scalar(e) || s_i64(e) < 0) {
            rc = ser_errf(err, SER_EFORMAT, "%s: '%s' is %s (a 0-d I64 >= 0 expected)", label,
                        s_pos_names[p], e ? "malformed" : "missing");
            goto fail;
        }
        pos[p] = s_i64(e);
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int64_t named;
    if (ser_ckpt_parse_name(base, &named) && named != pos[0]) {
        rc = ser_errf(err, SER_EFORMAT,
                    "%s: the file name says step %lld but it holds step %lld "
                    "(renamed?)",
                    label, (long long)named, (long long)pos[0]);
        goto fail;
    }
    if (cfg && (rc = s_check_config(f, label, cfg, err)) != SER_OK) goto fail;
    free(items);
    *out = f;
    return SER_OK;
fail:
    free(items);
    ser_st_destroy(&f);
    return rc;
}

int ser_ckpt_verify(const char *path, const ser_config *cfg, ser_ckpt_pos *pos,
                    char err[SER_ERR_LEN]) {
    SER_ASSERT(path);
    ser_st_file *f = NULL;
    int64_t p[S_NPOS];
    int rc = s_open_checked(path, cfg, &f, p, err);
    if (rc == SER_OK && pos) *pos = (ser_ckpt_pos){p[0], p[1], p[2], p[3]};
    ser_st_destroy(&f);
    return rc;
}

static const char *s_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

static int s_shape_eq(const ser_st_entry *e, const s_slot *s) {
    if (e->ndim != s->ndim) return 0;
    for (int d = 0; d < s->ndim; d++)
        if (e->shape[d] != s->shape[d]) return 0;
    return 1;
}

// Strict comparison of the file's tensors with the slots; nothing is written.
static int s_check_tensors(const ser_st_file *f, const s_slots *S, const char *label, char *err) {
    int nmiss = 0, nunexp = 0;
    const char *first_miss = NULL, *first_unexp = NULL;
    for (int k = 0; k < S->n; k++) {
        const s_slot *s = &S->s[k];
        if (ser_st_find(f, s->name)) continue;
        if (s->oi >= 0) continue;  // optimizer state: checked per tensor below
        if (!nmiss++) first_miss = s->name;
    }
    for (int k = 0; k < ser_st_count(f); k++) {
        const char *nm = ser_st_at(f, k)->name;
        if (s_slots_find(S, nm)) continue;
        if (!nunexp++) first_unexp = nm;
    }
    if (nmiss || nunexp) {
        char a[SER_TINFO_NAME_LEN + 48] = "", b[SER_TINFO_NAME_LEN + 48] = "";
        if (nmiss) snprintf(a, sizeof a, "; %d missing, first '%s'", nmiss, first_miss);
        if (nunexp) snprintf(b, sizeof b, "; %d unexpected, first '%s'", nunexp, first_unexp);
        return ser_errf(err, SER_EFORMAT, "%s: tensors do not match this job's model%s%s", label, a,
                      b);
    }
    // Optimizer state: all three parts of a tensor or none (none: no step taken yet).
    for (int k = 0; k < S->n; k++) {
        const s_slot *s = &S->s[k];
        if (s->kind != S_SLOT_OPT_STEP) continue;
        char key[SER_TINFO_NAME_LEN + 64];
        int have = 0;
        for (int part = 0; part < 3; part++) {
            ser_optim_state_key(S->opt, s->oi, part, key, sizeof key);
            have += ser_st_find(f, key) != NULL;
        }
        if (have != 0 && have != 3)
            return ser_errf(err, SER_EFORMAT,
                          "%s: optimizer state of '%s' is incomplete (%d of "
                          "exp_avg, exp_avg_sq, step)",
                          label, S->opt->tab->t[s->oi].name, have);
    }
    for (int k = 0; k < S->n; k++) {
        const s_slot *s = &S->s[k];
        const ser_st_entry *e = ser_st_find(f, s->name);
        if (!e) continue;
        char a[96], b[96];
        switch (s->kind) {
            case S_SLOT_I64:
            case S_SLOT_OPT_STEP:
                if (!s_is_i64_scalar(e))
                    return ser_errf(err, e->dtype == SER_DT_I64 ? SER_ESHAPE : SER_EDTYPE,
                                  "%s: tensor '%s' is %s %s, a 0-d I64 expected", label, s->name,
                                  ser_dtype_name(e->dtype),
                                  s_shape_str(a, sizeof a, e->ndim, e->shape));
                if (s->kind == S_SLOT_OPT_STEP && s_i64(e) < 0)
                    return ser_errf(err, SER_EFORMAT, "%s: '%s' = %lld is negative", label, s->name,
                                  (long long)s_i64(e));
                continue;
            case S_SLOT_COUNTER:
                if (s_is_i64_scalar(e) && s->ndim == 0) continue;
                break;
            default:
                break;
        }
        if (e->dtype != SER_DT_F32)
            return ser_errf(err, SER_EDTYPE,
                          "%s: tensor '%s' is %s, F32 expected (checkpoints "
                          "keep exact fp32 bits)",
                          label, s->name, ser_dtype_name(e->dtype));
        if (!s_shape_eq(e, s))
            return ser_errf(err, SER_ESHAPE,
                          "%s: tensor '%s': shape %s in the checkpoint, %s in "
                          "this job",
                          label, s->name, s_shape_str(a, sizeof a, e->ndim, e->shape),
                          s_shape_str(b, sizeof b, s->ndim, s->shape));
    }
    return SER_OK;
}

// Copies every slot from the file (all checks passed); optimizer tensors without state get
// torch's initial state (m = v = 0, step 0).
static void s_copy_in(const ser_st_file *f, const s_slots *S) {
    for (int k = 0; k < S->n; k++) {
        const s_slot *s = &S->s[k];
        const ser_st_entry *e = ser_st_find(f, s->name);
        if (!e) {
            SER_ASSERT(s->oi >= 0);
            if (s->kind == S_SLOT_OPT_STEP)
                *s->i = 0;
            else
                memset(s->f, 0, s->numel * sizeof(float));
            continue;
        }
        if (e->dtype == SER_DT_I64) {
            if (s->kind == S_SLOT_COUNTER)
                *s->f = (float)s_i64(e);
            else
                *s->i = s_i64(e);
        } else {
            memcpy(s->f, e->data, s->numel * sizeof(float));
        }
    }
}

int ser_ckpt_load(ser_ckpt *c, const char *path, const ser_config *cfg, ser_ckpt_pos *pos,
                  char err[SER_ERR_LEN]) {
    SER_ASSERT(c && path && pos);
    char label[S_LABEL_LEN];
    s_label(label, path);
    ser_st_file *f = NULL;
    int64_t stored[S_NPOS], staged[S_NPOS] = {0, 0, 0, 0};
    int rc = s_open_checked(path, cfg, &f, stored, err);
    if (rc != SER_OK) return rc;
    s_slots S;
    s_slots_make(&S, c, staged);
    if ((rc = s_check_tensors(f, &S, label, err)) == SER_OK) {
        s_copy_in(f, &S);
        *pos = (ser_ckpt_pos){staged[0], staged[1], staged[2], staged[3]};
    }
    s_slots_free(&S);
    ser_st_destroy(&f);
    return rc;
}

// Resume's search of a run directory: the checkpoint `latest` names (else the newest), then
// every older one, until try_one accepts one; `what` words the log line of an accepted
// fallback ("resuming from", "using").
typedef int (*s_try_fn)(void *ctx, const char *path, char *err);

static int s_search(const char *dir, s_try_fn try_one, void *ctx, const char *what, char *path,
                    size_t path_len, char *err) {
    int64_t *steps = NULL, start;
    int n = 0, rc = ser_ckpt_list(dir, &steps, &n, err);
    if (rc == SER_ENOENT || (rc == SER_OK && n == 0)) {
        free(steps);
        return ser_errf(err, SER_ENOENT, "%s: no checkpoint", dir);
    }
    if (rc != SER_OK) return rc;
    if (!s_read_latest(dir, &start)) start = steps[n - 1];

    int first_rc = SER_OK, refused = 0;
    char first_err[SER_ERR_LEN] = "", e[SER_ERR_LEN], name[64], p[4096];
    for (int k = n - 1; k >= 0; k--) {
        if (steps[k] > start) continue;  // left by an abandoned run: `latest` is older
        if (!s_join(p, sizeof p, dir, ser_ckpt_name(name, sizeof name, steps[k]))) continue;
        rc = try_one(ctx, p, e);
        if (rc == SER_OK) {
            if (refused)
                ser_log(SER_LL_WARNING, "checkpoint: %s %s after refusing %d newer one%s", what, p,
                        refused, refused > 1 ? "s" : "");
            if (path && !s_join(path, path_len, dir, name)) path[0] = 0;
            free(steps);
            return SER_OK;
        }
        ser_log(SER_LL_WARNING, "checkpoint refused: %s", e);
        if (!refused++) {
            // A file that vanished is not "no checkpoint": never let the caller start afresh.
            first_rc = rc == SER_ENOENT ? SER_EIO : rc;
            memcpy(first_err, e, sizeof e);
        }
        if (rc == SER_ECONFIG || rc == SER_EVERSION) break;  // the job's property, not a file's
    }
    free(steps);
    if (refused > 1) {
        size_t used = strlen(first_err), tail = 48;
        if (used + tail >= SER_ERR_LEN) used = SER_ERR_LEN - tail - 1;
        snprintf(first_err + used, SER_ERR_LEN - used, " [%d older refused too; see log]",
                 refused - 1);
    }
    return ser_errf(err, first_rc, "%s", first_err);
}

typedef struct s_load_ctx {
    ser_ckpt *c;
    const ser_config *cfg;
    ser_ckpt_pos *pos;
} s_load_ctx;

static int s_try_load(void *ctx, const char *path, char *err) {
    s_load_ctx *l = ctx;
    return ser_ckpt_load(l->c, path, l->cfg, l->pos, err);
}

int ser_ckpt_load_latest_valid(ser_ckpt *c, const char *dir, const ser_config *cfg,
                               ser_ckpt_pos *pos, char *path, size_t path_len,
                               char err[SER_ERR_LEN]) {
    SER_ASSERT(c && dir && pos);
    s_load_ctx l = {c, cfg, pos};
    return s_search(dir, s_try_load, &l, "resuming from", path, path_len, err);
}

static int s_try_verify(void *ctx, const char *path, char *err) {
    (void)ctx;
    return ser_ckpt_verify(path, NULL, NULL, err);
}

int ser_ckpt_find_latest_valid(const char *dir, char *path, size_t path_len,
                               char err[SER_ERR_LEN]) {
    SER_ASSERT(dir);
    return s_search(dir, s_try_verify, NULL, "using", path, path_len, err);
}

uint64_t ser_ckpt_bytes_hash(const void *p, size_t n) { return XXH3_64bits(p, n); }
