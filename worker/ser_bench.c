// ser_bench.c — `ser bench <what>`: benchmark programs.
#include <stdio.h>
#include <string.h>

#include "ser_cmd.h"

int ser_cmd_bench(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        printf("usage: ser bench vit [options]\n");
        return argc < 2 ? 2 : 0;
    }
    return ser_cmd_unimplemented("bench", argv[1]);
}
