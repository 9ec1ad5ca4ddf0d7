// test_base.c — common/base/ser_base.h helpers that have no other home: ser_human_bytes().
#include <math.h>
#include <string.h>

#include "ser_base.h"
#include "ser_test.h"

// Byte counts as a person reads them: powers of 1024, one decimal below 100, the unit rolled
// over where the rounding would print 1024, and "?" for what is no count.
static void test_human_bytes(void **state) {
    (void)state;
    static const struct {
        double bytes;
        const char *want;
    } cases[] = {
        {0, "0 B"},
        {1, "1 B"},
        {1023, "1023 B"},
        {1023.6, "1.0 KiB"},
        {1024, "1.0 KiB"},
        {1536, "1.5 KiB"},
        {102400, "100 KiB"},
        {1048575, "1.0 MiB"},
        {12.34 * 1048576, "12.3 MiB"},
        {1.2 * 1073741824.0, "1.2 GiB"},
        {99.96 * 1073741824.0, "100 GiB"},
        {1023 * 1073741824.0, "1023 GiB"},
        {1.5 * 1099511627776.0, "1.5 TiB"},
        {2.0 * 1125899906842624.0, "2.0 PiB"},
        {3.0 * 1152921504606846976.0, "3.0 EiB"},
        {5000 * 1152921504606846976.0, "5000 EiB"},
        {-1, "?"},
        {NAN, "?"},
        {INFINITY, "?"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[SER_HUMAN_BYTES_LEN];
        const char *got = ser_human_bytes(cases[i].bytes, buf);
        assert_ptr_equal(got, buf);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("ser_human_bytes(%.17g) = '%s', want '%s'", cases[i].bytes, got,
                     cases[i].want);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_human_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
