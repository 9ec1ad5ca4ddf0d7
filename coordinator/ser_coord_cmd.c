// ser_coord_cmd.c — `ser coordinator` and `ser local`.
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ser_cmd.h"
#include "ser_coord.h"
#include "ser_curve.h"

#define SER_MAX_SET 64

static void s_coord_usage(FILE *f, const char *cmd) {
    int local = strcmp(cmd, "local") == 0;
    fprintf(f,
            "usage: ser %s [--config job.ini] [--set section.key=value]... [--steps K]\n"
            "       [--weights W.safetensors] [--out O.safetensors] [--iter N]\n"
            "       [--iters-per-epoch N] [--lr X] [--wd X] [--momentum X] [--wait-workers-ms T]\n"
            "       %s [--log-level L | --quiet]\n"
            "  Trains the job's schedule: optim.epochs epochs of data.iters_per_epoch steps (0, the\n"
            "  default: ceil(train images / data.global_batch), counted from data.path), or K\n"
            "  steps (--steps, else run.max_steps when > 0). data.shards shards per\n"
            "  step computed by workers, reduced in shard order, so the result is the same bits\n"
            "  for any number of workers. Writes the final state in `ser step`'s layout to --out.\n"
            "  With no live worker for T ms (default 60000) the coordinator gives up (exit 1).\n"
            "  Checkpoints and logs go to run.out_dir, and a job started again there resumes\n"
            "  from its newest checkpoint.\n%s"
            "  --log-level L: error|warning|info|debug (info); --quiet: warning%s.\n"
            "  Exit status: 0 finished, 1 failed, 2 bad option or job file, 3 stopped by\n"
            "  SIGINT/SIGTERM after checkpointing the last completed step (docs/cli.md).\n",
            cmd, local ? "[--workers N] [--batch-file B.safetensors]" : "[--workers N] [--endpoint-file F]",
            local ? "  ser local starts the coordinator, N workers (default 2) and, unless a batch\n"
                    "  file is given (the same global batch every step; docs/step-format.md), one\n"
                    "  data-loader service for the job's [data] on this machine. The status page\n"
                    "  is on a free port (printed: \"status on http://...\") unless the job sets\n"
                    "  cluster.status_port to other than 8080.\n"
                  : "  --workers N: wait (up to T ms) for N workers before the first step, then\n"
                    "  start with those there (default: start with the first).\n"
                    "  The coordinator reads no data: workers fetch shards from data loaders. Its\n"
                    "  status page is on cluster.status_bind:cluster.status_port (127.0.0.1:8080;\n"
                    "  `ser status`); --endpoint-file F gets the control endpoint it bound.\n",
            local ? " (also for the workers and the loader)" : "");
}

// Parses the options shared by both commands into o; returns 0, 1 after --help, or 2 after a
// message. *log_level: the --log-level / --quiet given (NULL: none), for ser local's children.
static int s_parse(int argc, char **argv, const char *cmd, ser_coord_opts *o, int *workers,
                   const char **cfg_path, const char **sets, int *nset, const char **log_level) {
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},  {"set", required_argument, 0, 's'},
        {"batch-file", required_argument, 0, 'b'}, {"weights", required_argument, 0, 'w'},
        {"out", required_argument, 0, 'o'},     {"steps", required_argument, 0, 'k'},
        {"iter", required_argument, 0, 'i'},    {"iters-per-epoch", required_argument, 0, 'I'},
        {"lr", required_argument, 0, 'l'},      {"wd", required_argument, 0, 'd'},
        {"momentum", required_argument, 0, 'm'}, {"endpoint-file", required_argument, 0, 'e'},
        {"workers", required_argument, 0, 'W'}, {"wait-workers-ms", required_argument, 0, 'T'},
        {"log-level", required_argument, 0, 'L'}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c, bad = 0;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': *cfg_path = optarg; break;
        case 's':
            if (*nset == SER_MAX_SET) bad = 1; else sets[(*nset)++] = optarg;
            break;
        case 'b': o->batch_file = optarg; break;
        case 'w': o->weights = optarg; break;
        case 'o': o->out = optarg; break;
        case 'k': o->steps = strtoll(optarg, &end, 10); bad |= *end || o->steps < 1; break;
        case 'i': o->iter = strtoll(optarg, &end, 10); bad |= *end || o->iter < 0; break;
        case 'I': o->iters_per_epoch = strtoll(optarg, &end, 10); bad |= *end || o->iters_per_epoch < 1; break;
        case 'l': o->lr_fix = strtod(optarg, &end); bad |= *end || !(o->lr_fix >= 0); break;
        case 'd': o->wd_fix = strtod(optarg, &end); bad |= *end || !(o->wd_fix >= 0); break;
        case 'm': o->mom_fix = strtod(optarg, &end); bad |= *end || !(o->mom_fix >= 0 && o->mom_fix <= 1); break;
        case 'e': o->endpoint_file = optarg; break;
        case 'W': *workers = (int)strtol(optarg, &end, 10); bad |= *end || *workers < 1 || *workers > 64; break;
        case 'T': o->wait_workers_ms = (int)strtol(optarg, &end, 10); bad |= *end || o->wait_workers_ms < 1; break;
        case 'L':
            *log_level = optarg;
            if (ser_log_parse_level(optarg) < 0) {
                fprintf(stderr, "ser %s: --log-level '%s': want error|warning|info|debug\n", cmd,
                        optarg);
                bad = 1;
            }
            break;
        case 'q': *log_level = "warning"; break;
        case 'h': s_coord_usage(stdout, cmd); return 1;
        default: bad = 1;
        }
    }
    if (bad || optind != argc) {
        fprintf(stderr, "ser %s: bad option or value\n", cmd);
        s_coord_usage(stderr, cmd);
        return 2;
    }
    if (*log_level) ser_log_set_level(ser_log_parse_level(*log_level));
    return 0;
}

static int s_load_config(ser_coord_opts *o, const char *cfg_path, const char **sets, int nset,
                         const char *cmd) {
    char err[SER_ERR_LEN];
    ser_config_defaults(&o->cfg);
    int rc = 0;
    if (cfg_path) {
        rc = ser_config_load(&o->cfg, cfg_path, nset, sets, err);
    } else {
        for (int i = 0; i < nset && !rc; i++) rc = ser_config_set_arg(&o->cfg, sets[i], err);
        if (!rc) rc = ser_config_validate(&o->cfg, err);
    }
    if (rc) fprintf(stderr, "ser %s: %s\n", cmd, err);
    return rc ? 2 : 0;
}

static void s_defaults(ser_coord_opts *o) {
    memset(o, 0, sizeof *o);  // steps, iters_per_epoch 0: from the job (ser_coord_schedule)
    o->lr_fix = o->wd_fix = o->mom_fix = NAN;
    o->wait_workers_ms = 60000;
}

int ser_cmd_coordinator(int argc, char **argv) {
    ser_coord_opts o;
    s_defaults(&o);
    const char *cfg_path = NULL, *sets[SER_MAX_SET], *log_level = NULL;
    int nset = 0, workers = 0;
    int rc = s_parse(argc, argv, "coordinator", &o, &workers, &cfg_path, sets, &nset, &log_level);
    if (rc) return rc == 1 ? 0 : rc;
    if ((rc = s_load_config(&o, cfg_path, sets, nset, "coordinator"))) return rc;
    o.min_workers = workers;
    return ser_coord_run(&o);
}

// --- ser local -------------------------------------------------------------------------------
// A child of `ser local` gets SIGTERM when ser local dies, however it dies (a test runner's
// timeout, kill -9): no coordinator, worker or loader is left behind.
static pid_t s_spawn(char *const *args) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(1);  // it died before the prctl
        execv("/proc/self/exe", args);
        _exit(127);
    }
    return pid;
}

// Waits up to 60 s for a child to write its endpoint into path (one line); 0 when read.
static int s_wait_line(const char *path, char *buf, size_t n, pid_t child, const char *who) {
    buf[0] = 0;
    for (int k = 0; k < 600; k++) {
        FILE *f = fopen(path, "r");
        if (f) {
            if (!fgets(buf, (int)n, f)) buf[0] = 0;
            fclose(f);
            buf[strcspn(buf, "\n")] = 0;
            if (buf[0]) return 0;
        }
        int st;
        if (waitpid(child, &st, WNOHANG) == child) {
            fprintf(stderr, "ser local: %s exited before listening\n", who);
            return -1;
        }
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "ser local: %s did not start listening within 60 s\n", who);
    return -1;
}

// A stop request (SIGINT, SIGTERM: Ctrl-C, kill, systemd, a scheduler) goes on to the
// coordinator from the handler itself: glibc's signal() restarts waitpid, so a flag checked
// after an interrupted wait would never be seen. The coordinator checkpoints and ends the job.
static volatile sig_atomic_t s_local_stop;
static volatile pid_t s_local_coord;
static void s_local_signal(int sig) {
    s_local_stop = 1;
    if (s_local_coord > 0) kill(s_local_coord, sig);
}

int ser_cmd_local(int argc, char **argv) {
    ser_coord_opts o;
    s_defaults(&o);
    const char *cfg_path = NULL, *sets[SER_MAX_SET], *log_level = NULL;
    int nset = 0, workers = 2;
    int rc = s_parse(argc, argv, "local", &o, &workers, &cfg_path, sets, &nset, &log_level);
    if (rc) return rc == 1 ? 0 : rc;
    if ((rc = s_load_config(&o, cfg_path, sets, nset, "local"))) return rc;
    if (!o.batch_file && !cfg_path) {
        fprintf(stderr, "ser local: without --batch-file, a --config naming the job's [data] is "
                        "needed for the data loader\n");
        return SER_EXIT_USAGE;
    }
    // One machine: the workers share its cores (run.threads each, unless the job sets it; it is
    // part of the job, so every process gets the same value), and idle OpenMP threads sleep
    // instead of spinning against the other processes.
    char threads_set[48];
    int add_threads = 0;
    if (o.cfg.run.threads == 0 && nset < SER_MAX_SET) {
        add_threads = 1;
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(threads_set, sizeof threads_set, "run.threads=%ld",
                 cores / workers > 0 ? cores / workers : 1);
        sets[nset++] = threads_set;
        if ((rc = s_load_config(&o, cfg_path, sets, nset, "local"))) return rc;
    }
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    // The coordinator: the same options with an ephemeral port and an endpoint file.
    char dir[] = "/tmp/ser_local_XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "ser local: cannot create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    char epfile[128], ep[256] = "";
    snprintf(epfile, sizeof epfile, "%s/endpoint", dir);
    char *cargs[2 * SER_MAX_SET + 32];
    int n = 0;
    cargs[n++] = (char *)(uintptr_t)"ser";
    cargs[n++] = (char *)(uintptr_t)"coordinator";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--workers") == 0) {
            i++;
            continue;
        }
        if (strncmp(argv[i], "--workers=", 10) == 0) continue;
        cargs[n++] = argv[i];
    }
    // The coordinator waits for all of them before the first step.
    char nwork[16];
    snprintf(nwork, sizeof nwork, "%d", workers);
    cargs[n++] = (char *)(uintptr_t)"--workers";
    cargs[n++] = nwork;
    if (add_threads) {
        cargs[n++] = (char *)(uintptr_t)"--set";
        cargs[n++] = threads_set;
    }
    // Two jobs on one machine must not fight over the default status port: unless the job
    // names another one, ser local takes any free port (the coordinator prints its URL).
    if (o.cfg.cluster.status_port == 8080) {
        cargs[n++] = (char *)(uintptr_t)"--set";
        cargs[n++] = (char *)(uintptr_t)"cluster.status_port=0";
    }
    cargs[n++] = (char *)(uintptr_t)"--set";
    cargs[n++] = (char *)(uintptr_t)"cluster.port=0";
    cargs[n++] = (char *)(uintptr_t)"--endpoint-file";
    cargs[n++] = epfile;
    cargs[n] = NULL;
    signal(SIGINT, s_local_signal);
    signal(SIGTERM, s_local_signal);
    pid_t coord = s_spawn(cargs), pids[64], loader = -1;
    s_local_coord = coord;
    if (s_local_stop) kill(coord, SIGTERM);  // asked to stop before the coordinator existed
    int nw = 0, status = SER_EXIT_FAILED, reported = 0;
    char lep[256] = "", lepfile[128];
    snprintf(lepfile, sizeof lepfile, "%s/loader", dir);
    if (!o.batch_file) {
        // One data-loader service for the job, on an ephemeral port.
        char *largs[2 * SER_MAX_SET + 16];
        int nl = 0;
        largs[nl++] = (char *)(uintptr_t)"ser";
        largs[nl++] = (char *)(uintptr_t)"dataloader";
        largs[nl++] = (char *)(uintptr_t)"--config";
        largs[nl++] = (char *)(uintptr_t)(cfg_path ? cfg_path : "");
        for (int i = 0; i < nset; i++) {  // the loader derives its config from the same job
            largs[nl++] = (char *)(uintptr_t)"--set";
            largs[nl++] = (char *)(uintptr_t)sets[i];
        }
        largs[nl++] = (char *)(uintptr_t)"--bind";
        largs[nl++] = (char *)(uintptr_t)"tcp://127.0.0.1:*";
        largs[nl++] = (char *)(uintptr_t)"--endpoint-file";
        largs[nl++] = lepfile;
        // ser local ends its loader itself: a long pause of the job must not end it.
        largs[nl++] = (char *)(uintptr_t)"--idle-exit";
        largs[nl++] = (char *)(uintptr_t)"0";
        if (log_level) {
            largs[nl++] = (char *)(uintptr_t)"--log-level";
            largs[nl++] = (char *)(uintptr_t)log_level;
        }
        largs[nl] = NULL;
        loader = s_spawn(largs);
        if (s_wait_line(lepfile, lep, sizeof lep, loader, "the data loader")) goto out;
        ser_log(SER_LL_INFO, "local: data loader on %s", lep);
    }
    if (s_wait_line(epfile, ep, sizeof ep, coord, "the coordinator")) {
        if (waitpid(coord, NULL, WNOHANG) == coord) coord = -1;
        goto out;
    }
    ser_log(SER_LL_INFO, "local: coordinator on %s, starting %d workers", ep, workers);
    // Workers have no job file: the job's CURVE keys reach them through the environment.
    if (o.cfg.cluster.curve_key[0]) setenv("SER_CURVE_KEY", o.cfg.cluster.curve_key, 1);
    if (o.cfg.cluster.curve_server_key[0]) setenv("SER_CURVE_SERVER_KEY", o.cfg.cluster.curve_server_key, 1);
    for (; nw < workers; nw++) {
        char name[32];
        snprintf(name, sizeof name, "w%d", nw);
        char *wargs[] = {(char *)(uintptr_t)"ser", (char *)(uintptr_t)"worker",
                         (char *)(uintptr_t)"--coordinator", ep,
                         (char *)(uintptr_t)(o.batch_file ? "--batch-file" : "--loader"),
                         o.batch_file ? (char *)(uintptr_t)o.batch_file : lep,
                         (char *)(uintptr_t)"--name", name,
                         // the list ends here without a --log-level
                         (char *)(uintptr_t)(log_level ? "--log-level" : NULL),
                         (char *)(uintptr_t)log_level, NULL};
        pids[nw] = s_spawn(wargs);
    }
    // Wait for the coordinator; forward a stop request to it.
    for (;;) {
        int st;
        pid_t r = waitpid(coord, &st, 0);
        if (r == coord) {
            reported = WIFEXITED(st);
            status = reported ? WEXITSTATUS(st) : SER_EXIT_FAILED;
            coord = -1;
            s_local_coord = -1;
            break;
        }
        if (r < 0 && errno == EINTR && s_local_stop) kill(coord, SIGTERM);
        else if (r < 0 && errno != EINTR) break;
    }
out:
    // Workers end on the coordinator's SHUTDOWN; give them a moment, then make sure.
    for (int i = 0; i < nw; i++) {
        int st, done = 0;
        for (int k = 0; k < 50 && !done; k++) {
            done = waitpid(pids[i], &st, WNOHANG) == pids[i];
            if (!done) {
                struct timespec ts = {0, 100000000};
                nanosleep(&ts, NULL);
            }
        }
        if (!done) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], &st, 0);
        }
    }
    if (coord > 0) {
        kill(coord, SIGKILL);
        waitpid(coord, NULL, 0);
    }
    if (loader > 0) {
        kill(loader, SIGTERM);
        int st, done = 0;
        for (int k = 0; k < 30 && !done; k++) {
            done = waitpid(loader, &st, WNOHANG) == loader;
            if (!done) {
                struct timespec ts = {0, 100000000};
                nanosleep(&ts, NULL);
            }
        }
        if (!done) {
            kill(loader, SIGKILL);
            waitpid(loader, NULL, 0);
        }
    }
    unlink(lepfile);
    unlink(epfile);
    rmdir(dir);
    // Stopped before the coordinator could say how it ended (a signal during its start-up):
    // no step was lost either.
    if (s_local_stop && !reported) status = SER_EXIT_INTERRUPTED;
    return status;
}

// --- ser keygen ------------------------------------------------------------------------------
static void s_keygen_usage(FILE *f) {
    fprintf(f, "usage: ser keygen FILE\n"
               "  Writes a CURVE keypair to FILE (mode 0600; never overwrites) and its public\n"
               "  key to FILE.pub. Give FILE to every process of a job as cluster.curve_key\n"
               "  (workers: SER_CURVE_KEY=FILE); see proto/ser_curve.h for per-process keys.\n");
}

int ser_cmd_keygen(int argc, char **argv) {
    static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'h') {
            s_keygen_usage(stdout);
            return SER_EXIT_OK;
        }
        s_keygen_usage(stderr);
        return SER_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "ser keygen: want exactly one FILE\n");
        s_keygen_usage(stderr);
        return SER_EXIT_USAGE;
    }
    const char *path = argv[optind];
    char err[SER_ERR_LEN];
    if (ser_curve_keygen(path, err)) {
        fprintf(stderr, "ser keygen: %s\n", err);
        return SER_EXIT_FAILED;
    }
    printf("wrote %s and %s.pub\n", path, path);
    return SER_EXIT_OK;
}
