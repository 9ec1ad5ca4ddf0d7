// fuzz_util.h — shared helpers of the fuzz harnesses in tests/fuzz (docs/fuzzing.md).
//
// Every harness defines LLVMFuzzerTestOneInput (and optionally LLVMFuzzerInitialize). It is
// linked either with libFuzzer (SER_FUZZ=ON, clang) or with tests/fuzz/fuzz_driver.c, a small
// replay driver that runs a corpus and a bounded number of deterministic mutations of it
// (the ctest fuzz_smoke_<name>). Nothing here may depend on which of the two is linked.
//
// Multipart messages (ZeroMQ frames) are cut out of one fuzz input with a framing of our own:
//   input  = frame*
//   frame  = u16 little-endian length, then that many bytes (the last frame takes what is
//            left when the input ends early; a lone trailing byte is an empty frame)
// at most SER_FUZZ_MAX_FRAMES frames (the rest of the input is ignored).
//
// defines:
//   LLVMFuzzerTestOneInput(), LLVMFuzzerInitialize()    prototypes
//   ser_fuzz_frame, ser_fuzz_split(), ser_fuzz_join()   the framing above
//   ser_fuzz_msgs()                                     the frames as ZeroMQ messages
//   ser_fuzz_quiet()            ser's log off unless SER_FUZZ_VERBOSE is set
//   ser_fuzz_tmpdir()           a per-process temporary folder, removed at exit
//   ser_fuzz_write_file()       the whole of a buffer into a file (truncating it)
//   ser_fuzz_rm_rf()            removes a folder tree
//   ser_fuzz_augment()          the loader's ops on a decoded image (the image harnesses)
#ifndef SER_FUZZ_UTIL_H
#define SER_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "ser_dl_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define SER_FUZZ_MAX_FRAMES 40

typedef struct ser_fuzz_frame {
    const uint8_t *p;
    size_t n;
} ser_fuzz_frame;

// Cuts data into frames (see above); returns the number of frames (0 for an empty input).
int ser_fuzz_split(const uint8_t *data, size_t size, ser_fuzz_frame f[SER_FUZZ_MAX_FRAMES]);
// The n frames as ZeroMQ messages (copies), in an array of max(n, 1) the caller frees after
// zmq_msg_close on each (the loader's s_parts takes it as it is).
zmq_msg_t *ser_fuzz_msgs(const ser_fuzz_frame *f, int n);
// The inverse, for corpus generators: writes the framing of n frames into out (cap bytes).
// Returns the bytes needed (nothing written past cap).
size_t ser_fuzz_join(const ser_fuzz_frame *f, int n, uint8_t *out, size_t cap);

void ser_fuzz_quiet(void);
// "$TMPDIR/ser_fuzz_XXXXXX" (TMPDIR defaults to /tmp), made on the first call and removed with
// everything in it at exit. Aborts when it cannot be made.
const char *ser_fuzz_tmpdir(void);
// Returns 0, or -1 (errno set).
int ser_fuzz_write_file(const char *path, const void *data, size_t n);
void ser_fuzz_rm_rf(const char *path);

// What the loader does next with an image a decoder accepted, at whatever size it has (as
// s_crop_view and s_photo in dataloader/ser_dl.c): RandomResizedCrop parameters, PIL resizing to
// 16 x 16 (bilinear or bicubic, chosen by the input), the flip and the torchvision photometric
// ops, keyed by the input's bytes. Returns 0, or -1 with the reason in why (n bytes) when the
// crop box leaves the image.
int ser_fuzz_augment(const ser_dl_image *im, const uint8_t *data, size_t size, char *why,
                     size_t n);

#endif
