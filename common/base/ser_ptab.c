// ser_ptab.c — see ser_ptab.h.
#include "ser_ptab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"

void ser_ptab_init(ser_ptab *p) { memset(p, 0, sizeof *p); }

void ser_ptab_free(ser_ptab *p) {
    free(p->t);
    memset(p, 0, sizeof *p);
}

size_t ser_ptab_add(ser_ptab *p, const char *name, unsigned flags, int ndim, const int64_t *shape) {
    SER_ASSERT(ndim >= 0 && ndim <= SER_TINFO_MAX_DIM);
    SER_ASSERT(strlen(name) < SER_TINFO_NAME_LEN);
    SER_ASSERT(ser_ptab_find(p, name) == NULL);
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 32;
        p->t = realloc(p->t, (size_t)p->cap * sizeof *p->t);
        if (!p->t) SER_ABORT("out of memory");
    }
    ser_tinfo *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        SER_ASSERT(shape[i] > 0);
        t->shape[i] = shape[i];
        t->numel *= (size_t)shape[i];
    }
    t->flags = flags;
    t->offset = p->total;
    p->total += (t->numel + 15) & ~(size_t)15;
    return t->offset;
}

const ser_tinfo *ser_ptab_find(const ser_ptab *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->t[i].name, name) == 0) return &p->t[i];
    return NULL;
}

const char *ser_tinfo_shape_str(const ser_tinfo *t, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < t->ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ",%lld" : "%lld", (long long)t->shape[i]);
    return buf;
}
