// ser_bench_cluster.c — `ser bench cluster`: the runtime's overhead. The same MoCo+SER job
// (same config, same batch file) runs in this process, as `ser step` would run it, and as
// `ser local` (coordinator + N workers over ZeroMQ on this machine); both report the median
// of their steady-state steps (the first step, which carries set-up, excluded). The overhead
// is what the runtime adds per step: serialisation, transfer, the coordinator's reduction and
// waiting. Bytes per step are counted at the coordinator's socket (frames sent + received).
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ser_base.h"
#include "ser_batchfile.h"
#include "ser_cmd.h"
#include "ser_config.h"
#include "ser_group.h"
#include "ser_kernels.h"
#include "ser_rng.h"
#include "ser_safetensors.h"
#include "ser_train.h"

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser bench cluster [--model M] [--img N] [--patch P] [--shard-batch B]\n"
            "                         [--shards S] [--workers N] [--eq E] [--steps K]\n"
            "                         [--threads T] [--json] [--keep] [--write-job DIR]\n"
            "  runs K steps of MoCo+SER on random images in one process and with `ser local`\n"
            "  (coordinator + N workers on this machine), and reports the runtime's overhead as\n"
            "  a share of step time, the bytes moved per step and what a 10 Gbit/s link adds.\n"
            "  defaults: vit_small, 224, patch 16, 32 images per shard, 2 shards, 1 worker,\n"
            "  1 equivariant sample, 4 steps, 2 threads (the worker's; one process: the same)\n"
            "  --write-job DIR: only write the job and its batch as DIR/job.ini and\n"
            "  DIR/batch.safetensors (for runs of your own, e.g. tools/bench_link.sh) and exit\n");
}

static void s_fill(float *x, size_t n, uint32_t stream) {
    ser_rng r;
    ser_rng_init(&r, 91, stream, 0, SER_RNG_BENCH);
    for (size_t i = 0; i < n; i++) x[i] = (float)ser_rng_normal(&r);
}

// A random batch file (docs/step-format.md): B - E invariant samples, E equivariant ones.
static int s_write_batch(const char *path, int B, int E, int img, int patch, char *err) {
    ser_st_writer *w = ser_st_writer_new();
    size_t per = (size_t)3 * img * img;
    float *inv[2];
    int64_t shape[4] = {B - E, 3, img, img};
    for (int v = 0; v < 2; v++) {
        inv[v] = ser_xaligned(sizeof(float) * per * (size_t)(B - E));
        s_fill(inv[v], per * (size_t)(B - E), (uint32_t)v);
        ser_st_writer_add(w, v ? "inv.view1" : "inv.view0", SER_DT_F32, 4, shape, inv[v]);
    }
    int64_t *gt = ser_xcalloc((size_t)E * 10 + 1, sizeof(int64_t));
    float **eq = ser_xcalloc((size_t)E * 2 + 1, sizeof(float *));
    for (int e = 0; e < E; e++) {
        ser_group_elem g[2];
        ser_group_sample_paper(&g[0], &g[1], img / patch, 7, 0, (uint32_t)e);
        for (int v = 0; v < 2; v++) {
            int64_t *r = gt + (size_t)e * 10 + v * 5;
            r[0] = g[v].rot180, r[1] = g[v].hflip, r[2] = g[v].rot90, r[3] = g[v].gh, r[4] = g[v].gw;
            int H, W;
            ser_group_image_size(&g[v], patch, &H, &W);
            float *x = eq[e * 2 + v] = ser_xaligned(sizeof(float) * 3 * (size_t)H * W);
            s_fill(x, (size_t)3 * H * W, (uint32_t)(10 + 2 * e + v));
            char name[32];
            snprintf(name, sizeof name, "eq.view%d.%d", v, e);
            int64_t sh[3] = {3, H, W};
            ser_st_writer_add(w, name, SER_DT_F32, 3, sh, x);
        }
    }
    int64_t gs[3] = {E, 2, 5};
    if (E) ser_st_writer_add(w, "eq.g", SER_DT_I64, 3, gs, gt);
    int rc = ser_st_writer_save(w, path, err);
    ser_st_writer_destroy(&w);
    for (int i = 0; i < 2 * E; i++) free(eq[i]);
    free(eq), free(gt), free(inv[0]), free(inv[1]);
    return rc;
}

// K steps in this process; the median of steps 1..K-1 in *med.
static int s_single(const char *cfg_path, const char *batch, int steps, double *med, char *err) {
    ser_config cfg;
    int rc = ser_config_load(&cfg, cfg_path, 0, NULL, err);
    if (rc) return rc;
    ser_trainer tr;
    if ((rc = ser_trainer_init(&tr, &cfg, 1000, err))) return rc;
    ser_kernels_set_threads(cfg.run.threads);
    ser_trainer_init_weights(&tr, 0);
    tr.lr_fix = 1e-4, tr.wd_fix = 0.1, tr.mom_fix = 0.99;
    ser_batchfile bf;
    memset(&bf, 0, sizeof bf);
    if ((rc = ser_batchfile_load(&bf, batch, cfg.model.patch, err))) {
        ser_trainer_free(&tr);
        return rc;
    }
    double *t = ser_xcalloc((size_t)steps, sizeof(double)), L[3];
    for (int k = 0; k < steps && !rc; k++) {
        double t0 = ser_time_sec(), lr, wd, mom;
        ser_trainer_values(&tr, k, &lr, &wd, &mom);
        rc = ser_trainer_step_local(&tr, &bf.b, cfg.data.shards, k, lr, wd, mom, L, NULL, NULL,
                                    err);
        t[k] = ser_time_sec() - t0;
    }
    *med = ser_median(t + 1, steps - 1);
    free(t);
    ser_batchfile_free(&bf);
    ser_trainer_free(&tr);
    return rc;
}

// `ser local` as a child (stdout/stderr into log); 0 when it exited 0.
static int s_local(const char *dir, const char *cfg, const char *batch, int steps, int workers) {
    char log[600], st[16], nw[16], od[600];
    snprintf(log, sizeof log, "%s/local.log", dir);
    snprintf(st, sizeof st, "%d", steps);
    snprintf(nw, sizeof nw, "%d", workers);
    snprintf(od, sizeof od, "run.out_dir=%s/run", dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || !freopen(log, "a", stderr)) _exit(126);
        char *args[] = {"ser", "local", "--workers", nw, "--config", (char *)(uintptr_t)cfg,
                        "--batch-file", (char *)(uintptr_t)batch, "--steps", st, "--set", od,
                        "--lr", "1e-4", "--wd", "0.1", "--momentum", "0.99", NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int ser_bench_cluster(int argc, char **argv) {
    const char *model = "vit_small";
    int img = 224, patch = 16, sb = 32, shards = 2, workers = 1, eq = 1, steps = 4, threads = 2;
    int json = 0, keep = 0;
    const char *write_job = NULL;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"img", required_argument, 0, 'i'},
        {"patch", required_argument, 0, 'p'},   {"shard-batch", required_argument, 0, 'b'},
        {"shards", required_argument, 0, 'S'},  {"workers", required_argument, 0, 'w'},
        {"eq", required_argument, 0, 'e'},      {"steps", required_argument, 0, 'k'},
        {"threads", required_argument, 0, 't'}, {"json", no_argument, 0, 'j'},
        {"keep", no_argument, 0, 'K'},          {"help", no_argument, 0, 'h'},
        {"write-job", required_argument, 0, 'W'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'i': img = atoi(optarg); break;
        case 'p': patch = atoi(optarg); break;
        case 'b': sb = atoi(optarg); break;
        case 'S': shards = atoi(optarg); break;
        case 'w': workers = atoi(optarg); break;
        case 'e': eq = atoi(optarg); break;
        case 'k': steps = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'j': json = 1; break;
        case 'K': keep = 1; break;
        case 'W': write_job = optarg; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    int B = sb * shards;
    if (sb < 2 || shards < 1 || shards > 64 || workers < 1 || workers > 16 || eq < 0 ||
        eq >= B || steps < 2 || steps > 1000 || threads < 1 || patch < 1 || img % patch) {
        fprintf(stderr, "ser bench cluster: need --shard-batch >= 2, 1 <= --shards <= 64, "
                        "1 <= --workers <= 16, 0 <= --eq < batch, 2 <= --steps <= 1000, "
                        "--threads >= 1, --img a multiple of --patch\n");
        return 2;
    }
    char tmp[] = "/tmp/ser_bench_cluster_XXXXXX", cfg[1100], batch[1100], err[SER_ERR_LEN];
    const char *dir = write_job ? write_job : mkdtemp(tmp);
    if (!dir) {
        perror("ser bench cluster: mkdtemp");
        return 1;
    }
    snprintf(cfg, sizeof cfg, "%s/job.ini", dir);
    snprintf(batch, sizeof batch, "%s/batch.safetensors", dir);
    FILE *f = fopen(cfg, "w");
    if (!f) {
        perror(cfg);
        return 1;
    }
    // Timeouts far above a shard's compute time; no status port; checkpoints only at the end.
    fprintf(f, "[model]\narch = %s\nimg_size = %d\npatch = %d\n[data]\nglobal_batch = %d\n"
               "shards = %d\n[ser]\nenabled = %s\nratio = %.17g\n[run]\nthreads = %d\n"
               "log_every = 1\n[cluster]\nheartbeat_ms = 1000\ntimeout_ms = 600000\n"
               "status_port = -1\n",
            model, img, patch, B, shards, eq ? "true" : "false", eq ? (double)eq / B : 0.5,
            threads);
    fclose(f);
    int rc = s_write_batch(batch, B, eq, img, patch, err);
    if (write_job) {
        if (rc) fprintf(stderr, "ser bench cluster: %s\n", err);
        else printf("%s\n%s\n", cfg, batch);
        return rc ? 1 : 0;
    }
    double single = 0, cl = 0, sent = 0, recv = 0;
    if (!rc) rc = s_single(cfg, batch, steps, &single, err);
    if (rc) {
        fprintf(stderr, "ser bench cluster: %s\n", err);
    } else if ((rc = s_local(dir, cfg, batch, steps, workers))) {
        fprintf(stderr, "ser bench cluster: `ser local` exited %d; its log: %s/local.log\n", rc, dir);
        keep = 1;
    } else {
        char log[160], line[1024];
        snprintf(log, sizeof log, "%s/local.log", dir);
        FILE *lf = fopen(log, "r");
        int found = 0;
        while (lf && fgets(line, sizeof line, lf)) {
            const char *p = strstr(line, "run summary:");
            long long n;
            if (p && sscanf(p, "run summary: %lld steps, median %lf s/step after the first, %lf "
                               "bytes/step sent, %lf bytes/step received", &n, &cl, &sent, &recv) == 4)
                found = 1;
        }
        if (lf) fclose(lf);
        if (!found) {
            fprintf(stderr, "ser bench cluster: no run summary in %s\n", log);
            rc = 1, keep = 1;
        }
    }
    if (!rc) {
        double over = (cl - single) / cl, bytes = sent + recv, link = bytes * 8 / 10e9;
        if (json)
            printf("{\"bench\":\"cluster\",\"model\":\"%s\",\"img\":%d,\"patch\":%d,"
                   "\"shard_batch\":%d,\"shards\":%d,\"workers\":%d,\"eq\":%d,\"threads\":%d,"
                   "\"steps\":%d,\"single_step_s\":%.6f,\"cluster_step_s\":%.6f,"
                   "\"overhead\":%.6f,\"bytes_per_step\":%.0f,\"link_10g_s\":%.6f}\n",
                   model, img, patch, sb, shards, workers, eq, threads, steps, single, cl, over,
                   bytes, link);
        else {
            char hb[SER_HUMAN_BYTES_LEN], hs[SER_HUMAN_BYTES_LEN], hr[SER_HUMAN_BYTES_LEN];
            printf("ser bench cluster: moco+ser %s/%d img %d, %d shards x %d images (%d equivariant), "
                   "%d worker(s) x %d threads, median of %d steps after the first\n"
                   "  one process      %.4f s/step\n"
                   "  ser local        %.4f s/step   overhead %.2f%% of step time\n"
                   "  bytes/step       %s (%s sent, %s received by the coordinator)\n"
                   "  10 Gbit/s link   +%.3f s/step (%.2f%% of the one-process step) if not overlapped\n",
                   model, patch, img, shards, sb, eq, workers, threads, steps - 1, single, cl,
                   100 * over, ser_human_bytes(bytes, hb), ser_human_bytes(sent, hs),
                   ser_human_bytes(recv, hr), link, 100 * link / single);
        }
    }
    if (keep) {
        fprintf(stderr, "ser bench cluster: files kept in %s\n", dir);
    } else {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "ser bench cluster: could not remove %s\n", dir);
    }
    return rc ? 1 : 0;
}
