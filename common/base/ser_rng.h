// ser_rng.h — counter-based random numbers (Philox4x32-10).
//
// Every random draw in ser is a pure function of a key and a counter, never of a thread,
// a rank or the time. A stream is keyed by the job seed and addressed by three 32-bit words
// chosen by the caller (for example: epoch, global sample index, view<<16 | purpose); the
// fourth counter word advances with each block of four draws.
//
// defines:
//   ser_rng_philox(out, ctr, key)         the raw block function
//   ser_rng_init(r, seed, c0, c1, c2)     a stream
//   ser_rng_u32(r), ser_rng_uniform(r) [0,1), ser_rng_uniform_double(r),
//   ser_rng_normal(r), ser_rng_below(r, n)
//   ser_rng_permutation(perm, n, seed, c0)  a seeded Fisher-Yates permutation of 0..n-1
//   SER_RNG_* purposes (domain separation of streams)
#ifndef SER_RNG_H
#define SER_RNG_H

#include <stdint.h>

// Purposes separate the streams of different consumers that share (seed, c0, c1).
enum ser_rng_purpose {
    SER_RNG_INIT = 1,        // parameter initialisation
    SER_RNG_DROP_PATH = 2,   // stochastic depth masks
    SER_RNG_PERMUTE = 3,     // epoch order
    SER_RNG_CROP = 4,        // random resized crop
    SER_RNG_FLIP = 5,        // horizontal flip
    SER_RNG_COLOR = 6,       // colour jitter, grayscale
    SER_RNG_BLUR = 7,        // Gaussian blur
    SER_RNG_SOLARIZE = 8,    // solarize
    SER_RNG_GROUP = 9,       // geometric group element g
    SER_RNG_FIXTURE = 10,    // synthetic test data
    SER_RNG_BENCH = 11,      // benchmark inputs
};

typedef struct ser_rng {
    uint32_t key[2];
    uint32_t ctr[4];
    uint32_t buf[4];
    int pos;  // next unused word of buf; 4 = empty
} ser_rng;

void ser_rng_philox(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);
void ser_rng_init(ser_rng *r, uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2);
uint32_t ser_rng_u32(ser_rng *r);
// Uniform in [0,1) with 24 random bits (every value exactly representable in float).
float ser_rng_uniform(ser_rng *r);
// Uniform in [0,1) with 53 random bits.
double ser_rng_uniform_double(ser_rng *r);
// Standard normal (Box-Muller on two doubles).
double ser_rng_normal(ser_rng *r);
// Uniform integer in [0, n), unbiased (rejection).
uint32_t ser_rng_below(ser_rng *r, uint32_t n);
// perm[i] for i < n becomes a permutation of 0..n-1 that depends on (seed, c0) alone.
void ser_rng_permutation(uint32_t *perm, uint32_t n, uint64_t seed, uint32_t c0);

#endif
