// ser_knn_monitor.c — see ser_knn_monitor.h.
#include "ser_knn_monitor.h"

#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "ser_eval_data.h"
#include "ser_kernels.h"

struct ser_knn_monitor {
    ser_eval_data ed;
    int64_t every;
    int img, C, B, nthr, k;
    double T;
    uint8_t *u8[2];  // [train, test] decoded subsets (n, img, img, 3)
    float *f[2];     // their features (n, C)
    ser_vit_acts acts;
};

ser_knn_monitor *ser_knn_monitor_new(const ser_config *cfg, const ser_vit_config *vc,
                                     int64_t every, int nthr, char err[SER_ERR_LEN]) {
    if (cfg->eval.knn_every < 0) {
        snprintf(err, SER_ERR_LEN, "off (eval.knn_every = -1)");
        return NULL;
    }
    SER_ASSERT(every > 0 && nthr > 0);
    ser_knn_monitor *m = ser_xcalloc(1, sizeof *m);
    void **tj = NULL;
    char e2[SER_ERR_LEN];
    int rc = ser_eval_data_open(&m->ed, cfg->eval.knn_data, cfg, cfg->eval.knn_train,
                                cfg->eval.knn_test, 0, e2);
    if (rc) {
        snprintf(err, SER_ERR_LEN, "off: %.200s (set eval.knn_data to labelled data)", e2);
        goto fail;
    }
    m->every = every, m->nthr = nthr, m->k = cfg->eval.knn_k, m->T = cfg->eval.knn_temperature;
    m->img = vc->img_size, m->C = vc->dim, m->B = ser_eval_batch(vc);
    tj = ser_xcalloc((size_t)nthr, sizeof(void *));
    for (int t = 0; t < nthr; t++) tj[t] = tjInitDecompress();
    size_t pix = (size_t)m->img * m->img * 3;
    const ser_eval_set *sets[2] = {&m->ed.tr, &m->ed.te};
    for (int i = 0; i < 2 && !rc; i++) {
        m->u8[i] = ser_xmalloc(pix * (size_t)sets[i]->n);
        m->f[i] = ser_xmalloc(sizeof(float) * (size_t)sets[i]->n * m->C);
        rc = ser_eval_load_u8(sets[i], 0, sets[i]->n, m->img, m->u8[i], tj, nthr, e2);
    }
    for (int t = 0; t < nthr; t++)
        if (tj[t]) tjDestroy(tj[t]);
    free(tj);
    if (rc) {
        snprintf(err, SER_ERR_LEN, "off: %.200s", e2);
        goto fail;
    }
    return m;
fail:
    ser_knn_monitor_destroy(&m);
    return NULL;
}

int ser_knn_monitor_due(const ser_knn_monitor *m, int64_t step, int last) {
    return m && (last || (step + 1) % m->every == 0);
}

int ser_knn_monitor_run(ser_knn_monitor *m, ser_vit *student, ser_eval_acc *out, double *secs,
                        char err[SER_ERR_LEN]) {
    double t0 = ser_time_sec();
    const ser_eval_set *sets[2] = {&m->ed.tr, &m->ed.te};
    int rc = SER_OK;
    // Measured in fp32 whatever the job's run.precision, as `ser eval knn` measures.
    int precision = ser_kernels_get_precision();
    ser_kernels_set_precision(SER_PRECISION_FP32, NULL, 0);
    for (int i = 0; i < 2 && !rc; i++)
        rc = ser_eval_cls_features(student, &m->acts, sets[i], m->B, m->u8[i], NULL, m->nthr,
                                   m->f[i], err);
    if (!rc)  // its similarities are a product too
        rc = ser_eval_knn_acc(out, m->f[0], m->ed.tr.y, m->ed.tr.n, m->f[1], m->ed.te.y,
                              m->ed.te.n, m->C, m->ed.ncls, m->k, m->T);
    ser_kernels_set_precision(precision, NULL, 0);
    *secs = ser_time_sec() - t0;
    return rc;
}

void ser_knn_monitor_sizes(const ser_knn_monitor *m, int *ntrain, int *ntest) {
    *ntrain = m->ed.tr.n, *ntest = m->ed.te.n;
}

void ser_knn_monitor_destroy(ser_knn_monitor **mp) {
    if (!mp || !*mp) return;
    ser_knn_monitor *m = *mp;
    ser_eval_data_free(&m->ed);
    ser_vit_acts_free(&m->acts);
    for (int i = 0; i < 2; i++) free(m->u8[i]), free(m->f[i]);
    free(m);
    *mp = NULL;
}
