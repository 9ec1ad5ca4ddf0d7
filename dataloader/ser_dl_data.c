// ser_dl_data.c — see ser_dl_data.h.
#include "ser_dl_data.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>
#include <math.h>

#include "ser_base.h"
#include "ser_rng.h"

#define SER_DL_INDEX_MAGIC 0x58444c53u  // "SLDX"
// v2: files that are not regular files are left out, folders reached twice walked once.
// v3: PNG files are indexed (a v2 index of the same folders left them out).
#define SER_DL_INDEX_VERSION 3u

// Limits on what one dataset may contain. Past them something is wrong (a root pointed at /,
// a symlink farm, a disk image named .jpg): the walk stops with an error naming the limit
// instead of running for hours, and a file is refused instead of read into memory.
#define SER_DL_MAX_FILE_BYTES ((size_t)64 << 20)  // one image (or CIFAR-10 batch) file
#define SER_DL_MAX_ENTRIES 10000000u              // folder entries read by one index walk
#define SER_DL_MAX_DEPTH 16                       // folder levels below a class folder
#define S_FIRST_BAD 4                             // bad files named by ser_dl_data_bad_report

typedef struct s_entry {
    uint32_t path;  // offset into the string arena
    int32_t label;
} s_entry;

typedef struct s_dirstamp {
    uint32_t path;  // offset into the string arena (relative folder, "" = the split folder)
    int64_t mtime_ns;
} s_dirstamp;

struct ser_dl_data {
    int kind, split;
    char dir[PATH_MAX];  // ImageFolder: the split folder
    // ImageFolder index: entries and dir stamps point into one string arena.
    s_entry *entries;
    uint32_t n;
    char *strings;
    size_t strings_len, strings_cap;
    s_dirstamp *dirs;
    uint32_t ndirs, dirs_cap;
    uint32_t nclasses;
    int from_cache;
    // CIFAR-10 / Fashion-MNIST: everything in memory.
    uint8_t *pixels;  // (n, rec) records
    uint8_t *labels;  // (n,)
    int rec_w, rec_h, rec_c;
    // Bad-file bookkeeping: 0 unknown/good, 1 bad (logged).
    uint8_t *bad;
    uint64_t n_bad, n_replaced;
    // The budget: with more than max_bad bad files every load fails (ser_dl_data_set_max_bad).
    uint64_t max_bad;
    double max_bad_fraction;
    // The first bad files with their reasons, for the message that stops a job: slot k is
    // written by the thread that counted the (k+1)-th bad file, then marked ready.
    struct {
        uint32_t idx;
        int ready;
        char why[96];
    } first_bad[S_FIRST_BAD];
};

// --- helpers ---------------------------------------------------------------------------------

void ser_dl_image_free(ser_dl_image *im) {
    free(im->px);
    im->px = NULL;
    im->w = im->h = 0;
}

static uint32_t s_str_add(ser_dl_data *d, const char *s) {
    size_t len = strlen(s) + 1;
    if (d->strings_len + len > d->strings_cap) {
        d->strings_cap = (d->strings_cap + len) * 2;
        d->strings = realloc(d->strings, d->strings_cap);
        SER_ASSERT(d->strings);
    }
    SER_ASSERT(d->strings_len + len < UINT32_MAX);
    uint32_t off = (uint32_t)d->strings_len;
    memcpy(d->strings + off, s, len);
    d->strings_len += len;
    return off;
}

static int s_is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int s_is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int64_t s_mtime_ns(const char *p) {
    struct stat st;
    if (stat(p, &st) != 0) return -1;
    return (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
}

static int s_has_ext(const char *name, const char *const *exts) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (int i = 0; exts[i]; i++)
        if (strcasecmp(dot + 1, exts[i]) == 0) return 1;
    return 0;
}

// The images read: JPEG and PNG (the decoder is chosen by the file's signature, not its name).
static const char *const s_image_exts[] = {"jpg", "jpeg", "jpe", "jfif", "png", NULL};
// The rest of torchvision's IMG_EXTENSIONS: recognised, counted, skipped.
static const char *const s_other_exts[] = {"ppm", "bmp", "pgm", "tif", "tiff", "webp", NULL};

static int s_strcmp_p(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static uint64_t s_fnv1a(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

// What a file that is not a regular file is, for messages.
static const char *s_file_kind(mode_t m) {
    if (S_ISDIR(m)) return "a folder";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

// Opens path for reading if it is a regular file; returns the descriptor, or -1 with the
// reason in err. O_NONBLOCK makes the open itself return at once for a FIFO (one swapped in
// after the index was built included), and fstat of the opened descriptor, not a stat of the
// name, decides, so what is read is what was checked: a FIFO, a device (a link to
// /dev/zero) or a socket is refused before any read.
static int s_open_regular(const char *path, struct stat *st, char *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        ser_errf(err, SER_EIO, "cannot open: %s", strerror(errno));
        return -1;
    }
    if (fstat(fd, st) != 0) {
        ser_errf(err, SER_EIO, "cannot stat: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        ser_errf(err, SER_EIO, "%s, not a regular file", s_file_kind(st->st_mode));
        close(fd);
        return -1;
    }
    return fd;
}

// Reads a whole regular file of at most max bytes. SER_EIO (cannot open, not a regular file,
// read error) or SER_EFORMAT (over max) with the reason in err, or SER_ENOMEM.
static int s_read_file(const char *path, size_t max, uint8_t **buf_p, size_t *n_p, char *err) {
    struct stat st;
    int fd = s_open_regular(path, &st, err);
    if (fd < 0) return SER_EIO;
    uint8_t *buf = NULL;
    size_t n = 0, cap = (size_t)st.st_size + 1;  // one byte more shows a file that grew
    int rc = SER_OK;
    if ((uint64_t)st.st_size > max) goto too_big;
    if (!(buf = malloc(cap))) {
        rc = SER_ENOMEM;
        goto done;
    }
    for (;;) {
        if (n == cap) {  // the file grew since fstat
            if (cap > max) goto too_big;
            cap = cap > max / 2 ? max + 1 : cap * 2;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                rc = SER_ENOMEM;
                goto done;
            }
            buf = nb;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = ser_errf(err, SER_EIO, "read failed: %s", strerror(errno));
            goto done;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    goto done;
too_big:
    rc = ser_errf(err, SER_EFORMAT, "%llu bytes, over the limit of %zu (SER_DL_MAX_FILE_BYTES)",
                  (unsigned long long)(n > (size_t)st.st_size ? n : (size_t)st.st_size), max);
done:
    close(fd);
    if (rc) {
        free(buf);
        return rc;
    }
    *buf_p = buf;
    *n_p = n;
    return SER_OK;
}

// --- ImageFolder scan ------------------------------------------------------------------------

typedef struct s_file {
    char *dir;   // relative folder of the file
    char *name;  // file name
    int32_t label;
} s_file;

// A folder's identity, for the set of folders already walked.
typedef struct s_devino {
    uint64_t dev, ino;
    int used;
} s_devino;

typedef struct s_scan {
    s_file *files;
    size_t n, cap;
    uint64_t skipped;    // other image formats (bmp, webp, ...)
    uint64_t irregular;  // image names that are no regular file (FIFO, device, dangling link)
    uint64_t entries;    // folder entries read, against SER_DL_MAX_ENTRIES
    s_devino *seen;      // open-addressing set of the folders walked, seen_cap a power of 2
    size_t seen_n, seen_cap;
    char *err;           // the reason when the walk fails
} s_scan;

static int s_file_cmp(const void *a, const void *b) {
    const s_file *x = a, *y = b;
    if (x->label != y->label) return x->label < y->label ? -1 : 1;
    int c = strcmp(x->dir, y->dir);
    return c ? c : strcmp(x->name, y->name);
}

static size_t s_devino_slot(const s_devino *set, size_t cap, uint64_t dev, uint64_t ino) {
    size_t i = (size_t)((ino * 0x9e3779b97f4a7c15ull) ^ (dev * 0xc2b2ae3d27d4eb4full)) & (cap - 1);
    while (set[i].used && (set[i].dev != dev || set[i].ino != ino)) i = (i + 1) & (cap - 1);
    return i;
}

// Adds the folder st to the set of walked folders; returns 0 if it was there already.
static int s_seen_add(s_scan *sc, const struct stat *st) {
    if (2 * (sc->seen_n + 1) > sc->seen_cap) {  // keep the load under 1/2
        size_t cap = sc->seen_cap ? sc->seen_cap * 2 : 256;
        s_devino *set = ser_xcalloc(cap, sizeof *set);
        for (size_t i = 0; i < sc->seen_cap; i++)
            if (sc->seen[i].used)
                set[s_devino_slot(set, cap, sc->seen[i].dev, sc->seen[i].ino)] = sc->seen[i];
        free(sc->seen);
        sc->seen = set;
        sc->seen_cap = cap;
    }
    size_t i = s_devino_slot(sc->seen, sc->seen_cap, (uint64_t)st->st_dev, (uint64_t)st->st_ino);
    if (sc->seen[i].used) return 0;
    sc->seen[i] = (s_devino){(uint64_t)st->st_dev, (uint64_t)st->st_ino, 1};
    sc->seen_n++;
    return 1;
}

// Reads the names in folder `abs` into a sorted array (strcmp order, like Python's sorted()).
// Every name counts against the walk's entry budget. SER_EIO (errno set) if the folder cannot
// be read, SER_ENOTSUP with sc->err past the budget.
static int s_list_dir(const char *abs, s_scan *sc, char ***names_p, size_t *n_p) {
    DIR *dir = opendir(abs);
    if (!dir) return SER_EIO;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = SER_OK;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        if (++sc->entries > SER_DL_MAX_ENTRIES) {
            rc = ser_errf(sc->err, SER_ENOTSUP,
                          "more than %u folder entries in the dataset (SER_DL_MAX_ENTRIES), the "
                          "last in %s: is the root right?",
                          SER_DL_MAX_ENTRIES, abs);
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof *names);
            SER_ASSERT(names);
        }
        names[n++] = ser_xstrdup(e->d_name);
    }
    closedir(dir);
    if (n && !rc) qsort(names, n, sizeof *names, s_strcmp_p);
    *names_p = names;
    *n_p = n;
    return rc;
}

static void s_free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static void s_add_dirstamp(ser_dl_data *d, const char *rel, const char *abs) {
    if (d->ndirs == d->dirs_cap) {
        d->dirs_cap = d->dirs_cap ? d->dirs_cap * 2 : 64;
        d->dirs = realloc(d->dirs, d->dirs_cap * sizeof *d->dirs);
        SER_ASSERT(d->dirs);
    }
    memset(&d->dirs[d->ndirs], 0, sizeof *d->dirs);  // the padding goes into the cache file
    d->dirs[d->ndirs].path = s_str_add(d, rel);
    d->dirs[d->ndirs].mtime_ns = s_mtime_ns(abs);
    d->ndirs++;
}

// An image name that is not a regular file is left out of the index: reading a FIFO would block
// a loader thread, a device (a link to /dev/zero) would never end. The first few are named.
static void s_skip_irregular(s_scan *sc, const char *abs, const char *why) {
    if (sc->irregular++ < 10)
        ser_log(SER_LL_WARNING, "dataloader: skipping %s (%s): only regular files are read", abs,
                why);
}

// Walks folder rel (relative to d->dir) recursively, adding the regular image files with the
// given label. Links are followed, as os.walk(followlinks=True) does, but a folder (device,
// inode) is walked once per scan, so a link to "." or to a parent is skipped instead of looping;
// the depth below the class folder and the number of entries read are bounded. Returns SER_OK,
// or an error with sc->err when a limit is passed.
static int s_walk(ser_dl_data *d, s_scan *sc, const char *rel, int32_t label, int depth) {
    char abs[PATH_MAX];
    snprintf(abs, sizeof abs, "%s/%s", d->dir, rel);
    s_add_dirstamp(d, rel, abs);
    char **names;
    size_t n;
    int rc = s_list_dir(abs, sc, &names, &n);
    if (rc == SER_EIO) {
        ser_log(SER_LL_WARNING, "dataloader: cannot read folder %s: %s", abs, strerror(errno));
        return SER_OK;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        char child_rel[PATH_MAX], child_abs[PATH_MAX];
        struct stat st;
        if ((size_t)snprintf(child_rel, sizeof child_rel, "%s/%s", rel, names[i]) >=
                sizeof child_rel ||
            (size_t)snprintf(child_abs, sizeof child_abs, "%s/%s", d->dir, child_rel) >=
                sizeof child_abs) {
            ser_log(SER_LL_WARNING, "dataloader: skipping %s/%s: path too long", abs, names[i]);
            continue;
        }
        int is_image = s_has_ext(names[i], s_image_exts);
        if (stat(child_abs, &st) != 0) {  // a dangling link, or removed during the walk
            if (is_image)
                s_skip_irregular(sc, child_abs,
                                 errno == ENOENT ? "a dangling link" : strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            if (!s_seen_add(sc, &st)) continue;  // walked already: a link back, or a second link
            if (depth + 1 > SER_DL_MAX_DEPTH)
                rc = ser_errf(sc->err, SER_ENOTSUP,
                              "folder %s is more than %d levels below its class folder "
                              "(SER_DL_MAX_DEPTH)",
                              child_abs, SER_DL_MAX_DEPTH);
            else
                rc = s_walk(d, sc, child_rel, label, depth + 1);
        } else if (is_image) {
            if (!S_ISREG(st.st_mode)) {
                s_skip_irregular(sc, child_abs, s_file_kind(st.st_mode));
                continue;
            }
            if (sc->n == sc->cap) {
                sc->cap = sc->cap ? sc->cap * 2 : 1024;
                sc->files = realloc(sc->files, sc->cap * sizeof *sc->files);
                SER_ASSERT(sc->files);
            }
            sc->files[sc->n++] = (s_file){ser_xstrdup(rel), ser_xstrdup(names[i]), label};
        } else if (s_has_ext(names[i], s_other_exts)) {
            sc->skipped++;
        }
    }
    s_free_names(names, n);
    return rc;
}

static int s_scan_imagefolder(ser_dl_data *d, char *err) {
    s_scan sc = {.err = err};
    char **classes;
    size_t nc;
    int rc = s_list_dir(d->dir, &sc, &classes, &nc);
    if (rc == SER_EIO) {
        snprintf(err, 256, "cannot read dataset folder %s: %s", d->dir, strerror(errno));
        return SER_EIO;
    }
    s_add_dirstamp(d, "", d->dir);
    // The split folder and every class folder are marked walked before any class is: a link
    // to ".." or to another class inside a class is then skipped, and no file gets two labels.
    uint8_t *is_class = ser_xcalloc(nc ? nc : 1, 1);
    struct stat st;
    if (stat(d->dir, &st) == 0) s_seen_add(&sc, &st);
    for (size_t i = 0; i < nc && !rc; i++) {
        char abs[PATH_MAX];
        snprintf(abs, sizeof abs, "%s/%s", d->dir, classes[i]);
        if (stat(abs, &st) == 0 && S_ISDIR(st.st_mode)) {
            is_class[i] = 1;
            s_seen_add(&sc, &st);
        }
    }
    int32_t label = 0;
    for (size_t i = 0; i < nc && !rc; i++)
        if (is_class[i]) rc = s_walk(d, &sc, classes[i], label++, 0);
    free(is_class);
    s_free_names(classes, nc);
    free(sc.seen);
    d->nclasses = (uint32_t)label;
    if (sc.skipped)
        ser_log(SER_LL_WARNING, "dataloader: %s: skipped %llu image files that are neither JPEG "
                "nor PNG (bmp, ppm, pgm, tif, webp)", d->dir, (unsigned long long)sc.skipped);
    if (sc.irregular)
        ser_log(SER_LL_WARNING,
                "dataloader: %s: skipped %llu image names that are not regular files", d->dir,
                (unsigned long long)sc.irregular);
    if (sc.n) qsort(sc.files, sc.n, sizeof *sc.files, s_file_cmp);
    if (!rc && (sc.n == 0 || sc.n >= UINT32_MAX)) {
        snprintf(err, 256, "no JPEG or PNG files in class folders under %s", d->dir);
        rc = SER_ENOENT;
    } else if (!rc) {  // (otherwise err says which limit the walk passed)
        d->n = (uint32_t)sc.n;
        d->entries = ser_xmalloc(sc.n * sizeof *d->entries);
        for (size_t i = 0; i < sc.n; i++) {
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/%s", sc.files[i].dir, sc.files[i].name);
            d->entries[i].path = s_str_add(d, p);
            d->entries[i].label = sc.files[i].label;
        }
    }
    for (size_t i = 0; i < sc.n; i++) {
        free(sc.files[i].dir);
        free(sc.files[i].name);
    }
    free(sc.files);
    return rc;
}

// --- index cache -----------------------------------------------------------------------------
// File: u32 magic, u32 version, u64 key hash, u32 n, u32 ndirs, u32 nclasses, u64 strings_len,
// then entries (n x {u32 path, i32 label}), dirs (ndirs x {u32 path, i64 mtime}), strings.
// Host byte order: the cache is a local file, never shipped.

static void s_cache_path(const ser_dl_data *d, const char *cache_dir, char *out, size_t n) {
    uint64_t h = s_fnv1a(0xcbf29ce484222325ull, d->dir, strlen(d->dir));
    snprintf(out, n, "%s/index-%016llx.bin", cache_dir, (unsigned long long)h);
}

static int s_cache_load(ser_dl_data *d, const char *path) {
    struct stat st;
    char why[SER_ERR_LEN];
    int fd = s_open_regular(path, &st, why);
    if (fd < 0) return SER_ENOENT;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return SER_ENOENT;
    }
    int rc = SER_EFORMAT;
    uint32_t hdr[6];
    uint64_t key, slen;
    if (fread(hdr, 4, 2, f) != 2 || fread(&key, 8, 1, f) != 1 || fread(hdr + 2, 4, 3, f) != 3 ||
        fread(&slen, 8, 1, f) != 1)
        goto done;
    if (hdr[0] != SER_DL_INDEX_MAGIC || hdr[1] != SER_DL_INDEX_VERSION) {
        ser_log(SER_LL_INFO, "dataloader: index cache %s has another version; rebuilding", path);
        goto done;
    }
    if (key != s_fnv1a(0xcbf29ce484222325ull, d->dir, strlen(d->dir))) goto done;
    uint32_t n = hdr[2], ndirs = hdr[3];
    if (n == 0 || slen > ((uint64_t)1 << 32)) goto done;
    d->entries = ser_xmalloc((size_t)n * sizeof *d->entries);
    d->dirs = ser_xmalloc((size_t)(ndirs ? ndirs : 1) * sizeof *d->dirs);
    d->strings = ser_xmalloc(slen ? slen : 1);
    if (fread(d->entries, sizeof *d->entries, n, f) != n ||
        fread(d->dirs, sizeof *d->dirs, ndirs, f) != ndirs || fread(d->strings, 1, slen, f) != slen)
        goto done;
    d->n = n;
    d->ndirs = d->dirs_cap = ndirs;
    d->nclasses = hdr[4];
    d->strings_len = d->strings_cap = slen;
    // Validate offsets, then the folder stamps: any file added to or removed from any folder
    // changes that folder's mtime.
    for (uint32_t i = 0; i < n; i++)
        if (d->entries[i].path >= slen) goto done;
    if (slen == 0 || d->strings[slen - 1] != 0) goto done;
    for (uint32_t i = 0; i < ndirs; i++) {
        if (d->dirs[i].path >= slen) goto done;
        char abs[PATH_MAX];
        const char *rel = d->strings + d->dirs[i].path;
        snprintf(abs, sizeof abs, "%s%s%s", d->dir, *rel ? "/" : "", rel);
        if (s_mtime_ns(abs) != d->dirs[i].mtime_ns) {
            rc = SER_EVERSION;
            goto done;
        }
    }
    rc = SER_OK;
done:
    fclose(f);
    if (rc) {
        free(d->entries);
        free(d->dirs);
        free(d->strings);
        d->entries = NULL, d->dirs = NULL, d->strings = NULL;
        d->n = d->ndirs = d->dirs_cap = d->nclasses = 0;
        d->strings_len = d->strings_cap = 0;
    }
    return rc;
}

// mkdir -p: creates every missing folder of the path.
static void s_mkdirs(const char *dir) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", dir);
    for (char *c = p + 1; *c; c++)
        if (*c == '/') {
            *c = 0;
            mkdir(p, 0755);
            *c = '/';
        }
    mkdir(p, 0755);
}

static void s_cache_save(const ser_dl_data *d, const char *cache_dir, const char *path) {
    s_mkdirs(cache_dir);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        ser_log(SER_LL_WARNING, "dataloader: cannot write index cache %s: %s", tmp,
                strerror(errno));
        return;
    }
    uint32_t hdr[2] = {SER_DL_INDEX_MAGIC, SER_DL_INDEX_VERSION};
    uint64_t key = s_fnv1a(0xcbf29ce484222325ull, d->dir, strlen(d->dir));
    uint32_t cnt[3] = {d->n, d->ndirs, d->nclasses};
    uint64_t slen = d->strings_len;
    int ok = fwrite(hdr, 4, 2, f) == 2 && fwrite(&key, 8, 1, f) == 1 &&
             fwrite(cnt, 4, 3, f) == 3 && fwrite(&slen, 8, 1, f) == 1 &&
             fwrite(d->entries, sizeof *d->entries, d->n, f) == d->n &&
             fwrite(d->dirs, sizeof *d->dirs, d->ndirs, f) == d->ndirs &&
             fwrite(d->strings, 1, slen, f) == slen;
    ok = (fclose(f) == 0) && ok;
    // Atomic publish: several loader processes may build the same index at once.
    if (!ok || rename(tmp, path) != 0) {
        ser_log(SER_LL_WARNING, "dataloader: cannot write index cache %s", path);
        unlink(tmp);
    }
}

// --- CIFAR-10 and Fashion-MNIST --------------------------------------------------------------

static int s_open_cifar10(ser_dl_data *d, const char *root, char *err) {
    const char *train[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                           "data_batch_4.bin", "data_batch_5.bin"};
    const char *val[] = {"test_batch.bin"};
    const char **files = d->split == SER_DL_SPLIT_TRAIN ? train : val;
    int nf = d->split == SER_DL_SPLIT_TRAIN ? 5 : 1;
    const size_t rec = 1 + 3072;
    d->rec_w = d->rec_h = 32;
    d->rec_c = 3;
    size_t total = 0;
    for (int i = 0; i < nf; i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", root, files[i]);
        uint8_t *buf;
        size_t n;
        char why[SER_ERR_LEN];
        int rc = s_read_file(p, SER_DL_MAX_FILE_BYTES, &buf, &n, why);
        if (rc) {
            snprintf(err, 256, "cannot read CIFAR-10 file %s: %s", p,
                     rc == SER_ENOMEM ? "out of memory" : why);
            return rc;
        }
        if (n == 0 || n % rec != 0) {
            snprintf(err, 256, "%s: size %zu is not a multiple of %zu (CIFAR-10 binary?)", p, n,
                     rec);
            free(buf);
            return SER_EFORMAT;
        }
        size_t cnt = n / rec;
        d->pixels = realloc(d->pixels, (total + cnt) * 3072);
        d->labels = realloc(d->labels, total + cnt);
        SER_ASSERT(d->pixels && d->labels);
        for (size_t r = 0; r < cnt; r++) {
            d->labels[total + r] = buf[r * rec];
            if (buf[r * rec] > 9) {
                snprintf(err, 256, "%s: record %zu has label %d > 9", p, r, buf[r * rec]);
                free(buf);
                return SER_EFORMAT;
            }
            memcpy(d->pixels + (total + r) * 3072, buf + r * rec + 1, 3072);
        }
        total += cnt;
        free(buf);
    }
    d->n = (uint32_t)total;
    d->nclasses = 10;
    return SER_OK;
}

static int s_gz_read_all(const char *path, uint8_t **buf_p, size_t *n_p) {
    struct stat st;
    char why[SER_ERR_LEN];
    int fd = s_open_regular(path, &st, why);  // gzopen of a FIFO would block
    if (fd < 0) return SER_EIO;
    gzFile g = gzdopen(fd, "rb");
    if (!g) {
        close(fd);
        return SER_EIO;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = SER_OK;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                rc = SER_ENOMEM;
                break;
            }
            buf = nb;
        }
        int got = gzread(g, buf + n, (unsigned)(cap - n > (1u << 30) ? 1u << 30 : cap - n));
        if (got < 0) {
            rc = SER_EFORMAT;
            break;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    gzclose(g);
    if (rc) {
        free(buf);
        return rc;
    }
    *buf_p = buf;
    *n_p = n;
    return SER_OK;
}

static uint32_t s_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int s_open_fmnist(ser_dl_data *d, const char *root, char *err) {
    const char *pre = d->split == SER_DL_SPLIT_TRAIN ? "train" : "t10k";
    char pi[PATH_MAX], pl[PATH_MAX];
    snprintf(pi, sizeof pi, "%s/%s-images-idx3-ubyte.gz", root, pre);
    snprintf(pl, sizeof pl, "%s/%s-labels-idx1-ubyte.gz", root, pre);
    uint8_t *img = NULL, *lab = NULL;
    size_t ni = 0, nl = 0;
    int rc = SER_OK;
    if (s_gz_read_all(pi, &img, &ni) || s_gz_read_all(pl, &lab, &nl)) {
        snprintf(err, 256, "cannot read Fashion-MNIST files %s, %s", pi, pl);
        rc = SER_EIO;
        goto fail;
    }
    if (ni < 16 || nl < 8 || s_be32(img) != 0x00000803u || s_be32(lab) != 0x00000801u) {
        snprintf(err, 256, "%s or %s: bad IDX magic (expected 0x803 / 0x801)", pi, pl);
        rc = SER_EFORMAT;
        goto fail;
    }
    uint32_t n = s_be32(img + 4), h = s_be32(img + 8), w = s_be32(img + 12);
    if (s_be32(lab + 4) != n || h == 0 || w == 0 || h > 4096 || w > 4096 ||
        ni != 16 + (size_t)n * h * w || nl != 8 + (size_t)n || n == 0) {
        snprintf(err, 256, "%s: IDX sizes do not match the file lengths", pi);
        rc = SER_EFORMAT;
        goto fail;
    }
    d->n = n;
    d->rec_w = (int)w;
    d->rec_h = (int)h;
    d->rec_c = 1;
    d->pixels = ser_xmalloc((size_t)n * h * w);
    memcpy(d->pixels, img + 16, (size_t)n * h * w);
    d->labels = ser_xmalloc(n);
    memcpy(d->labels, lab + 8, n);
    d->nclasses = 10;
fail:
    free(img);
    free(lab);
    return rc;
}

// --- open / close ----------------------------------------------------------------------------

ser_dl_data *ser_dl_data_open(const char *root, int kind, int split, const char *cache_dir,
                              char err[256]) {
    err[0] = 0;
    if (!root || !*root) {
        snprintf(err, 256, "no dataset root given");
        return NULL;
    }
    if (!s_is_dir(root)) {
        snprintf(err, 256, "dataset root %s is missing or not a folder", root);
        return NULL;
    }
    if (access(root, R_OK | X_OK) != 0) {
        snprintf(err, 256, "dataset root %s is not readable: %s", root, strerror(errno));
        return NULL;
    }
    char p[PATH_MAX];
    if (kind == SER_DL_KIND_AUTO) {
        snprintf(p, sizeof p, "%s/data_batch_1.bin", root);
        char q[PATH_MAX];
        snprintf(q, sizeof q, "%s/train-images-idx3-ubyte.gz", root);
        kind = s_is_file(p) ? SER_DL_KIND_CIFAR10
                            : (s_is_file(q) ? SER_DL_KIND_FMNIST : SER_DL_KIND_IMAGEFOLDER);
    }
    ser_dl_data *d = ser_xcalloc(1, sizeof *d);
    d->kind = kind;
    d->split = split;
    int rc = SER_OK;
    if (kind == SER_DL_KIND_CIFAR10) {
        rc = s_open_cifar10(d, root, err);
    } else if (kind == SER_DL_KIND_FMNIST) {
        rc = s_open_fmnist(d, root, err);
    } else if (kind == SER_DL_KIND_IMAGEFOLDER) {
        char real[PATH_MAX];
        if (!realpath(root, real)) {
            snprintf(err, 256, "dataset root %s: %s", root, strerror(errno));
            rc = SER_EIO;
            goto fail;
        }
        // The held-out split is val/ (ImageNet's name), else test/ (the name of many exported
        // datasets): the folder used is logged, so that a test/ tree is never mistaken for none.
        if (split == SER_DL_SPLIT_TRAIN) {
            snprintf(d->dir, sizeof d->dir, "%s/train", real);
            if (!s_is_dir(d->dir)) snprintf(d->dir, sizeof d->dir, "%s", real);  // ROOT is train
        } else {
            snprintf(d->dir, sizeof d->dir, "%s/val", real);
            if (!s_is_dir(d->dir)) snprintf(d->dir, sizeof d->dir, "%s/test", real);
            if (!s_is_dir(d->dir)) {
                snprintf(err, 256, "dataset root %s has no val/ or test/ folder", root);
                rc = SER_ENOENT;
                goto fail;
            }
            ser_log(SER_LL_INFO, "dataloader: %s: the validation split is %s/", root,
                    strrchr(d->dir, '/') + 1);
        }
        char cpath[PATH_MAX + 64];
        if (cache_dir && *cache_dir) {
            s_cache_path(d, cache_dir, cpath, sizeof cpath);
            if (s_cache_load(d, cpath) == SER_OK) {
                d->from_cache = 1;
            }
        }
        if (!d->from_cache) {
            rc = s_scan_imagefolder(d, err);
            if (rc == SER_OK && cache_dir && *cache_dir) s_cache_save(d, cache_dir, cpath);
        }
    } else {
        snprintf(err, 256, "unknown dataset kind %d", kind);
        rc = SER_EINVAL;
    }
    if (rc) goto fail;
    d->bad = ser_xcalloc(d->n, 1);
    d->max_bad = UINT64_MAX;  // no budget until one is set
    d->max_bad_fraction = 1;
    return d;
fail:
    ser_dl_data_destroy(&d);
    return NULL;
}

ser_dl_data *ser_dl_data_open_synthetic(uint32_t n, int split, char err[256]) {
    if (n == 0) {
        snprintf(err, 256, "the synthetic dataset needs at least one image (data.synthetic_images)");
        return NULL;
    }
    ser_dl_data *d = ser_xcalloc(1, sizeof *d);
    d->kind = SER_DL_KIND_SYNTHETIC;
    d->split = split;
    d->n = n;
    d->nclasses = 10;
    d->rec_w = d->rec_h = SER_DL_SYNTHETIC_SIDE;
    d->rec_c = 3;
    d->max_bad = UINT64_MAX;  // nothing can be bad; no per-file bookkeeping (n may be 2^30)
    d->max_bad_fraction = 1;
    return d;
}

// Image idx of the synthetic dataset: a pure function of (split, idx). Class c = idx mod 10
// sets the stripes' direction and frequency, the draws of (split, idx) their phase, a second
// frequency and a tint, so that images of a class are alike but none is the same.
static void s_synthetic_image(const ser_dl_data *d, uint32_t idx, ser_dl_image *out) {
    const int S = SER_DL_SYNTHETIC_SIDE, c = (int)(idx % 10);
    ser_rng r;
    ser_rng_init(&r, 0x53594e54ull, idx, (uint32_t)d->split, SER_RNG_FIXTURE);
    float ph = 6.2831853f * ser_rng_uniform(&r), f2 = 1.0f + 2.0f * ser_rng_uniform(&r);
    float tint[3];
    for (int k = 0; k < 3; k++) tint[k] = 0.6f + 0.4f * ser_rng_uniform(&r);
    float ang = 0.31415927f * (float)c, fx = cosf(ang), fy = sinf(ang), f1 = 1.0f + (float)(c % 4);
    out->w = out->h = S;
    out->px = ser_xmalloc((size_t)S * S * 3);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            float u = (float)x / (float)S, v = (float)y / (float)S;
            float a = sinf(6.2831853f * f1 * (fx * u + fy * v) + ph);
            float b = cosf(6.2831853f * f2 * (u - v));
            uint8_t *o = out->px + ((size_t)y * S + x) * 3;
            o[0] = (uint8_t)(tint[0] * (128.0f + 100.0f * a));
            o[1] = (uint8_t)(tint[1] * (128.0f + 60.0f * a * b));
            o[2] = (uint8_t)(tint[2] * (128.0f + 100.0f * b));
        }
}

void ser_dl_data_destroy(ser_dl_data **dp) {
    if (!dp || !*dp) return;
    ser_dl_data *d = *dp;
    free(d->entries);
    free(d->strings);
    free(d->dirs);
    free(d->pixels);
    free(d->labels);
    free(d->bad);
    free(d);
    *dp = NULL;
}

uint32_t ser_dl_data_count(const ser_dl_data *d) { return d->n; }
int ser_dl_data_kind(const ser_dl_data *d) { return d->kind; }
int ser_dl_data_num_classes(const ser_dl_data *d) { return (int)d->nclasses; }
int ser_dl_data_index_from_cache(const ser_dl_data *d) { return d->from_cache; }

int ser_dl_data_label(const ser_dl_data *d, uint32_t idx) {
    SER_ASSERT(idx < d->n);
    if (d->kind == SER_DL_KIND_SYNTHETIC) return (int)(idx % 10);
    return d->kind == SER_DL_KIND_IMAGEFOLDER ? d->entries[idx].label : d->labels[idx];
}

const char *ser_dl_data_path(const ser_dl_data *d, uint32_t idx, char *buf, size_t n) {
    SER_ASSERT(idx < d->n);
    if (d->kind == SER_DL_KIND_IMAGEFOLDER)
        snprintf(buf, n, "%s/%s", d->dir, d->strings + d->entries[idx].path);
    else
        snprintf(buf, n, "%s[%u]",
                 d->kind == SER_DL_KIND_CIFAR10  ? "cifar10"
                 : d->kind == SER_DL_KIND_FMNIST ? "fmnist"
                                                 : "synthetic",
                 idx);
    return buf;
}

uint64_t ser_dl_data_bad_files(const ser_dl_data *d) {
    return __atomic_load_n(&d->n_bad, __ATOMIC_RELAXED);
}
uint64_t ser_dl_data_replacements(const ser_dl_data *d) {
    return __atomic_load_n(&d->n_replaced, __ATOMIC_RELAXED);
}

const char *ser_dl_data_dir(const ser_dl_data *d) { return d->dir; }

void ser_dl_data_set_max_bad(ser_dl_data *d, double fraction) {
    double b = floor(fraction * (double)d->n);
    d->max_bad_fraction = fraction;
    d->max_bad = b < SER_DL_BAD_FILES_FREE ? SER_DL_BAD_FILES_FREE : (uint64_t)b;
}

int ser_dl_data_bad_report(const ser_dl_data *d, char *buf, size_t n) {
    uint64_t nb = ser_dl_data_bad_files(d);
    int over = nb > d->max_bad || nb >= d->n;
    size_t off = 0;
#define S_PUT(...)                                                   \
    do {                                                             \
        if (off < n) {                                               \
            int w_ = snprintf(buf + off, n - off, __VA_ARGS__);      \
            off += w_ > 0 ? (size_t)w_ : 0;                          \
        }                                                            \
    } while (0)
    if (nb >= d->n)
        S_PUT("none of the %u files can be decoded", d->n);
    else if (over)
        S_PUT("%llu of %u files cannot be decoded, more than data.max_bad_fraction = %g allows "
              "(%llu)", (unsigned long long)nb, d->n, d->max_bad_fraction,
              (unsigned long long)d->max_bad);
    else
        S_PUT("%llu of %u files cannot be decoded", (unsigned long long)nb, d->n);
    // The first few by name, then the folder, then the first one's reason (every bad file was
    // logged with its own): messages on the way to the coordinator are cut, names go first.
    int named = 0;
    for (int k = 0; k < S_FIRST_BAD && (uint64_t)k < nb && d->kind == SER_DL_KIND_IMAGEFOLDER;
         k++) {
        if (!__atomic_load_n(&d->first_bad[k].ready, __ATOMIC_ACQUIRE)) continue;
        S_PUT("%s%s", named++ ? ", " : ": ", d->strings + d->entries[d->first_bad[k].idx].path);
    }
    S_PUT("%s in %s", nb > (uint64_t)named ? ", ..." : "", d->dir);
    if (named && __atomic_load_n(&d->first_bad[0].ready, __ATOMIC_ACQUIRE))
        S_PUT(" (%s: %s)", d->strings + d->entries[d->first_bad[0].idx].path, d->first_bad[0].why);
#undef S_PUT
    return over ? SER_EFORMAT : SER_OK;
}

// --- decoding --------------------------------------------------------------------------------

// 1 if the JPEG stream has an APP14 "Adobe" marker before the first SOS (then PIL reads its
// CMYK as inverted, rawmode "CMYK;I").
static int s_has_adobe_marker(const uint8_t *b, size_t n) {
    size_t i = 2;
    while (i + 4 <= n) {
        if (b[i] != 0xFF) return 0;
        uint8_t m = b[i + 1];
        if (m == 0xFF) {
            i++;
            continue;
        }
        if (m == 0xDA || m == 0xD9) return 0;
        size_t len = (size_t)b[i + 2] << 8 | b[i + 3];
        if (m == 0xEE && len >= 7 && i + 9 <= n && memcmp(b + i + 4, "Adobe", 5) == 0) return 1;
        i += 2 + len;
    }
    return 0;
}

static inline uint8_t s_muldiv255(int a, int b) {
    int t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

// Replaces the caller's decompressor by a fresh one. A failed tjDecompressHeader3 (libjpeg-turbo
// 2.1.5) returns from its error handler without aborting the decompressor, which stays
// mid-header: the next image on that handle then fails too (a JPEG cut before its SOS), or
// every later one does (an SOF saying 0x0, "Empty JPEG image"), and good files would be
// declared bad depending on what the thread decoded before. TurboJPEG has no reset call, so
// after any failure the handle is destroyed and made again; this costs only on bad files.
static void s_decoder_reset(void **tjp) {
    if (*tjp) tjDestroy((tjhandle)*tjp);
    *tjp = tjInitDecompress();  // NULL on failure: made again on the next call
}

int ser_dl_decode_jpeg(void **tjp, const uint8_t *buf, size_t n, ser_dl_image *out,
                       char err[256]) {
    if (tjp && !*tjp) *tjp = tjInitDecompress();
    tjhandle tj = tjp ? (tjhandle)*tjp : tjInitDecompress();
    int rc = SER_EFORMAT;
    uint8_t *cmyk = NULL;
    out->px = NULL;
    if (!tj) {
        snprintf(err, 256, "tjInitDecompress failed");
        return SER_ENOMEM;
    }
    int w, h, subsamp, cs;
    if (n < 4 || buf[0] != 0xFF || buf[1] != 0xD8) {
        snprintf(err, 256, "not a JPEG file (%zu bytes)", n);
        goto done;
    }
    if (tjDecompressHeader3(tj, buf, (unsigned long)n, &w, &h, &subsamp, &cs) != 0) {
        snprintf(err, 256, "bad JPEG header: %s", tjGetErrorStr2(tj));
        goto done;
    }
    // PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): what torchvision refuses is
    // refused here too, and a 700-byte file cannot cost 800 MB and seconds per loader thread.
    if (w <= 0 || h <= 0 || (int64_t)w * h > (int64_t)178956970) {
        snprintf(err, 256, "JPEG size %dx%d out of range (at most 178956970 pixels, PIL's limit)",
                 w, h);
        goto done;
    }
    int is_cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    out->w = w;
    out->h = h;
    out->px = malloc((size_t)w * h * 3);
    if (is_cmyk) cmyk = malloc((size_t)w * h * 4);
    if (!out->px || (is_cmyk && !cmyk)) {
        rc = SER_ENOMEM;
        goto done;
    }
    int r = tjDecompress2(tj, buf, (unsigned long)n, is_cmyk ? cmyk : out->px, w, 0, h,
                          is_cmyk ? TJPF_CMYK : TJPF_RGB, 0);
    if (r != 0) {
        const char *msg = tjGetErrorStr2(tj);
        // Warnings (for example extraneous bytes before a marker) are accepted, as PIL does;
        // a premature end of data is not (PIL raises "image file is truncated").
        if (tjGetErrorCode(tj) != TJERR_WARNING || strstr(msg, "Premature end")) {
            snprintf(err, 256, "JPEG decode failed: %s", msg);
            goto done;
        }
    }
    if (is_cmyk) {
        int inv = s_has_adobe_marker(buf, n);
        for (size_t i = 0; i < (size_t)w * h; i++) {
            int c = cmyk[4 * i], m = cmyk[4 * i + 1], y = cmyk[4 * i + 2], k = cmyk[4 * i + 3];
            if (inv) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
            int nk = 255 - k;
            out->px[3 * i + 0] = (uint8_t)(nk - s_muldiv255(c, nk));
            out->px[3 * i + 1] = (uint8_t)(nk - s_muldiv255(m, nk));
            out->px[3 * i + 2] = (uint8_t)(nk - s_muldiv255(y, nk));
        }
    }
    rc = SER_OK;
done:
    if (rc) ser_dl_image_free(out);
    free(cmyk);
    if (!tjp)
        tjDestroy(tj);
    else if (rc)
        s_decoder_reset(tjp);
    return rc;
}

// --- PNG -------------------------------------------------------------------------------------
// libpng reports errors by longjmp: everything a failed decode must free lives in s_png (memory
// the jump does not roll back), and the frame that called setjmp returns at once.

typedef struct s_png {
    const uint8_t *buf;
    size_t n, off;
    char *err;
    uint32_t w, h;  // as the header says
    uint8_t *px;
    png_bytep *rows;
} s_png;

static void s_png_read(png_structp png, png_bytep out, size_t len) {
    s_png *s = png_get_io_ptr(png);
    if (len > s->n - s->off) png_error(png, "the file is truncated");
    memcpy(out, s->buf + s->off, len);
    s->off += len;
}

static void s_png_error(png_structp png, png_const_charp msg) {
    s_png *s = png_get_error_ptr(png);
    if (!s->err[0]) snprintf(s->err, 256, "PNG decode failed: %s", msg);
    png_longjmp(png, 1);
}

// Warnings (an ancillary chunk with a bad CRC, an unknown chunk) are accepted, as PIL does.
static void s_png_warning(png_structp png, png_const_charp msg) {
    (void)png, (void)msg;
}

// The decode proper, between setjmp and the last libpng call; rc as ser_dl_decode_png.
static int s_png_decode(png_structp png, png_infop info, s_png *s) {
    if (setjmp(png_jmpbuf(png))) return SER_EFORMAT;
    png_set_read_fn(png, s, s_png_read);
    png_set_chunk_malloc_max(png, (png_alloc_size_t)8 << 20);  // text and other ancillary chunks
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    s->w = w, s->h = h;
    // PIL's decompression-bomb limit, as for JPEG: a few hundred bytes of IDAT can announce
    // gigapixels.
    if (w == 0 || h == 0 || (uint64_t)w * h > (uint64_t)178956970) {
        snprintf(s->err, 256, "PNG size %ux%u out of range (at most 178956970 pixels, PIL's limit)",
                 (unsigned)w, (unsigned)h);
        return SER_EFORMAT;
    }
    // PIL's convert("RGB"): palette -> its colours; 1/2/4-bit grey scaled to 8 bits; 16-bit
    // colour (RGB, grey+alpha) -> the high byte; alpha and tRNS dropped, not composited; grey
    // replicated. 16-bit grey alone is opened by PIL as a 32-bit integer image whose RGB is the
    // value clipped to 255: read it at 16 bits and clip below.
    int gray16 = depth == 16 && ctype == PNG_COLOR_TYPE_GRAY;
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16 && !gray16) png_set_strip_16(png);
    // (png_set_palette_to_rgb turns a palette's tRNS into alpha: stripped too.)
    if ((ctype & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_strip_alpha(png);
    if ((ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA) && !gray16)
        png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rb = png_get_rowbytes(png, info), want = (size_t)w * (gray16 ? 2 : 3);
    if (rb != want) {
        snprintf(s->err, 256, "PNG rows of %zu bytes after conversion, expected %zu", rb, want);
        return SER_EFORMAT;
    }
    // The 16-bit grey rows (2 bytes a pixel) fit in the RGB buffer and widen in place.
    s->px = malloc((size_t)w * h * 3);
    s->rows = malloc(sizeof(png_bytep) * h);
    if (!s->px || !s->rows) return SER_ENOMEM;
    for (png_uint_32 y = 0; y < h; y++) s->rows[y] = s->px + (size_t)y * rb;
    png_read_image(png, s->rows);  // every interlace pass; IDAT cut short is an error
    if (gray16)  // backwards: pixel i's RGB (3i..3i+2) lies past the grey of every pixel < i
        for (size_t i = (size_t)w * h; i-- > 0;) {
            unsigned v = (unsigned)s->px[2 * i] << 8 | s->px[2 * i + 1];
            uint8_t g = (uint8_t)(v > 255 ? 255 : v);
            s->px[3 * i] = s->px[3 * i + 1] = s->px[3 * i + 2] = g;
        }
    return SER_OK;
}

int ser_dl_decode_png(const uint8_t *buf, size_t n, ser_dl_image *out, char err[256]) {
    out->px = NULL;
    out->w = out->h = 0;
    err[0] = 0;
    if (n < 8 || png_sig_cmp(buf, 0, 8) != 0) {
        snprintf(err, 256, "not a PNG file (%zu bytes)", n);
        return SER_EFORMAT;
    }
    // The size first, from IHDR (always the first chunk): libpng reads on to the first IDAT
    // before it says, and a file cut there would be refused for that instead.
    if (n >= 24 && !memcmp(buf + 12, "IHDR", 4)) {
        uint64_t w = (uint64_t)buf[16] << 24 | (uint64_t)buf[17] << 16 | buf[18] << 8 | buf[19];
        uint64_t h = (uint64_t)buf[20] << 24 | (uint64_t)buf[21] << 16 | buf[22] << 8 | buf[23];
        if (w * h > (uint64_t)178956970) {
            snprintf(err, 256, "PNG size %llux%llu out of range (at most 178956970 pixels, PIL's "
                     "limit)", (unsigned long long)w, (unsigned long long)h);
            return SER_EFORMAT;
        }
    }
    s_png s = {buf, n, 0, err, 0, 0, NULL, NULL};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, s_png_error, s_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        snprintf(err, 256, "png_create_read_struct failed");
        return SER_ENOMEM;
    }
    int rc = s_png_decode(png, info, &s);
    png_destroy_read_struct(&png, &info, NULL);
    free(s.rows);
    if (rc) {
        free(s.px);
        if (rc == SER_ENOMEM) snprintf(err, 256, "out of memory for a %ux%u PNG", s.w, s.h);
        else if (!err[0]) snprintf(err, 256, "PNG decode failed");
        return rc;
    }
    out->px = s.px, out->w = (int)s.w, out->h = (int)s.h;
    return SER_OK;
}

int ser_dl_decode_image(void **tj, const uint8_t *buf, size_t n, ser_dl_image *out,
                        char err[256]) {
    if (n >= 8 && png_sig_cmp(buf, 0, 8) == 0) return ser_dl_decode_png(buf, n, out, err);
    if (n >= 2 && buf[0] == 0xFF && buf[1] == 0xD8) return ser_dl_decode_jpeg(tj, buf, n, out, err);
    out->px = NULL;
    out->w = out->h = 0;
    snprintf(err, 256, "not a JPEG or PNG file (%zu bytes)", n);
    return SER_EFORMAT;
}

// Decodes one index without replacement; SER_EFORMAT/SER_EIO with err on a bad file.
static int s_load_one(ser_dl_data *d, uint32_t idx, void **tj, ser_dl_image *out, char *err) {
    if (d->kind != SER_DL_KIND_IMAGEFOLDER) {
        int w = d->rec_w, h = d->rec_h, hw = w * h;
        out->w = w;
        out->h = h;
        out->px = ser_xmalloc((size_t)hw * 3);
        const uint8_t *src = d->pixels + (size_t)idx * hw * d->rec_c;
        for (int i = 0; i < hw; i++) {
            if (d->rec_c == 3) {
                out->px[3 * i] = src[i];  // planar R, G, B -> HWC
                out->px[3 * i + 1] = src[hw + i];
                out->px[3 * i + 2] = src[2 * hw + i];
            } else {
                out->px[3 * i] = out->px[3 * i + 1] = out->px[3 * i + 2] = src[i];
            }
        }
        return SER_OK;
    }
    char path[PATH_MAX];
    ser_dl_data_path(d, idx, path, sizeof path);
    uint8_t *buf = NULL;
    size_t n = 0;
    int rc = s_read_file(path, SER_DL_MAX_FILE_BYTES, &buf, &n, err);
    if (rc) return rc;
    if (n == 0) {
        snprintf(err, 256, "empty file");
        rc = SER_EFORMAT;
    } else {
        rc = ser_dl_decode_image(tj, buf, n, out, err);
    }
    free(buf);
    return rc;
}

int ser_dl_data_load(ser_dl_data *d, uint32_t idx, void **tj, ser_dl_image *out,
                     uint32_t *source) {
    SER_ASSERT(idx < d->n);
    if (d->kind == SER_DL_KIND_SYNTHETIC) {  // generated: never bad
        s_synthetic_image(d, idx, out);
        if (source) *source = idx;
        return SER_OK;
    }
    // The result depends on idx and the files alone, never on what was decoded before: a
    // file's verdict is a function of its bytes (the decoder is reset after every failure),
    // so skipping a file already known bad gives what decoding it again would. Past the
    // budget every load fails: the job stops instead of training on what is left.
    for (uint32_t k = 0; k < d->n; k++) {
        if (__atomic_load_n(&d->n_bad, __ATOMIC_RELAXED) > d->max_bad) return SER_EFORMAT;
        uint32_t j = (uint32_t)(((uint64_t)idx + k) % d->n);
        if (__atomic_load_n(&d->bad[j], __ATOMIC_RELAXED)) continue;
        char err[256] = "";
        int rc = s_load_one(d, j, tj, out, err);
        if (rc == SER_OK) {
            if (source) *source = j;
            if (k > 0) __atomic_add_fetch(&d->n_replaced, 1, __ATOMIC_RELAXED);
            return SER_OK;
        }
        ser_dl_image_free(out);
        if (rc == SER_ENOMEM) return rc;
        if (__atomic_exchange_n(&d->bad[j], 1, __ATOMIC_RELAXED) == 0) {
            char path[PATH_MAX];
            uint64_t nb = __atomic_add_fetch(&d->n_bad, 1, __ATOMIC_RELAXED);
            if (nb <= S_FIRST_BAD) {
                d->first_bad[nb - 1].idx = j;
                snprintf(d->first_bad[nb - 1].why, sizeof d->first_bad[nb - 1].why, "%s", err);
                __atomic_store_n(&d->first_bad[nb - 1].ready, 1, __ATOMIC_RELEASE);
            }
            ser_log(SER_LL_WARNING, "dataloader: bad file %s (%s); replaced by the next index",
                    ser_dl_data_path(d, j, path, sizeof path), err);
        }
    }
    return SER_EFORMAT;
}

// --- synthetic data ------------------------------------------------------------------------------

int ser_dl_encode_jpeg(const char *path, const uint8_t *rgb, int w, int h, int q) {
    tjhandle tj = tjInitCompress();
    if (!tj) return SER_ENOMEM;
    unsigned char *jpg = NULL;
    unsigned long len = 0;
    int rc = SER_EIO;
    if (tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &jpg, &len, TJSAMP_420, q, 0) == 0) {
        FILE *f = fopen(path, "wb");
        if (f) {
            if (fwrite(jpg, 1, len, f) == len) rc = SER_OK;
            if (fclose(f) != 0) rc = SER_EIO;
        }
    }
    tjFree(jpg);
    tjDestroy(tj);
    return rc;
}

int ser_dl_data_make_synthetic(const char *root, int nclasses, int per_class, int w, int h,
                               uint64_t seed, char err[256]) {
    char p[PATH_MAX];
    mkdir(root, 0755);
    snprintf(p, sizeof p, "%s/train", root);
    mkdir(p, 0755);
    ser_rng r;
    ser_rng_init(&r, seed, 0, 0, SER_RNG_FIXTURE);
    uint8_t *px = ser_xmalloc((size_t)(2 * w) * (2 * h) * 3);
    int rc = SER_OK;
    for (int c = 0; c < nclasses && !rc; c++) {
        snprintf(p, sizeof p, "%s/train/c%02d", root, c);
        mkdir(p, 0755);
        for (int i = 0; i < per_class && !rc; i++) {
            int iw = w / 2 + (int)ser_rng_below(&r, (uint32_t)w + 1);
            int ih = h / 2 + (int)ser_rng_below(&r, (uint32_t)h + 1);
            float fx = 1.0f + 3.0f * ser_rng_uniform(&r), fy = 1.0f + 3.0f * ser_rng_uniform(&r);
            float ph = 6.28f * ser_rng_uniform(&r);
            for (int y = 0; y < ih; y++)
                for (int x = 0; x < iw; x++) {
                    float u = (float)x / (float)iw, v = (float)y / (float)ih;
                    uint8_t *o = px + ((size_t)y * iw + x) * 3;
                    o[0] = (uint8_t)(20.0f + 215.0f * u);
                    o[1] = (uint8_t)(20.0f + 215.0f * v);
                    o[2] = (uint8_t)(128.0f + 100.0f * sinf(6.28f * (fx * u + (float)c * 0.1f) + ph) *
                                                  cosf(6.28f * fy * v));
                }
            snprintf(p, sizeof p, "%s/train/c%02d/i%04d.jpg", root, c, i);
            if (ser_dl_encode_jpeg(p, px, iw, ih, 92)) {
                snprintf(err, 256, "cannot write %s", p);
                rc = SER_EIO;
            }
        }
    }
    free(px);
    return rc;
}
