// ser_testutil.c — see ser_test.h.
#include <dirent.h>
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
