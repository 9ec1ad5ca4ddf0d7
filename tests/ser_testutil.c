// ser_testutil.c — see ser_test.h.
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_rng.h"
#include "ser_test.h"

int ser_test_allclose(const char *label, const float *got, const float *ref, size_t n, float atol,
                      float rtol) {
    double max_abs = 0, max_rel = 0, max_used = 0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double a = got[i], b = ref[i];
        double d = fabs(a - b);
        double tol = (double)atol + (double)rtol * fabs(b);
        int ok = d <= tol || (isnan(a) && isnan(b)) || (isinf(a) && a == b);
        if (isnan(a) != isnan(b)) ok = 0;
        if (!ok) {
            if (bad < 5)
                fprintf(stderr, "  %s[%zu]: got %.9g ref %.9g (|diff| %.3g > tol %.3g)\n", label, i,
                        a, b, d, tol);
            bad++;
        }
        if (d > max_abs) max_abs = d;
        if (fabs(b) > 0 && d / fabs(b) > max_rel) max_rel = d / fabs(b);
        if (tol > 0 && d / tol > max_used) max_used = d / tol;
    }
    fprintf(stderr, "%s %-40s n=%-8zu max_abs=%.3g max_rel=%.3g tol_used=%.1f%%%s\n",
            bad ? "FAIL" : "ok  ", label, n, max_abs, max_rel, 100 * max_used,
            bad ? "  <-- mismatch" : "");
    return bad == 0;
}

const char *ser_test_fixture_path(char *buf, size_t n, const char *file) {
    snprintf(buf, n, "%s/%s", SER_FIXTURE_DIR, file);
    return buf;
}

void ser_test_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi) {
    ser_rng r;
    ser_rng_init(&r, seed, 0, 0, SER_RNG_FIXTURE);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * ser_rng_uniform(&r);
}

double ser_test_nmse(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? num / den : num;
}

ser_st_file *ser_test_open_fixture(const char *name) {
    char path[1024], err[SER_ERR_LEN];
    ser_test_fixture_path(path, sizeof path, name);
    ser_st_file *f = NULL;
    int rc = ser_st_open(&f, path, err);
    if (rc) fail_msg("cannot open fixture %s: %s (%s)", path, ser_strerror(rc), err);
    return f;
}

float *ser_test_tensor(const ser_st_file *f, const char *name, size_t *numel) {
    const ser_st_entry *e = ser_st_find(f, name);
    if (!e) fail_msg("fixture tensor '%s' missing", name);
    if (e->dtype != SER_DT_F32) fail_msg("fixture tensor '%s' is not F32", name);
    float *x = malloc(e->nbytes ? e->nbytes : 4);
    assert_non_null(x);
    memcpy(x, e->data, e->nbytes);
    if (numel) *numel = e->numel;
    return x;
}

int ser_test_local_views(const ser_st_file *f, ser_batch *b, float *local[SER_MAX_LOCAL]) {
    int k = 0;
    for (; k < SER_MAX_LOCAL; k++) {
        char name[32];
        snprintf(name, sizeof name, "local.view%d", k);
        const ser_st_entry *e = ser_st_find(f, name);
        if (!e) break;
        assert_int_equal(e->ndim, 4);
        local[k] = ser_test_tensor(f, name, NULL);
        b->local[k] = local[k];
        b->local_img = (int)e->shape[2];
    }
    b->n_local = k;
    return k;
}

float ser_test_maxabs(const float *x, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m;
}

int ser_test_have_torch(void) {
    return system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
}

void ser_test_rm_rf(const char *path) {
    // lstat, not opendir: a link to a folder (to "." or "..", as test_dl_harden makes) is
    // removed itself, never followed into what it points at.
    struct stat st;
    DIR *d = lstat(path, &st) == 0 && S_ISDIR(st.st_mode) ? opendir(path) : NULL;
    if (d) {
        struct dirent *de;
        char p[1024];
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            snprintf(p, sizeof p, "%s/%s", path, de->d_name);
            ser_test_rm_rf(p);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

void ser_test_write_file(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

uint8_t *ser_test_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n ? *n : 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

int ser_test_run(const char *dir, const char *args) {
    size_t n = strlen(SER_BINARY) + strlen(args) + strlen(dir) + 32;
    char *cmd = malloc(n);
    if (!cmd) return -1;
    snprintf(cmd, n, "'%s' %s > '%s/log' 2>&1", SER_BINARY, args, dir);
    int rc = system(cmd);
    free(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

int ser_test_log_has(const char *dir, const char *needle) {
    char path[1024], buf[8192];
    snprintf(path, sizeof path, "%s/log", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (!strstr(buf, needle)) {
        fprintf(stderr, "log does not contain '%s':\n%s\n", needle, buf);
        return 0;
    }
    return 1;
}

int ser_test_count_entries(const char *dir, const char *sub) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) n += strstr(de->d_name, sub) != NULL;
    closedir(d);
    return n;
}

// --- one objective's local forward/backward ----------------------------------------------------
typedef int (*s_objective_fn)(void *st, const ser_batch *b, ser_gathered *g, void *out, char *err);

static int s_local(ser_vit *student, ser_vit *teacher, float *grads, size_t n, const ser_batch *b,
                   int shards, int ser, int ser_grad, int pool, uint64_t seed, uint32_t step,
                   s_objective_fn fn, void *st, void *out, char *err) {
    int rc = ser_batch_check(b, &student->cfg, shards, err);
    if (rc) return rc;
    memset(grads, 0, sizeof(float) * n);
    ser_engine e;
    memset(&e, 0, sizeof e);
    ser_gathered g;
    int flags = (ser ? SER_ENGINE_MAPS : 0) | (pool ? SER_ENGINE_POOL : 0);
    rc = ser_engine_forward(&e, student, teacher, b, shards, flags, seed, step, &g, err);
    if (!rc) {
        rc = fn(st, b, &g, out, err);
        if (rc == SER_ENONFINITE) ser_err_prefix(err, "step %u: ", step);
        if (!rc) ser_engine_backward(&e, student, b, shards, &g, ser && ser_grad);
        ser_gathered_free(&g);
    }
    ser_engine_free(&e);
    return rc;
}

static int s_moco_fn(void *st, const ser_batch *b, ser_gathered *g, void *out, char *err) {
    return ser_moco_objective(st, b, g, out, err);
}

int ser_moco_forward_backward(ser_moco *m, const ser_batch *b, int shards, float momentum,
                              uint64_t drop_seed, uint32_t step, ser_moco_losses *out,
                              char err[SER_ERR_LEN]) {
    int rc = ser_batch_check(b, &m->cfg.vit, shards, err);
    if (rc) return rc;
    if (momentum >= 0.0f) ser_moco_momentum_update(m, momentum);
    return s_local(&m->vit, &m->mvit, m->grads, m->tab.total, b, shards, m->cfg.ser,
                   m->cfg.ser_grad, m->cfg.addon_pooled, drop_seed, step, s_moco_fn, m, out, err);
}

typedef struct {
    ser_dino_losses *L;
    double temp;
} s_dino_out;

static int s_dino_fn(void *st, const ser_batch *b, ser_gathered *g, void *out, char *err) {
    s_dino_out *o = out;
    return ser_dino_objective(st, b, g, o->temp, o->L, err);
}

int ser_dino_forward_backward(ser_dino *d, const ser_batch *b, int shards, double teacher_temp,
                              uint64_t drop_seed, uint32_t step, ser_dino_losses *out,
                              char err[SER_ERR_LEN]) {
    d->have_batch_center = 0;
    if (!(teacher_temp > 0.0 && isfinite(teacher_temp)))
        return ser_errf(err, SER_EINVAL, "dino: teacher temperature %g must be positive and finite",
                        teacher_temp);
    s_dino_out o = {out, teacher_temp};
    return s_local(&d->vit, &d->tvit, d->grads, d->tab.total, b, shards, d->cfg.ser,
                   d->cfg.ser_grad, 0, drop_seed, step, s_dino_fn, d, &o, err);
}

static int s_barlow_fn(void *st, const ser_batch *b, ser_gathered *g, void *out, char *err) {
    return ser_barlow_objective(st, b, g, out, err);
}

int ser_barlow_forward_backward(ser_barlow *m, const ser_batch *b, int shards, uint64_t drop_seed,
                                uint32_t step, ser_barlow_losses *out, char err[SER_ERR_LEN]) {
    memset(out, 0, sizeof *out);
    return s_local(&m->vit, NULL, m->grads, m->tab.total, b, shards, m->cfg.ser, m->cfg.ser_grad, 0,
                   drop_seed, step, s_barlow_fn, m, out, err);
}

// --- damaged JPEGs -------------------------------------------------------------------------------
// Offset of the first marker m (0xFF m) in the marker segments before the scan, or 0.
static size_t s_find_marker(const uint8_t *b, size_t n, uint8_t m) {
    size_t i = 2;
    while (i + 4 <= n && b[i] == 0xFF) {
        if (b[i + 1] == m) return i;
        if (b[i + 1] == 0xDA) return 0;
        i += 2 + ((size_t)b[i + 2] << 8 | b[i + 3]);
    }
    return 0;
}

void ser_test_write_jpeg_cut(const char *path, const uint8_t *good, size_t n) {
    size_t sos = s_find_marker(good, n, 0xDA);
    assert_true(sos > 2);
    ser_test_write_file(path, good, sos);
}

void ser_test_write_jpeg_sof0_zero(const char *path, const uint8_t *good, size_t n) {
    size_t sof = s_find_marker(good, n, 0xC0);
    assert_true(sof > 2);
    uint8_t *b = malloc(n);
    assert_non_null(b);
    memcpy(b, good, n);
    memset(b + sof + 5, 0, 4);  // FF C0, length (2), precision (1), height (2), width (2)
    ser_test_write_file(path, b, n);
    free(b);
}

int ser_test_count_in_file(const char *path, const char *needle) {
    static char buf[65536];
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    int k = 0;
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p += strlen(needle)) k++;
    return k;
}

int ser_test_closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}
