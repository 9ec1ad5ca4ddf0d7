// test_monitor.c — the collapse monitors (common/train/ser_monitor.h): the spread statistic
// against PyTorch on fixed features, its limits (collapsed, evenly spread), and the alarm rule.
#include <math.h>

#include "ser_monitor.h"
#include "ser_test.h"

// 12 x 7 features x[i][j] = float(sin(0.37 (7i + j)) + 0.1 j). The expected value from PyTorch:
//   z = F.normalize(x.double(), dim=1); (z.std(dim=0).mean() * math.sqrt(7)).item()
static void test_std_equals_torch(void **state) {
    (void)state;
    enum { N = 12, D = 7 };
    float x[N * D];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) x[i * D + j] = (float)(sin(0.37 * (i * D + j)) + 0.1 * j);
    double v = ser_monitor_std(x, N, D);
    assert_true(fabs(v - 1.0058831975264007) < 1e-12);
}

static void test_std_limits(void **state) {
    (void)state;
    enum { D = 16 };
    // Collapsed: every row the same direction (any scale): 0.
    float c[4 * D];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < D; j++) c[i * D + j] = (float)((i + 1) * (j % 3 + 1));
    assert_true(ser_monitor_std(c, 4, D) < 1e-7);
    // The 2D one-hot rows +-e_j (a perfectly spread set): each feature has mean 0 and
    // variance 2 / (2D - 1) (unbiased), so the statistic is sqrt(2D / (2D - 1)) ~ 1.
    float e[2 * D * D];
    for (int i = 0; i < 2 * D * D; i++) e[i] = 0;
    for (int j = 0; j < D; j++) e[j * D + j] = 1, e[(D + j) * D + j] = -1;
    assert_true(fabs(ser_monitor_std(e, 2 * D, D) - sqrt(2.0 * D / (2 * D - 1))) < 1e-12);
    assert_true(isnan(ser_monitor_std(e, 1, D)));  // one row: no spread defined
}

static void test_watch(void **state) {
    (void)state;
    ser_collapse_watch w = {0.2, 3, 0, 0};
    double seq[] = {0.9, 0.1, 0.1, 0.5, 0.1, 0.1, NAN, 0.1, 0.1, 0.1};
    int fired_at = -1, fires = 0;
    for (int i = 0; i < 10; i++)
        if (ser_collapse_watch_feed(&w, seq[i])) fires++, fired_at = i;
    assert_int_equal(fires, 1);  // once: at the third of 0.1, 0.1, NAN
    assert_int_equal(fired_at, 6);
    ser_collapse_watch off = {0.2, 0, 0, 0};
    for (int i = 0; i < 10; i++) assert_int_equal(ser_collapse_watch_feed(&off, 0.0), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_std_equals_torch),
        cmocka_unit_test(test_std_limits),
        cmocka_unit_test(test_watch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
