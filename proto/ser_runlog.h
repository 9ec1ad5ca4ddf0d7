// ser_runlog.h — training logs a user can watch: JSON lines and TensorBoard event files.
//
// A run log is one directory holding
//   metrics.jsonl   one JSON object per step, {"step":N,"time":unix_seconds,"<name>":value,...};
//                   appended to, so a resumed job continues the same file
//   events.out.tfevents.<unix time>.<hostname>.<pid>[.<k>]
//                   a new TensorBoard event file per open (k only when that name is taken),
//                   starting with the file_version "brain.Event:2" record, then one Event with
//                   one simple_value per name and step (proto/tfevent.proto)
// Each step is written with one write(2) per file, so a crashed process loses at most the step
// being written (no fsync: a power cut may lose more). Event files use TFRecord framing:
//   u64le length, u32le masked_crc32c(length bytes), data, u32le masked_crc32c(data)
// with masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8 and CRC-32C (Castagnoli).
// tests/reference/read_tfevents.py prints the scalars of an event file without TensorFlow.
//
// defines:
//   ser_runlog (opaque), ser_runlog_open(), ser_runlog_step(), ser_runlog_destroy()
//   ser_runlog_crc32c(), ser_runlog_crc32c_mask()   the TFRecord checksums
#ifndef SER_RUNLOG_H
#define SER_RUNLOG_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"

typedef struct ser_runlog ser_runlog;

// Opens (creates, with missing parents) dir and in it metrics.jsonl (appended to; a last line
// left without its newline by a crash is terminated first) and a new TensorBoard event file.
// Returns NULL with a message naming the path in err on failure (dir not creatable, not
// writable...). Caller owns the result; release with ser_runlog_destroy().
ser_runlog *ser_runlog_open(const char *dir, char err[SER_ERR_LEN]);

// Logs one step's scalars values[0..n) under names[0..n): one JSON line (names JSON-escaped,
// non-finite values written as null, the step as a JSON number, exact up to 2^53) and one
// TensorBoard Event with one simple_value (as float; NaN and Inf kept) per name, tags as given
// (e.g. "loss", "loss_inv", "lr"). Both are in the kernel when this returns. Names should not
// be "step" or "time" (the JSON line would hold the key twice). Returns SER_OK, SER_EINVAL
// (n < 0, a NULL name) or SER_EIO with a message in err.
int ser_runlog_step(ser_runlog *r, int64_t step, const char *const *names, const double *values,
                    int n, char err[SER_ERR_LEN]);

// Closes the files. NULL-safe; sets *rp = NULL.
void ser_runlog_destroy(ser_runlog **rp);

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of data[0..n):
// ser_runlog_crc32c("123456789", 9) == 0xE3069283.
uint32_t ser_runlog_crc32c(const void *data, size_t n);
// The TFRecord mask of a CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t ser_runlog_crc32c_mask(uint32_t crc);

#endif
