// fuzz_driver.c — a replay driver for the fuzz harnesses when libFuzzer is not linked (the
// normal gcc build; the ctests fuzz_smoke_<name>). It tests nothing by itself: it feeds the
// harness's LLVMFuzzerTestOneInput
//   1. every file named on the command line, and every regular file of every folder named
//      (sorted by name, so the order is fixed), then
//   2. deterministic pseudo-random mutations of those inputs (bit flips, byte sets, truncation,
//      insertions, deletions, duplicated ranges, "interesting" integers, splices of two
//      inputs), mutation k drawn from its own stream (seed, k), until -runs mutations are done
//      or -max_total_time seconds have passed, whichever comes first.
// Each input is passed in a malloc'ed buffer of exactly its size, so a sanitizer sees any read
// past its end. Options use libFuzzer's spelling, so one command line works with both:
//   -runs=N            mutations after the corpus (default 5000; 0: the corpus only)
//   -max_total_time=S  seconds for the whole run (default 2.5; 0: no limit)
//   -seed=N            the mutation seed (default 1)
//   -max_len=N         the largest mutated input (default 16384)
//   -replay_mutation=K only mutation K (after the corpus), to reproduce a report
// Other -flags are ignored (libFuzzer's). On a crash (signal, abort, or a sanitizer's report
// when the sanitizer offers a death callback) the driver prints which input it was and the
// command that runs it alone, and the input in hex when it is at most 4 KiB.
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_util.h"

// Defined by a harness that needs one-time setup; libFuzzer calls it the same way.
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);
// Offered by ASan/UBSan builds (SER_SANITIZE_*): called before the process dies of a report.
__attribute__((weak)) void __sanitizer_set_death_callback(void (*cb)(void));

typedef struct s_input {
    char *name;
    uint8_t *data;
    size_t n;
} s_input;

static s_input *s_corpus;
static int s_ncorpus, s_capcorpus;

// What is running now, for the crash report.
static const char *s_argv0;
static const char *s_cur_name;
static long long s_cur_mutation = -1;
static unsigned long long s_seed = 1;
static const uint8_t *s_cur_data;
static size_t s_cur_n;

static void s_report(void) {
    static int done;
    if (done) return;
    done = 1;
    if (s_cur_mutation >= 0)
        fprintf(stderr,
                "\nfuzz_driver: CRASH on mutation %lld (seed %llu) of the corpus; reproduce "
                "with:\n  %s -seed=%llu -replay_mutation=%lld <the same corpus arguments>\n",
                s_cur_mutation, s_seed, s_argv0, s_seed, s_cur_mutation);
    else if (s_cur_name)
        fprintf(stderr, "\nfuzz_driver: CRASH on corpus file %s; reproduce with:\n  %s %s\n",
                s_cur_name, s_argv0, s_cur_name);
    if (s_cur_data && s_cur_n <= 4096) {
        fprintf(stderr, "fuzz_driver: the input (%zu bytes, hex):\n", s_cur_n);
        for (size_t i = 0; i < s_cur_n; i++)
            fprintf(stderr, "%02x%s", s_cur_data[i],
                    (i % 32 == 31 || i + 1 == s_cur_n) ? "\n" : "");
    }
    fflush(stderr);
}

static void s_on_signal(int sig) {
    s_report();
    signal(sig, SIG_DFL);
    raise(sig);
}

// --- the corpus ------------------------------------------------------------------------------

static int s_read_file(const char *path, uint8_t **data, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 4096, len = 0;
    uint8_t *b = malloc(cap);
    for (;;) {
        if (len == cap) b = realloc(b, cap *= 2);
        if (!b) {
            fclose(f);
            return -1;
        }
        size_t r = fread(b + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return -1;
    }
    *data = b, *n = len;
    return 0;
}

static void s_add(const char *path) {
    uint8_t *d;
    size_t n;
    if (s_read_file(path, &d, &n) != 0) {
        fprintf(stderr, "fuzz_driver: cannot read %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (s_ncorpus == s_capcorpus) {
        s_capcorpus = s_capcorpus ? 2 * s_capcorpus : 64;
        s_corpus = realloc(s_corpus, sizeof *s_corpus * (size_t)s_capcorpus);
        if (!s_corpus) abort();
    }
    s_corpus[s_ncorpus].name = strdup(path);
    s_corpus[s_ncorpus].data = d;
    s_corpus[s_ncorpus].n = n;
    s_ncorpus++;
}

static int s_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void s_add_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "fuzz_driver: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (!S_ISDIR(st.st_mode)) {
        s_add(path);
        return;
    }
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "fuzz_driver: cannot open %s: %s\n", path, strerror(errno));
        exit(2);
    }
    char **names = NULL;
    int n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, sizeof *names * (size_t)cap);
            if (!names) abort();
        }
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        if (!names[n]) abort();
        snprintf(names[n++], len, "%s/%s", path, e->d_name);
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof *names, s_cmp_str);
    for (int i = 0; i < n; i++) {
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) s_add(names[i]);
        free(names[i]);
    }
    free(names);
}

// --- mutations -------------------------------------------------------------------------------

static uint64_t s_next(uint64_t *x) {  // splitmix64
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t s_below(uint64_t *r, size_t n) {
    return n ? (size_t)(s_next(r) % n) : 0;
}

// clang-format off
static const uint64_t s_interesting[] = {
    0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512, 1000, 1024, 4096,
    32767, 32768, 65535, 65536, 0x7fffffffull, 0x80000000ull, 0xffffffffull, 0x100000000ull,
    0x7fffffffffffffffull, 0x8000000000000000ull, 0xffffffffffffffffull, (uint64_t)-2,
};
// clang-format on

// Mutation k: a copy of a corpus input with 1..4 edits, in a malloc'ed buffer of its size.
static uint8_t *s_mutate(long long k, size_t max_len, size_t *out_n) {
    uint64_t r = s_seed * 0x2545f4914f6cdd1dull ^ (uint64_t)k * 0x9e3779b97f4a7c15ull;
    s_next(&r);
    const s_input *in = &s_corpus[s_below(&r, (size_t)s_ncorpus)];
    size_t cap = max_len + 64, n = in->n < max_len ? in->n : max_len;
    uint8_t *b = malloc(cap);
    if (!b) abort();
    memcpy(b, in->data, n);
    int edits = 1 + (int)s_below(&r, 4);
    for (int e = 0; e < edits; e++) {
        switch (s_below(&r, 10)) {
            case 0:  // flip one bit
            case 1:
                if (n) b[s_below(&r, n)] ^= (uint8_t)(1u << s_below(&r, 8));
                break;
            case 2:  // set one byte
                if (n) b[s_below(&r, n)] = (uint8_t)s_next(&r);
                break;
            case 3:  // truncate
                n = s_below(&r, n + 1);
                break;
            case 4: {  // insert 1..16 random bytes
                size_t at = s_below(&r, n + 1), len = 1 + s_below(&r, 16);
                if (n + len > max_len) break;
                memmove(b + at + len, b + at, n - at);
                for (size_t i = 0; i < len; i++) b[at + i] = (uint8_t)s_next(&r);
                n += len;
                break;
            }
            case 5: {  // delete a range
                if (!n) break;
                size_t at = s_below(&r, n), len = 1 + s_below(&r, n - at < 32 ? n - at : 32);
                memmove(b + at, b + at + len, n - at - len);
                n -= len;
                break;
            }
            case 6: {  // duplicate a range in place
                if (!n) break;
                size_t at = s_below(&r, n), len = 1 + s_below(&r, n - at < 64 ? n - at : 64);
                if (n + len > max_len) break;
                memmove(b + at + len, b + at, n - at);
                n += len;
                break;
            }
            case 7:  // an interesting integer, 1/2/4/8 bytes, little- or big-endian
            case 8: {
                size_t w = (size_t)1 << s_below(&r, 4);
                if (n < w) break;
                size_t at = s_below(&r, n - w + 1);
                uint64_t v =
                    s_interesting[s_below(&r, sizeof s_interesting / sizeof *s_interesting)];
                int big = (int)(s_next(&r) & 1);
                for (size_t i = 0; i < w; i++)
                    b[at + (big ? w - 1 - i : i)] = (uint8_t)(v >> (8 * i));
                break;
            }
            default: {  // splice: a prefix of this input, a suffix of another
                const s_input *o = &s_corpus[s_below(&r, (size_t)s_ncorpus)];
                size_t cut = s_below(&r, n + 1), from = s_below(&r, o->n + 1);
                size_t len = o->n - from;
                if (cut + len > max_len) len = max_len - cut;
                memcpy(b + cut, o->data + from, len);
                n = cut + len;
                break;
            }
        }
    }
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) abort();
    memcpy(exact, b, n);
    free(b);
    *out_n = n;
    return exact;
}

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void s_run(const uint8_t *data, size_t n) {
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) abort();
    if (n) memcpy(exact, data, n);
    s_cur_data = exact, s_cur_n = n;
    LLVMFuzzerTestOneInput(exact, n);
    s_cur_data = NULL;
    free(exact);
}

int main(int argc, char **argv) {
    s_argv0 = argv[0];
    long long runs = 5000, only = -1;
    double max_time = 2.5;
    size_t max_len = 16384;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') continue;
        if (!strncmp(a, "-runs=", 6))
            runs = atoll(a + 6);
        else if (!strncmp(a, "-max_total_time=", 16))
            max_time = atof(a + 16);
        else if (!strncmp(a, "-seed=", 6))
            s_seed = strtoull(a + 6, NULL, 10);
        else if (!strncmp(a, "-max_len=", 9))
            max_len = (size_t)atoll(a + 9);
        else if (!strncmp(a, "-replay_mutation=", 17))
            only = atoll(a + 17);
    }
    if (max_len < 1) max_len = 1;
    signal(SIGSEGV, s_on_signal);
    signal(SIGBUS, s_on_signal);
    signal(SIGFPE, s_on_signal);
    signal(SIGILL, s_on_signal);
    signal(SIGABRT, s_on_signal);
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(s_report);
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '-') s_add_path(argv[i]);
    double t0 = s_now();
    if (only < 0) {
        for (int i = 0; i < s_ncorpus; i++) {
            s_cur_name = s_corpus[i].name;
            s_run(s_corpus[i].data, s_corpus[i].n);
        }
        s_cur_name = NULL;
    }
    long long done = 0;
    if (s_ncorpus > 0) {
        long long first = only >= 0 ? only : 0, last = only >= 0 ? only + 1 : runs;
        for (long long k = first; k < last; k++) {
            if (only < 0 && max_time > 0 && s_now() - t0 > max_time) break;
            size_t n;
            uint8_t *m = s_mutate(k, max_len, &n);
            s_cur_mutation = k;
            s_run(m, n);
            s_cur_mutation = -1;
            free(m);
            done++;
        }
    }
    printf("fuzz_driver: %d corpus inputs, %lld mutations (seed %llu) in %.2f s: no crash\n",
           s_ncorpus, done, s_seed, s_now() - t0);
    for (int i = 0; i < s_ncorpus; i++) {
        free(s_corpus[i].name);
        free(s_corpus[i].data);
    }
    free(s_corpus);
    return 0;
}
