// ser_rng.c — Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
#include "ser_rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline uint32_t s_mulhilo(uint32_t a, uint32_t b, uint32_t *hi) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

void ser_rng_philox(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = s_mulhilo(PHILOX_M0, c0, &hi0);
        uint32_t lo1 = s_mulhilo(PHILOX_M1, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

void ser_rng_init(ser_rng *r, uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2) {
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    r->ctr[0] = c0, r->ctr[1] = c1, r->ctr[2] = c2, r->ctr[3] = 0;
    r->pos = 4;
}

uint32_t ser_rng_u32(ser_rng *r) {
    if (r->pos >= 4) {
        ser_rng_philox(r->buf, r->ctr, r->key);
        r->ctr[3]++;
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

float ser_rng_uniform(ser_rng *r) { return (float)(ser_rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

double ser_rng_uniform_double(ser_rng *r) {
    uint64_t a = ser_rng_u32(r) >> 5, b = ser_rng_u32(r) >> 6;
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

double ser_rng_normal(ser_rng *r) {
    double u1 = ser_rng_uniform_double(r), u2 = ser_rng_uniform_double(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint32_t ser_rng_below(ser_rng *r, uint32_t n) {
    if (n <= 1) return 0;
    uint32_t limit = UINT32_MAX - UINT32_MAX % n;
    uint32_t x;
    do x = ser_rng_u32(r);
    while (x >= limit);
    return x % n;
}

void ser_rng_permutation(uint32_t *perm, uint32_t n, uint64_t seed, uint32_t c0) {
    ser_rng r;
    ser_rng_init(&r, seed, c0, 0, SER_RNG_PERMUTE);
    for (uint32_t i = 0; i < n; i++) perm[i] = i;
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = ser_rng_below(&r, i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}
