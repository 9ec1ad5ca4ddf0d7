// test_runlog.c — run logs (proto/ser_runlog.h): CRC-32C against the standard check value and
// the RFC 3720 vectors (and a bitwise reference on random data); event files read back record
// by record (lengths, both masked CRCs, protobuf-c unpack of file_version, steps, tags and
// values, 0.0 and NaN included); metrics.jsonl parsed with cJSON (NaN/Inf -> null, a name that
// needs escaping); reopening appends to metrics.jsonl and makes a second event file; a torn
// last line is terminated; an unusable directory gives NULL with a message naming the path.
//
// TensorBoard itself is not installed on the build machines (python3 -c "import tensorboard"
// fails), so there is no check with it here; tests/reference/read_tfevents.py, an independent
// reader, was run on these files by hand.
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ser_rng.h"
#include "ser_runlog.h"
#include "ser_test.h"
#include "tfevent.pb-c.h"

static char s_root[64];  // the mkdtemp directory of this run; everything we write goes there

// --- files and directories -------------------------------------------------------------------
static int s_setup(void **state) {
    (void)state;
    snprintf(s_root, sizeof s_root, "/tmp/ser-runlog-XXXXXX");
    return mkdtemp(s_root) ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    ser_test_rm_rf(s_root);
    return 0;
}

// The whole file, NUL-terminated (the terminator is not counted in *n).
static unsigned char *s_read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long sz = ftell(f);
    assert_true(sz >= 0);
    rewind(f);
    unsigned char *buf = malloc((size_t)sz + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)sz, f), (size_t)sz);
    buf[sz] = 0;
    fclose(f);
    *n = (size_t)sz;
    return buf;
}

static int s_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// The names of the event files in dir, sorted; returns their count (at most max).
static int s_list_events(const char *dir, char **names, int max) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "events.out.tfevents.", 20) != 0) continue;
        assert_true(n < max);
        names[n] = strdup(de->d_name);
        assert_non_null(names[n]);
        n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, s_cmp_str);
    return n;
}

// --- TFRecord reading ------------------------------------------------------------------------
static uint64_t s_u64le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint32_t s_u32le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// Reads every record of an event file, checking the framing and both CRCs, and unpacks each
// into events[] (caller frees with tensorboard__event__free_unpacked). Returns the count.
static int s_read_events(const char *path, Tensorboard__Event **events, int max) {
    size_t n;
    unsigned char *buf = s_read_all(path, &n);
    size_t off = 0;
    int k = 0;
    while (off < n) {
        assert_true(n - off >= 12);
        uint64_t len = s_u64le(buf + off);
        assert_int_equal(s_u32le(buf + off + 8),
                         ser_runlog_crc32c_mask(ser_runlog_crc32c(buf + off, 8)));
        assert_true(len <= n - off - 16);
        const unsigned char *data = buf + off + 12;
        assert_int_equal(s_u32le(data + len),
                         ser_runlog_crc32c_mask(ser_runlog_crc32c(data, (size_t)len)));
        assert_true(k < max);
        events[k] = tensorboard__event__unpack(NULL, (size_t)len, data);
        assert_non_null(events[k]);
        k++;
        off += 16 + (size_t)len;
    }
    assert_int_equal(off, n);
    free(buf);
    return k;
}

// --- CRC-32C ---------------------------------------------------------------------------------
// Bit-at-a-time CRC-32C, the oracle for the table-driven one.
static uint32_t s_crc32c_bitwise(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    }
    return ~c;
}

static void test_crc32c_vectors(void **state) {
    (void)state;
    assert_int_equal(ser_runlog_crc32c("123456789", 9), 0xE3069283u);
    assert_int_equal(ser_runlog_crc32c("", 0), 0u);
    // RFC 3720 (iSCSI) appendix B.4.
    unsigned char b[32];
    memset(b, 0, sizeof b);
    assert_int_equal(ser_runlog_crc32c(b, 32), 0x8A9136AAu);
    memset(b, 0xFF, sizeof b);
    assert_int_equal(ser_runlog_crc32c(b, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++) b[i] = (unsigned char)i;
    assert_int_equal(ser_runlog_crc32c(b, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++) b[i] = (unsigned char)(31 - i);
    assert_int_equal(ser_runlog_crc32c(b, 32), 0x113FDB5Cu);
    // Random data of every length up to 300 against the bitwise oracle.
    unsigned char r[300];
    ser_rng g;
    ser_rng_init(&g, 11, 0, 0, 0);
    for (size_t i = 0; i < sizeof r; i++) r[i] = (unsigned char)ser_rng_u32(&g);
    for (size_t len = 0; len <= sizeof r; len++)
        assert_int_equal(ser_runlog_crc32c(r, len), s_crc32c_bitwise(r, len));
    // The TFRecord mask: rotate right by 15, add a constant (mod 2^32).
    assert_int_equal(ser_runlog_crc32c_mask(0), 0xa282ead8u);
    assert_int_equal(ser_runlog_crc32c_mask(1), 0xa282ead8u + (1u << 17));
    assert_int_equal(ser_runlog_crc32c_mask(0x8000u), 0xa282ead8u + 1u);
    assert_int_equal(ser_runlog_crc32c_mask(0xE3069283u),
                     (uint32_t)(((0xE3069283u >> 15) | (0xE3069283u << 17)) + 0xa282ead8u));
}

// --- writing and reading back ----------------------------------------------------------------
#define S_NV 5
static const char *const s_names[S_NV] = {"loss", "loss_inv", "lr", "odd \"name\"\\\t\n/é", "big"};
static const int64_t s_steps[] = {0, 1, 5000000000LL};
#define S_NSTEPS 3

// The value logged for name v at the k-th step: 0.0, NaN and Inf among them.
static double s_value(int k, int v) {
    switch (v) {
        case 0:
            return 1.5 + k;
        case 1:
            return k == 1 ? (double)NAN : 0.25 * k;
        case 2:
            return 0.0;
        case 3:
            return -1e-7 * (k + 1);
        default:
            return k == 2 ? (double)-INFINITY : 3.0e38;
    }
}

static void s_write_steps(const char *dir, const int64_t *steps, int nsteps) {
    char err[SER_ERR_LEN] = "";
    ser_runlog *r = ser_runlog_open(dir, err);
    if (!r) fprintf(stderr, "%s\n", err);
    assert_non_null(r);
    double vals[S_NV];
    for (int k = 0; k < nsteps; k++) {
        for (int v = 0; v < S_NV; v++) vals[v] = s_value(k, v);
        assert_int_equal(ser_runlog_step(r, steps[k], s_names, vals, S_NV, err), SER_OK);
    }
    ser_runlog_destroy(&r);
    assert_null(r);
    ser_runlog_destroy(&r);  // NULL-safe
}

// Checks one event file: the file_version record, then one summary per step.
static void s_check_events(const char *path, const int64_t *steps, int nsteps, double t0,
                           double t1) {
    Tensorboard__Event *ev[16];
    int n = s_read_events(path, ev, 16);
    assert_int_equal(n, 1 + nsteps);
    assert_int_equal(ev[0]->what_case, TENSORBOARD__EVENT__WHAT_FILE_VERSION);
    assert_string_equal(ev[0]->file_version, "brain.Event:2");
    assert_int_equal(ev[0]->step, 0);
    for (int i = 0; i < n; i++)
        assert_true(ev[i]->wall_time >= t0 - 1 && ev[i]->wall_time <= t1 + 1);
    for (int k = 0; k < nsteps; k++) {
        const Tensorboard__Event *e = ev[1 + k];
        assert_int_equal(e->step, steps[k]);
        assert_int_equal(e->what_case, TENSORBOARD__EVENT__WHAT_SUMMARY);
        assert_int_equal(e->summary->n_value, S_NV);
        for (int v = 0; v < S_NV; v++) {
            const Tensorboard__Summary__Value *x = e->summary->value[v];
            assert_string_equal(x->tag, s_names[v]);
            // Set even for 0.0: the oneof makes protobuf write it.
            assert_int_equal(x->value_case, TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE);
            float want = (float)s_value(k, v);
            if (isnan(want))
                assert_true(isnan(x->simple_value));
            else
                assert_memory_equal(&x->simple_value, &want, sizeof want);  // data movement
        }
    }
    for (int i = 0; i < n; i++) tensorboard__event__free_unpacked(ev[i], NULL);
}

// Checks the JSON lines [first, first + nsteps) of metrics.jsonl against steps.
static void s_check_json(const char *dir, int first, const int64_t *steps, int nsteps,
                         int total_lines, double t0, double t1) {
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    size_t n;
    char *text = (char *)s_read_all(path, &n);
    assert_true(n > 0 && text[n - 1] == '\n');
    int line = 0;
    char *save = NULL;
    for (char *s = strtok_r(text, "\n", &save); s; s = strtok_r(NULL, "\n", &save), line++) {
        cJSON *o = cJSON_Parse(s);
        if (!o) fprintf(stderr, "bad JSON line %d: %s\n", line, s);
        assert_non_null(o);
        assert_true(cJSON_IsObject(o));
        if (line >= first && line < first + nsteps) {
            int k = line - first;
            // Keys in order: step, time, then the names as given.
            const cJSON *it = o->child;
            assert_string_equal(it->string, "step");
            assert_true(cJSON_IsNumber(it) && it->valuedouble == (double)steps[k]);
            it = it->next;
            assert_string_equal(it->string, "time");
            assert_true(cJSON_IsNumber(it) && it->valuedouble >= t0 - 1 &&
                        it->valuedouble <= t1 + 1);
            for (int v = 0; v < S_NV; v++) {
                it = it->next;
                assert_non_null(it);
                assert_string_equal(it->string, s_names[v]);  // escaping round-trips
                double want = s_value(k, v);
                if (!isfinite(want)) {
                    assert_true(cJSON_IsNull(it));
                } else {
                    assert_true(cJSON_IsNumber(it));
                    assert_true(it->valuedouble == want);  // printed with round-trip digits
                }
            }
            assert_null(it->next);
        }
        cJSON_Delete(o);
    }
    assert_int_equal(line, total_lines);
    free(text);
}

static void test_write_read_back(void **state) {
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/a/b/run1", s_root);  // parents are created too
    double t0 = (double)time(NULL);
    s_write_steps(dir, s_steps, S_NSTEPS);
    double t1 = (double)time(NULL);

    char *ev[8];
    assert_int_equal(s_list_events(dir, ev, 8), 1);
    char host[256] = "";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = 0;
    char tail[300];
    snprintf(tail, sizeof tail, ".%s.%ld", host, (long)getpid());
    size_t tl = strlen(tail), el = strlen(ev[0]);
    assert_true(el > tl && strcmp(ev[0] + el - tl, tail) == 0);  // ...<time>.<host>.<pid>
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, ev[0]);
    s_check_events(path, s_steps, S_NSTEPS, t0, t1);
    free(ev[0]);

    s_check_json(dir, 0, s_steps, S_NSTEPS, S_NSTEPS, t0, t1);
    // The raw text: non-finite values as null, the name's quote, backslash, tab and newline
    // escaped, the large step as an integer.
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    size_t n;
    char *text = (char *)s_read_all(path, &n);
    assert_non_null(strstr(text, "{\"step\":0,\"time\":"));
    assert_non_null(strstr(text, "\"loss_inv\":null"));
    assert_non_null(strstr(text, "\"big\":null}"));
    assert_non_null(strstr(text, "\"odd \\\"name\\\"\\\\\\t\\n/é\":"));
    assert_non_null(strstr(text, "{\"step\":5000000000,"));
    free(text);
}

static void test_reopen_appends(void **state) {
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/resume", s_root);
    double t0 = (double)time(NULL);
    s_write_steps(dir, s_steps, 2);
    static const int64_t more[] = {10, 11, 12};
    s_write_steps(dir, more, 3);  // same process, likely the same second: a suffixed name
    double t1 = (double)time(NULL);

    s_check_json(dir, 0, s_steps, 2, 5, t0, t1);
    s_check_json(dir, 2, more, 3, 5, t0, t1);
    char *ev[8];
    assert_int_equal(s_list_events(dir, ev, 8), 2);
    char path[512];
    // Sorted by name = in the order written (".1" sorts after the bare name; a later second
    // sorts after an earlier one).
    snprintf(path, sizeof path, "%s/%s", dir, ev[0]);
    s_check_events(path, s_steps, 2, t0, t1);
    snprintf(path, sizeof path, "%s/%s", dir, ev[1]);
    s_check_events(path, more, 3, t0, t1);
    free(ev[0]);
    free(ev[1]);
}

// A crash in the middle of a line leaves it without '\n'; the next open ends it, so the new
// records are whole lines.
static void test_torn_line_terminated(void **state) {
    (void)state;
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/torn", s_root);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"step\":0,\"time\":1,\"loss\":1}\n{\"step\":1,\"ti", f);
    fclose(f);
    char err[SER_ERR_LEN];
    ser_runlog *r = ser_runlog_open(dir, err);
    assert_non_null(r);
    const char *name[1] = {"loss"};
    double v = 2;
    assert_int_equal(ser_runlog_step(r, 2, name, &v, 1, err), SER_OK);
    ser_runlog_destroy(&r);
    size_t n;
    char *text = (char *)s_read_all(path, &n);
    const char *want =
        "{\"step\":0,\"time\":1,\"loss\":1}\n{\"step\":1,\"ti\n{\"step\":2,\"time\":";
    assert_memory_equal(text, want, strlen(want));
    assert_non_null(strstr(text, ",\"loss\":2}\n"));
    assert_int_equal(text[n - 1], '\n');
    free(text);
}

static void test_bad_arguments(void **state) {
    (void)state;
    char dir[256], err[SER_ERR_LEN] = "";
    snprintf(dir, sizeof dir, "%s/args", s_root);
    ser_runlog *r = ser_runlog_open(dir, err);
    assert_non_null(r);
    double v[2] = {1, 2};
    const char *names[2] = {"a", NULL};
    assert_int_equal(ser_runlog_step(r, 0, names, v, -1, err), SER_EINVAL);
    assert_int_equal(ser_runlog_step(r, 0, names, v, 2, err), SER_EINVAL);
    assert_non_null(strstr(err, "no name"));
    assert_int_equal(ser_runlog_step(r, 7, NULL, NULL, 0, err), SER_OK);  // no scalars: fine
    ser_runlog_destroy(&r);
    assert_null(ser_runlog_open("", err));
    ser_runlog_destroy(NULL);
}

// A path under a regular file can never be created (whoever runs the test, root included); a
// read-only directory is refused too when we are not root (root writes anyway).
static void test_unusable_dir(void **state) {
    (void)state;
    char file[256], dir[300], err[SER_ERR_LEN] = "";
    snprintf(file, sizeof file, "%s/plainfile", s_root);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(dir, sizeof dir, "%s/sub/run", file);
    assert_null(ser_runlog_open(dir, err));
    fprintf(stderr, "expected: %s\n", err);
    assert_non_null(strstr(err, file));

    assert_null(ser_runlog_open(file, err));  // the path itself is a file
    assert_non_null(strstr(err, file));

    if (geteuid() != 0) {
        snprintf(dir, sizeof dir, "%s/readonly", s_root);
        assert_int_equal(mkdir(dir, 0555), 0);
        assert_null(ser_runlog_open(dir, err));
        fprintf(stderr, "expected: %s\n", err);
        assert_non_null(strstr(err, dir));
        chmod(dir, 0755);
    } else {
        fprintf(stderr, "note: running as root, the read-only directory case is skipped\n");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_vectors), cmocka_unit_test(test_write_read_back),
        cmocka_unit_test(test_reopen_appends), cmocka_unit_test(test_torn_line_terminated),
        cmocka_unit_test(test_bad_arguments),  cmocka_unit_test(test_unusable_dir),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
