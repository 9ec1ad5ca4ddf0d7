// ser_base.h — errors, always-on assertions, logging, allocation and the clock.
//
// defines:
//   SER_ASSERT(x), SER_ABORT(fmt, ...)   always on, print file:line and abort()
//   enum ser_errno (SER_E*) + ser_strerror(rc), ser_errf(), ser_err_prefix()   negative codes + messages
//   ser_mkdir_p()
//   ser_log(level, fmt, ...), ser_log_set_level(), ser_log_parse_level()
//   ser_xmalloc(), ser_xcalloc(), ser_xaligned(), ser_xstrdup()   abort on OOM
//   ser_clock_now_ms(), ser_clock_set()   injectable monotonic clock
//   ser_time_sec(), ser_median()   wall clock and medians for benchmarks
//   ser_human_bytes(), ser_human_file_size()   byte counts for people: "1.2 GiB"
#ifndef SER_BASE_H
#define SER_BASE_H

#include <stddef.h>
#include <stdint.h>

#define SER_ERR_LEN 256

#if defined(__GNUC__)
#define SER_FMT(a, b) __attribute__((format(printf, a, b)))
#define SER_NORETURN __attribute__((noreturn))
#else
#define SER_FMT(a, b)
#define SER_NORETURN
#endif

// --- errors ----------------------------------------------------------------------------------
// Environmental failures are returned as negative codes, never exit()ed on.
#define SER_ERRNO_MAP(XX)                                                  \
    XX(EINVAL, -1, "invalid argument")                                     \
    XX(ENOMEM, -2, "out of memory")                                        \
    XX(EIO, -3, "input/output error")                                      \
    XX(ENOENT, -4, "no such file or entry")                                \
    XX(EFORMAT, -5, "malformed file or message")                           \
    XX(ESHAPE, -6, "shape mismatch")                                       \
    XX(EDTYPE, -7, "unsupported dtype")                                    \
    XX(EVERSION, -8, "version mismatch")                                   \
    XX(ETIMEDOUT, -9, "timed out")                                         \
    XX(ENOTSUP, -10, "not supported")                                      \
    XX(ENONFINITE, -11, "non-finite value")                                \
    XX(ECONFIG, -12, "bad configuration")                                  \
    XX(EPEER, -13, "peer error")                                           \
    XX(EHASH, -14, "content hash mismatch")

enum ser_errno {
    SER_OK = 0,
#define XX(name, code, msg) SER_##name = code,
    SER_ERRNO_MAP(XX)
#undef XX
};

const char *ser_strerror(int rc);
// Formats a message into err (SER_ERR_LEN bytes; err may be NULL) and returns rc, so a failure
// path reads `return ser_errf(err, SER_EINVAL, "what %d", x);`.
int ser_errf(char *err, int rc, const char *fmt, ...) SER_FMT(3, 4);
// Puts the formatted text in front of the message already in err (truncated to SER_ERR_LEN).
void ser_err_prefix(char *err, const char *fmt, ...) SER_FMT(2, 3);

// mkdir -p dir (mode 0755 for what it creates); an existing directory is fine. SER_EINVAL for
// an empty or over-long name, SER_EIO naming the component that could not be made.
int ser_mkdir_p(const char *dir, char *err);

// --- assertions ------------------------------------------------------------------------------
// Broken invariants: always compiled in (not removed by NDEBUG).
SER_NORETURN void ser__abort(const char *file, int line, const char *fmt, ...) SER_FMT(3, 4);
#define SER_ABORT(...) ser__abort(__FILE__, __LINE__, __VA_ARGS__)
#define SER_ASSERT(x)                                          \
    do {                                                       \
        if (!(x)) ser__abort(__FILE__, __LINE__, "assertion failed: %s", #x); \
    } while (0)

// --- logging ---------------------------------------------------------------------------------
enum ser_log_level { SER_LL_DEBUG = 0, SER_LL_INFO, SER_LL_WARNING, SER_LL_ERROR, SER_LL_SILENT };

void ser_log_set_level(int level);
int ser_log_get_level(void);
// Parses "debug|info|warning|error|silent"; returns the level or -1.
int ser_log_parse_level(const char *s);
// Checks the level before formatting; writes one line to stderr with a timestamp and level.
void ser_log(int level, const char *fmt, ...) SER_FMT(2, 3);

// --- allocation ------------------------------------------------------------------------------
// Abort on out-of-memory (hot paths only; loaders of user data return SER_ENOMEM instead).
void *ser_xmalloc(size_t n);
void *ser_xcalloc(size_t count, size_t size);
// 64-byte aligned, zero-filled; release with free().
void *ser_xaligned(size_t n);
// 64-byte aligned, NOT initialised (for buffers always written before read: activations;
// skips touching every page up front); release with free().
void *ser_xaligned_raw(size_t n);
char *ser_xstrdup(const char *s);

// --- time ------------------------------------------------------------------------------------
// Monotonic milliseconds. Tests may replace the source with ser_clock_set(fn) (NULL restores).
int64_t ser_clock_now_ms(void);
void ser_clock_set(int64_t (*fn)(void));
// Wall-clock seconds since the epoch; replaceable the same way (ser_clock_unix_set).
double ser_clock_unix(void);
void ser_clock_unix_set(double (*fn)(void));
// Monotonic seconds as a double, for benchmarks.
double ser_time_sec(void);
// The median of x[0..n) (n >= 1; the mean of the middle two for even n). Sorts x in place.
double ser_median(double *x, int n);

// --- sizes -----------------------------------------------------------------------------------
#define SER_HUMAN_BYTES_LEN 16
// A byte count as people read it, in powers of 1024: "512 B", "1.5 KiB", "12.3 MiB",
// "1.2 GiB", "117 TiB" (one decimal below 100, none above; up to EiB). A negative or non-finite
// count is "?". Writes into buf and returns it.
const char *ser_human_bytes(double bytes, char buf[SER_HUMAN_BYTES_LEN]);
// The size of the file at path the same way ("?" when it cannot be stat()ed).
const char *ser_human_file_size(const char *path, char buf[SER_HUMAN_BYTES_LEN]);

#endif
