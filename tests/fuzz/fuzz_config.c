// fuzz_config.c — fuzzes the job configuration parser (common/io/ser_config.h): INI text
// through ser_config_load_string() (inih plus ser's option table, bounds, enums, duplicate
// keys, cross-field rules), `--set section.key=value` overrides through ser_config_set_arg()
// and ser_config_load() (a file plus overrides, as the daemons call it), and on every config
// that loads: the canonical dump, the hash and the conversions the modules use.
//
// Input: one option byte, then the INI text, then any number of overrides, all separated by
// NUL bytes ("text\0optim.lr=0.1\0model.patch=8").
//   option bit 0: also load the text as a file with ser_config_load(path, overrides) (the
//                 file is rewritten in the per-process temporary folder of fuzz_util.h)
// Checked here beyond "no crash":
//   - a refused load or override leaves the config exactly as it was, with a reason;
//   - every config that loads survives dump -> load unchanged, with the same hash, and every
//     option of the table reads back with ser_config_get();
//   - ser_config_load(NULL, overrides) equals defaults + ser_config_set_arg() of each override
//     + ser_config_validate(), and ser_config_load(file, overrides) equals the text loaded with
//     ser_config_load_string() + the same overrides + ser_config_validate().
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ser_config.h"

#define S_MAX_OVERRIDES 16

static char s_path[600];
static ser_config s_defaults;

// "Unchanged" is byte for byte: a refused load or override must not write the struct at all
// (ser_config_equal compares canonical texts and costs a dump; it is kept for the checks
// between two configs built by different routes).
static int s_same(const ser_config *a, const ser_config *b) {
    return memcmp(a, b, sizeof *a) == 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    snprintf(s_path, sizeof s_path, "%s/job.ini", ser_fuzz_tmpdir());
    ser_config_defaults(&s_defaults);
    return 0;
}

static void s_fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_config: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

// Every property a loaded (validated) config must have. Two configs are equal exactly when
// their canonical dumps are (ser_config_equal compares the same canonical values), and the
// hash is a function of those values, so comparing the dumps covers both.
static void s_check_loaded(const ser_config *c) {
    char *text = ser_config_text(c);
    if (!text) s_fail("ser_config_text failed", NULL);
    ser_config back = s_defaults;
    char err[SER_ERR_LEN];
    if (ser_config_load_string(&back, text, "dump", err) != SER_OK) {
        fprintf(stderr, "fuzz_config: the dump does not load again: %s\n--- dump:\n%s\n", err,
                text);
        abort();
    }
    char *again = ser_config_text(&back);
    if (!again || strcmp(text, again) != 0) {
        char diff[512];
        ser_config_diff(c, &back, diff, sizeof diff);
        fprintf(stderr, "fuzz_config: dump -> load changed the config: %s\n", diff);
        abort();
    }
    free(again);
    // ser_config_get on every 8th option of the table (which ones depends on the text).
    int nopt;
    const ser_config_option *o = ser_config_options(&nopt);
    for (int i = (int)(strlen(text) % 8); i < nopt; i += 8) {
        char key[160], val[SER_CONFIG_STR_LEN + 32];
        snprintf(key, sizeof key, "%s.%s", o[i].section, o[i].name);
        if (ser_config_get(c, key, val, sizeof val) != SER_OK) s_fail("ser_config_get failed", key);
    }
    free(text);
    char hex[17];
    ser_config_hash_hex(c, hex);
    ser_vit_config vc;
    ser_config_to_vit(c, &vc, err);
    ser_optim_config oc;
    ser_config_to_optim(c, &oc);
    char largest[128];
    double bytes = ser_config_memory_bytes(c, largest, sizeof largest);
    ser_config_check_memory(c, bytes, err);
    ser_sched_params sp;
    ser_config_to_sched(c, 100, &sp);
    ser_config_shard_batch(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_path[0]) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1) return 0;
    int opt = data[0];
    // A NUL-terminated copy; the parts are the NUL-separated pieces of it.
    char *buf = malloc(size);
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = 0;
    const char *text = buf;
    const char *over[S_MAX_OVERRIDES];
    int nover = 0;
    for (size_t i = strlen(buf) + 1; i < size && nover < S_MAX_OVERRIDES; i += strlen(buf + i) + 1)
        over[nover++] = buf + i;

    ser_config base = s_defaults, c = s_defaults;
    char err[SER_ERR_LEN] = "";
    int rc = ser_config_load_string(&c, text, "fuzz.ini", err);
    if (rc != SER_OK && (!err[0] || !s_same(&c, &base)))
        s_fail("a refused text changed the config or gave no reason", err);
    if (rc == SER_OK) s_check_loaded(&c);

    // Overrides one by one on top of what the text gave.
    ser_config set = c;
    int all_set = 1;
    for (int i = 0; i < nover; i++) {
        ser_config before = set;
        err[0] = 0;
        if (ser_config_set_arg(&set, over[i], err) != SER_OK) {
            all_set = 0;
            if (!err[0] || !s_same(&set, &before))
                s_fail("a refused override changed the config or gave no reason", over[i]);
        }
    }
    int set_ok = ser_config_validate(&set, err) == SER_OK;
    if (set_ok && nover > 0 && !ser_config_equal(&set, &c)) s_check_loaded(&set);

    // The daemons' entry point: defaults + overrides (no file) must equal the steps above.
    ser_config d = base, manual = base;
    int drc = ser_config_load(&d, NULL, nover, over, err);
    int mrc = SER_OK;
    for (int i = 0; i < nover && mrc == SER_OK; i++)
        mrc = ser_config_set_arg(&manual, over[i], err);
    if (mrc == SER_OK) mrc = ser_config_validate(&manual, err);
    if ((drc == SER_OK) != (mrc == SER_OK) ||
        (drc == SER_OK && nover > 0 && !ser_config_equal(&d, &manual)))
        s_fail("ser_config_load(NULL, overrides) differs from set_arg + validate", NULL);
    if (drc != SER_OK && !s_same(&d, &base))
        s_fail("a refused ser_config_load changed the config", NULL);

    if (opt & 1) {  // the same text as a file, with the overrides
        if (ser_fuzz_write_file(s_path, text, strlen(text)) != 0) s_fail("cannot write", s_path);
        ser_config f = base;
        err[0] = 0;
        int frc = ser_config_load(&f, s_path, nover, over, err);
        if (frc != SER_OK && (!err[0] || !s_same(&f, &base)))
            s_fail("a refused file changed the config or gave no reason", err);
        // The file with the overrides is the text, then each override, then the rules.
        if (rc == SER_OK && (frc == SER_OK) != (all_set && set_ok))
            s_fail("ser_config_load(file, overrides) differs from load_string + set_arg", NULL);
        if (frc == SER_OK && rc == SER_OK && !ser_config_equal(&f, &set))
            s_fail("ser_config_load(file, overrides) gave another config", NULL);
    }
    free(buf);
    return 0;
}
