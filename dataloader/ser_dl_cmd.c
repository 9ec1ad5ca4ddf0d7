// ser_dl_cmd.c — `ser dataloader` and `ser bench loader` entry points.
#include "ser_cmd.h"

int ser_cmd_dataloader(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return ser_cmd_unimplemented("dataloader", "the data-loader service");
}

int ser_bench_loader(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return ser_cmd_unimplemented("bench loader", "the loader benchmark");
}
