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
//   ser_test_open_fixture(name)                         open SER_FIXTURE_DIR/name or fail
//   ser_test_tensor(f, name, &n)                        malloc'ed float copy of a tensor or fail
//   ser_test_maxabs(x, n)                               max |x|
//   ser_test_have_torch()                               1 if /usr/bin/python3 can import torch
#ifndef SER_TEST_H
#define SER_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ser_barlow.h"
#include "ser_dino.h"
#include "ser_moco.h"
#include "ser_safetensors.h"

int ser_test_allclose(const char *label, const float *got, const float *ref, size_t n, float atol,
                      float rtol);
const char *ser_test_fixture_path(char *buf, size_t n, const char *file);
void ser_test_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
double ser_test_nmse(const float *a, const float *b, size_t n);

ser_st_file *ser_test_open_fixture(const char *name);
float *ser_test_tensor(const ser_st_file *f, const char *name, size_t *numel);
// The fixture's local views local.view0, local.view1, ... ((B, 3, s, s) each) into b (n_local,
// local_img, local[]); the arrays go to local[] for the caller to free. Returns their count.
int ser_test_local_views(const ser_st_file *f, ser_batch *b, float *local[SER_MAX_LOCAL]);
float ser_test_maxabs(const float *x, size_t n);
int ser_test_have_torch(void);
// Writes n bytes of buf to path, or fails the test.
void ser_test_write_file(const char *path, const void *buf, size_t n);
// The whole file at path (malloc'ed, its size in *n), or fails the test.
uint8_t *ser_test_read_file(const char *path, size_t *n);
// Damaged copies of a good JPEG (good, n bytes) at path: cut just before its SOS marker, and
// with SOF0 height = width = 0 (libjpeg-turbo 2.1.5 leaves a reused handle broken after either).
void ser_test_write_jpeg_cut(const char *path, const uint8_t *good, size_t n);
void ser_test_write_jpeg_sof0_zero(const char *path, const uint8_t *good, size_t n);
// Removes a file or a directory tree (test temp dirs); errors are ignored.
void ser_test_rm_rf(const char *path);
// Runs `ser ARGS` (the binary under test) with stdout and stderr into DIR/log; returns its exit
// status (-1 when it did not exit).
int ser_test_run(const char *dir, const char *args);
// 1 when DIR/log contains needle; otherwise prints the log and returns 0.
int ser_test_log_has(const char *dir, const char *needle);
// The entries of dir whose name contains sub.
int ser_test_count_entries(const char *dir, const char *sub);
// How many times needle occurs in the first 64 KiB of the file at path (0 when absent).
int ser_test_count_in_file(const char *path, const char *needle);
// A TCP port of 127.0.0.1 where nothing listens (bound, then closed).
int ser_test_closed_port(void);

// One objective's forward and backward on one batch in this process, without a trainer: the
// engine forward, the objective's batch-coupled half, the engine backward (the step loop of
// train/ser_train.h without the optimizer). The tests of each objective use these to compare
// against PyTorch and across shard splits; grads are overwritten.
int ser_moco_forward_backward(ser_moco *m, const ser_batch *b, int shards, float momentum,
                              uint64_t drop_seed, uint32_t step, ser_moco_losses *out,
                              char err[SER_ERR_LEN]);
int ser_dino_forward_backward(ser_dino *d, const ser_batch *b, int shards, double teacher_temp,
                              uint64_t drop_seed, uint32_t step, ser_dino_losses *out,
                              char err[SER_ERR_LEN]);
int ser_barlow_forward_backward(ser_barlow *m, const ser_batch *b, int shards, uint64_t drop_seed,
                                uint32_t step, ser_barlow_losses *out, char err[SER_ERR_LEN]);

#define SER_ASSERT_CLOSE(label, got, ref, n, atol, rtol) \
    assert_true(ser_test_allclose((label), (got), (ref), (n), (atol), (rtol)))

#endif
