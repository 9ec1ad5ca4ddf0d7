// test_rng.c — Philox known-answer vectors and stream properties.
#include <string.h>

#include "ser_rng.h"
#include "ser_test.h"

// Known-answer tests from the Random123 distribution (kat_vectors, philox4x32 10 rounds).
static void test_philox_kat(void **state) {
    (void)state;
    uint32_t out[4];
    const uint32_t c0[4] = {0, 0, 0, 0}, k0[2] = {0, 0};
    ser_rng_philox(out, c0, k0);
    assert_int_equal(out[0], 0x6627e8d5u);
    assert_int_equal(out[1], 0xe169c58du);
    assert_int_equal(out[2], 0xbc57ac4cu);
    assert_int_equal(out[3], 0x9b00dbd8u);
    const uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    const uint32_t k1[2] = {0xffffffffu, 0xffffffffu};
    ser_rng_philox(out, c1, k1);
    assert_int_equal(out[0], 0x408f276du);
    assert_int_equal(out[1], 0x41c83b0eu);
    assert_int_equal(out[2], 0xa20bc7c6u);
    assert_int_equal(out[3], 0x6d5451fdu);
    const uint32_t c2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
    const uint32_t k2[2] = {0xa4093822u, 0x299f31d0u};
    ser_rng_philox(out, c2, k2);
    assert_int_equal(out[0], 0xd16cfe09u);
    assert_int_equal(out[1], 0x94fdccebu);
    assert_int_equal(out[2], 0x5001e420u);
    assert_int_equal(out[3], 0x24126ea1u);
}

static void test_streams_are_pure_functions(void **state) {
    (void)state;
    ser_rng a, b, c;
    ser_rng_init(&a, 42, 1, 2, 3);
    ser_rng_init(&b, 42, 1, 2, 3);
    ser_rng_init(&c, 42, 1, 2, 4);
    int differ = 0;
    for (int i = 0; i < 100; i++) {
        uint32_t x = ser_rng_u32(&a), y = ser_rng_u32(&b), z = ser_rng_u32(&c);
        assert_int_equal(x, y);
        differ += x != z;
    }
    assert_true(differ > 90);
}

static void test_uniform_range_and_mean(void **state) {
    (void)state;
    ser_rng r;
    ser_rng_init(&r, 7, 0, 0, 0);
    double s = 0, s2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        float u = ser_rng_uniform(&r);
        assert_true(u >= 0.0f && u < 1.0f);
        s += (double)u;
    }
    assert_true(s / n > 0.497 && s / n < 0.503);
    for (int i = 0; i < n; i++) {
        double g = ser_rng_normal(&r);
        s2 += g * g;
    }
    assert_true(s2 / n > 0.98 && s2 / n < 1.02);
}

static void test_permutation(void **state) {
    (void)state;
    uint32_t p[1000], q[1000];
    char seen[1000];
    memset(seen, 0, sizeof seen);
    ser_rng_permutation(p, 1000, 5, 0);
    ser_rng_permutation(q, 1000, 5, 0);
    assert_memory_equal(p, q, sizeof p);
    for (int i = 0; i < 1000; i++) {
        assert_true(p[i] < 1000);
        assert_false(seen[p[i]]);
        seen[p[i]] = 1;
    }
    ser_rng_permutation(q, 1000, 5, 1);
    assert_true(memcmp(p, q, sizeof p) != 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_kat),
        cmocka_unit_test(test_streams_are_pure_functions),
        cmocka_unit_test(test_uniform_range_and_mean),
        cmocka_unit_test(test_permutation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
