// ser_cmd.h — the subcommand entry points of the `ser` executable.
//
// Each role folder implements its own entry points; tools/ser_main.c dispatches to them.
// An entry point returns the process exit status, one of SER_EXIT_* (docs/cli.md).
//
// defines:
//   SER_EXIT_OK, SER_EXIT_FAILED, SER_EXIT_USAGE, SER_EXIT_INTERRUPTED
//   ser_cmd_bench (tools/), ser_cmd_dataloader, ser_bench_loader (dataloader/)
//   ser_cmd_unimplemented()   the uniform message for commands of later milestones
#ifndef SER_CMD_H
#define SER_CMD_H

// Exit statuses of every subcommand. A script or scheduler tells a finished job from one
// stopped by SIGINT/SIGTERM (3: the last completed step is checkpointed, and the same command
// started again resumes) without parsing logs.
#define SER_EXIT_OK 0           // finished (a service: stopped, or its job ended)
#define SER_EXIT_FAILED 1       // failed at run time
#define SER_EXIT_USAGE 2        // bad option, value or job file: nothing was started
#define SER_EXIT_INTERRUPTED 3  // a job (coordinator, local) stopped by a signal, checkpointed

int ser_cmd_bench(int argc, char **argv);
// `ser bench step ...` (argv[0] is "step"), tools/ser_bench_step.c.
int ser_bench_step(int argc, char **argv);
// `ser bench cluster ...` (argv[0] is "cluster"), tools/ser_bench_cluster.c.
int ser_bench_cluster(int argc, char **argv);
int ser_cmd_dataloader(int argc, char **argv);
// `ser step` (tools/ser_step.c).
int ser_cmd_step(int argc, char **argv);
// `ser worker` (worker/ser_worker.c), `ser coordinator` and `ser local` (coordinator/).
int ser_cmd_worker(int argc, char **argv);
int ser_cmd_coordinator(int argc, char **argv);
int ser_cmd_local(int argc, char **argv);
// `ser keygen FILE` (coordinator/ser_coord_cmd.c): a CURVE keypair for a job.
int ser_cmd_keygen(int argc, char **argv);
// `ser status HOST:PORT` (coordinator/ser_status_cmd.c).
int ser_cmd_status(int argc, char **argv);
// `ser export` (tools/ser_export.c).
int ser_cmd_export(int argc, char **argv);
// `ser bench loader ...` (argv[0] is "loader").
int ser_bench_loader(int argc, char **argv);

// `ser eval` (tools/ser_eval_cmd.c).
int ser_cmd_eval(int argc, char **argv);

// Prints "ser NAME: not implemented yet (WHAT)" and returns 2.
int ser_cmd_unimplemented(const char *name, const char *what);

#endif
