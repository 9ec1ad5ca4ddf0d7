// test_cluster.c — the distributed runtime with real processes on 127.0.0.1 (ephemeral ports):
// N workers give the same bits as `ser step`; a worker killed with SIGKILL mid-run changes
// nothing; garbage frames crash nothing; a peer of another job is refused; a coordinator whose
// workers are all gone says so and exits. Every child is killed by pid on every exit path and
// the whole test runs under a hard alarm.
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include <zmq.h>

#include "ser_test.h"
#include "ser_bf16.h"
#include "ser_cmd.h"
#include "ser_dl_data.h"
#include "ser_curve.h"
#include "ser_status.h"
#include "ser_wire.h"

#define MAX_CHILD 16
static pid_t s_kids[MAX_CHILD];
static int s_nkids;
static char s_dir[64], s_cfg[128], s_w[1024], s_b[1024];
static char s_extra[192] = "run.log_every=1";  // one more --set for the next coordinator

static void s_kill_all(void) {
    for (int i = 0; i < s_nkids; i++)
        if (s_kids[i] > 0) {
            kill(s_kids[i], SIGKILL);
            waitpid(s_kids[i], NULL, 0);
            s_kids[i] = 0;
        }
    s_nkids = 0;
}

static void s_on_alarm(int sig) {
    (void)sig;
    s_kill_all();
    _exit(3);
}

static const char *s_ini =
    "[model]\narch = vit_tiny\ndim = 24\ndepth = 4\nheads = 3\nmlp_hidden = 48\nimg_size = 16\n"
    "patch = 4\ncls_layer = 2\nfreeze_patch_embed = false\n"
    "[moco]\ndim = 16\nmlp_dim = 32\n"
    "[ser]\nlambda = 0.7\ntau = 0.4\nproj_dim = 20\nratio = 0.375\n"
    "[data]\nglobal_batch = 8\nshards = 4\niters_per_epoch = 1000\n"
    "[run]\nthreads = 1\nlog_every = 1\n"
    "[cluster]\nheartbeat_ms = 100\ntimeout_ms = 1500\nstatus_port = 0\n";

static int setup(void **state) {
    (void)state;
    signal(SIGALRM, s_on_alarm);
    alarm(280);  // below ctest's 300 s
    snprintf(s_dir, sizeof s_dir, "/tmp/ser_cluster_XXXXXX");
    if (!mkdtemp(s_dir)) return -1;
    snprintf(s_cfg, sizeof s_cfg, "%s/job.ini", s_dir);
    FILE *f = fopen(s_cfg, "w");
    if (!f) return -1;
    fputs(s_ini, f);
    fclose(f);
    ser_test_fixture_path(s_w, sizeof s_w, "step_weights.safetensors");
    ser_test_fixture_path(s_b, sizeof s_b, "step_batch.safetensors");
    return 0;
}

static void s_netns_down(void);

static int teardown(void **state) {
    (void)state;
    s_kill_all();
    s_netns_down();
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    alarm(0);
    if (getenv("SER_TEST_KEEP")) {  // keep the logs for a post-mortem
        fprintf(stderr, "kept %s\n", s_dir);
        return 0;
    }
    return system(cmd) == 0 ? 0 : -1;
}

// Records a child for cleanup, in a slot freed by s_wait when there is one.
static void s_track(pid_t pid) {
    for (int i = 0; i < s_nkids; i++)
        if (s_kids[i] == 0) {
            s_kids[i] = pid;
            return;
        }
    if (s_nkids == MAX_CHILD) {  // never leave an untracked child behind a failed assertion
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    assert_true(s_nkids < MAX_CHILD);
    s_kids[s_nkids++] = pid;
}

// Starts `ser ARGS...` with stdout/stderr to DIR/<log>; returns its pid (recorded for cleanup).
// With ns, inside that network namespace (ip netns exec execs in place: the pid is ser's).
static pid_t s_start_in(const char *ns, const char *log, char *const *args) {
    pid_t pid = fork();
    if (pid == 0) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", s_dir, log);
        if (!freopen(path, "w", stdout) || !freopen(path, "a", stderr)) _exit(126);
        prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test killed by its runner leaves nothing behind
        if (!ns) {
            execv(SER_BINARY, args);
            _exit(127);
        }
        char *argv[48] = {"ip", "netns", "exec", (char *)(uintptr_t)ns, SER_BINARY};
        int k = 5;
        for (int i = 1; args[i] && k < 47; i++) argv[k++] = args[i];
        argv[k] = NULL;
        execvp("ip", argv);
        _exit(127);
    }
    s_track(pid);
    return pid;
}

static pid_t s_start(const char *log, char *const *args) { return s_start_in(NULL, log, args); }

static int s_wait(pid_t pid) {
    int st = 0;
    waitpid(pid, &st, 0);
    for (int i = 0; i < s_nkids; i++)
        if (s_kids[i] == pid) s_kids[i] = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void s_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

// Waits for DIR/name to hold a line; returns it in buf.
static int s_read_line(const char *name, char *buf, size_t n, int timeout_ms) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    for (int t = 0; t < timeout_ms; t += 50) {
        FILE *f = fopen(path, "r");
        if (f) {
            int ok = fgets(buf, (int)n, f) != NULL;
            fclose(f);
            if (ok) {
                buf[strcspn(buf, "\n")] = 0;
                return 0;
            }
        }
        s_sleep_ms(50);
    }
    return -1;
}

// How many times needle occurs in the first 64 KiB of log.
static int s_log_count(const char *log, const char *needle) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", s_dir, log);
    return ser_test_count_in_file(path, needle);
}

static int s_log_has(const char *log, const char *needle) {
    return s_log_count(log, needle) > 0;
}

// The status URL a coordinator logged ("status on http://127.0.0.1:PORT/") into url: HOST:PORT.
static void s_status_url(const char *log, char *url, size_t n) {
    char path[256], line[512];
    snprintf(path, sizeof path, "%s/%s", s_dir, log);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    url[0] = 0;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, "status on http://");
        if (p) {
            p += strlen("status on http://");
            snprintf(url, n, "%.*s", (int)strcspn(p, "/\n"), p);
        }
    }
    fclose(f);
    assert_true(url[0]);
}

// Every tensor of two `ser step`-layout files, byte for byte.
static void s_assert_same_bits(const char *a, const char *b) {
    char err[SER_ERR_LEN];
    ser_st_file *fa = NULL, *fb = NULL;
    assert_int_equal(ser_st_open(&fa, a, err), 0);
    assert_int_equal(ser_st_open(&fb, b, err), 0);
    assert_int_equal(ser_st_count(fa), ser_st_count(fb));
    int differ = 0;
    for (int i = 0; i < ser_st_count(fa); i++) {
        const ser_st_entry *x = ser_st_at(fa, i), *y = ser_st_find(fb, x->name);
        if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes)) {
            if (differ++ < 5) fprintf(stderr, "  differs: %s\n", x->name);
        }
    }
    print_message("%s vs %s: %d tensors, %d differ\n", a, b, ser_st_count(fa), differ);
    assert_int_equal(differ, 0);
    assert_true(ser_st_count(fa) > 300);
    ser_st_destroy(&fa);
    ser_st_destroy(&fb);
}

#define COMMON "--lr", "0.01", "--wd", "0.1", "--momentum", "0.9"

static void s_reference(const char *out, const char *steps) {
    char *args[] = {"ser", "step", "--config", s_cfg, "--weights", s_w, "--batch", s_b, "--out",
                    (char *)(uintptr_t)out, "--steps", (char *)(uintptr_t)steps, COMMON, NULL};
    assert_int_equal(s_wait(s_start("step.log", args)), 0);
}

static void test_n_workers_equal_ser_step(void **state) {
    (void)state;
    char ref[128], out[128], nw[8];
    snprintf(ref, sizeof ref, "%s/ref.safetensors", s_dir);
    s_reference(ref, "20");
    for (int n = 1; n <= 3; n++) {
        snprintf(out, sizeof out, "%s/local%d.safetensors", s_dir, n);
        snprintf(nw, sizeof nw, "%d", n);
        char od[160];
        snprintf(od, sizeof od, "run.out_dir=%s/local%d", s_dir, n);
        char *args[] = {"ser", "local", "--workers", nw, "--config", s_cfg, "--weights", s_w,
                        "--batch-file", s_b, "--out", out, "--steps", "20", "--set", od, COMMON,
                        NULL};
        int rc = s_wait(s_start("local.log", args));
        if (rc) system("tail -20 /tmp/ser_cluster_*/local.log");
        assert_int_equal(rc, 0);
        s_assert_same_bits(ref, out);
        // The step logs: a JSON line per step, and a TensorBoard event file beside them.
        char path[256], line[1024];
        snprintf(path, sizeof path, "%s/local%d/metrics.jsonl", s_dir, n);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        int lines = 0;
        while (fgets(line, sizeof line, f)) {
            char want[32];
            snprintf(want, sizeof want, "{\"step\":%d,", lines++);
            assert_true(strncmp(line, want, strlen(want)) == 0);
            assert_non_null(strstr(line, "\"loss_equiv\":"));
            assert_non_null(strstr(line, "\"grad_norm\":"));
        }
        fclose(f);
        assert_int_equal(lines, 20);
        snprintf(path, sizeof path, "%s/local%d", s_dir, n);
        DIR *d = opendir(path);
        assert_non_null(d);
        int events = 0;
        for (struct dirent *e; (e = readdir(d));) events += strstr(e->d_name, "tfevents") != NULL;
        closedir(d);
        assert_int_equal(events, 1);
    }
}

// DINO + SER and Barlow Twins + SER: the same property with 20 steps, each method's own job
// (weights from data.seed), the schedules running (5 iterations per epoch: DINO's last layer
// unfreezes after step 4, its teacher temperature and EMA momentum change every step).
static const char *s_dino_section = "[dino]\nout_dim = 32\nhidden_dim = 24\nbottleneck_dim = 8\n"
                                    "teacher_temp_warmup_epochs = 2\nmomentum = 0.9\n";

// DIR/<method>.ini: the test job with that method and a 20-step schedule (5 per epoch).
static void s_method_ini(char *cfg, size_t n, const char *method, const char *section) {
    snprintf(cfg, n, "%s/%s.ini", s_dir, method);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fputs(s_ini, f);
    fprintf(f, "[method]\nname = %s\n%s[optim]\nepochs = 4\nwarmup_epochs = 1\n", method, section);
    fclose(f);
}

// The method's own collapse monitors are in every line of the run's metrics.jsonl, finite.
static void s_assert_monitors(const char *run, const char *a, const char *b) {
    char path[256], line[2048], ka[64], kb[64];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", s_dir, run);
    snprintf(ka, sizeof ka, "\"%s\":", a);
    snprintf(kb, sizeof kb, "\"%s\":", b);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        const char *pa = strstr(line, ka), *pb = strstr(line, kb), *ps = strstr(line, "\"cls_std\":");
        assert_true(pa && pb && ps);
        assert_true(isfinite(strtod(pa + strlen(ka), NULL)) && isfinite(strtod(pb + strlen(kb), NULL)));
    }
    fclose(f);
    assert_int_equal(lines, 20);
}

// `ser step` with the method (and the batch file batch) against `ser local` with 1, 2 and 3
// workers: the same bits. tag names the run's files.
static void s_method_n_workers_batch(const char *method, const char *section, const char *batch,
                                     const char *tag) {
    char cfg[160], ref[160], out[160], nw[8], od[200];
    s_method_ini(cfg, sizeof cfg, method, section);
    snprintf(ref, sizeof ref, "%s/%s-ref.safetensors", s_dir, tag);
    char *sargs[] = {"ser", "step", "--config", cfg, "--batch", (char *)(uintptr_t)batch, "--out",
                     ref, "--steps", "20", "--iters-per-epoch", "5", NULL};
    assert_int_equal(s_wait(s_start("step.log", sargs)), 0);
    for (int n = 1; n <= 3; n++) {
        snprintf(out, sizeof out, "%s/%s-local%d.safetensors", s_dir, tag, n);
        snprintf(nw, sizeof nw, "%d", n);
        snprintf(od, sizeof od, "run.out_dir=%s/%s-local%d", s_dir, tag, n);
        char *args[] = {"ser", "local", "--workers", nw, "--config", cfg, "--batch-file",
                        (char *)(uintptr_t)batch,
                        "--out", out, "--steps", "20", "--iters-per-epoch", "5", "--set", od,
                        "--set", "run.log_every=5", NULL};
        int rc = s_wait(s_start("local.log", args));
        if (rc) system("tail -20 /tmp/ser_cluster_*/local.log");
        assert_int_equal(rc, 0);
        s_assert_same_bits(ref, out);
        snprintf(od, sizeof od, "%s-local%d", tag, n);
        if (!strcmp(method, "dino")) s_assert_monitors(od, "dino_teacher_entropy", "dino_kl");
        if (!strcmp(method, "barlow")) s_assert_monitors(od, "barlow_on_diag", "barlow_off_diag");
        if (!strcmp(method, "equimod")) s_assert_monitors(od, "equimod_loss", "equimod_top1");
        if (!strcmp(method, "augself")) s_assert_monitors(od, "augself_crop_mse", "augself_color_mse");
        if (!strcmp(method, "stl")) s_assert_monitors(od, "stl_equi_loss", "stl_trans_loss");
    }
}

static void s_method_n_workers(const char *method, const char *section) {
    s_method_n_workers_batch(method, section, s_b, method);
}

// A writer holding every tensor of the step batch (*f keeps their data until the save).
static ser_st_writer *s_step_batch_writer(ser_st_file **f) {
    char err[SER_ERR_LEN];
    assert_int_equal(ser_st_open(f, s_b, err), 0);
    ser_st_writer *w = ser_st_writer_new();
    for (int i = 0; i < ser_st_count(*f); i++) {
        const ser_st_entry *e = ser_st_at(*f, i);
        ser_st_writer_add(w, e->name, e->dtype, e->ndim, e->shape, e->data);
    }
    return w;
}

// DIR/local<L>_<side>[vp]_batch.safetensors: the step batch with L local views of side px per
// sample (local.view<k>, (8, 3, side, side), deterministic values) and, when vp, the global
// views' parameters of the EquiMod fixture (vparams, (8, 2, SER_VIEW_PARAMS)).
static void s_batch_with_locals(char *path, size_t n, int L, int side, int vp) {
    char err[SER_ERR_LEN];
    snprintf(path, n, "%s/local%d_%d%s_batch.safetensors", s_dir, L, side, vp ? "vp" : "");
    ser_st_file *f = NULL, *fv = NULL;
    ser_st_writer *w = s_step_batch_writer(&f);
    const int64_t shape[4] = {8, 3, side, side};
    size_t nx = (size_t)8 * 3 * side * side;
    float *x[SER_MAX_LOCAL];
    char name[SER_MAX_LOCAL][32];
    for (int k = 0; k < L; k++) {
        x[k] = malloc(sizeof(float) * nx);
        ser_test_fill_uniform(x[k], nx, 700 + (uint64_t)k, -2, 2);
        snprintf(name[k], sizeof name[k], "local.view%d", k);
        ser_st_writer_add(w, name[k], SER_DT_F32, 4, shape, x[k]);
    }
    if (vp) {
        char fx[1024];
        ser_test_fixture_path(fx, sizeof fx, "moco_equimod.safetensors");
        assert_int_equal(ser_st_open(&fv, fx, err), 0);
        const ser_st_entry *e = ser_st_find(fv, "vparams");
        assert_non_null(e);
        ser_st_writer_add(w, "vparams", e->dtype, e->ndim, e->shape, e->data);
    }
    assert_int_equal(ser_st_writer_save(w, path, err), 0);
    ser_st_writer_destroy(&w);
    ser_st_destroy(&f);
    ser_st_destroy(&fv);
    for (int k = 0; k < L; k++) free(x[k]);
}

// Local views (multi-crop): DINO with 2 local crops and MoCo with 2 local queries, 1..3
// workers against `ser step`, bitwise; the local views' [CLS] rows and gradients travel in
// FORWARD_DONE / BACKWARD.
static void test_local_views_n_workers_equal_ser_step(void **state) {
    (void)state;
    char batch[160], sec[512];
    s_batch_with_locals(batch, sizeof batch, 2, 8, 0);
    snprintf(sec, sizeof sec, "%s[data]\nlocal_crops = 2\nlocal_size = 8\n", s_dino_section);
    s_method_n_workers_batch("dino", sec, batch, "dino-mc");
    s_method_n_workers_batch("moco", "[data]\nlocal_crops = 2\nlocal_size = 8\n", batch,
                             "moco-mc");
    s_batch_with_locals(batch, sizeof batch, 4, 8, 0);  // E-SSL: its rotation head on 4 local views
    s_method_n_workers_batch("essl", "[essl]\nhidden = 16\nbottleneck = 8\n[data]\n"
                             "local_crops = 4\nlocal_size = 8\nlocal_mode = rotations\n",
                             batch, "essl");
}

// EquiMod: x_0 as local view 0 at the image size and the views' parameters in the batch file;
// 1..3 workers against `ser step`, bitwise (the parameters travel in FORWARD_DONE), its monitors
// in metrics.jsonl. Without vparams in the batch, the objective says so.
static void test_equimod_n_workers_equal_ser_step(void **state) {
    (void)state;
    char batch[160];
    const char *sec = "[equimod]\nproj_dim = 8\nhidden = 16\n[data]\nlocal_crops = 1\n"
                      "local_size = 16\nlocal_mode = center\n";
    s_batch_with_locals(batch, sizeof batch, 1, 16, 1);
    s_method_n_workers_batch("equimod", sec, batch, "equimod");
    char cfg[160], ref[160];
    s_method_ini(cfg, sizeof cfg, "equimod", sec);
    s_batch_with_locals(batch, sizeof batch, 1, 16, 0);
    snprintf(ref, sizeof ref, "%s/equimod-novp.safetensors", s_dir);
    char *sargs[] = {"ser", "step", "--config", cfg, "--batch", batch, "--out", ref, NULL};
    assert_int_not_equal(s_wait(s_start("step-novp.log", sargs)), 0);
    char log[256], cmd[400];
    snprintf(log, sizeof log, "%s/step-novp.log", s_dir);
    snprintf(cmd, sizeof cmd, "grep -q 'no view parameters (vparams' %s", log);
    assert_int_equal(system(cmd), 0);
}

// DIR/vparams_batch.safetensors: the step batch with its global views' parameters (vparams,
// (8, 2, SER_VIEW_PARAMS) F32: crop boxes inside sources of various sizes, flips that differ
// within some pairs, jitter on and off, factors in MoCo-v3's ranges).
static void s_batch_with_vparams(char *path, size_t n) {
    char err[SER_ERR_LEN];
    snprintf(path, n, "%s/vparams_batch.safetensors", s_dir);
    ser_st_file *f = NULL;
    ser_st_writer *w = s_step_batch_writer(&f);
    float vp[8][2][SER_VIEW_PARAMS];
    memset(vp, 0, sizeof vp);
    for (int i = 0; i < 8; i++)
        for (int v = 0; v < 2; v++) {
            float *p = vp[i][v], H = (float)(64 + 8 * i), W = (float)(96 - 4 * i);
            p[2] = H / 2 + (float)(4 * v), p[3] = W / 2 + (float)(3 * i);  // h, w
            p[0] = (float)(2 * i + v), p[1] = (float)(3 * v + i);      // i, j
            p[4] = (float)((i + v) % 2), p[5] = (float)((i + v) % 4 != 3);
            p[6] = 0, p[7] = 1, p[8] = 2, p[9] = 3;
            p[10] = 0.7f + 0.08f * (float)i, p[11] = 1.3f - 0.07f * (float)i;
            p[12] = 0.8f + 0.05f * (float)(i + v), p[13] = 0.02f * (float)(i - 4 + v);
            p[14] = (float)(i == 5), p[15] = (float)(v == 0), p[16] = 0.5f + 0.1f * (float)i;
            p[18] = H, p[19] = W, p[20] = 128.0f / 255.0f;
        }
    const int64_t shape[3] = {8, 2, SER_VIEW_PARAMS};
    ser_st_writer_add(w, "vparams", SER_DT_F32, 3, shape, vp);
    assert_int_equal(ser_st_writer_save(w, path, err), 0);
    ser_st_writer_destroy(&w);
    ser_st_destroy(&f);
}

// AugSelf: its predictors read the global views' parameters, which travel from the batch file
// through FORWARD_DONE to the coordinator; 1..3 workers against `ser step`, bitwise, its two MSEs
// in metrics.jsonl. Without vparams in the batch file, `ser step` and `ser local` stop with an
// error naming them.
static void test_augself_n_workers_equal_ser_step(void **state) {
    (void)state;
    char batch[160], cfg[160], out[160];
    s_batch_with_vparams(batch, sizeof batch);
    s_method_n_workers_batch("augself", "[augself]\nhidden = 16\nmirror_typo = true\n", batch,
                             "augself");
    s_method_ini(cfg, sizeof cfg, "augself", "");
    snprintf(out, sizeof out, "%s/augself-novp.safetensors", s_dir);
    char *sargs[] = {"ser", "step", "--config", cfg, "--batch", s_b, "--out", out, NULL};
    assert_int_not_equal(s_wait(s_start("novp-step.log", sargs)), 0);
    assert_true(s_log_has("novp-step.log", "augself: the batch has no vparams"));
    char *largs[] = {"ser", "local", "--workers", "1", "--config", cfg, "--batch-file", s_b,
                     "--out", out, "--steps", "2", NULL};
    assert_int_not_equal(s_wait(s_start("novp-local.log", largs)), 0);
    assert_true(s_log_has("novp-local.log", "no vparams"));
}

// Layer decoupling (moco.addon_layer = cls_layer): E-SSL on its 4 rotated local views and AugSelf
// on the global views read the pooled block-2 maps, which travel in FORWARD_DONE (qpool<v>) and
// whose gradients come back in BACKWARD (dqpool<v>); 1..3 workers against `ser step`, bitwise.
static void test_decoupled_addons_n_workers_equal_ser_step(void **state) {
    (void)state;
    char batch[160];
    s_batch_with_locals(batch, sizeof batch, 4, 8, 0);
    s_method_n_workers_batch("essl", "[moco]\naddon_layer = 2\n[essl]\nhidden = 16\n"
                             "bottleneck = 8\n[data]\nlocal_crops = 4\nlocal_size = 8\n"
                             "local_mode = rotations\n", batch, "essl-pooled");
    s_batch_with_vparams(batch, sizeof batch);
    s_method_n_workers_batch("augself", "[moco]\naddon_layer = 2\n[augself]\nhidden = 16\n",
                             batch, "augself-pooled");
    // The pooled rows change the step: the decoupled run is not the final-[CLS] one.
    char ref[160], cls[160];
    snprintf(ref, sizeof ref, "%s/augself-pooled-ref.safetensors", s_dir);
    snprintf(cls, sizeof cls, "%s/augself-ref.safetensors", s_dir);
    char cfg[160];
    s_method_ini(cfg, sizeof cfg, "augself", "[augself]\nhidden = 16\n");
    char *sargs[] = {"ser", "step", "--config", cfg, "--batch", batch, "--out", cls, "--steps",
                     "20", "--iters-per-epoch", "5", NULL};
    assert_int_equal(s_wait(s_start("step-cls.log", sargs)), 0);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "cmp -s %s %s", ref, cls);
    assert_int_not_equal(system(cmd), 0);
}

// DIR/lpairs_batch.safetensors: the step batch with 2 local SER pairs per equivariant sample
// (lpair.g (6, 2, 5) on small grids, lpair.view<v>.<i> of the sizes they give at patch 4,
// deterministic values).
static void s_batch_with_lpairs(char *path, size_t n) {
    char err[SER_ERR_LEN];
    snprintf(path, n, "%s/lpairs_batch.safetensors", s_dir);
    ser_st_file *f = NULL;
    ser_st_writer *w = s_step_batch_writer(&f);
    static const float g[6][2][5] = {
        {{0, 1, 1, 2, 3}, {1, 0, 0, 2, 2}}, {{1, 1, 0, 3, 2}, {0, 0, 3, 2, 2}},
        {{0, 0, 2, 2, 2}, {1, 1, 1, 3, 2}}, {{0, 1, 0, 2, 3}, {1, 0, 2, 3, 3}},
        {{1, 0, 3, 3, 3}, {0, 0, 0, 2, 2}}, {{0, 0, 1, 2, 2}, {1, 1, 0, 2, 3}}};
    const int64_t gshape[3] = {6, 2, 5};
    ser_st_writer_add(w, "lpair.g", SER_DT_F32, 3, gshape, g);
    float *x[12];
    char name[12][32];
    int64_t shape[12][3];
    for (int i = 0; i < 6; i++)
        for (int v = 0; v < 2; v++) {
            ser_group_elem ge = {(uint8_t)g[i][v][0], (uint8_t)g[i][v][1], (uint8_t)g[i][v][2],
                                 (int16_t)g[i][v][3], (int16_t)g[i][v][4]};
            int h, wd, j = i * 2 + v;
            ser_group_image_size(&ge, 4, &h, &wd);
            size_t nx = (size_t)3 * h * wd;
            x[j] = malloc(sizeof(float) * nx);
            ser_test_fill_uniform(x[j], nx, 900 + (uint64_t)j, -2, 2);
            snprintf(name[j], sizeof name[j], "lpair.view%d.%d", v, i);
            shape[j][0] = 3, shape[j][1] = h, shape[j][2] = wd;
            ser_st_writer_add(w, name[j], SER_DT_F32, 3, shape[j], x[j]);
        }
    assert_int_equal(ser_st_writer_save(w, path, err), 0);
    ser_st_writer_destroy(&w);
    ser_st_destroy(&f);
    for (int j = 0; j < 12; j++) free(x[j]);
}

// The 2+4-view SER (ser.local_pairs = 2): the local SER pairs' maps and group elements travel in
// FORWARD_DONE (lqmap<v>, lg) and their gradients in BACKWARD (dlqmap<v>); 1..3 workers against
// `ser step`, bitwise.
static void test_local_pairs_n_workers_equal_ser_step(void **state) {
    (void)state;
    char batch[160];
    s_batch_with_lpairs(batch, sizeof batch);
    s_method_n_workers_batch("moco", "[ser]\nlocal_pairs = 2\n", batch, "lpairs");
}

// STL: its heads (trans_backbone, hypernet, projectors) live at the coordinator and pair the
// batch positions 2k, 2k+1 across the gathered rows; 1..3 workers against `ser step`, bitwise,
// its two losses in metrics.jsonl.
static void test_stl_n_workers_equal_ser_step(void **state) {
    (void)state;
    s_method_n_workers("stl", "[stl]\ntrans_dim = 8\nproj_hidden = 12\nproj_dim = 6\n");
}

// A batch without equivariant samples (SER on): projector_equiv and norm_equiv get no gradient,
// so AdamW leaves them alone — through the runtime exactly as in `ser step` (same bits), with
// no optimizer state for them in either.
static void test_no_equivariant_sample_runtime(void **state) {
    (void)state;
    char b[1024], ref[160], out[160], od[200];
    ser_test_fixture_path(b, sizeof b, "unused_batch.safetensors");  // 4 invariant samples
    snprintf(ref, sizeof ref, "%s/noeq-ref.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/noeq-local.safetensors", s_dir);
    snprintf(od, sizeof od, "run.out_dir=%s/noeq", s_dir);
    char *sargs[] = {"ser", "step", "--config", s_cfg, "--weights", s_w, "--batch", b, "--out", ref,
                     "--steps", "5", "--set", "data.global_batch=4", "--set", "data.shards=2",
                     COMMON, NULL};
    assert_int_equal(s_wait(s_start("step.log", sargs)), 0);
    char *args[] = {"ser", "local", "--workers", "2", "--config", s_cfg, "--weights", s_w,
                    "--batch-file", b, "--out", out, "--steps", "5", "--set", od, "--set",
                    "data.global_batch=4", "--set", "data.shards=2", COMMON, NULL};
    int rc = s_wait(s_start("local.log", args));
    if (rc) system("tail -20 /tmp/ser_cluster_*/local.log");
    assert_int_equal(rc, 0);
    s_assert_same_bits(ref, out);
    char err[SER_ERR_LEN];
    ser_st_file *f = NULL;
    assert_int_equal(ser_st_open(&f, out, err), 0);
    assert_null(ser_st_find(f, "optimizer.projector_equiv.0.weight.step"));
    assert_null(ser_st_find(f, "optimizer.base_encoder.norm_equiv.weight.step"));
    assert_non_null(ser_st_find(f, "optimizer.base_encoder.blocks.0.attn.qkv.weight.step"));
    ser_st_destroy(&f);
}

// run.precision = bf16 (the linear layers on oneDNN's bf16 products): MoCo-v3 + SER and DINO
// + SER over 1..3 workers against `ser step`, bitwise; and the bf16 job is not the fp32 job
// (the same config in fp32 gives other bits). Skipped where the CPU has no native bf16.
static void test_bf16_n_workers_equal_ser_step(void **state) {
    (void)state;
    if (!ser_bf16_supported()) {
        print_message("SKIPPED: no native bf16 on this CPU (%s)\n", ser_bf16_isa());
        skip();
    }
    s_method_n_workers_batch("moco", "[run]\nprecision = bf16\n", s_b, "moco-bf16");
    char sec[512];
    snprintf(sec, sizeof sec, "%s[run]\nprecision = bf16\n", s_dino_section);
    s_method_n_workers_batch("dino", sec, s_b, "dino-bf16");
    char cfg[160], ref32[160], err[SER_ERR_LEN];
    s_method_ini(cfg, sizeof cfg, "moco", "");
    snprintf(ref32, sizeof ref32, "%s/moco-fp32-ref.safetensors", s_dir);
    char *sargs[] = {"ser", "step", "--config", cfg, "--batch", s_b, "--out", ref32, "--steps",
                     "20", "--iters-per-epoch", "5", NULL};
    assert_int_equal(s_wait(s_start("step.log", sargs)), 0);
    char ref16[160];
    snprintf(ref16, sizeof ref16, "%s/moco-bf16-ref.safetensors", s_dir);
    ser_st_file *fa = NULL, *fb = NULL;
    assert_int_equal(ser_st_open(&fa, ref32, err), 0);
    assert_int_equal(ser_st_open(&fb, ref16, err), 0);
    const ser_st_entry *x = ser_st_find(fa, "base_encoder.blocks.0.attn.qkv.weight");
    const ser_st_entry *y = ser_st_find(fb, "base_encoder.blocks.0.attn.qkv.weight");
    assert_true(x && y && x->nbytes == y->nbytes);
    assert_true(memcmp(x->data, y->data, x->nbytes) != 0);
    ser_st_destroy(&fa);
    ser_st_destroy(&fb);
}

static void test_dino_n_workers_equal_ser_step(void **state) {
    (void)state;
    s_method_n_workers("dino", s_dino_section);
}

static void s_assert_same_state(const char *a, const char *b);

// A DINO step skipped for a non-finite gradient leaves the teacher where it was; the workers,
// which otherwise advance their teacher themselves, must be sent it whole. Proof: the run
// continues exactly as `ser step` does from the checkpoint written right after the skip.
static void test_dino_skip_resends_teacher(void **state) {
    (void)state;
    char cfg[160], outa[160], outb[160], od[200], dirb[160], src[200], dst[200], cmd[1024];
    s_method_ini(cfg, sizeof cfg, "dino", s_dino_section);
    snprintf(outa, sizeof outa, "%s/dskip.safetensors", s_dir);
    snprintf(outb, sizeof outb, "%s/dskip_step.safetensors", s_dir);
    snprintf(od, sizeof od, "run.out_dir=%s/dskip", s_dir);
    char *args[] = {"ser", "local", "--workers", "2", "--config", cfg, "--batch-file", s_b,
                    "--out", outa, "--steps", "8", "--iters-per-epoch", "5", "--set", od,
                    "--set", "run.nonfinite=skip", "--set", "run.checkpoint_every=1",
                    "--set", "run.keep_checkpoints=20", NULL};
    setenv("SER_FAULT", "nan:BACKWARD_DONE@3", 1);  // every worker poisons step 3
    int rc = s_wait(s_start("dskip.log", args));
    unsetenv("SER_FAULT");
    if (rc) system("tail -20 /tmp/ser_cluster_*/dskip.log");
    assert_int_equal(rc, 0);
    assert_true(s_log_has("dskip.log", "skipped (run.nonfinite = skip)"));
    // The checkpoint after the skipped step 3, alone in a run directory of its own.
    snprintf(dirb, sizeof dirb, "%s/dskip_b", s_dir);
    snprintf(src, sizeof src, "%s/dskip/ckpt-0000000004.safetensors", s_dir);
    snprintf(dst, sizeof dst, "%s/ckpt-0000000004.safetensors", dirb);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s' && echo ckpt-0000000004.safetensors > '%s/latest'",
             dirb, src, dst, dirb);
    assert_int_equal(system(cmd), 0);
    char *sargs[] = {"ser", "step", "--config", cfg, "--batch", s_b, "--resume", dirb, "--out", outb,
                     "--steps", "4", "--iters-per-epoch", "5", "--set", "run.nonfinite=skip", NULL};
    rc = s_wait(s_start("dskip_step.log", sargs));
    if (rc) system("tail -20 /tmp/ser_cluster_*/dskip_step.log");
    assert_int_equal(rc, 0);
    s_assert_same_state(outa, outb);
}

// `kill PID` of ser local (SIGTERM to it alone, as systemd or a scheduler sends it) stops the
// job the way Ctrl-C does: the coordinator checkpoints the last completed step and all exit,
// ser local with the status that tells an interrupted job from a finished one.
static void test_local_stops_on_sigterm(void **state) {
    (void)state;
    char cfg[160], od[200];
    s_method_ini(cfg, sizeof cfg, "dino", s_dino_section);
    snprintf(od, sizeof od, "run.out_dir=%s/sigterm", s_dir);
    char *args[] = {"ser", "local", "--workers", "2", "--config", cfg, "--batch-file", s_b,
                    "--steps", "100000", "--iters-per-epoch", "5", "--set", od, NULL};
    pid_t pid = s_start("sigterm.log", args);
    for (int t = 0; t < 3000 && !s_log_has("sigterm.log", "I step 2:"); t++) s_sleep_ms(5);
    assert_true(s_log_has("sigterm.log", "I step 2:"));
    kill(pid, SIGTERM);
    assert_int_equal(s_wait(pid), SER_EXIT_INTERRUPTED);
    assert_true(s_log_has("sigterm.log", "stop requested during step"));
    assert_true(s_log_has("sigterm.log", "checkpoint /"));
}

static void test_barlow_n_workers_equal_ser_step(void **state) {
    (void)state;
    s_method_n_workers("barlow", "[barlow]\nproj_dim = 24\n");
}

// cluster.reduce = chain ---------------------------------------------------------------------------
// The coordinator's received bytes per step, *sent the bytes it sent, and P from a run's summary
// line (-1: none).
static double s_summary_recv(const char *log, double *sent, long *P) {
    char path[256], line[4096];
    snprintf(path, sizeof path, "%s/%s", s_dir, log);
    FILE *f = fopen(path, "r");
    double recv = -1;
    *P = -1, *sent = -1;
    while (f && fgets(line, sizeof line, f)) {
        const char *b = strstr(line, "bytes/step sent, "), *p = strstr(line, "P = ");
        const char *a = strstr(line, "after the first, ");
        if (a && b && p) {
            recv = strtod(b + strlen("bytes/step sent, "), NULL), *P = strtol(p + 4, NULL, 10);
            *sent = strtod(a + strlen("after the first, "), NULL);
        }
    }
    if (f) fclose(f);
    return recv;
}

// DIR/<tag>.ini: the test job with method (and its section; "" = MoCo, the default) and the
// chains' [cluster] keys (chunks of 4096 floats: the test model's parameters and sum go in
// several).
static void s_chain_ini(char *cfg, size_t n, const char *tag, const char *method,
                        const char *section) {
    snprintf(cfg, n, "%s/%s.ini", s_dir, tag);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fputs(s_ini, f);
    if (method[0]) fprintf(f, "[method]\nname = %s\n%s", method, section);
    fputs("[optim]\nepochs = 4\nwarmup_epochs = 1\n"
          "[cluster]\nreduce = chain\nbroadcast = tree\nreduce_chunk = 4096\n"
          "task_timeout_ms = 3000\n", f);
    fclose(f);
}

// DIR/<name>.ini: the test job (s_ini, which ends in its [cluster] section) with both chains
// on, chunks of `chunk` floats, and the [cluster] lines of `more`.
static void s_chain_job(char *cfg, size_t n, const char *name, int chunk, const char *more) {
    snprintf(cfg, n, "%s/%s.ini", s_dir, name);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fprintf(f, "%sreduce = chain\nbroadcast = tree\nreduce_chunk = %d\n%s", s_ini, chunk, more);
    fclose(f);
}

// `ser step` against `ser local` with the parameters broadcast and the gradients summed along the
// workers' chain, for each worker count in nws (0-terminated): the same bits; every step summed
// by the chain, no PARAMS sent after the first step; the coordinator sends the parameters once
// and receives one gradient a step (4P bytes each way and the rows), not 4PN and 4PS.
static void s_chain_n_workers(const char *method, const char *section, const char *tag,
                              const int *nws) {
    char cfg[160], ref[160], out[160], nw[8], od[200], log[64];
    s_chain_ini(cfg, sizeof cfg, tag, method, section);
    snprintf(ref, sizeof ref, "%s/%s-ref.safetensors", s_dir, tag);
    char *sargs[] = {"ser", "step", "--config", cfg, "--batch", s_b, "--out", ref, "--steps", "10",
                     "--iters-per-epoch", "5", NULL};
    assert_int_equal(s_wait(s_start("step.log", sargs)), 0);
    for (const int *n = nws; *n; n++) {
        snprintf(out, sizeof out, "%s/%s-local%d.safetensors", s_dir, tag, *n);
        snprintf(nw, sizeof nw, "%d", *n);
        snprintf(od, sizeof od, "run.out_dir=%s/%s-local%d", s_dir, tag, *n);
        snprintf(log, sizeof log, "%s-local%d.log", tag, *n);
        char *args[] = {"ser", "local", "--workers", nw, "--config", cfg, "--batch-file", s_b,
                        "--out", out, "--steps", "10", "--iters-per-epoch", "5", "--set", od, NULL};
        int rc = s_wait(s_start(log, args));
        if (rc) system("tail -20 /tmp/ser_cluster_*/*-local*.log");
        assert_int_equal(rc, 0);
        s_assert_same_bits(ref, out);
        // Every step's sum by the round sent with the backward tasks (the chain overlaps the
        // backward passes of the workers after each holder).
        assert_true(s_log_has(log, "10 steps summed along the workers' chain (0 of its rounds broke and "
                                   "were run again; 10 steps by the round sent with the backward "
                                   "tasks), 0 by the coordinator"));
        long P;
        double sent, recv = s_summary_recv(log, &sent, &P);
        print_message("%s, %d workers: %.0f bytes/step sent, %.0f received, 4P = %ld\n", tag, *n,
                      sent, recv, 4 * P);
        assert_true(P > 0 && recv >= 4.0 * P && recv < 1.5 * 4.0 * P);
        assert_true(sent >= 4.0 * P && sent < 1.5 * 4.0 * P);
        assert_true(s_log_has(log, "0 PARAMS resent after the first step"));
    }
}

static void test_chain_n_workers_equal_ser_step(void **state) {
    (void)state;
    static const int counts[] = {1, 2, 3, 7, 0};
    s_chain_n_workers("", "", "chain_moco", counts);
    s_chain_n_workers("dino", s_dino_section, "chain_dino", counts);
    s_chain_n_workers("barlow", "[barlow]\nproj_dim = 24\n", "chain_barlow", counts);
    // Against the coordinator's sum of the same job: one gradient per shard (4 shards).
    char cfg[160], od[200];
    snprintf(cfg, sizeof cfg, "%s/chain_moco.ini", s_dir);
    snprintf(od, sizeof od, "run.out_dir=%s/chain_off", s_dir);
    char *args[] = {"ser", "local", "--workers", "2", "--config", cfg, "--batch-file", s_b,
                    "--steps", "10", "--iters-per-epoch", "5", "--set", od,
                    "--set", "cluster.reduce=coordinator", "--set", "cluster.broadcast=coordinator",
                    NULL};
    assert_int_equal(s_wait(s_start("chain_off.log", args)), 0);
    long P;
    double sent, recv = s_summary_recv("chain_off.log", &sent, &P);
    print_message("without the chains, 2 workers: %.0f bytes/step sent (4PN = %ld), %.0f received "
                  "(4PS = %ld)\n", sent, 8 * P, recv, 16 * P);
    assert_true(P > 0 && recv >= 4.0 * 4.0 * P && sent >= 2.0 * 4.0 * P);
}

// Starts a coordinator on an ephemeral port; returns its pid and endpoint.
// Starts a coordinator on an ephemeral port (port 0 unless port names one) with its
// checkpoints in DIR/run (every 5 steps); returns its pid and endpoint.
static pid_t s_coordinator_at(const char *out, const char *steps, const char *wait_ms, char *ep,
                              size_t n, const char *port, const char *log) {
    char epf[128], od[160], pset[64];
    snprintf(epf, sizeof epf, "%s/endpoint", s_dir);
    snprintf(od, sizeof od, "run.out_dir=%s/run-%s", s_dir, out + strlen(s_dir) + 1);
    snprintf(pset, sizeof pset, "cluster.port=%s", port);
    unlink(epf);
    char *args[] = {"ser", "coordinator", "--config", s_cfg, "--weights", s_w,
                    "--out", (char *)(uintptr_t)out, "--steps", (char *)(uintptr_t)steps,
                    "--set", pset, "--set", od, "--set", "run.checkpoint_every=5", "--set", s_extra,
                    "--endpoint-file", epf, "--wait-workers-ms", (char *)(uintptr_t)wait_ms,
                    COMMON, NULL};
    pid_t pid = s_start(log, args);
    assert_int_equal(s_read_line("endpoint", ep, n, 30000), 0);
    return pid;
}

static pid_t s_coordinator(const char *out, const char *steps, const char *wait_ms, char *ep,
                           size_t n) {
    return s_coordinator_at(out, steps, wait_ms, ep, n, "0", "coord.log");
}

// Weights, buffers and AdamW state of two `ser step`-layout files, byte for byte (not the loss
// and first-gradient records, which cover only the steps a process ran).
static void s_assert_same_state(const char *a, const char *b) {
    char err[SER_ERR_LEN];
    ser_st_file *fa = NULL, *fb = NULL;
    assert_int_equal(ser_st_open(&fa, a, err), 0);
    assert_int_equal(ser_st_open(&fb, b, err), 0);
    int differ = 0, n = 0;
    for (int i = 0; i < ser_st_count(fa); i++) {
        const ser_st_entry *x = ser_st_at(fa, i);
        if (strncmp(x->name, "loss", 4) == 0 || strncmp(x->name, "grad.", 5) == 0) continue;
        const ser_st_entry *y = ser_st_find(fb, x->name);
        n++;
        if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes))
            if (differ++ < 5) fprintf(stderr, "  differs: %s\n", x->name);
    }
    print_message("%s vs %s: %d state tensors, %d differ\n", a, b, n, differ);
    assert_int_equal(differ, 0);
    assert_true(n > 300);
    ser_st_destroy(&fa);
    ser_st_destroy(&fb);
}

static pid_t s_worker(const char *ep, const char *name) {
    char log[64];
    snprintf(log, sizeof log, "%s.log", name);
    char *args[] = {"ser", "worker", "--coordinator", (char *)(uintptr_t)ep, "--batch-file", s_b,
                    "--name", (char *)(uintptr_t)name, NULL};
    return s_start(log, args);
}

static void test_worker_killed_mid_run(void **state) {
    (void)state;
    char ref[128], out[128], ep[256];
    snprintf(ref, sizeof ref, "%s/ref60.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/killed.safetensors", s_dir);
    s_reference(ref, "60");  // ~10 ms a step: long enough to kill a worker mid-run
    pid_t coord = s_coordinator(out, "60", "30000", ep, sizeof ep);
    pid_t w0 = s_worker(ep, "wa"), w1 = s_worker(ep, "wb");
    (void)w0;
    // Kill worker b once the job is under way (after its first step's log line), in the middle
    // of whatever phase it is in.
    for (int t = 0; t < 600 && !s_log_has("coord.log", "step 3:"); t++) s_sleep_ms(5);
    assert_false(s_log_has("coord.log", "step 59:"));
    kill(w1, SIGKILL);
    s_wait(w1);
    int rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/coord.log");
    assert_int_equal(rc, 0);
    assert_true(s_log_has("coord.log", "worker wb lost"));
    s_assert_same_bits(ref, out);
    s_kill_all();
}

// The coordinator is killed with SIGKILL mid-run and restarted with the same command on the
// same port: it resumes from its newest checkpoint, the workers reconnect by themselves, and
// the final state equals the uninterrupted run's, bitwise.
// One run of it with the job file cfg (s_cfg, or one with the chains); tag names its files.
static void s_coordinator_killed(const char *cfg, const char *tag) {
    char ref[128], out[128], ep[256], port[16], keep[128], w0[16], w1[16], unk[64];
    snprintf(ref, sizeof ref, "%s/ref60b.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/restarted%s.safetensors", s_dir, tag);
    if (access(ref, F_OK) != 0) s_reference(ref, "60");
    snprintf(keep, sizeof keep, "%s", s_cfg);
    if (cfg != s_cfg) snprintf(s_cfg, sizeof s_cfg, "%s", cfg);
    pid_t coord = s_coordinator(out, "60", "30000", ep, sizeof ep);
    const char *colon = strrchr(ep, ':');
    assert_non_null(colon);
    snprintf(port, sizeof port, "%s", colon + 1);
    snprintf(w0, sizeof w0, "wr0%s", tag);
    snprintf(w1, sizeof w1, "wr1%s", tag);
    s_worker(ep, w0);
    s_worker(ep, w1);
    for (int t = 0; t < 2000 && !s_log_has("coord.log", "step 12:"); t++) s_sleep_ms(5);
    assert_false(s_log_has("coord.log", "step 59:"));
    kill(coord, SIGKILL);
    s_wait(coord);
    coord = s_coordinator_at(out, "60", "30000", ep, sizeof ep, port, "coord2.log");
    snprintf(s_cfg, sizeof s_cfg, "%s", keep);
    int rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/coord2.log");
    assert_int_equal(rc, 0);
    assert_true(s_log_has("coord2.log", "resumed from"));
    // The workers' messages before their new HELLO: at most one line per worker, no flood.
    snprintf(unk, sizeof unk, "from unknown peer %s", w0);
    assert_true(s_log_count("coord2.log", unk) <= 1);
    snprintf(unk, sizeof unk, "from unknown peer %s", w1);
    assert_true(s_log_count("coord2.log", unk) <= 1);
    s_assert_same_state(ref, out);
    s_kill_all();
}

static void test_coordinator_killed_and_restarted(void **state) {
    (void)state;
    s_coordinator_killed(s_cfg, "");
    // With both chains: the workers announce their peer sockets again to the new coordinator.
    char cfg[120];
    s_chain_job(cfg, sizeof cfg, "restart_chain", 4096, "");
    s_coordinator_killed(cfg, "c");
    assert_true(s_log_has("coord2.log", "summed along the workers' chain (0 of its rounds broke"));
    // The workers forget what they held on reconnecting: none waits for a broadcast of the
    // step the old coordinator had reached (a worker stuck so is sent its tasks again, "which
    // lacks this step's parameters").
    assert_false(s_log_has("coord2.log", "lacks this step's parameters"));
}

static void test_garbage_and_wrong_peers(void **state) {
    (void)state;
    char out[128], ep[256];
    snprintf(out, sizeof out, "%s/garbage.safetensors", s_dir);
    snprintf(s_extra, sizeof s_extra, "cluster.io_threads=3");
    pid_t coord = s_coordinator(out, "2", "30000", ep, sizeof ep);
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    void *ctx = zmq_ctx_new(), *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 5000;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(d, ZMQ_ROUTING_ID, "intruder", 8);
    assert_int_equal(zmq_connect(d, ep), 0);
    // Garbage: random bytes, an empty frame, a truncated envelope, a huge tensor claim.
    zmq_send(d, "\x01\x02\x03garbage", 10, 0);
    zmq_send(d, "", 0, 0);
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.protocol_version = SER_PROTOCOL_VERSION;
    e.type = SER__MSG_TYPE__MSG_FORWARD_DONE;
    uint8_t buf[256];
    size_t len = ser__envelope__pack(&e, buf);
    zmq_send(d, buf, len / 2, 0);
    zmq_send(d, buf, len, ZMQ_SNDMORE);
    zmq_send(d, "xx", 2, 0);  // a frame no tensor announced
    // A HELLO with another config: refused with the reason.
    ser__envelope__init(&e);
    e.type = SER__MSG_TYPE__MSG_HELLO;
    e.text = "intruder";
    e.config_hash = 0x1234;
    assert_int_equal(ser_wire_send(d, NULL, &e, NULL, 0), 0);
    ser_wire_msg m;
    char err[SER_ERR_LEN];
    int rc = SER_ETIMEDOUT;
    for (int t = 0; t < 100 && rc == SER_ETIMEDOUT; t++) {
        rc = ser_wire_recv(d, 0, NULL, &m, err);
        if (rc == SER_ETIMEDOUT) s_sleep_ms(50);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(m.env->type, SER__MSG_TYPE__MSG_REFUSE);
    assert_non_null(strstr(m.env->text, "config hash"));
    ser_wire_msg_free(&m);
    // Another protocol version: dropped with a log line, nothing else.
    ser__envelope__init(&e);
    e.type = SER__MSG_TYPE__MSG_HELLO;
    assert_int_equal(ser_wire_send(d, NULL, &e, NULL, 0), 0);  // fills version; corrupt it:
    e.protocol_version = 99;
    len = ser__envelope__pack(&e, buf);
    zmq_send(d, buf, len, 0);
    zmq_close(d);
    // An identity with a NUL byte ("wc\0x" would pass for a worker "wc"), and ZeroMQ's own
    // generated identity (it starts with a NUL): refused at the door, whatever they send.
    void *dn = zmq_socket(ctx, ZMQ_DEALER), *da = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(dn, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(da, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(dn, ZMQ_ROUTING_ID, "wc\0x", 4);
    assert_int_equal(zmq_connect(dn, ep), 0);
    assert_int_equal(zmq_connect(da, ep), 0);
    for (int i = 0; i < 3; i++) {  // three HELLOs each: one log line each
        ser__envelope__init(&e);
        e.type = SER__MSG_TYPE__MSG_HELLO;
        e.text = "wc";
        assert_int_equal(ser_wire_send(dn, NULL, &e, NULL, 0), 0);
        assert_int_equal(ser_wire_send(da, NULL, &e, NULL, 0), 0);
    }
    // A frame larger than the job's largest legitimate message: the sender is disconnected,
    // nothing is buffered for it.
    size_t big = (size_t)64 << 20;
    char *huge = calloc(big, 1);
    assert_non_null(huge);
    zmq_send(da, huge, big, 0);
    free(huge);
    s_sleep_ms(300);
    zmq_close(dn);
    zmq_close(da);
    zmq_ctx_term(ctx);
    // The job still runs to completion with a real worker.
    s_worker(ep, "wc");
    rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/coord.log");
    assert_int_equal(rc, 0);
    assert_true(s_log_has("coord.log", "; 3 ZeroMQ I/O threads"));  // cluster.io_threads
    assert_true(s_log_has("coord.log", "refused peer intruder"));
    assert_true(s_log_has("coord.log", "dropped"));
    assert_true(s_log_has("coord.log", "bad message from wc?x dropped: peer identity with a byte "
                                       "that is not printable ASCII"));
    assert_true(s_log_has("coord.log", "bad message from ?"));
    assert_int_equal(s_log_count("coord.log", "not printable ASCII"), 2);  // once per peer
    s_kill_all();
}

// Receives one message on the fake coordinator's ROUTER within timeout_ms (SER_ETIMEDOUT if
// none); the worker's heartbeats are skipped when skip_beats.
static int s_fake_coord_recv(void *r, ser_wire_msg *m, int timeout_ms, int skip_beats) {
    char err[SER_ERR_LEN];
    for (int t = 0; t < timeout_ms / 20; t++) {
        int rc = ser_wire_recv(r, 1, NULL, m, err);
        if (rc == SER_ETIMEDOUT) {
            s_sleep_ms(20);
            continue;
        }
        if (rc) return rc;
        if (skip_beats && m->env->type == SER__MSG_TYPE__MSG_HEARTBEAT) {
            ser_wire_msg_free(m);
            continue;
        }
        return SER_OK;
    }
    return SER_ETIMEDOUT;
}

// Counts the disconnections a ROUTER's monitor reported within timeout_ms.
static int s_disconnects(void *mon, int timeout_ms) {
    int n = 0;
    zmq_pollitem_t it = {mon, 0, ZMQ_POLLIN, 0};
    for (int k = 0; k < 100 && zmq_poll(&it, 1, timeout_ms) == 1; k++) {
        zmq_msg_t a, b;
        zmq_msg_init(&a), zmq_msg_init(&b);
        zmq_msg_recv(&a, mon, 0);
        zmq_msg_recv(&b, mon, 0);
        uint16_t ev;
        memcpy(&ev, zmq_msg_data(&a), sizeof ev);
        n += ev == ZMQ_EVENT_DISCONNECTED;
        zmq_msg_close(&a), zmq_msg_close(&b);
        timeout_ms = 200;
    }
    return n;
}

// ZMQ_MAXMSGSIZE on the worker's socket: before the WELCOME, frames up to 16 MiB; once the
// WELCOME says what the job is, the worker connects again with the job's largest legitimate
// frame (its parameters, a shard's map gradient) as the limit. A fake coordinator that then
// sends a 4 MiB frame (the tiny test model's limit is ~1.1 MiB) is disconnected before the
// frame is buffered: the worker never sees it (no "PARAMS ... dropped" line, which the same
// frame under the old unlimited socket produced) and, after cluster.timeout_ms of silence, makes
// its socket again, says HELLO and obeys a SHUTDOWN sent on the new connection.
static void test_worker_frame_limit(void **state) {
    (void)state;
    void *ctx = zmq_ctx_new(), *r = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0, handover = 1;  // as the coordinator's socket
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(r, ZMQ_ROUTER_HANDOVER, &handover, sizeof handover);
    assert_int_equal(zmq_bind(r, "tcp://127.0.0.1:*"), 0);
    char ep[256];
    size_t n = sizeof ep;
    zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &n);
    assert_int_equal(zmq_socket_monitor(r, "inproc://wlimit-mon", ZMQ_EVENT_DISCONNECTED), 0);
    void *mon = zmq_socket(ctx, ZMQ_PAIR);
    zmq_setsockopt(mon, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(mon, "inproc://wlimit-mon"), 0);
    pid_t wp = s_worker(ep, "wlimit");
    ser_wire_msg m;
    assert_int_equal(s_fake_coord_recv(r, &m, 10000, 1), SER_OK);
    assert_int_equal(m.env->type, SER__MSG_TYPE__MSG_HELLO);
    assert_int_equal(m.env->config_hash, 0);  // a fresh worker
    ser_wire_msg_free(&m);
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.type = SER__MSG_TYPE__MSG_WELCOME;
    e.job_id = "ser";
    e.text = (char *)(uintptr_t)s_ini;
    e.config_hash = 1;
    assert_int_equal(ser_wire_send(r, "wlimit", &e, NULL, 0), 0);
    // The reconnection: a second HELLO, now with the job's config hash.
    assert_int_equal(s_fake_coord_recv(r, &m, 10000, 1), SER_OK);
    assert_int_equal(m.env->type, SER__MSG_TYPE__MSG_HELLO);
    assert_true(m.env->config_hash != 0);
    ser_wire_msg_free(&m);
    assert_true(s_disconnects(mon, 200) >= 1);  // the first connection, closed by the worker

    // A PARAMS frame of 4 MiB: over the limit, the coordinator is disconnected.
    size_t numel = (size_t)1 << 20;
    float *big = calloc(numel, sizeof(float));
    assert_non_null(big);
    ser_wire_tensor t = {"student", 1, {(int64_t)numel}, big};
    ser__envelope__init(&e);
    e.type = SER__MSG_TYPE__MSG_PARAMS;
    e.job_id = "ser";
    assert_int_equal(ser_wire_send(r, "wlimit", &e, &t, 1), 0);
    free(big);
    assert_int_equal(s_disconnects(mon, 5000), 1);
    // ZeroMQ does not make a connection dropped for a protocol error again: the worker, hearing
    // nothing for cluster.timeout_ms, makes a new socket and says HELLO; then SHUTDOWN.
    assert_int_equal(s_fake_coord_recv(r, &m, 10000, 1), SER_OK);
    assert_int_equal(m.env->type, SER__MSG_TYPE__MSG_HELLO);
    assert_true(m.env->config_hash != 0);
    ser_wire_msg_free(&m);
    ser__envelope__init(&e);
    e.type = SER__MSG_TYPE__MSG_SHUTDOWN;
    e.job_id = "ser";
    assert_int_equal(ser_wire_send(r, "wlimit", &e, NULL, 0), 0);
    assert_int_equal(s_wait(wp), 0);
    assert_true(s_log_has("wlimit.log", "job over"));
    assert_false(s_log_has("wlimit.log", "PARAMS without a student"));
    assert_false(s_log_has("wlimit.log", "bad message"));
    zmq_close(mon);
    zmq_close(r);
    zmq_ctx_term(ctx);
}

// A fake worker on a DEALER of ctx: identity name, HELLO sent, joined before the real one.
static void *s_fake_join(void *ctx, const char *ep, const char *name) {
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_ROUTING_ID, name, strlen(name));
    assert_int_equal(zmq_connect(d, ep), 0);
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.type = SER__MSG_TYPE__MSG_HELLO;
    e.text = (char *)(uintptr_t)name;
    assert_int_equal(ser_wire_send(d, NULL, &e, NULL, 0), 0);
    s_sleep_ms(300);
    return d;
}

// One beat of a fake worker's loop: a heartbeat saying `text` ("busy" or "idle") and holding
// the parameters `holds` (1 + step, 0 none); 1 (and the exit status in *rc) once the
// coordinator has exited.
static int s_fake_beat_as(void *d, pid_t coord, int *rc, const char *text, uint64_t holds) {
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.type = SER__MSG_TYPE__MSG_HEARTBEAT;
    e.job_id = "ser";
    e.text = (char *)(uintptr_t)text;
    e.holds_params = holds;
    ser_wire_send(d, NULL, &e, NULL, 0);
    int status;
    if (waitpid(coord, &status, WNOHANG) == coord) {
        *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        return 1;
    }
    s_sleep_ms(100);
    return 0;
}

static int s_fake_beat(void *d, pid_t coord, int *rc) {
    return s_fake_beat_as(d, coord, rc, "busy", 0);
}

// A 4-step job with a 1500 ms task deadline, a real worker and a fake one `name` that joins
// first (so that it is handed shards), heartbeats `text` holding `holds` and answers nothing.
// Returns the coordinator's exit status; *params counts the PARAMS the fake one was sent, *dups
// those of a step it had already been sent, and *beats its heartbeats; the job's final state is
// checked against `ser step`.
static int s_silent_worker_job(const char *name, const char *text, uint64_t holds, int *params,
                               int *dups, int *beats) {
    char ref[128], out[128], ep[256], err[SER_ERR_LEN];
    snprintf(ref, sizeof ref, "%s/ref4%s.safetensors", s_dir, name);
    snprintf(out, sizeof out, "%s/%s.safetensors", s_dir, name);
    s_reference(ref, "4");
    snprintf(s_extra, sizeof s_extra, "cluster.task_timeout_ms=1500");
    pid_t coord = s_coordinator(out, "4", "30000", ep, sizeof ep);
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    void *ctx = zmq_ctx_new(), *d = s_fake_join(ctx, ep, name);
    s_worker(ep, "wreal");
    int rc = -1, done = 0;
    uint64_t seen = 0;  // bit v: step v's PARAMS came (the job has 4 steps)
    *params = *dups = *beats = 0;
    for (int t = 0; t < 600 && done < 2; t++, ++*beats) {  // 60 s at most; a last drain
        ser_wire_msg m;
        while (ser_wire_recv(d, 0, NULL, &m, err) != SER_ETIMEDOUT) {  // tasks: not answered
            if (m.env && m.env->type == SER__MSG_TYPE__MSG_PARAMS) {
                ++*params;
                uint64_t bit = 1ull << (m.env->params_version & 63);
                *dups += (seen & bit) != 0;
                seen |= bit;
            }
            ser_wire_msg_free(&m);
        }
        if (done || s_fake_beat_as(d, coord, &rc, text, holds)) done++;
    }
    zmq_close(d);
    zmq_ctx_term(ctx);
    if (rc) system("tail -30 /tmp/ser_cluster_*/coord.log");
    if (rc == 0) s_assert_same_state(ref, out);
    s_kill_all();
    return rc;
}

// A worker that heartbeats "busy" but never answers its tasks: past cluster.task_timeout_ms
// its shards go to another worker, and after two such steps it gets no more work; the job ends
// with the same bits as `ser step` (the late answers, had there been any, are stale).
static void test_busy_worker_loses_its_tasks(void **state) {
    (void)state;
    int params, dups, beats;
    assert_int_equal(s_silent_worker_job("busybody", "busy", 0, &params, &dups, &beats), 0);
    // A busy worker is never sent its PARAMS again, and the run summary says so.
    assert_int_equal(dups, 0);
    assert_true(s_log_has("coord.log", "0 PARAMS resent after the first step (0 in all)"));
    assert_true(s_log_has("coord.log", "by worker busybody, which still heartbeats (task deadline 1500 ms): moving it"));
    assert_true(s_log_has("coord.log", "worker busybody missed its task deadline in 2 steps: it gets no more work"));
}

// A worker whose parameters are still on the way (it heartbeats "idle" and holds none, as a
// big model on a slow link looks: a message is delivered only when whole) is not sent a second
// copy every few heartbeats — the resend storm that made a slow link slower — but only after
// cluster.timeout_ms, then after doubling waits. Its shards move on at the task deadline, and
// the job ends with the bits of `ser step`.
static void test_params_on_the_way_not_resent(void **state) {
    (void)state;
    int params, dups, beats;
    assert_int_equal(s_silent_worker_job("slowlink", "idle", 0, &params, &dups, &beats), 0);
    // The run summary counts the copies sent again (tools/bench_link.sh reads it): those the
    // fake worker saw twice for one step (the real worker holds its parameters: none).
    char path[256], line[1024];
    snprintf(path, sizeof path, "%s/coord.log", s_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long long after = -1, all = -1;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "), ");
        if (strstr(line, "run summary:") && p)
            sscanf(p, "), %lld PARAMS resent after the first step (%lld in all)", &after, &all);
    }
    fclose(f);
    print_message("%d PARAMS, %d of a step already sent; the summary: %lld resent (%lld after "
                  "the first step)\n", params, dups, all, after);
    assert_int_equal(all, dups);
    assert_true(after >= 0 && after <= all);
    // One copy per step it was part of, plus at most one resend per timeout_ms (1500 ms) of
    // the run; a copy per unanswered idle heartbeat after 3 heartbeats would be ~beats / 3.
    int bound = 4 + (beats * 100) / 1500 + 1;
    print_message("%d PARAMS in %d heartbeats (%.1f s); bound %d\n", params, beats, beats * 0.1,
                  bound);
    assert_true(params <= bound);
}

// The status port of a running job: `ser status HOST:PORT --json` names the job, its step and
// its worker with a fresh heartbeat.
static void test_status_port(void **state) {
    (void)state;
    char out[128], ep[256];
    snprintf(out, sizeof out, "%s/status.safetensors", s_dir);
    pid_t coord = s_coordinator(out, "400", "30000", ep, sizeof ep);
    s_worker(ep, "ws");
    for (int t = 0; t < 600 && !s_log_has("coord.log", "step 5:"); t++) s_sleep_ms(20);
    char path[256], line[512], url[64];
    s_status_url("coord.log", url, sizeof url);
    char *args[] = {"ser", "status", url, "--json", NULL};
    assert_int_equal(s_wait(s_start("status.json", args)), 0);
    assert_true(s_log_has("status.json", "\"ws\""));
    assert_true(s_log_has("status.json", "\"step\""));
    assert_true(s_log_has("status.json", "\"loss_equiv\""));
    // The newest checkpoint (run.checkpoint_every = 5: after step 4, 9, ... by now; a step
    // takes a few ms) is named.
    assert_true(s_log_has("status.json", "/ckpt-0000000"));
    assert_true(s_log_has("status.json", "5.safetensors\"") || s_log_has("status.json", "0.safetensors\""));
    assert_true(s_log_has("status.json", "\"address\":\"127.0.0.1\""));  // the worker's
    char *args2[] = {"ser", "status", url, NULL};
    assert_int_equal(s_wait(s_start("status.txt", args2)), 0);
    assert_true(s_log_has("status.txt", "ws"));
    kill(coord, SIGTERM);
    s_wait(coord);
    s_kill_all();
    // Resumed, the job's /history starts at step 0 (seeded from metrics.jsonl), not at the
    // resume step, and goes on from there.
    coord = s_coordinator_at(out, "400", "30000", ep, sizeof ep, "0", "coord2.log");
    s_worker(ep, "ws2");
    for (int t = 0; t < 600 && !s_log_has("coord2.log", "I step "); t++) s_sleep_ms(20);
    assert_true(s_log_has("coord2.log", "status history: "));
    snprintf(path, sizeof path, "%s/coord2.log", s_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long long resumed = -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, "status on http://");
        if (p) sscanf(p + strlen("status on http://"), "%63[^/]", url);
        p = strstr(line, "resumed from ");
        if (p && (p = strstr(p, " at step "))) resumed = atoll(p + strlen(" at step "));
    }
    fclose(f);
    assert_true(resumed > 0);
    char *body = NULL, err[SER_ERR_LEN];
    size_t blen = 0;
    int http = 0;
    assert_int_equal(ser_status_fetch(url, "/history", 5000, &http, &body, &blen, err), SER_OK);
    assert_int_equal(http, 200);
    cJSON *h = cJSON_Parse(body);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(h, "steps");
    assert_true(cJSON_IsArray(steps) && cJSON_GetArraySize(steps) > resumed);
    for (int i = 0; i <= resumed; i++)  // every step before the resume, in order
        assert_int_equal((int)cJSON_GetArrayItem(steps, i)->valuedouble, i);
    print_message("/history after a resume at step %lld: %d points\n", resumed,
                  cJSON_GetArraySize(steps));
    cJSON_Delete(h);
    free(body);
    kill(coord, SIGTERM);
    s_wait(coord);
    s_kill_all();
}

// A batch file at path holding B invariant samples of img x img pixels: view 0 from v0, view 1
// from v1 (B x 3 x img x img floats each).
static void s_write_inv_batch(const char *path, int B, int img, const float *v0, const float *v1) {
    char err[SER_ERR_LEN];
    ser_st_writer *w = ser_st_writer_new();
    int64_t shape[4] = {B, 3, img, img};
    ser_st_writer_add(w, "inv.view0", SER_DT_F32, 4, shape, v0);
    ser_st_writer_add(w, "inv.view1", SER_DT_F32, 4, shape, v1);
    assert_int_equal(ser_st_writer_save(w, path, err), 0);
    ser_st_writer_destroy(&w);
}

// A shard whose computation takes several times cluster.timeout_ms: the worker's heartbeat
// thread keeps it alive while it computes (and the coordinator heartbeats the workers), so
// nobody is declared lost.
static void test_long_shard_keeps_heartbeating(void **state) {
    (void)state;
    char cfg[160], batch[160], out[160];
    snprintf(cfg, sizeof cfg, "%s/slow.ini", s_dir);
    snprintf(batch, sizeof batch, "%s/slow_batch.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/slow.safetensors", s_dir);
    const char *ini = "[model]\narch = vit_tiny\ndepth = 6\nimg_size = 32\npatch = 4\ncls_layer = 2\n"
                      "[moco]\ndim = 64\nmlp_dim = 256\n[ser]\nenabled = false\n"
                      "[data]\nglobal_batch = 48\nshards = 1\n[run]\nthreads = 1\n"
                      "[cluster]\nheartbeat_ms = 50\ntimeout_ms = 800\nstatus_port = -1\n";
    ser_test_write_file(cfg, ini, strlen(ini));
    // 48 random 32-px images per view: one shard's forward+backward takes several times 800 ms
    // on one thread, and one ViT block can take longer than that on a loaded machine: the
    // worker's heartbeat thread, not the compute, keeps it alive.
    size_t n = (size_t)48 * 3 * 32 * 32;
    float *v0 = malloc(n * 4), *v1 = malloc(n * 4);
    ser_test_fill_uniform(v0, n, 1, -2, 2);
    ser_test_fill_uniform(v1, n, 2, -2, 2);
    s_write_inv_batch(batch, 48, 32, v0, v1);
    free(v0), free(v1);
    char od[200];
    snprintf(od, sizeof od, "run.out_dir=%s/slowrun", s_dir);
    char *args[] = {"ser", "local", "--workers", "1", "--config", cfg, "--batch-file", batch,
                    "--out", out, "--steps", "2", "--set", od, "--lr", "0.001", NULL};
    time_t t0 = time(NULL);
    int rc = s_wait(s_start("slow.log", args));
    if (rc) system("tail -20 /tmp/ser_cluster_*/slow.log");
    assert_int_equal(rc, 0);
    assert_false(s_log_has("slow.log", "lost"));
    // The shard did outlast the liveness timeout (the coordinator says it waited past it).
    assert_true(s_log_has("slow.log", "waiting on shard 0 at worker"));
    print_message("2 steps of a slow shard in %lld s with an 800 ms liveness timeout\n",
                  (long long)(time(NULL) - t0));
}

// The collapse monitor: a batch of identical images gives identical [CLS] rows (cls_std 0),
// so with run.collapse_steps = 3 the job warns once at the third step and goes on (warn), or
// checkpoints that step and stops with exit 1 naming the collapse (abort). The same job on
// random images does not warn.
static void test_collapse_monitor(void **state) {
    (void)state;
    char cfg[160], batch[160], out[160], od[200];
    snprintf(cfg, sizeof cfg, "%s/collapse.ini", s_dir);
    snprintf(batch, sizeof batch, "%s/collapse_batch.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/collapse.safetensors", s_dir);
    const char *ini = "[model]\narch = vit_tiny\ndepth = 2\nimg_size = 16\npatch = 4\ncls_layer = 2\n"
                      "[moco]\ndim = 32\nmlp_dim = 64\n[ser]\nenabled = false\n"
                      "[data]\nglobal_batch = 8\nshards = 2\n[run]\nthreads = 1\nlog_every = 1\n"
                      "collapse_steps = 3\n[cluster]\nstatus_port = -1\n";
    ser_test_write_file(cfg, ini, strlen(ini));
    size_t n = (size_t)8 * 3 * 16 * 16;
    float *v = malloc(n * 4);
    for (int run = 0; run < 3; run++) {  // identical images (warn, abort), then random ones
        if (run < 2)
            for (size_t i = 0; i < n; i++) v[i] = 0.25f;
        else
            ser_test_fill_uniform(v, n, 7, -2, 2);
        s_write_inv_batch(batch, 8, 16, v, v);
        int abort_it = run == 1;
        char log[32], mode[40];
        snprintf(log, sizeof log, "collapse%d.log", run);
        snprintf(od, sizeof od, "run.out_dir=%s/collapse%d", s_dir, run);
        snprintf(mode, sizeof mode, "run.on_collapse=%s", abort_it ? "abort" : "warn");
        char *args[] = {"ser", "local", "--workers", "2", "--config", (char *)cfg, "--batch-file",
                        batch, "--out", out, "--steps", "6", "--set", od, "--set", mode,
                        "--lr", "0.001", NULL};
        int rc = s_wait(s_start(log, args));
        if (run == 2) {  // healthy: no warning, std printed with every step
            assert_int_equal(rc, 0);
            assert_int_equal(s_log_count(log, "collapsing"), 0);
            assert_true(s_log_has(log, "step 5: loss") && s_log_has(log, " · std 0."));
            continue;
        }
        assert_int_equal(s_log_count(log, "the features are collapsing"), 1);
        assert_true(s_log_has(log, "step 2: the features are collapsing"));
        if (abort_it) {
            assert_int_equal(rc, 1);
            assert_true(s_log_has(log, "collapse (cls_std (the spread of the student's normalised"));
            assert_true(s_log_has(log, "below run.collapse_std = 0.1 for 3 steps in a row (now "
                                       "0.0000); run.on_collapse = abort): checkpointed at step 3"));
            assert_false(s_log_has(log, "step 3: loss"));  // stopped there
        } else {
            assert_int_equal(rc, 0);
            assert_true(s_log_has(log, "step 5: loss"));
        }
    }
    free(v);
}

// Files a killed checkpoint write left in dir (*.tmp.<pid>); a restart removes them.
static int s_count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

// The coordinator checkpoints every step and is SIGKILLed four times at random moments (so
// some kills land inside a checkpoint write) and restarted each time on the same port: the
// job ends bitwise equal to the uninterrupted run; no step is lost or applied twice.
static void test_coordinator_killed_during_checkpoints(void **state) {
    (void)state;
    char ref[128], out[128], ep[256], port[16], run[160], log[32], prev[32];
    snprintf(ref, sizeof ref, "%s/ref40.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/ckkill.safetensors", s_dir);
    snprintf(run, sizeof run, "%s/run-ckkill.safetensors", s_dir);
    s_reference(ref, "40");
    snprintf(s_extra, sizeof s_extra, "run.checkpoint_every=1");
    pid_t coord = s_coordinator_at(out, "40", "30000", ep, sizeof ep, "0", "ck0.log");
    const char *colon = strrchr(ep, ':');
    assert_non_null(colon);
    snprintf(port, sizeof port, "%s", colon + 1);
    s_worker(ep, "wk0");
    s_worker(ep, "wk1");
    srand(4242);
    int hits = 0;
    snprintf(prev, sizeof prev, "ck0.log");
    for (int i = 1; i <= 4; i++) {
        // Once this coordinator has completed a step, kill it 0-40 ms later.
        for (int t = 0; t < 3000 && !s_log_has(prev, "I step "); t++) s_sleep_ms(5);
        assert_true(s_log_has(prev, "I step "));
        assert_false(s_log_has(prev, "step 39:"));
        s_sleep_ms(rand() % 40);
        kill(coord, SIGKILL);
        s_wait(coord);
        hits += s_count_tmp(run) > 0;
        snprintf(log, sizeof log, "ck%d.log", i);
        coord = s_coordinator_at(out, "40", "30000", ep, sizeof ep, port, log);
        snprintf(prev, sizeof prev, "%s", log);
    }
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    int rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/ck4.log");
    assert_int_equal(rc, 0);
    for (int i = 1; i <= 4; i++) {
        snprintf(log, sizeof log, "ck%d.log", i);
        assert_true(s_log_has(log, "resumed from"));
    }
    print_message("4 kills, %d of them inside a checkpoint write\n", hits);
    s_assert_same_state(ref, out);
    s_kill_all();
}

// A data-loader service for the job (data.path = root) bound to tcp://127.0.0.1:port ("*" for
// an ephemeral one); its endpoint into ep.
static pid_t s_loader_set(const char *root, const char *port, const char *log, char *ep,
                          size_t n, const char *set) {
    char epf[128], dp[160], bind[64];
    snprintf(epf, sizeof epf, "%s/loader_endpoint", s_dir);
    snprintf(dp, sizeof dp, "data.path=%s", root);
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:%s", port);
    unlink(epf);
    char *args[] = {"ser", "dataloader", "--config", s_cfg, "--set", dp, "--bind", bind,
                    "--endpoint-file", epf, "--set", (char *)(uintptr_t)set, NULL};
    pid_t pid = s_start(log, args);
    assert_int_equal(s_read_line("loader_endpoint", ep, n, 30000), 0);
    return pid;
}

static pid_t s_loader(const char *root, const char *port, const char *log, char *ep, size_t n) {
    return s_loader_set(root, port, log, ep, n, "run.log_every=1");
}

static pid_t s_loader_worker(const char *ep, const char *lep, const char *name) {
    char log[64];
    snprintf(log, sizeof log, "%s.log", name);
    char *args[] = {"ser", "worker", "--coordinator", (char *)(uintptr_t)ep, "--loader",
                    (char *)(uintptr_t)lep, "--name", (char *)(uintptr_t)name, NULL};
    return s_start(log, args);
}

// Workers stream shards from a loader that is SIGKILLed mid-run and restarted on the same
// port 2.5 s later (fetches fail meanwhile; the tasks are retried): the run ends bitwise equal
// to one with an undisturbed loader.
static void test_loader_killed_and_restarted(void **state) {
    (void)state;
    char root[128], ref[128], out[128], ep[256], lep[256], lport[16], err[SER_ERR_LEN];
    snprintf(root, sizeof root, "%s/data", s_dir);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 8, 48, 40, 3, err), 0);
    // Two damaged JPEGs among them (cut before SOS; SOF0 0x0): their replacements depend only
    // on (seed, epoch, index), so the restarted loader still gives the same bits.
    char good[256], bad[256];
    snprintf(good, sizeof good, "%s/train/c00/i0000.jpg", root);
    size_t gn;
    uint8_t *g = ser_test_read_file(good, &gn);
    snprintf(bad, sizeof bad, "%s/train/c00/i0003x.jpg", root);
    ser_test_write_jpeg_cut(bad, g, gn);
    snprintf(bad, sizeof bad, "%s/train/c01/i0005x.jpg", root);
    ser_test_write_jpeg_sof0_zero(bad, g, gn);
    free(g);
    snprintf(ref, sizeof ref, "%s/loader_ref.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/loader_killed.safetensors", s_dir);
    snprintf(s_extra, sizeof s_extra, "data.path=%s", root);
    // The undisturbed run.
    pid_t ld = s_loader(root, "*", "loader0.log", lep, sizeof lep);
    pid_t coord = s_coordinator_at(ref, "30", "30000", ep, sizeof ep, "0", "lref.log");
    s_loader_worker(ep, lep, "wl0");
    int rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/lref.log");
    assert_int_equal(rc, 0);
    assert_true(s_log_has("loader0.log", "bad file") && s_log_has("loader0.log", "i0003x.jpg") &&
                s_log_has("loader0.log", "i0005x.jpg"));  // both were drawn and replaced
    s_kill_all();
    (void)ld;
    // The same job; its loader killed after step 3 and back a second later on the same port.
    ld = s_loader(root, "*", "loader1.log", lep, sizeof lep);
    const char *colon = strrchr(lep, ':');
    assert_non_null(colon);
    snprintf(lport, sizeof lport, "%s", colon + 1);
    coord = s_coordinator_at(out, "30", "30000", ep, sizeof ep, "0", "lkill.log");
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    s_loader_worker(ep, lep, "wl1");
    for (int t = 0; t < 3000 && !s_log_has("lkill.log", "step 3:"); t++) s_sleep_ms(5);
    assert_false(s_log_has("lkill.log", "step 29:"));
    // The status port lists the loader the worker fetches from (the coordinator learns it from
    // the worker's FORWARD_DONE): by its endpoint, with its own counters (by step 3 every index
    // was drawn: both damaged files found and replaced) and a fresh age.
    char url[64], *body = NULL;
    size_t blen = 0;
    int http = 0;
    s_status_url("lkill.log", url, sizeof url);
    assert_int_equal(ser_status_fetch(url, "/status?section=data", 5000, &http, &body, &blen, err),
                     SER_OK);
    assert_int_equal(http, 200);
    print_message("loaders on /status: %s\n", body);
    cJSON *doc = cJSON_Parse(body);
    const cJSON *da = cJSON_GetObjectItemCaseSensitive(doc, "data");
    assert_int_equal((int)cJSON_GetObjectItemCaseSensitive(da, "count")->valuedouble, 1);
    const cJSON *l0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(da, "loaders"), 0);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(l0, "address")->valuestring, lep);
    assert_true(cJSON_GetObjectItemCaseSensitive(l0, "shards_served")->valuedouble >= 16);
    assert_int_equal((int)cJSON_GetObjectItemCaseSensitive(l0, "bad_files")->valuedouble, 2);
    assert_true(cJSON_GetObjectItemCaseSensitive(l0, "replacements")->valuedouble >= 2);
    double lag = cJSON_GetObjectItemCaseSensitive(l0, "lag_steps")->valuedouble;
    assert_true(lag >= 0 && lag <= 3);
    const cJSON *age = cJSON_GetObjectItemCaseSensitive(l0, "last_heartbeat_age_ms");
    assert_true(cJSON_IsNumber(age) && age->valuedouble < 5000);
    cJSON_Delete(doc);
    free(body);
    kill(ld, SIGKILL);
    s_wait(ld);
    s_sleep_ms(2500);  // longer than a fetch's deadline (cluster.timeout_ms): fetches fail
    s_loader(root, lport, "loader2.log", lep, sizeof lep);
    rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/lkill.log /tmp/ser_cluster_*/wl1.log");
    assert_int_equal(rc, 0);
    s_assert_same_bits(ref, out);
    s_kill_all();
}

// Local views from the data loader (DINO, 2 local crops of the default size, 8 px here): 1 and
// 3 workers of `ser local` reach the same bits.
// `ser local` of the method on synthetic images (its own loader) with 1 and 3 workers, 6 steps:
// the same bits. tag names the run's files.
static void s_method_loader_1_and_3(const char *method, const char *sec, const char *tag) {
    char root[128], cfg[160], out[2][160], od[200], dp[160], err[SER_ERR_LEN];
    snprintf(root, sizeof root, "%s/%sdata", s_dir, tag);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 8, 48, 40, 3, err), 0);
    s_method_ini(cfg, sizeof cfg, method, sec);
    snprintf(dp, sizeof dp, "data.path=%s", root);
    const char *nws[2] = {"1", "3"};
    for (int i = 0; i < 2; i++) {
        snprintf(out[i], sizeof out[i], "%s/%s-loader%s.safetensors", s_dir, tag, nws[i]);
        snprintf(od, sizeof od, "run.out_dir=%s/%s-loader%s", s_dir, tag, nws[i]);
        char *args[] = {"ser", "local", "--workers", (char *)(uintptr_t)nws[i], "--config", cfg,
                        "--out", out[i], "--steps", "6", "--iters-per-epoch", "5", "--set", dp,
                        "--set", od, NULL};
        int rc = s_wait(s_start("mcloader.log", args));
        if (rc) system("tail -20 /tmp/ser_cluster_*/mcloader.log");
        assert_int_equal(rc, 0);
    }
    s_assert_same_bits(out[0], out[1]);
}

// The local SER pairs made by the loader (with 2 local queries): 1 and 3 workers, same bits,
// and a finite, positive SER term in every step's log line.
static void test_local_pairs_from_the_loader(void **state) {
    (void)state;
    s_method_loader_1_and_3("moco", "[ser]\nlocal_pairs = 2\n[data]\nlocal_crops = 2\n", "lpairs");
    char path[256], line[2048];
    snprintf(path, sizeof path, "%s/lpairs-loader3/metrics.jsonl", s_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss_equiv\":");
        assert_non_null(p);
        double v = strtod(p + strlen("\"loss_equiv\":"), NULL);
        assert_true(isfinite(v) && v > 0);
        lines++;
    }
    fclose(f);
    assert_int_equal(lines, 6);
}

static void test_local_views_from_the_loader(void **state) {
    (void)state;
    char sec[512];
    snprintf(sec, sizeof sec, "%s[data]\nlocal_crops = 2\n", s_dino_section);
    s_method_loader_1_and_3("dino", sec, "mc");
}

// AugSelf fed by the loader: the views' parameters it records reach the objective.
static void test_augself_from_the_loader(void **state) {
    (void)state;
    s_method_loader_1_and_3("augself", "[augself]\nhidden = 16\n", "augself");
    assert_true(s_log_has("augself-loader3/metrics.jsonl", "\"augself_color_mse\":"));
}

// DINO's own collapse test: a teacher temperature of 50 flattens the teacher's output (its
// entropy at ln(out_dim)) while the features stay spread (cls_std healthy): one warning naming
// dino_teacher_entropy after run.collapse_steps steps; at the default temperatures, none.
static void test_dino_collapse_monitor(void **state) {
    (void)state;
    char cfg[160], sec[512], batch[160], out[160], od[200];
    size_t n = (size_t)8 * 3 * 16 * 16;
    float *v0 = malloc(n * 4), *v1 = malloc(n * 4);
    ser_test_fill_uniform(v0, n, 8, -2, 2);
    ser_test_fill_uniform(v1, n, 9, -2, 2);
    snprintf(batch, sizeof batch, "%s/dcollapse_batch.safetensors", s_dir);
    s_write_inv_batch(batch, 8, 16, v0, v1);
    free(v0), free(v1);
    for (int hot = 1; hot >= 0; hot--) {
        snprintf(sec, sizeof sec, "%s[ser]\nenabled = false\n[run]\ncollapse_steps = 3\n%s",
                 s_dino_section, hot ? "[dino]\nteacher_temp = 50\nteacher_temp_final = 50\n" : "");
        s_method_ini(cfg, sizeof cfg, "dino", sec);
        snprintf(out, sizeof out, "%s/dcollapse%d.safetensors", s_dir, hot);
        snprintf(od, sizeof od, "run.out_dir=%s/dcollapse%d", s_dir, hot);
        char log[32];
        snprintf(log, sizeof log, "dcollapse%d.log", hot);
        char *args[] = {"ser", "local", "--workers", "1", "--config", cfg, "--batch-file", batch,
                        "--out", out, "--steps", "6", "--iters-per-epoch", "5", "--set", od, NULL};
        int rc = s_wait(s_start(log, args));
        if (rc) system("tail -5 /tmp/ser_cluster_*/dcollapse*.log");
        assert_int_equal(rc, 0);
        assert_int_equal(s_log_count(log, "the features are collapsing"), hot);
        assert_int_equal(s_log_count(log, "dino_teacher_entropy"), hot);
        if (hot) assert_true(s_log_has(log, "(the teacher's output is uniform"));
    }
}

// A joined worker whose FORWARD_DONE claims 2 equivariant samples for a shard the job's layout
// gives none: its contribution is dropped, the shard computed elsewhere, and after its second
// such answer it gets no more work; the job completes bitwise equal to `ser step`.
static void test_rogue_forward_done(void **state) {
    (void)state;
    char ref[128], out[128], ep[256], err[SER_ERR_LEN];
    snprintf(ref, sizeof ref, "%s/ref3rogue.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/rogue.safetensors", s_dir);
    s_reference(ref, "3");
    pid_t coord = s_coordinator(out, "3", "30000", ep, sizeof ep);
    void *ctx = zmq_ctx_new(), *d = s_fake_join(ctx, ep, "rogue");
    s_worker(ep, "wv");
    Ser__Envelope e;
    // Rows of a shard of 2 images, 24 wide; 2 equivariant samples on 4 x 4 grids.
    static float rows[2 * 24], maps[2 * 16 * 24], g[2 * 2 * 5];
    for (int i = 0; i < 4; i++) g[i * 5 + 3] = g[i * 5 + 4] = 4;
    int answered = 0, rc = -1;
    for (int t = 0; t < 600; t++) {
        ser_wire_msg m;
        while (ser_wire_recv(d, 0, NULL, &m, err) == SER_OK) {
            if (m.env->type == SER__MSG_TYPE__MSG_FORWARD) {
                ser__envelope__init(&e);
                e.type = SER__MSG_TYPE__MSG_FORWARD_DONE;
                e.job_id = "ser";
                e.step = m.env->step, e.shard = m.env->shard, e.attempt = m.env->attempt;
                ser_wire_tensor tt[9] = {
                    {"qcls0", 2, {2, 24}, rows}, {"qcls1", 2, {2, 24}, rows},
                    {"kcls0", 2, {2, 24}, rows}, {"kcls1", 2, {2, 24}, rows},
                    {"g", 3, {2, 2, 5}, g},
                    {"qmap0", 2, {32, 24}, maps}, {"qmap1", 2, {32, 24}, maps},
                    {"kmap0", 2, {32, 24}, maps}, {"kmap1", 2, {32, 24}, maps}};
                if (m.env->shard < 2) {  // shards 0 and 1 hold no equivariant sample
                    ser_wire_send(d, NULL, &e, tt, 9);
                    answered++;
                }
            }
            ser_wire_msg_free(&m);
        }
        if (s_fake_beat(d, coord, &rc)) break;
    }
    zmq_close(d);
    zmq_ctx_term(ctx);
    if (rc) system("tail -30 /tmp/ser_cluster_*/coord.log");
    assert_int_equal(rc, 0);
    assert_true(answered >= 2);
    assert_true(s_log_has("coord.log", "from worker rogue dropped: another number of equivariant "
                                       "samples than the job's layout puts in this shard"));
    assert_true(s_log_has("coord.log", "worker rogue sent 2 contributions that did not match"));
    s_assert_same_state(ref, out);
    s_kill_all();
}

// A loader serving another configuration (another data.seed: another config hash) refuses
// every shard: the workers say so, the coordinator names the reason, gives them no more work
// and stops the job with the reason, in bounded time, instead of resending forever.
static void test_loader_of_another_config(void **state) {
    (void)state;
    char root[128], out[128], ep[256], lep[256], err[SER_ERR_LEN];
    snprintf(root, sizeof root, "%s/data_mismatch", s_dir);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 8, 48, 40, 3, err), 0);
    snprintf(out, sizeof out, "%s/mismatch.safetensors", s_dir);
    s_loader_set(root, "*", "loader_mm.log", lep, sizeof lep, "data.seed=7");
    snprintf(s_extra, sizeof s_extra, "data.path=%s", root);
    pid_t coord = s_coordinator_at(out, "5", "30000", ep, sizeof ep, "0", "mismatch.log");
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    s_loader_worker(ep, lep, "wm0");
    s_loader_worker(ep, lep, "wm1");
    time_t t0 = time(NULL);
    int rc = s_wait(coord);
    print_message("the job stopped after %lld s\n", (long long)(time(NULL) - t0));
    assert_int_equal(rc, 1);
    assert_true(time(NULL) - t0 < 60);
    assert_true(s_log_has("mismatch.log", "cannot compute shard"));
    assert_true(s_log_has("mismatch.log", "gets no more work: its data loader refuses"));
    assert_true(s_log_has("mismatch.log", "no usable worker: every worker's data loader refuses"));
    assert_int_equal(access(out, F_OK), -1);
    s_kill_all();
}

// --- several hosts: network namespaces ---------------------------------------------------------
// Coordinator, loader and two workers each in a network namespace of their own (ip netns), on
// a bridge in 10.213.N.0/24: separate hosts as far as the network goes. The run must equal,
// bitwise, the same job on 127.0.0.1 with one worker. Needs root (CAP_NET_ADMIN) and iproute2;
// otherwise the test is skipped and says why.
static char s_ns[4][24], s_br[16];
static int s_net;

static void s_netns_down(void) {
    char cmd[512];
    for (int i = 0; i < 4; i++) {
        snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null", s_ns[i]);
        if (s_ns[i][0] && system(cmd)) {}
    }
    snprintf(cmd, sizeof cmd, "ip link del %s 2>/dev/null", s_br);
    if (s_br[0] && system(cmd)) {}
}

// Builds the namespaces; returns 0, or -1 with the failing command in why.
static int s_netns_up(char *why, size_t n) {
    int id = (int)(getpid() % 250) + 1;
    s_net = id;
    snprintf(s_br, sizeof s_br, "serbr%d", id);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ip link add %s type bridge && ip link set %s up", s_br, s_br);
    const char *role[4] = {"c", "l", "w1", "w2"};
    if (system(cmd)) goto fail;
    for (int i = 0; i < 4; i++) {
        snprintf(s_ns[i], sizeof s_ns[i], "ser%d%s", id, role[i]);
        snprintf(cmd, sizeof cmd,
                 "ip netns add %s && ip link add v%d%s type veth peer name p%d%s && "
                 "ip link set p%d%s netns %s && ip link set v%d%s master %s && ip link set v%d%s up && "
                 "ip netns exec %s ip addr add 10.213.%d.%d/24 dev p%d%s && "
                 "ip netns exec %s ip link set p%d%s up && ip netns exec %s ip link set lo up",
                 s_ns[i], id, role[i], id, role[i], id, role[i], s_ns[i], id, role[i], s_br, id,
                 role[i], s_ns[i], id, i + 2, id, role[i], s_ns[i], id, role[i], s_ns[i]);
        if (system(cmd)) goto fail;
    }
    return 0;
fail:
    snprintf(why, n, "cannot build network namespaces (needs root and iproute2): `%.200s` failed", cmd);
    s_netns_down();
    return -1;
}

static void test_netns_hosts(void **state) {
    (void)state;
    char why[300];
    if (s_netns_up(why, sizeof why)) {
        print_message("SKIPPED: %s\n", why);
        skip();
    }
    char root[128], ref[128], out[128], ep[256], lep[256], dp[160], err[SER_ERR_LEN];
    snprintf(root, sizeof root, "%s/netdata", s_dir);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 8, 48, 40, 5, err), 0);
    snprintf(ref, sizeof ref, "%s/net_ref.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/net_hosts.safetensors", s_dir);
    // The same job on 127.0.0.1, one worker.
    snprintf(s_extra, sizeof s_extra, "data.path=%s", root);
    s_loader(root, "*", "nloader0.log", lep, sizeof lep);
    pid_t coord = s_coordinator_at(ref, "12", "30000", ep, sizeof ep, "0", "nref.log");
    s_loader_worker(ep, lep, "nw0");
    int rc = s_wait(coord);
    assert_int_equal(rc, 0);
    s_kill_all();
    // Four hosts: the loader at .3, the coordinator at .2, workers at .4 and .5.
    char lbind[64], cset[64], od[160], epf[128], lepf[128];
    snprintf(lbind, sizeof lbind, "tcp://10.213.%d.3:29555", s_net);
    snprintf(lep, sizeof lep, "tcp://10.213.%d.3:29555", s_net);
    snprintf(dp, sizeof dp, "data.path=%s", root);
    snprintf(lepf, sizeof lepf, "%s/net_lep", s_dir);
    // Across hosts the job runs encrypted and authenticated: one job key (ser keygen).
    char key[160], kset[200];
    snprintf(key, sizeof key, "%s/net.key", s_dir);
    assert_int_equal(ser_curve_keygen(key, err), 0);
    snprintf(kset, sizeof kset, "cluster.curve_key=%s", key);
    char *largs[] = {"ser", "dataloader", "--config", s_cfg, "--set", dp, "--set", kset, "--bind",
                     lbind, "--endpoint-file", lepf, NULL};
    s_start_in(s_ns[1], "nloader.log", largs);
    assert_int_equal(s_read_line("net_lep", why, sizeof why, 30000), 0);
    snprintf(cset, sizeof cset, "cluster.coordinator=10.213.%d.2", s_net);
    snprintf(od, sizeof od, "run.out_dir=%s/run-net", s_dir);
    snprintf(epf, sizeof epf, "%s/net_ep", s_dir);
    char *cargs[] = {"ser", "coordinator", "--config", s_cfg, "--weights", s_w, "--out", out,
                     "--steps", "12", "--set", cset, "--set", od, "--set", dp, "--set",
                     "run.checkpoint_every=5", "--set", kset, "--endpoint-file", epf,
                     "--wait-workers-ms", "30000", COMMON, NULL};
    coord = s_start_in(s_ns[0], "ncoord.log", cargs);
    assert_int_equal(s_read_line("net_ep", ep, sizeof ep, 30000), 0);
    assert_non_null(strstr(ep, "10.213."));
    for (int i = 0; i < 2; i++) {
        char name[8], log[16];
        snprintf(name, sizeof name, "nh%d", i);
        snprintf(log, sizeof log, "%s.log", name);
        char *wargs[] = {"ser", "worker", "--coordinator", ep, "--loader", lep, "--name", name, NULL};
        setenv("SER_CURVE_KEY", key, 1);  // workers take their key from the environment
        s_start_in(s_ns[2 + i], log, wargs);
        unsetenv("SER_CURVE_KEY");
    }
    rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/ncoord.log /tmp/ser_cluster_*/nh0.log");
    s_kill_all();
    s_netns_down();
    assert_int_equal(rc, 0);
    assert_true(s_log_has("ncoord.log", "worker nh0 joined") && s_log_has("ncoord.log", "worker nh1 joined"));
    assert_true(s_log_has("ncoord.log", "CURVE on"));
    s_assert_same_bits(ref, out);
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
}

// CURVE: a worker holding another key is refused (the coordinator names its key) while one
// with the job's key joins and the job completes; without a key, a bind off the loopback is
// refused unless cluster.plaintext = true; a malformed key file is named.
static void test_curve_keys(void **state) {
    (void)state;
    char key[120], other[120], kset[180], out[160], ep[256], err[SER_ERR_LEN];
    snprintf(key, sizeof key, "%s/job.key", s_dir);
    snprintf(other, sizeof other, "%s/other.key", s_dir);
    assert_int_equal(ser_curve_keygen(key, err), 0);
    assert_int_equal(ser_curve_keygen(other, err), 0);
    assert_int_not_equal(ser_curve_keygen(key, err), 0);  // never overwrites a key
    snprintf(kset, sizeof kset, "cluster.curve_key=%s", key);
    snprintf(out, sizeof out, "%s/curve.safetensors", s_dir);
    snprintf(s_extra, sizeof s_extra, "%s", kset);
    pid_t coord = s_coordinator_at(out, "3", "20000", ep, sizeof ep, "0", "curve.log");
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    // Another keypair that knows the server's public key: authenticated, not allowed.
    char pub[200];
    snprintf(pub, sizeof pub, "%s.pub", key);
    setenv("SER_CURVE_KEY", other, 1);
    setenv("SER_CURVE_SERVER_KEY", pub, 1);
    s_worker(ep, "intruder");
    for (int t = 0; t < 2000 && !s_log_has("curve.log", "refused a client with key"); t++) s_sleep_ms(5);
    assert_true(s_log_has("curve.log", "refused a client with key"));
    // A keypair that does not even know the server's key fails the handshake itself.
    unsetenv("SER_CURVE_SERVER_KEY");
    s_worker(ep, "stranger");
    setenv("SER_CURVE_KEY", key, 1);
    s_worker(ep, "member");
    unsetenv("SER_CURVE_KEY");
    int rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/curve.log");
    assert_int_equal(rc, 0);
    assert_true(s_log_has("curve.log", "worker member joined"));
    assert_true(s_log_has("curve.log", "; 2 ZeroMQ I/O threads"));  // the default with CURVE
    assert_false(s_log_has("curve.log", "worker intruder joined"));
    assert_false(s_log_has("curve.log", "worker stranger joined"));
    s_kill_all();
    // Keys per process: the coordinator allows other.key's public key (a bare key line); a
    // worker holding other.key and the server's public key joins.
    char allow[160], aset[200], pset2[200], out2[160], line[128];
    snprintf(allow, sizeof allow, "%s/allow.txt", s_dir);
    snprintf(line, sizeof line, "%s.pub", other);
    FILE *pf = fopen(line, "r");
    assert_non_null(pf);
    char word[16], okey[64];
    assert_int_equal(fscanf(pf, "%15s %63s", word, okey), 2);
    fclose(pf);
    pf = fopen(allow, "w");
    assert_non_null(pf);
    fprintf(pf, "# workers of this job\n%s\n", okey);
    fclose(pf);
    snprintf(aset, sizeof aset, "cluster.curve_allow=%s", allow);
    snprintf(pset2, sizeof pset2, "%s.pub", key);
    snprintf(out2, sizeof out2, "%s/curve2.safetensors", s_dir);
    char epf2[160];
    snprintf(epf2, sizeof epf2, "%s/endpoint2", s_dir);
    char od2[200];  // its own run directory: a checkpoint there would leave no step to run
    snprintf(od2, sizeof od2, "run.out_dir=%s/curve2run", s_dir);
    char *aargs[] = {"ser", "coordinator", "--config", s_cfg, "--weights", s_w, "--out", out2,
                     "--steps", "1", "--set", kset, "--set", aset, "--set", od2, "--set",
                     "cluster.port=0", "--endpoint-file", epf2, "--wait-workers-ms", "20000",
                     COMMON, NULL};
    coord = s_start("curve2.log", aargs);
    assert_int_equal(s_read_line("endpoint2", ep, sizeof ep, 30000), 0);
    setenv("SER_CURVE_KEY", other, 1);
    setenv("SER_CURVE_SERVER_KEY", pset2, 1);
    s_worker(ep, "listed");
    unsetenv("SER_CURVE_KEY");
    unsetenv("SER_CURVE_SERVER_KEY");
    assert_int_equal(s_wait(coord), 0);
    assert_true(s_log_has("curve2.log", "worker listed joined"));
    assert_int_equal(access(out2, F_OK), 0);  // it trained its step
    s_kill_all();
    // Plaintext off the loopback: refused with the way out named; allowed when asked for.
    char *pargs[] = {"ser", "coordinator", "--config", s_cfg, "--steps", "1", "--set",
                     "cluster.coordinator=0.0.0.0", "--set", "cluster.port=0", NULL};
    assert_int_equal(s_wait(s_start("plain.log", pargs)), 1);
    assert_true(s_log_has("plain.log", "refusing plaintext on tcp://0.0.0.0"));
    assert_true(s_log_has("plain.log", "cluster.plaintext = true"));
    // A key file that is not one.
    char bad[160], bset[200];
    snprintf(bad, sizeof bad, "%s/bad.key", s_dir);
    FILE *f = fopen(bad, "w");
    assert_non_null(f);
    fputs("public not-a-key\n", f);
    fclose(f);
    snprintf(bset, sizeof bset, "cluster.curve_key=%s", bad);
    char *bargs[] = {"ser", "coordinator", "--config", s_cfg, "--steps", "1", "--set", bset, NULL};
    assert_int_not_equal(s_wait(s_start("badkey.log", bargs)), 0);
    assert_true(s_log_has("badkey.log", "not a 40-character Z85 key"));
}

// Starts `start` with SER_FAULT=plan in its environment only.
static pid_t s_with_faults(const char *plan, pid_t (*start)(const char *, const char *),
                           const char *a, const char *b) {
    setenv("SER_FAULT", plan, 1);
    pid_t pid = start(a, b);
    unsetenv("SER_FAULT");
    return pid;
}

// Messages lost, duplicated and late both ways, a task dropped for want of its parameters and
// a worker killed holding its activations: the run still equals `ser step`, bitwise.
static void test_fault_plan(void **state) {
    (void)state;
    char ref[128], out[128], ep[256];
    snprintf(ref, sizeof ref, "%s/ref10.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/faults.safetensors", s_dir);
    s_reference(ref, "10");
    // The first PARAMS (to whichever worker joins first) waits a second, so that both workers
    // are in the job from step 0: a step takes ~10 ms, and the rules below name steps.
    setenv("SER_FAULT", "delay:PARAMS@0:1000;drop:BACKWARD@3;dup:FORWARD@2;drop:PARAMS@6;"
           "delay:BACKWARD@7:300", 1);
    pid_t coord = s_coordinator(out, "10", "30000", ep, sizeof ep);
    unsetenv("SER_FAULT");
    s_with_faults("drop:FORWARD_DONE@9;dup:BACKWARD_DONE@1;delay:FORWARD_DONE@5:400;"
                  "drop:BACKWARD_DONE@8", s_worker, ep, "wf0");
    // Malformed rules are named and ignored; the good one beside them still fires.
    s_with_faults("bogus:FORWARD@1;drop:NOPE@2;delay:PARAMS@1;drop:PARAMS@3x;dup:PARAMS@2:5;"
                  "bad:PARAMS@2;drop:LOADER_SHARD@2;kill:BACKWARD@4", s_worker, ep, "wf1");
    int rc = s_wait(coord);
    if (rc) system("tail -30 /tmp/ser_cluster_*/coord.log");
    assert_int_equal(rc, 0);
    s_assert_same_bits(ref, out);
    assert_true(s_log_has("coord.log", "SER_FAULT: dropping"));
    assert_true(s_log_has("wf0.log", "SER_FAULT: duplicating"));
    assert_true(s_log_has("wf1.log", "SER_FAULT: killing"));
    assert_true(s_log_has("wf1.log", "SER_FAULT: rule 'bogus:FORWARD@1' ignored"));
    assert_true(s_log_has("wf1.log", "SER_FAULT: rule 'drop:NOPE@2' ignored"));
    assert_true(s_log_has("wf1.log", "SER_FAULT: rule 'delay:PARAMS@1' ignored"));
    assert_true(s_log_has("wf1.log", "SER_FAULT: rule 'drop:PARAMS@3x' ignored"));
    assert_true(s_log_has("wf1.log", "SER_FAULT: rule 'dup:PARAMS@2:5' ignored"));
    assert_true(s_log_has("wf1.log", "SER_FAULT: rule 'bad:PARAMS@2' ignored"));  // loader only
    assert_true(s_log_has("wf1.log", "SER_FAULT: rule 'drop:LOADER_SHARD@2' ignored"));
    assert_true(s_log_has("coord.log", "worker wf1 lost"));
    assert_true(s_log_has("coord.log", "sending it again"));
    s_kill_all();
}

// The chains break: a holder killed as its REDUCE arrives (step 3: its shards are computed
// again by a survivor and the chain runs again), a chunk of the running sum lost on its way
// (step 6, found by the task deadline: the chain runs again), chunks of the sum duplicated and
// late (steps 8, 9). A chunk of the parameters lost on its way to the last worker (step 5),
// one corrupted (step 7, caught by the hash: the coordinator sends that worker PARAMS itself),
// one duplicated and one late (steps 4, 8). The run still equals `ser step`, bitwise, every
// step summed by the chain. The workers join in order, so that wc0 is the first of the chains
// and passes the parameters on.
static void test_chain_breaks(void **state) {
    (void)state;
    char ref[128], out[128], ep[256], cfg[120], keep[128];
    snprintf(ref, sizeof ref, "%s/ref10.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/chain_faults.safetensors", s_dir);
    s_reference(ref, "10");
    s_chain_job(cfg, sizeof cfg, "chain_faults", 4096, "task_timeout_ms = 2000\n");
    snprintf(keep, sizeof keep, "%s", s_cfg);
    snprintf(s_cfg, sizeof s_cfg, "%s", cfg);
    setenv("SER_FAULT", "delay:PARAMS@0:1000", 1);  // all three workers in from step 0
    pid_t coord = s_coordinator(out, "10", "30000", ep, sizeof ep);
    unsetenv("SER_FAULT");
    snprintf(s_cfg, sizeof s_cfg, "%s", keep);
    s_with_faults("drop:PARAMS_CHUNK@5;nan:PARAMS_CHUNK@7;dup:PARAMS_CHUNK@4;"
                  "delay:PARAMS_CHUNK@8:300;dup:PARTIAL@8;delay:PARTIAL@9:300", s_worker, ep, "wc0");
    for (int t = 0; t < 200 && !s_log_has("coord.log", "worker wc0 joined"); t++) s_sleep_ms(25);
    s_with_faults("kill:REDUCE@3", s_worker, ep, "wc1");
    for (int t = 0; t < 200 && !s_log_has("coord.log", "worker wc1 joined"); t++) s_sleep_ms(25);
    s_with_faults("drop:PARTIAL@6", s_worker, ep, "wc2");
    int rc = s_wait(coord);
    if (rc) system("tail -30 /tmp/ser_cluster_*/coord.log");
    assert_int_equal(rc, 0);
    s_assert_same_bits(ref, out);
    assert_true(s_log_has("wc1.log", "SER_FAULT: killing"));
    assert_true(s_log_has("wc2.log", "SER_FAULT: dropping"));
    assert_true(s_log_has("wc0.log", "SER_FAULT: dropping PARAMS_CHUNK of step 5"));
    assert_true(s_log_has("wc0.log", "SER_FAULT: poisoning"));
    assert_true(s_log_has("wc2.log", "step 7's parameters from the chain do not match their hash"));
    // wc1 dies as its REDUCE arrives; the BACKWARD_DONEs it had just queued may die with it
    // (then its shards are computed again in the backward phase and the first round goes to the
    // new holders), or have left (then the chain finds the holder gone and runs again).
    assert_true(s_log_has("coord.log", "step 3: worker wc1 lost"));
    assert_true(s_log_has("coord.log", "chunks of the sum after"));
    assert_true(s_log_has("coord.log", "every holder is there, the chain runs again (round 2)"));
    assert_true(s_log_has("coord.log", "10 steps summed along the workers' chain ("));
    assert_true(s_log_has("coord.log", "tasks), 0 by the coordinator"));
    assert_int_equal(s_log_count("wc0.log", "SER_FAULT: duplicating"), 2);
    assert_int_equal(s_log_count("wc0.log", "SER_FAULT: delaying"), 2);
    s_kill_all();
}

// The whole job is suspended (SIGSTOP to the coordinator and both workers, longer than the
// liveness timeout) and resumed: the coordinator does not blame the workers for its own
// absence (no worker lost, no strike), and the run still equals `ser step`, bitwise.
static void test_whole_job_suspended(void **state) {
    (void)state;
    char ref[128], out[128], ep[256];
    snprintf(ref, sizeof ref, "%s/ref60s.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/suspended.safetensors", s_dir);
    s_reference(ref, "60");
    pid_t coord = s_coordinator(out, "60", "30000", ep, sizeof ep);
    pid_t w0 = s_worker(ep, "wz0"), w1 = s_worker(ep, "wz1");
    for (int t = 0; t < 600 && !s_log_has("coord.log", "step 3:"); t++) s_sleep_ms(5);
    kill(coord, SIGSTOP), kill(w0, SIGSTOP), kill(w1, SIGSTOP);
    s_sleep_ms(2500);  // cluster.timeout_ms is 1500
    kill(coord, SIGCONT), kill(w0, SIGCONT), kill(w1, SIGCONT);
    int rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/coord.log");
    assert_int_equal(rc, 0);
    s_assert_same_bits(ref, out);
    assert_true(s_log_has("coord.log", "this coordinator did not run for"));
    assert_false(s_log_has("coord.log", "lost (last heard"));
    assert_false(s_log_has("coord.log", "missed its task deadline"));
    s_kill_all();
}

// A chain that breaks 3 rounds in a row (every chunk of the sum lost each round: one worker,
// 3 chunks a round, 9 drops): the coordinator sums that step itself from the kept gradients,
// and the run still equals `ser step`, bitwise.
static void test_chain_gives_up(void **state) {
    (void)state;
    char ref[128], out[160], cfg[120], od[200];
    snprintf(ref, sizeof ref, "%s/ref10.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/chain_gives_up.safetensors", s_dir);
    if (access(ref, F_OK) != 0) s_reference(ref, "10");
    s_chain_job(cfg, sizeof cfg, "chain_gives_up", 8192, "task_timeout_ms = 800\n");
    snprintf(od, sizeof od, "run.out_dir=%s/chain_gives_up", s_dir);
    char *args[] = {"ser", "local", "--workers", "1", "--config", cfg, "--weights", s_w,
                    "--batch-file", s_b, "--out", out, "--steps", "10", "--set", od, COMMON, NULL};
    char plan[400] = "";
    for (int i = 0; i < 9; i++) strcat(plan, i ? ";drop:PARTIAL@4" : "drop:PARTIAL@4");
    setenv("SER_FAULT", plan, 1);
    int rc = s_wait(s_start("chain_gives_up.log", args));
    unsetenv("SER_FAULT");
    if (rc) system("tail -20 /tmp/ser_cluster_*/chain_gives_up.log");
    assert_int_equal(rc, 0);
    s_assert_same_bits(ref, out);
    assert_int_equal(s_log_count("chain_gives_up.log", "SER_FAULT: dropping PARTIAL of step 4"), 9);
    assert_true(s_log_has("chain_gives_up.log", "step 4: the chain's sum broke 3 times"));
    assert_true(s_log_has("chain_gives_up.log", "9 steps summed along the workers' chain (2 of its "
                                                "rounds broke and were run again;"));
    assert_true(s_log_has("chain_gives_up.log", "tasks), 1 by the coordinator"));
}

// A worker returns a NaN in its gradient: the coordinator names the shard and the worker,
// and per run.nonfinite aborts (exit 1, nothing applied) or skips the step and goes on.
static void test_nonfinite_gradient(void **state) {
    (void)state;
    char out[128], ep[256];
    snprintf(out, sizeof out, "%s/nan_abort.safetensors", s_dir);
    pid_t coord = s_coordinator_at(out, "4", "30000", ep, sizeof ep, "0", "nan_abort.log");
    s_with_faults("nan:BACKWARD_DONE@1", s_worker, ep, "wn0");
    assert_int_equal(s_wait(coord), 1);
    assert_true(s_log_has("wn0.log", "SER_FAULT: poisoning"));
    assert_true(s_log_has("nan_abort.log", "step 1: non-finite gradient from shard 0 (worker wn0"));
    assert_true(s_log_has("nan_abort.log", "(run.nonfinite = abort)"));
    assert_true(s_log_has("nan_abort.log", "checkpoint /"));  // step 0's result is kept
    assert_int_equal(access(out, F_OK), -1);  // no result written for an aborted job
    s_kill_all();

    snprintf(out, sizeof out, "%s/nan_skip.safetensors", s_dir);
    snprintf(s_extra, sizeof s_extra, "run.nonfinite=skip");
    coord = s_coordinator_at(out, "5", "30000", ep, sizeof ep, "0", "nan_skip.log");
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    s_with_faults("nan:BACKWARD_DONE@2", s_worker, ep, "wn1");
    int rc = s_wait(coord);
    if (rc) system("tail -20 /tmp/ser_cluster_*/nan_skip.log");
    assert_int_equal(rc, 0);
    assert_true(s_log_has("nan_skip.log", "step 2: non-finite gradient from shard 0 (worker wn1"));
    assert_true(s_log_has("nan_skip.log", "skipped (run.nonfinite = skip)"));
    assert_true(s_log_has("nan_skip.log", "step 4: loss"));
    // Every weight and AdamW moment stays finite.
    char err[SER_ERR_LEN];
    ser_st_file *f = NULL;
    assert_int_equal(ser_st_open(&f, out, err), 0);
    int bad = 0;
    for (int i = 0; i < ser_st_count(f); i++) {
        const ser_st_entry *x = ser_st_at(f, i);
        if (x->dtype != SER_DT_F32 || strncmp(x->name, "loss", 4) == 0) continue;
        const float *v = x->data;
        for (size_t j = 0; j < x->nbytes / 4; j++) bad += !isfinite(v[j]);
    }
    assert_int_equal(bad, 0);
    ser_st_destroy(&f);
    s_kill_all();

    // With the gradient chain (the worker keeps its gradient and checks it itself): the same
    // message, naming the shard and the worker.
    char cfg[120], keep[128];
    s_chain_job(cfg, sizeof cfg, "nan_chain", 4096, "");
    snprintf(keep, sizeof keep, "%s", s_cfg);
    snprintf(s_cfg, sizeof s_cfg, "%s", cfg);
    snprintf(out, sizeof out, "%s/nan_chain.safetensors", s_dir);
    coord = s_coordinator_at(out, "4", "30000", ep, sizeof ep, "0", "nan_chain.log");
    snprintf(s_cfg, sizeof s_cfg, "%s", keep);
    s_with_faults("nan:BACKWARD_DONE@1", s_worker, ep, "wn3");
    assert_int_equal(s_wait(coord), 1);
    assert_true(s_log_has("wn3.log", "SER_FAULT: poisoning (NaN) the data of BACKWARD_DONE of step 1"));
    assert_true(s_log_has("nan_chain.log", "step 1: non-finite gradient from shard 0 (worker wn3, element 0)"));
    s_kill_all();

    // Non-finite forward rows: the loss is non-finite, and the message names the shard and
    // the worker they came from.
    snprintf(out, sizeof out, "%s/nan_rows.safetensors", s_dir);
    coord = s_coordinator_at(out, "4", "30000", ep, sizeof ep, "0", "nan_rows.log");
    s_with_faults("nan:FORWARD_DONE@1", s_worker, ep, "wn2");
    assert_int_equal(s_wait(coord), 1);
    assert_true(s_log_has("nan_rows.log", "step 1: non-finite"));
    assert_true(s_log_has("nan_rows.log", "(non-finite forward rows from shard 0, worker wn2)"));
    s_kill_all();
}

static void test_all_workers_gone(void **state) {
    (void)state;
    char out[128], ep[256];
    snprintf(out, sizeof out, "%s/gone.safetensors", s_dir);
    pid_t coord = s_coordinator(out, "50", "3000", ep, sizeof ep);
    pid_t w = s_worker(ep, "wd");
    for (int t = 0; t < 600 && !s_log_has("coord.log", "step 0:"); t++) s_sleep_ms(50);
    kill(w, SIGKILL);
    s_wait(w);
    time_t t0 = time(NULL);
    int rc = s_wait(coord);
    assert_int_equal(rc, 1);
    assert_true(time(NULL) - t0 < 30);
    assert_true(s_log_has("coord.log", "worker wd lost"));
    assert_true(s_log_has("coord.log", "no live worker"));
}

// 1 when DIR/log holds needle within ms milliseconds.
static int s_log_within(const char *log, const char *needle, int ms) {
    for (int t = 0; t < ms; t += 10) {
        if (s_log_has(log, needle)) return 1;
        s_sleep_ms(10);
    }
    return s_log_has(log, needle);
}

// A worker that cannot reach its coordinator says why within 2 s, once: a closed port, a host
// name that does not resolve, a CURVE coordinator when the worker has no key (ZeroMQ alone
// retries in silence). A malformed endpoint is refused at start with what is expected.
static void test_worker_names_why_it_cannot_connect(void **state) {
    (void)state;
    char ep[64], want[200], key[120], kset[180], out[160], cep[256], err[SER_ERR_LEN];
    int port = ser_test_closed_port();
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    pid_t refused = s_worker(ep, "wrefused");
    pid_t nohost = s_worker("tcp://no-such-host.invalid:5555", "wnohost");
    snprintf(key, sizeof key, "%s/diag.key", s_dir);
    assert_int_equal(ser_curve_keygen(key, err), 0);
    snprintf(kset, sizeof kset, "cluster.curve_key=%s", key);
    snprintf(out, sizeof out, "%s/diag.safetensors", s_dir);
    snprintf(s_extra, sizeof s_extra, "%s", kset);
    pid_t coord = s_coordinator_at(out, "1", "20000", cep, sizeof cep, "0", "diagcoord.log");
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    pid_t nokey = s_worker(cep, "wnokey");  // this process has no SER_CURVE_KEY
    snprintf(want, sizeof want, "worker wrefused: tcp://127.0.0.1:%d: connection refused (nothing "
             "listening on 127.0.0.1:%d?)", port, port);
    assert_true(s_log_within("wrefused.log", want, 2000));
    assert_true(s_log_within("wnohost.log", "worker wnohost: tcp://no-such-host.invalid:5555: host "
                             "not found: cannot resolve 'no-such-host.invalid'", 2000));
    assert_true(s_log_within("wnokey.log", ": CURVE handshake failed: the server uses CURVE and "
                             "this process has no key (SER_CURVE_KEY is unset: set SER_CURVE_KEY / "
                             "SER_CURVE_SERVER_KEY)", 2000));
    // Once, not at every retry of ZeroMQ (every ~100 ms): again only after 30 s, with a count.
    s_sleep_ms(1500);
    assert_int_equal(s_log_count("wrefused.log", "connection refused"), 1);
    assert_int_equal(s_log_count("wnohost.log", "host not found"), 1);
    // The CURVE cause once. Under load the first failed handshake can read as a server that hung
    // up (EPIPE, before ZeroMQ names the CURVE error): a different cause, logged once too.
    assert_int_equal(s_log_count("wnokey.log", "CURVE handshake failed"), 1);
    assert_true(s_log_count("wnokey.log", "handshake failed") <= 2);
    assert_int_equal(s_log_count("wnokey.log", "server hung up"),
                     s_log_count("wnokey.log", "handshake failed") - 1);
    assert_false(s_log_has("wnokey.log", "worker wnokey joined"));
    pid_t kids[4] = {refused, nohost, nokey, coord};
    for (int i = 0; i < 4; i++) {
        kill(kids[i], SIGKILL);
        s_wait(kids[i]);
    }
    // A malformed endpoint: named with what is expected, and the worker exits.
    assert_int_not_equal(s_wait(s_worker("localhost:5555", "wbadep")), 0);
    assert_true(s_log_has("wbadep.log", "endpoint 'localhost:5555' has no transport: expected "
                          "tcp://HOST:PORT (did you mean tcp://localhost:5555?)"));
    assert_int_not_equal(s_wait(s_worker("tcp:/x", "wbadep2")), 0);
    assert_true(s_log_has("wbadep2.log", "endpoint 'tcp:/x': expected tcp://HOST:PORT"));
    s_kill_all();
}

// A dataset where no file decodes (text files named .jpg): the loader refuses its shards with
// the count and the files, and the coordinator stops the job (exit 1) with that message instead
// of retrying the shard for ever.
static void test_bad_data_stops_the_job(void **state) {
    (void)state;
    char root[128], p[200], out[128], ep[256], lep[256];
    snprintf(root, sizeof root, "%s/fakedata", s_dir);
    for (int c = 0; c < 2; c++) {
        snprintf(p, sizeof p, "%s/train/c%d", root, c);
        char err[SER_ERR_LEN];
        assert_int_equal(ser_mkdir_p(p, err), 0);
        for (int i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "%s/train/c%d/f%d.jpg", root, c, i);
            FILE *f = fopen(p, "w");
            assert_non_null(f);
            fputs("not an image\n", f);
            fclose(f);
        }
    }
    snprintf(out, sizeof out, "%s/baddata.safetensors", s_dir);
    s_loader(root, "*", "badloader.log", lep, sizeof lep);
    snprintf(s_extra, sizeof s_extra, "data.path=%s", root);
    pid_t coord = s_coordinator_at(out, "3", "30000", ep, sizeof ep, "0", "baddata.log");
    snprintf(s_extra, sizeof s_extra, "run.log_every=1");
    s_loader_worker(ep, lep, "wbad");
    time_t t0 = time(NULL);
    int rc = s_wait(coord);
    print_message("the job stopped after %lld s\n", (long long)(time(NULL) - t0));
    if (rc != 1) system("tail -20 /tmp/ser_cluster_*/baddata.log");
    assert_int_equal(rc, 1);
    assert_true(time(NULL) - t0 < 30);
    assert_true(s_log_has("baddata.log", "loader refused: bad data: none of the 8 files can be "
                          "decoded: c"));
    assert_true(s_log_has("baddata.log", "no usable worker"));
    assert_true(s_log_has("badloader.log", "refusing every shard: none of the 8 files can be "
                          "decoded: "));
    assert_true(s_log_has("badloader.log", ": not a JPEG or PNG file (13 bytes))"));
    assert_int_equal(access(out, F_OK), -1);
    s_kill_all();
}

// A loader that lies about a view (step 3: an equivariant sample's group element one grid row
// taller than the pixels it sent, SER_FAULT bad:LOADER_SHARD@3): the worker refuses the shard
// naming the sample and the loader, the shard is fetched again, and the run ends bitwise equal
// to one with an honest loader.
static void test_lying_loader(void **state) {
    (void)state;
    char root[128], ref[128], out[128], ep[256], lep[256], err[SER_ERR_LEN];
    snprintf(root, sizeof root, "%s/liedata", s_dir);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 8, 48, 40, 3, err), 0);
    snprintf(ref, sizeof ref, "%s/lie_ref.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/lie.safetensors", s_dir);
    const char *logs[2] = {"liecoord0.log", "liecoord1.log"}, *lls[2] = {"lieload0.log", "lieload1.log"};
    const char *outs[2] = {ref, out};
    for (int run = 0; run < 2; run++) {
        if (run) setenv("SER_FAULT", "bad:LOADER_SHARD@3", 1);
        s_loader(root, "*", lls[run], lep, sizeof lep);
        unsetenv("SER_FAULT");
        snprintf(s_extra, sizeof s_extra, "data.path=%s", root);
        pid_t coord = s_coordinator_at(outs[run], "6", "30000", ep, sizeof ep, "0", logs[run]);
        snprintf(s_extra, sizeof s_extra, "run.log_every=1");
        s_loader_worker(ep, lep, run ? "wlie0" : "wtrue0");
        s_loader_worker(ep, lep, run ? "wlie1" : "wtrue1");
        int rc = s_wait(coord);
        if (rc) system("tail -20 /tmp/ser_cluster_*/liecoord*.log");
        assert_int_equal(rc, 0);
        s_kill_all();
    }
    s_assert_same_bits(ref, out);
    assert_true(s_log_has("lieload1.log", "SER_FAULT: sending a bad LOADER_SHARD of step 3"));
    assert_false(s_log_has("lieload0.log", "SER_FAULT"));
    // The refusal names the loader and what is wrong with the view, at the worker and at the
    // coordinator (which moved the shard).
    assert_true(s_log_has("liecoord1.log", "cannot compute shard"));
    assert_true(s_log_has("liecoord1.log", "is not its group element's view"));
    assert_true(s_log_has("wlie0.log", "is not its group element's view") ||
                s_log_has("wlie1.log", "is not its group element's view"));
    assert_false(s_log_has("liecoord0.log", "cannot compute shard"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_n_workers_equal_ser_step),
        cmocka_unit_test(test_no_equivariant_sample_runtime),
        cmocka_unit_test(test_dino_n_workers_equal_ser_step),
        cmocka_unit_test(test_local_views_n_workers_equal_ser_step),
        cmocka_unit_test(test_equimod_n_workers_equal_ser_step),
        cmocka_unit_test(test_augself_n_workers_equal_ser_step),
        cmocka_unit_test(test_stl_n_workers_equal_ser_step),
        cmocka_unit_test(test_bf16_n_workers_equal_ser_step),
        cmocka_unit_test(test_decoupled_addons_n_workers_equal_ser_step),
        cmocka_unit_test(test_local_pairs_n_workers_equal_ser_step),
        cmocka_unit_test(test_dino_skip_resends_teacher),
        cmocka_unit_test(test_local_stops_on_sigterm),
        cmocka_unit_test(test_barlow_n_workers_equal_ser_step),
        cmocka_unit_test(test_chain_n_workers_equal_ser_step),
        cmocka_unit_test(test_worker_killed_mid_run),
        cmocka_unit_test(test_coordinator_killed_and_restarted),
        cmocka_unit_test(test_garbage_and_wrong_peers),
        cmocka_unit_test(test_worker_frame_limit),
        cmocka_unit_test(test_busy_worker_loses_its_tasks),
        cmocka_unit_test(test_params_on_the_way_not_resent),
        cmocka_unit_test(test_loader_of_another_config),
        cmocka_unit_test(test_rogue_forward_done),
        cmocka_unit_test(test_status_port),
        cmocka_unit_test(test_long_shard_keeps_heartbeating),
        cmocka_unit_test(test_collapse_monitor),
        cmocka_unit_test(test_dino_collapse_monitor),
        cmocka_unit_test(test_all_workers_gone),
        cmocka_unit_test(test_fault_plan),
        cmocka_unit_test(test_nonfinite_gradient),
        cmocka_unit_test(test_chain_breaks),
        cmocka_unit_test(test_whole_job_suspended),
        cmocka_unit_test(test_chain_gives_up),
        cmocka_unit_test(test_coordinator_killed_during_checkpoints),
        cmocka_unit_test(test_loader_killed_and_restarted),
        cmocka_unit_test(test_local_views_from_the_loader),
        cmocka_unit_test(test_augself_from_the_loader),
        cmocka_unit_test(test_local_pairs_from_the_loader),
        cmocka_unit_test(test_netns_hosts),
        cmocka_unit_test(test_curve_keys),
        cmocka_unit_test(test_worker_names_why_it_cannot_connect),
        cmocka_unit_test(test_bad_data_stops_the_job),
        cmocka_unit_test(test_lying_loader),
    };
    if (getenv("SER_TEST_FILTER")) cmocka_set_test_filter(getenv("SER_TEST_FILTER"));  // e.g. "*netns*"
    // ctest runs the namespace test on its own (cluster_netns), so that a machine without
    // CAP_NET_ADMIN shows it as skipped (exit 77) with the reason, not as passed.
    if (getenv("SER_TEST_NETNS")) {
        char why[300];
        if (s_netns_up(why, sizeof why)) {
            printf("SKIPPED test_netns_hosts: %s\n", why);
            return 77;
        }
        s_netns_down();
        cmocka_set_test_filter("test_netns_hosts");
    } else if (!getenv("SER_TEST_FILTER")) {
        cmocka_set_skip_filter("test_netns_hosts");
    }
    return cmocka_run_group_tests(tests, setup, teardown);
}
