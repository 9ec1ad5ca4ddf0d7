// ser_test.h — test helpers on top of cmocka.
//
// Tests are cmocka groups (cmocka_run_group_tests), one executable per module, each its own
// CTest. Numerical comparisons follow |got - ref| <= atol + rtol*|ref| per element and report
// the first mismatches, the max abs/rel error and the share of the tolerance used.
//
// defines:
//   ser_test_allclose(label, got, ref, n, atol, rtol)  -> 1 if close, else prints and 0
//   ser_test_fixture_path(buf, n, file)                 SER_FIXTURE_DIR/file
//   ser_test_fill_uniform(x, n, seed, lo, hi)           deterministic synthetic data
//   ser_test_nmse(a, b, n)                              normalised mean squared error
//   SER_ASSERT_CLOSE(label, got, ref, n, atol, rtol)    cmocka assertion around allclose
#ifndef SER_TEST_H
#define SER_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

int ser_test_allclose(const char *label, const float *got, const float *ref, size_t n, float atol,
                      float rtol);
const char *ser_test_fixture_path(char *buf, size_t n, const char *file);
void ser_test_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
double ser_test_nmse(const float *a, const float *b, size_t n);

#define SER_ASSERT_CLOSE(label, got, ref, n, atol, rtol) \
    assert_true(ser_test_allclose((label), (got), (ref), (n), (atol), (rtol)))

#endif
