// ser_main.c — the `ser` executable: git-style subcommands.
#include <limits.h>
#include <stdint.h>
#include <malloc.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "ser_base.h"
#include "ser_cmd.h"

#ifndef SER_VERSION
#define SER_VERSION "dev"
#endif
#ifndef SER_GIT_COMMIT
#define SER_GIT_COMMIT "unknown"
#endif

typedef struct ser_command {
    const char *name;
    int (*fn)(int argc, char **argv);  // NULL: a later milestone
    const char *summary;
} ser_command;

static const ser_command s_commands[] = {
    {"bench", ser_cmd_bench, "benchmarks: vit, step, loader, cluster (each against its peer)"},
    {"step", ser_cmd_step, "run K training steps in one process on given weights and batch"},
    {"local", ser_cmd_local, "coordinator + N workers + a loader on this machine"},
    {"coordinator", ser_cmd_coordinator, "the coordinator daemon"},
    {"worker", ser_cmd_worker, "a worker process"},
    {"dataloader", ser_cmd_dataloader, "a data-loader service"},
    {"keygen", ser_cmd_keygen, "write a CURVE keypair for encrypted, authenticated jobs (FILE)"},
    {"status", ser_cmd_status, "print a coordinator's status (HOST:PORT [--json] [--watch S])"},
    {"eval", ser_cmd_eval, "evaluate a checkpoint (knn, linear, equivariance, probe, robustness)"},
    {"export", ser_cmd_export, "export a backbone with timm names (and the full model state)"},
};
#define N_COMMANDS (sizeof s_commands / sizeof s_commands[0])

static void s_usage(FILE *f) {
    fprintf(f, "usage: ser <command> [options]   (ser <command> --help for its options)\n\n");
    fprintf(f, "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-12s %s%s\n", s_commands[i].name, s_commands[i].summary,
                s_commands[i].fn ? "" : "  [not implemented yet]");
    fprintf(f, "\n  ser --version   print the version\n"
               "\n"
               "Every command takes -h/--help and --opt=value; the long-running ones (local,\n"
               "coordinator, worker, dataloader) take --log-level error|warning|info|debug and\n"
               "--quiet (= warning).\n"
               "\n"
               "exit status: 0 finished, 1 failed, 2 bad option or job file, 3 a job (local,\n"
               "coordinator) stopped by SIGINT/SIGTERM after checkpointing its last completed\n"
               "step (started again, it resumes).\n"
               "\n"
               "environment: SER_CURVE_KEY, SER_CURVE_SERVER_KEY, SER_CURVE_ALLOW (a process's\n"
               "cluster.curve_key, curve_server_key, curve_allow when its job has none: workers),\n"
               "SER_PLAINTEXT=1 (cluster.plaintext), SER_FAULT (fault injection, for tests),\n"
               "SER_MALLOC_DEFAULT=1 (glibc's own malloc thresholds).\n"
               "\n"
               "docs/cli.md (installed: share/doc/ser/cli.md) describes every command.\n");
}

int ser_cmd_unimplemented(const char *name, const char *what) {
    fprintf(stderr, "ser %s: not implemented yet (%s)\n", name, what);
    return 2;
}

int main(int argc, char **argv) {
    // Every step allocates and frees the same large buffers (activations, ZeroMQ messages of
    // whole parameter vectors). glibc serves each block over 32 MB with a fresh mmap, so the
    // kernel zeroes it again on every touch: ~20% of a ViT-S/16 worker's step went to page
    // faults (perf: clear_page_erms). Keep freed memory in the heap for reuse instead; the
    // resident size stays at the process's peak. SER_MALLOC_DEFAULT=1 keeps glibc's behaviour.
    if (!getenv("SER_MALLOC_DEFAULT")) {
        mallopt(M_MMAP_MAX, 0);
        mallopt(M_TRIM_THRESHOLD, INT_MAX);
    }
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        s_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("ser %s (commit %s)\n", SER_VERSION, SER_GIT_COMMIT);
        return 0;
    }
    // `-h` means --help for every subcommand (before a `--`), whatever its own parser takes.
    for (int i = 2; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "-h") == 0) argv[i] = (char *)(uintptr_t)"--help";
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], s_commands[i].name) != 0) continue;
        if (!s_commands[i].fn) return ser_cmd_unimplemented(s_commands[i].name, "a later milestone");
        return s_commands[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "ser: unknown command '%s'\n\n", argv[1]);
    s_usage(stderr);
    return 2;
}
