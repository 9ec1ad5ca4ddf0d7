// test_epochs.c — schedules sized by the data, and the online kNN monitor.
//
// - ser_coord_iters_per_epoch: ceil(N / B) for an ImageFolder, CIFAR-10 and Fashion-MNIST
//   (Debian's dataset-fashion-mnist; that case is skipped with a message without it), the
//   explicit keys, synthetic data, a batch file, and a clear error without data.
// - `ser local` without --steps trains exactly optim.epochs x ceil(N / B) steps and its lr
//   follows the schedule to its end (the lr after the last step is 0); a checkpoint keeps the
//   epoch length; a short --steps prints the warning naming where the schedule ends.
// - The kNN monitor: its figure at the last step equals `ser eval knn` on that checkpoint with
//   the same subsets and threads, and the final state is bitwise the same with the monitor on or
//   off (whole output files compared); `ser local --log-level=warning` silences the info lines
//   of every process it starts.
// Every child runs under `timeout` and the whole test under alarm(); temp dirs are removed.
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ser_bf16.h"
#include "ser_ckpt.h"
#include "ser_coord.h"
#include "ser_dl_data.h"
#include "ser_test.h"
#include "ser_train.h"

#define S_FMNIST "/usr/share/datasets/fashion-mnist"

static char s_dir[64], s_data[128];

// A tiny MoCo + SER job on the synthetic ImageFolder: 3 classes x 20 = 60 images, 8 per step.
static const char *s_ini =
    "[model]\narch = vit_tiny\ndim = 24\ndepth = 4\nheads = 3\nmlp_hidden = 48\nimg_size = 16\n"
    "patch = 4\ncls_layer = 2\n"
    "[moco]\ndim = 16\nmlp_dim = 32\n"
    "[ser]\nproj_dim = 20\nratio = 0.25\n"
    "[optim]\nlr = 1e-3\nepochs = 2\nwarmup_epochs = 1\n"
    "[data]\nkind = imagefolder\nglobal_batch = 8\nshards = 2\nworkers = 1\ncrop_min = 0.3\n"
    "[eval]\nknn_every = -1\nknn_train = 30\nknn_test = 12\nknn_k = 5\n"
    "[run]\nthreads = 1\nlog_every = 1\ncheckpoint_every = 0\n"
    "[cluster]\nheartbeat_ms = 200\ntimeout_ms = 5000\nstatus_port = -1\n";

static void s_on_alarm(int sig) {
    (void)sig;
    _exit(3);  // ser local's children die with it (PR_SET_PDEATHSIG); `timeout` kills it first
}

static int setup(void **state) {
    (void)state;
    signal(SIGALRM, s_on_alarm);
    alarm(280);
    snprintf(s_dir, sizeof s_dir, "/tmp/ser_epochs_XXXXXX");
    if (!mkdtemp(s_dir)) return -1;
    snprintf(s_data, sizeof s_data, "%s/data", s_dir);
    char err[256];
    if (ser_dl_data_make_synthetic(s_data, 3, 20, 20, 20, 7, err)) {
        fprintf(stderr, "synthetic data: %s\n", err);
        return -1;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/job.ini", s_dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "%s", s_ini);
    fclose(f);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    alarm(0);
    if (getenv("SER_TEST_KEEP")) {
        fprintf(stderr, "kept %s\n", s_dir);
        return 0;
    }
    ser_test_rm_rf(s_dir);
    return 0;
}

// Runs `timeout 120 ser ARGS` with its output in s_dir/NAME.log; returns the exit status.
static int s_ser(const char *name, const char *fmt, ...) {
    char args[2048], cmd[3072];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "timeout -k 5 120 '%s' %s > '%s/%s.log' 2>&1", SER_BINARY, args,
             s_dir, name);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// The whole of s_dir/NAME.log (malloc'ed).
static char *s_log(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s.log", s_dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = 0;
    fclose(f);
    return buf;
}

static int s_log_has(const char *name, const char *needle) {
    char *t = s_log(name);
    int ok = strstr(t, needle) != NULL;
    if (!ok) fprintf(stderr, "%s.log lacks '%s':\n%s\n", name, needle, t);
    free(t);
    return ok;
}

static void s_opts(ser_coord_opts *o, const char *extra) {
    memset(o, 0, sizeof *o);
    char err[SER_ERR_LEN], path[256];
    snprintf(path, sizeof path, "%s/job.ini", s_dir);
    char dp[200];
    snprintf(dp, sizeof dp, "data.path=%s", s_data);
    const char *sets[2] = {dp, extra};
    int rc = ser_config_load(&o->cfg, path, extra ? 2 : 1, sets, err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, SER_OK);
}

static int64_t s_ipe(ser_coord_opts *o) {
    int64_t ipe = -1;
    char how[160], err[SER_ERR_LEN];
    int rc = ser_coord_iters_per_epoch(o, &ipe, how, sizeof how, err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, SER_OK);
    print_message("  %lld steps per epoch (%s)\n", (long long)ipe, how);
    return ipe;
}

// Writes n CIFAR-10 records into dir/name.
static void s_cifar_file(const char *dir, const char *name, int n) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint8_t rec[3073];
    for (int r = 0; r < n; r++) {
        rec[0] = (uint8_t)(r % 10);
        for (int i = 1; i < 3073; i++) rec[i] = (uint8_t)(r * 7 + i);
        assert_int_equal(fwrite(rec, 1, sizeof rec, f), sizeof rec);
    }
    fclose(f);
}

static void test_iters_per_epoch(void **state) {
    (void)state;
    ser_coord_opts o;
    // ImageFolder: 60 images.
    s_opts(&o, NULL);
    assert_int_equal(s_ipe(&o), 8);  // ceil(60 / 8)
    s_opts(&o, "data.global_batch=60");
    assert_int_equal(s_ipe(&o), 1);
    s_opts(&o, "data.global_batch=14");
    assert_int_equal(s_ipe(&o), 5);  // ceil(60 / 14)
    s_opts(&o, "data.global_batch=62");
    assert_int_equal(s_ipe(&o), 1);  // more than the dataset: one step
    // The keys that fix it.
    s_opts(&o, "data.iters_per_epoch=3");
    assert_int_equal(s_ipe(&o), 3);
    s_opts(&o, "data.iters_per_epoch=3");
    o.iters_per_epoch = 11;  // --iters-per-epoch wins
    assert_int_equal(s_ipe(&o), 11);
    s_opts(&o, NULL);
    o.batch_file = "b.safetensors";
    assert_int_equal(s_ipe(&o), 1);
    // Synthetic data: data.synthetic_images.
    s_opts(&o, "data.kind=synthetic");
    o.cfg.data.synthetic_images = 100;
    assert_int_equal(s_ipe(&o), 13);
    // CIFAR-10: 5 train files of 7 records (the test batch is not counted).
    char cdir[128];
    snprintf(cdir, sizeof cdir, "%s/cifar", s_dir);
    assert_int_equal(mkdir(cdir, 0755), 0);
    for (int i = 1; i <= 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "data_batch_%d.bin", i);
        s_cifar_file(cdir, name, 7);
    }
    s_cifar_file(cdir, "test_batch.bin", 50);
    s_opts(&o, NULL);
    snprintf(o.cfg.data.path, sizeof o.cfg.data.path, "%s", cdir);
    o.cfg.data.kind = SER_CONFIG_DATA_CIFAR10;
    assert_int_equal(s_ipe(&o), 5);  // ceil(35 / 8)
    o.cfg.data.kind = SER_CONFIG_DATA_AUTO;
    assert_int_equal(s_ipe(&o), 5);
    // Fashion-MNIST: 60000 train images.
    struct stat st;
    if (stat(S_FMNIST, &st) == 0) {
        s_opts(&o, NULL);
        snprintf(o.cfg.data.path, sizeof o.cfg.data.path, "%s", S_FMNIST);
        o.cfg.data.kind = SER_CONFIG_DATA_FASHION_MNIST;
        o.cfg.data.global_batch = 128;
        assert_int_equal(s_ipe(&o), 469);  // ceil(60000 / 128)
        o.cfg.data.global_batch = 256;
        assert_int_equal(s_ipe(&o), 235);
    } else {
        print_message("  Fashion-MNIST case skipped: %s not found (dataset-fashion-mnist)\n",
                      S_FMNIST);
    }
    // No data here: a clear error naming the key to set.
    s_opts(&o, NULL);
    snprintf(o.cfg.data.path, sizeof o.cfg.data.path, "%s/nowhere", s_dir);
    int64_t ipe;
    char how[160], err[SER_ERR_LEN];
    assert_int_equal(ser_coord_iters_per_epoch(&o, &ipe, how, sizeof how, err), SER_ECONFIG);
    assert_non_null(strstr(err, "data.iters_per_epoch"));
    assert_non_null(strstr(err, "nowhere"));
}

// Reads run/metrics.jsonl: the steps and lrs of every line (returns the count).
static int s_metrics(const char *run, int64_t *steps, double *lrs, double *knn, int max) {
    char path[256], line[8192];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", s_dir, run);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int n = 0;
    while (fgets(line, sizeof line, f) && n < max) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        steps[n] = (int64_t)cJSON_GetObjectItem(j, "step")->valuedouble;
        lrs[n] = cJSON_GetObjectItem(j, "lr")->valuedouble;
        const cJSON *k = cJSON_GetObjectItem(j, "knn_top1");
        knn[n] = k ? k->valuedouble : (double)NAN;
        cJSON_Delete(j);
        n++;
    }
    fclose(f);
    return n;
}

static void test_local_whole_schedule(void **state) {
    (void)state;
    // No --steps, no run.max_steps: optim.epochs (2) x ceil(60 / 8) = 16 steps.
    int rc = s_ser("whole", "local --workers 2 --config %s/job.ini --set data.path=%s "
                   "--set run.out_dir=%s/whole --out %s/whole/final.safetensors",
                   s_dir, s_data, s_dir, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("whole", "schedule: 2 epochs x 8 steps (ceil(60 train images / 8 per "
                                   "step)) = 16 steps; this run trains steps 0..15"));
    int64_t steps[64];
    double lrs[64], knn[64];
    int n = s_metrics("whole", steps, lrs, knn, 64);
    assert_int_equal(n, 16);
    for (int i = 0; i < n; i++) assert_int_equal(steps[i], i);
    // The logged lr is the schedule's at each step, and the schedule is over after step 15.
    ser_coord_opts o;
    s_opts(&o, NULL);
    ser_trainer tr;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_trainer_init(&tr, &o.cfg, 8, err), SER_OK);
    double lr, wd, m, peak = 0;
    for (int i = 0; i < n; i++) {
        ser_trainer_values(&tr, i, &lr, &wd, &m);
        assert_true(fabs(lr - lrs[i]) <= 1e-12 + 1e-9 * lr);
        peak = lr > peak ? lr : peak;
    }
    // The last step is the schedule's last (a step 16 would be past its end: refused below).
    assert_true(lrs[15] < 0.05 * peak && lrs[15] > 0);
    ser_trainer_free(&tr);
    // The checkpoint keeps the epoch length.
    char ck[256];
    snprintf(ck, sizeof ck, "%s/whole/ckpt-0000000016.safetensors", s_dir);
    ser_ckpt_pos pos;
    assert_int_equal(ser_ckpt_verify(ck, NULL, &pos, err), SER_OK);
    assert_int_equal(pos.step, 16);
    assert_int_equal(pos.iters_per_epoch, 8);
    assert_int_equal(pos.epoch, 2);
    assert_false(strstr(s_log("whole"), "will not have reached") != NULL);

    // A resume with another epoch length keeps the checkpoint's (and says so); the schedule is
    // over, so nothing is trained. (data.iters_per_epoch is hashed: a job file that changes it
    // is refused by the checkpoint's config check; --iters-per-epoch is not.)
    rc = s_ser("whole2", "local --workers 1 --config %s/job.ini --set data.path=%s "
               "--set run.out_dir=%s/whole --iters-per-epoch 5", s_dir, s_data, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("whole2", "the checkpoint was trained with 8 steps per epoch, not 5"));
    assert_true(s_log_has("whole2", "nothing to train: the run is at step 16 and ends at 16"));
}

// data.kind = synthetic trains under `ser local` (the loader generates the images; it used to
// exit before listening): the whole schedule, sized by data.synthetic_images.
static void test_local_synthetic(void **state) {
    (void)state;
    int rc = s_ser("synth", "local --workers 2 --config %s/job.ini --set data.kind=synthetic "
                   "--set data.synthetic_images=24 --set run.out_dir=%s/synth", s_dir, s_dir);
    char *log = s_log("synth");
    if (rc) fprintf(stderr, "%s", log);
    int died = strstr(log, "exited before listening") != NULL;
    free(log);
    assert_int_equal(rc, 0);
    assert_false(died);
    assert_true(s_log_has("synth", "schedule: 2 epochs x 3 steps"));
    int64_t steps[16];
    double lrs[16], knn[16];
    assert_int_equal(s_metrics("synth", steps, lrs, knn, 16), 6);
}

static void test_short_steps_warn(void **state) {
    (void)state;
    int rc = s_ser("short", "local --workers 1 --config %s/job.ini --set data.path=%s "
                   "--set run.out_dir=%s/short --steps 3", s_dir, s_data, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("short", "the run stops at step 3 of the schedule's 16 (epoch 0.38 of 2)"));
    int64_t steps[64];
    double lrs[64], knn[64];
    assert_int_equal(s_metrics("short", steps, lrs, knn, 64), 3);
    // Past the schedule's end: stopped there, with the reason.
    rc = s_ser("long", "local --workers 1 --config %s/job.ini --set data.path=%s "
               "--set run.out_dir=%s/long --steps 20", s_dir, s_data, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("long", "the run would go past the schedule's end (step 20 of 16)"));
    assert_int_equal(s_metrics("long", steps, lrs, knn, 64), 16);
    // run.max_steps does the same.
    rc = s_ser("short2", "local --workers 1 --config %s/job.ini --set data.path=%s "
               "--set run.out_dir=%s/short2 --set run.max_steps=4", s_dir, s_data, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("short2", "the run stops at step 4 of the schedule's 16"));
}

// top1 of `ser eval knn` on RUN's last checkpoint with the monitor's subsets, k and threads.
static double s_eval_top1(const char *run) {
    int rc = s_ser("evalk", "eval knn --checkpoint %s/%s --data imagefolder:%s --train-limit 30 "
                   "--test-limit 12 --k 5 --threads 1 --json %s/evalk.json", s_dir, run, s_data,
                   s_dir);
    assert_int_equal(rc, 0);
    char path[256];
    snprintf(path, sizeof path, "%s/evalk.json", s_dir);
    FILE *jf = fopen(path, "r");
    assert_non_null(jf);
    char jt[8192];
    size_t jn = fread(jt, 1, sizeof jt - 1, jf);
    jt[jn] = 0;
    fclose(jf);
    cJSON *j = cJSON_Parse(jt);
    assert_non_null(j);
    double top1 = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "knn"), "top1")->valuedouble;
    cJSON_Delete(j);
    return top1;
}

// The kNN monitor: the same number as `ser eval knn` on the checkpoint; training bits unchanged.
static void test_knn_monitor(void **state) {
    (void)state;
    int rc = s_ser("mon", "local --workers 2 --config %s/job.ini --set data.path=%s "
                   "--set run.out_dir=%s/mon --set eval.knn_every=5 --steps 10 "
                   "--out %s/mon.safetensors", s_dir, s_data, s_dir, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("mon", "kNN monitor: every 5 steps and at the end, 30 train / 12 test"));
    int64_t steps[64];
    double lrs[64], knn[64];
    int n = s_metrics("mon", steps, lrs, knn, 64);
    assert_int_equal(n, 10);
    for (int i = 0; i < n; i++)
        assert_int_equal(isnan(knn[i]), !(steps[i] == 4 || steps[i] == 9));
    // ser eval knn on the final checkpoint, same subsets, k, threads.
    double top1 = s_eval_top1("mon");
    print_message("  monitor %.4f, ser eval knn %.4f\n", knn[9], top1);
    assert_true(top1 == knn[9]);  // the same number, not a close one
    assert_true(s_log_has("mon", "step 9: kNN top-1"));

    // The same job without the monitor: the same final state, byte for byte.
    rc = s_ser("nomon", "local --workers 2 --config %s/job.ini --set data.path=%s "
               "--set run.out_dir=%s/nomon --steps 10 --out %s/nomon.safetensors",
               s_dir, s_data, s_dir, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("nomon", "kNN monitor off (eval.knn_every = -1)"));
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/mon.safetensors", s_dir);
    snprintf(b, sizeof b, "%s/nomon.safetensors", s_dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    assert_int_equal(system(cmd), 0);
    // And a mutation check of the comparison itself: another seed gives other bytes.
    rc = s_ser("seed1", "local --workers 2 --config %s/job.ini --set data.path=%s "
               "--set run.out_dir=%s/seed1 --steps 10 --set data.seed=1 --out %s/seed1.safetensors "
               "--log-level=warning", s_dir, s_data, s_dir, s_dir);
    assert_int_equal(rc, 0);
    // ser local passes its log level on: no info line from it, the coordinator, the workers
    // or the loader.
    char *log = s_log("seed1");
    int info = strstr(log, " I ") != NULL;
    if (info) fprintf(stderr, "seed1.log has info lines:\n%s\n", log);
    free(log);
    assert_false(info);
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s/seed1.safetensors'", a, s_dir);
    assert_int_not_equal(system(cmd), 0);
}

// A bf16 job (run.precision = bf16): the monitor measures in fp32, so it still equals
// `ser eval knn` on the checkpoint, and it leaves the job's bf16 products as they were (the
// final state equals that of the same job without the monitor, and differs from the fp32 job's).
static void test_knn_monitor_bf16(void **state) {
    (void)state;
    if (!ser_bf16_supported()) {
        print_message("SKIPPED: no native bf16 on this CPU (%s)\n", ser_bf16_isa());
        skip();
    }
    int rc = s_ser("monb", "local --workers 2 --config %s/job.ini --set data.path=%s "
                   "--set run.out_dir=%s/monb --set eval.knn_every=5 --steps 10 "
                   "--set run.precision=bf16 --out %s/monb.safetensors", s_dir, s_data, s_dir,
                   s_dir);
    assert_int_equal(rc, 0);
    int64_t steps[64];
    double lrs[64], knn[64];
    assert_int_equal(s_metrics("monb", steps, lrs, knn, 64), 10);
    double top1 = s_eval_top1("monb");
    print_message("  bf16 job: monitor %.4f, ser eval knn %.4f\n", knn[9], top1);
    assert_true(top1 == knn[9]);
    rc = s_ser("nomonb", "local --workers 2 --config %s/job.ini --set data.path=%s "
               "--set run.out_dir=%s/nomonb --steps 10 --set run.precision=bf16 "
               "--out %s/nomonb.safetensors", s_dir, s_data, s_dir, s_dir);
    assert_int_equal(rc, 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cmp -s '%s/monb.safetensors' '%s/nomonb.safetensors'", s_dir, s_dir);
    assert_int_equal(system(cmd), 0);
    rc = s_ser("nomon32", "local --workers 2 --config %s/job.ini --set data.path=%s "
               "--set run.out_dir=%s/nomon32 --steps 10 --out %s/nomon32.safetensors", s_dir,
               s_data, s_dir, s_dir);
    assert_int_equal(rc, 0);
    snprintf(cmd, sizeof cmd, "cmp -s '%s/monb.safetensors' '%s/nomon32.safetensors'", s_dir,
             s_dir);
    assert_int_not_equal(system(cmd), 0);
}

// A job that passes validation but cannot fit in memory stops before allocating, with the key.
static void test_refused_when_too_big(void **state) {
    (void)state;
    int rc = s_ser("toobig", "local --workers 1 --config %s/job.ini --set data.path=%s "
                   "--set run.out_dir=%s/toobig --set moco.mlp_dim=1048576 --set moco.dim=1048576",
                   s_dir, s_data, s_dir);
    assert_int_not_equal(rc, 0);
    assert_true(rc != 134 && rc != 124);  // not SIGABRT, not the timeout
    assert_true(s_log_has("toobig", "of memory and this machine has"));
    assert_true(s_log_has("toobig", "moco.mlp_dim"));
}

// Two `ser local` jobs side by side with the default status port: each takes a free one.
static void test_two_local_jobs(void **state) {
    (void)state;
    char cmd[4096];
    const char *job = "local --workers 1 --config %s/job.ini --set data.path=%s "
                      "--set run.out_dir=%s/two%d --set cluster.status_port=8080 --steps 3";
    char a[1024], b[1024];
    snprintf(a, sizeof a, job, s_dir, s_data, s_dir, 1);
    snprintf(b, sizeof b, job, s_dir, s_data, s_dir, 2);
    snprintf(cmd, sizeof cmd,
             "( timeout -k 5 120 '%s' %s > '%s/two1.log' 2>&1; echo $? > '%s/two1.rc' ) & "
             "( timeout -k 5 120 '%s' %s > '%s/two2.log' 2>&1; echo $? > '%s/two2.rc' ) & wait",
             SER_BINARY, a, s_dir, s_dir, SER_BINARY, b, s_dir, s_dir);
    assert_int_equal(system(cmd), 0);
    for (int i = 1; i <= 2; i++) {
        char name[16], path[256];
        snprintf(name, sizeof name, "two%d", i);
        snprintf(path, sizeof path, "%s/two%d.rc", s_dir, i);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        int rc = -1;
        assert_int_equal(fscanf(f, "%d", &rc), 1);
        fclose(f);
        assert_int_equal(rc, 0);
        assert_true(s_log_has(name, "status on http://127.0.0.1:"));
        assert_false(strstr(s_log(name), "127.0.0.1:8080/") != NULL);
    }
}

static void test_monitor_without_labels(void **state) {
    (void)state;
    // Labelled data that does not exist: the job runs, the monitor is off with the reason.
    int rc = s_ser("nolab", "local --workers 1 --config %s/job.ini --set data.path=%s "
                   "--set run.out_dir=%s/nolab --set eval.knn_every=0 "
                   "--set eval.knn_data=imagefolder:%s/none --steps 2", s_dir, s_data, s_dir, s_dir);
    assert_int_equal(rc, 0);
    assert_true(s_log_has("nolab", "kNN monitor off: dataset:"));
    assert_true(s_log_has("nolab", "set eval.knn_data to labelled data"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iters_per_epoch),
        cmocka_unit_test(test_local_whole_schedule),
        cmocka_unit_test(test_local_synthetic),
        cmocka_unit_test(test_short_steps_warn),
        cmocka_unit_test(test_knn_monitor),
        cmocka_unit_test(test_knn_monitor_bf16),
        cmocka_unit_test(test_monitor_without_labels),
        cmocka_unit_test(test_refused_when_too_big),
        cmocka_unit_test(test_two_local_jobs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
