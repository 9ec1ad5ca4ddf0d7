// ser_loadstat.c — see ser_loadstat.h.
#include "ser_loadstat.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

size_t ser_loadstat_format(char *buf, size_t n, const ser_loadstat *s, int ns, int64_t now_ms) {
    size_t off = 0;
    if (n) buf[0] = 0;
    for (int i = 0; i < ns; i++) {
        int64_t age = now_ms - s[i].heard_ms;
        char line[SER_LOADSTAT_EP_LEN + 160];
        int w = snprintf(line, sizeof line,
                         "loader %s served=%" PRIu64 " bad_files=%" PRIu64 " replacements=%" PRIu64
                         " step=%" PRId64 " age_ms=%" PRId64 "\n",
                         s[i].endpoint, s[i].served, s[i].bad_files, s[i].replacements, s[i].step,
                         age < 0 ? (int64_t)0 : age);
        if (w < 0 || (size_t)w >= sizeof line || off + (size_t)w >= n) continue;
        memcpy(buf + off, line, (size_t)w + 1);
        off += (size_t)w;
    }
    return off;
}

// 1 when s is a usable endpoint: printable ASCII, no spaces, not empty.
static int s_endpoint_ok(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

int ser_loadstat_parse(const char *text, ser_loadstat *out, int max, int64_t now_ms) {
    int k = 0;
    for (const char *p = text; p && *p && k < max;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[SER_LOADSTAT_EP_LEN + 200];
        if (len < sizeof line) {
            memcpy(line, p, len);
            line[len] = 0;
            ser_loadstat r;
            memset(&r, 0, sizeof r);
            int64_t age = 0;
            int used = 0;
            // The endpoint field is read into a buffer of SER_LOADSTAT_EP_LEN (127 + NUL).
            if (sscanf(line,
                       "loader %127s served=%" SCNu64 " bad_files=%" SCNu64
                       " replacements=%" SCNu64 " step=%" SCNd64 " age_ms=%" SCNd64 "%n",
                       r.endpoint, &r.served, &r.bad_files, &r.replacements, &r.step, &age,
                       &used) == 6 &&
                (size_t)used == len && s_endpoint_ok(r.endpoint)) {
                if (age < 0) age = 0;
                if (age > INT64_C(1000000000000)) age = INT64_C(1000000000000);  // 30 years
                r.heard_ms = now_ms - age;
                out[k++] = r;
            }
        }
        p = nl ? nl + 1 : NULL;
    }
    return k;
}

int ser_loadstat_merge(ser_loadstat *table, int *n, int max, const ser_loadstat *rec) {
    for (int i = 0; i < *n; i++) {
        ser_loadstat *t = &table[i];
        if (strcmp(t->endpoint, rec->endpoint) != 0) continue;
        int64_t step = rec->step > t->step ? rec->step : t->step;
        if (rec->heard_ms >= t->heard_ms) *t = *rec;  // a restarted loader counts from 0 again
        t->step = step;
        return i;
    }
    if (*n >= max) return -1;
    table[*n] = *rec;
    return (*n)++;
}
