// ser_monitor.h — collapse monitors: numbers that say during a run, long before any
// evaluation, whether the features are collapsing (every image mapped to nearly one point).
//
// defines:
//   ser_monitor_std()        the spread of L2-normalised rows (1 healthy, 0 collapsed)
//   ser_collapse_watch, ser_collapse_watch_feed()   below a threshold for K checks in a row
#ifndef SER_MONITOR_H
#define SER_MONITOR_H

// For n rows of d features: each row L2-normalised, the standard deviation of every feature
// over the rows (unbiased, as torch.std), averaged over the features, times sqrt(d). Rows
// spread evenly over the sphere give ~1; identical rows give 0 (the statistic of
// solo-learn's and lightly's collapse monitors, scaled so that the width does not matter).
// NAN when n < 2. In double, rows in order: the same value on every machine and thread count.
double ser_monitor_std(const float *x, int n, int d);

// A monitor below `threshold` for `steps` consecutive checks raises one alarm.
typedef struct ser_collapse_watch {
    double threshold;
    int steps;
    int below;  // consecutive checks below the threshold so far
    int fired;  // the alarm was raised (once per run)
} ser_collapse_watch;

// Feeds one value (a non-finite one counts as below); returns 1 exactly once, at the check
// that completes `steps` in a row below the threshold; 0 otherwise (and always with steps <= 0).
int ser_collapse_watch_feed(ser_collapse_watch *w, double v);

#endif
