// ser_monitor.c — collapse monitors (ser_monitor.h).
#include "ser_monitor.h"

#include <math.h>
#include <stdlib.h>

#include "ser_base.h"

double ser_monitor_std(const float *x, int n, int d) {
    if (n < 2 || d < 1) return NAN;
    double *inv = ser_xcalloc((size_t)n, sizeof(double)), *mean = ser_xcalloc((size_t)d, sizeof(double));
    double *ss = ser_xcalloc((size_t)d, sizeof(double));
    for (int i = 0; i < n; i++) {  // the row norms (F.normalize's eps) and the feature means
        const float *r = x + (size_t)i * d;
        double nn = 0;
        for (int j = 0; j < d; j++) nn += (double)r[j] * (double)r[j];
        inv[i] = 1.0 / fmax(sqrt(nn), 1e-12);
        for (int j = 0; j < d; j++) mean[j] += (double)r[j] * inv[i];
    }
    for (int j = 0; j < d; j++) mean[j] /= n;
    for (int i = 0; i < n; i++) {  // two passes: no cancellation when the spread is tiny
        const float *r = x + (size_t)i * d;
        for (int j = 0; j < d; j++) {
            double e = (double)r[j] * inv[i] - mean[j];
            ss[j] += e * e;
        }
    }
    double acc = 0;
    for (int j = 0; j < d; j++) acc += sqrt(ss[j] / (n - 1));
    free(inv), free(mean), free(ss);
    return acc / d * sqrt((double)d);
}

int ser_collapse_watch_feed(ser_collapse_watch *w, double v) {
    if (w->steps <= 0 || w->fired) return 0;
    w->below = !(v >= w->threshold) ? w->below + 1 : 0;  // NAN counts as below
    if (w->below < w->steps) return 0;
    w->fired = 1;
    return 1;
}
