// ser_safetensors.c — see ser_safetensors.h.
//
// Reading is two passes: parse and validate the JSON header against the size of the byte
// buffer (nothing of the buffer is touched yet), then copy each tensor into its own 64-byte
// aligned slot of one arena. Files are read sequentially in data-offset order, which is the
// whole buffer front to back because validation proved there are no holes and no overlaps.
#include "ser_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ser_safetensors.c assumes a little-endian host (safetensors data is little-endian)"
#endif

#define S_MAX_HEADER ((uint64_t)100 * 1024 * 1024)  // the limit of the reference implementation
#define S_MAX_EXACT ((double)(1ull << 53))          // JSON numbers are doubles in cJSON
#define S_LABEL_LEN 80
#define S_META_KEY "__metadata__"

// --- dtypes ----------------------------------------------------------------------------------
static const struct {
    const char *name;
    size_t size;
} s_dtypes[] = {
    [SER_DT_F32] = {"F32", 4},   [SER_DT_F64] = {"F64", 8}, [SER_DT_F16] = {"F16", 2},
    [SER_DT_BF16] = {"BF16", 2}, [SER_DT_I64] = {"I64", 8}, [SER_DT_I32] = {"I32", 4},
    [SER_DT_I16] = {"I16", 2},   [SER_DT_I8] = {"I8", 1},   [SER_DT_U8] = {"U8", 1},
    [SER_DT_BOOL] = {"BOOL", 1},
};
#define S_NDTYPES ((int)(sizeof s_dtypes / sizeof s_dtypes[0]))

size_t ser_dtype_size(ser_dtype t) {
    SER_ASSERT((int)t >= 0 && (int)t < S_NDTYPES);
    return s_dtypes[t].size;
}

const char *ser_dtype_name(ser_dtype t) {
    SER_ASSERT((int)t >= 0 && (int)t < S_NDTYPES);
    return s_dtypes[t].name;
}

int ser_dtype_parse(const char *s, ser_dtype *out) {
    for (int i = 0; s && i < S_NDTYPES; i++) {
        if (strcmp(s, s_dtypes[i].name) == 0) {
            *out = (ser_dtype)i;
            return SER_OK;
        }
    }
    return SER_EDTYPE;
}

// --- small helpers ---------------------------------------------------------------------------
// "[3,4]" into buf (truncated to n bytes).
static const char *s_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

// The label used in messages: the path, shortened from the left so the message stays readable.
static void s_label(char *buf, const char *path) {
    size_t n = strlen(path);
    if (n < S_LABEL_LEN)
        snprintf(buf, S_LABEL_LEN, "%s", path);
    else
        snprintf(buf, S_LABEL_LEN, "...%s", path + n - (S_LABEL_LEN - 4));
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
static int s_utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

// A JSON number that is an exact non-negative integer below 2^53 (cJSON stores doubles).
static int s_json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d < S_MAX_EXACT) || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static uint64_t s_load_u64le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void s_store_u64le(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static size_t s_round64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

// --- reader: parsing and validation ----------------------------------------------------------
// A __metadata__ pair.
typedef struct s_kv {
    char *k, *v;
} s_kv;

struct ser_st_file {
    char label[S_LABEL_LEN];
    ser_st_entry *e;  // n entries in data-offset order
    int n;
    const ser_st_entry **by_name;  // the n entries sorted by name (for ser_st_find)
    s_kv *meta;                    // nmeta pairs sorted by key
    int nmeta;
    void *arena;  // all tensor data, each tensor in its own 64-byte slot
};

// A tensor while parsing: the entry plus where its bytes are in the file's byte buffer.
typedef struct s_item {
    ser_st_entry e;
    uint64_t begin, end;
    int index;  // position in the header, the tie-break that makes sorting deterministic
} s_item;

static int s_cmp_item_offset(const void *a, const void *b) {
    const s_item *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

// Sorts an array of pointers to entries by name.
static int s_cmp_entry_name(const void *a, const void *b) {
    return strcmp((*(const ser_st_entry *const *)a)->name, (*(const ser_st_entry *const *)b)->name);
}

static int s_cmp_kv(const void *a, const void *b) {
    return strcmp(((const s_kv *)a)->k, ((const s_kv *)b)->k);
}

// Reads one tensor description into it. data_len is the size of the byte buffer.
static int s_parse_entry(s_item *it, const cJSON *j, const char *label, uint64_t data_len,
                         char *err) {
    const char *name = j->string;
    if (strlen(name) >= SER_TINFO_NAME_LEN)
        return ser_errf(err, SER_EFORMAT, "%s: tensor name '%.40s...' is %zu bytes (max %d)", label,
                      name, strlen(name), SER_TINFO_NAME_LEN - 1);
    snprintf(it->e.name, sizeof it->e.name, "%s", name);
    if (!cJSON_IsObject(j))
        return ser_errf(err, SER_EFORMAT, "%s: tensor '%s': entry is not a JSON object", label, name);

    const cJSON *jdt = NULL, *jshape = NULL, *joff = NULL, *c;
    cJSON_ArrayForEach(c, j) {
        const cJSON **slot = strcmp(c->string, "dtype") == 0          ? &jdt
                             : strcmp(c->string, "shape") == 0        ? &jshape
                             : strcmp(c->string, "data_offsets") == 0 ? &joff
                                                                      : NULL;
        if (!slot) continue;  // unknown fields are ignored, as the reference does
        if (*slot)
            return ser_errf(err, SER_EFORMAT, "%s: tensor '%s': duplicate field \"%s\"", label, name,
                          c->string);
        *slot = c;
    }
    const char *missing = !jdt ? "dtype" : !jshape ? "shape" : !joff ? "data_offsets" : NULL;
    if (missing)
        return ser_errf(err, SER_EFORMAT, "%s: tensor '%s': missing \"%s\"", label, name, missing);

    if (!cJSON_IsString(jdt))
        return ser_errf(err, SER_EFORMAT, "%s: tensor '%s': dtype is not a string", label, name);
    if (ser_dtype_parse(jdt->valuestring, &it->e.dtype) != SER_OK)
        return ser_errf(err, SER_EDTYPE, "%s: tensor '%s': unsupported dtype '%.32s'", label, name,
                      jdt->valuestring);

    if (!cJSON_IsArray(jshape))
        return ser_errf(err, SER_EFORMAT, "%s: tensor '%s': shape is not an array", label, name);
    int ndim = 0, has_zero = 0, overflow = 0;
    uint64_t numel = 1;
    cJSON_ArrayForEach(c, jshape) {
        if (ndim == SER_ST_MAX_DIM)
            return ser_errf(err, SER_EFORMAT, "%s: tensor '%s': shape has %d dims (max %d)", label,
                          name, cJSON_GetArraySize(jshape), SER_ST_MAX_DIM);
        uint64_t d;
        if (!s_json_uint(c, &d))
            return ser_errf(err, SER_EFORMAT,
                          "%s: tensor '%s': shape[%d] is not an integer in [0, 2^53)", label, name,
                          ndim);
        it->e.shape[ndim++] = (int64_t)d;
        has_zero |= d == 0;
        overflow |= __builtin_mul_overflow(numel, d, &numel);
    }
    it->e.ndim = ndim;
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)ser_dtype_size(it->e.dtype), &nbytes);
    overflow |= numel > SIZE_MAX || nbytes > SIZE_MAX;
    char sh[96];
    if (has_zero) {
        numel = nbytes = 0;  // a 0 dim makes the product 0 whatever overflowed on the way
    } else if (overflow) {
        return ser_errf(err, SER_EFORMAT, "%s: tensor '%s': shape %s x %s overflows 64 bits", label,
                      name, s_shape_str(sh, sizeof sh, ndim, it->e.shape), jdt->valuestring);
    }
    it->e.numel = (size_t)numel;
    it->e.nbytes = (size_t)nbytes;

    uint64_t off[2];
    int noff = 0;
    if (!cJSON_IsArray(joff) || cJSON_GetArraySize(joff) != 2)
        return ser_errf(err, SER_EFORMAT,
                      "%s: tensor '%s': data_offsets is not an array [begin, end]", label, name);
    cJSON_ArrayForEach(c, joff) {
        if (!s_json_uint(c, &off[noff]))
            return ser_errf(err, SER_EFORMAT,
                          "%s: tensor '%s': data_offsets[%d] is not an integer in [0, 2^53)", label,
                          name, noff);
        noff++;
    }
    it->begin = off[0], it->end = off[1];
    if (off[1] < off[0])
        return ser_errf(err, SER_EFORMAT,
                      "%s: tensor '%s': data_offsets [%llu, %llu] end before begin", label, name,
                      (unsigned long long)off[0], (unsigned long long)off[1]);
    if (off[1] > data_len)
        return ser_errf(err, SER_EFORMAT,
                      "%s: tensor '%s': data_offsets [%llu, %llu] exceed the %llu-byte data buffer",
                      label, name, (unsigned long long)off[0], (unsigned long long)off[1],
                      (unsigned long long)data_len);
    if (off[1] - off[0] != nbytes)
        return ser_errf(err, SER_EFORMAT,
                      "%s: tensor '%s': data_offsets [%llu, %llu] do not match shape %s x %s = "
                      "%llu bytes",
                      label, name, (unsigned long long)off[0], (unsigned long long)off[1],
                      s_shape_str(sh, sizeof sh, ndim, it->e.shape), jdt->valuestring,
                      (unsigned long long)nbytes);
    return SER_OK;
}

// Copies the __metadata__ object into f->meta (sorted by key; duplicates rejected).
static int s_parse_meta(ser_st_file *f, const cJSON *j, const char *label, char *err) {
    if (cJSON_IsNull(j)) return SER_OK;  // the reference accepts a null (absent) metadata map
    if (!cJSON_IsObject(j))
        return ser_errf(err, SER_EFORMAT, "%s: __metadata__ is not a JSON object", label);
    int n = cJSON_GetArraySize(j);
    s_kv *kv = calloc((size_t)n + 1, sizeof *kv);
    if (!kv) return ser_errf(err, SER_ENOMEM, "%s: out of memory for metadata", label);
    f->meta = kv;  // ser_st_destroy frees the first nmeta pairs, even half-filled ones
    const cJSON *c;
    cJSON_ArrayForEach(c, j) {
        if (!cJSON_IsString(c))
            return ser_errf(err, SER_EFORMAT, "%s: __metadata__ value of '%.64s' is not a string",
                          label, c->string);
        kv[f->nmeta].k = strdup(c->string);
        kv[f->nmeta].v = strdup(c->valuestring);
        f->nmeta++;
        if (!kv[f->nmeta - 1].k || !kv[f->nmeta - 1].v)
            return ser_errf(err, SER_ENOMEM, "%s: out of memory for metadata", label);
    }
    qsort(kv, (size_t)f->nmeta, sizeof *kv, s_cmp_kv);
    for (int i = 1; i < f->nmeta; i++)
        if (strcmp(kv[i - 1].k, kv[i].k) == 0)
            return ser_errf(err, SER_EFORMAT, "%s: duplicate __metadata__ key '%.64s'", label,
                          kv[i].k);
    return SER_OK;
}

// Checks the header length against the file size (n bytes in all).
static int s_check_header_len(uint64_t hlen, uint64_t n, const char *label, char *err) {
    if (hlen == 0) return ser_errf(err, SER_EFORMAT, "%s: header length is 0", label);
    if (hlen > S_MAX_HEADER)
        return ser_errf(err, SER_EFORMAT,
                      "%s: header length %llu exceeds the 100 MiB limit (not a safetensors file?)",
                      label, (unsigned long long)hlen);
    if (hlen > n - 8)
        return ser_errf(err, SER_EFORMAT,
                      "%s: header length %llu exceeds the %llu bytes after the length field "
                      "(truncated file?)",
                      label, (unsigned long long)hlen, (unsigned long long)(n - 8));
    return SER_OK;
}

// Parses and validates hlen header bytes describing a data_len-byte buffer. On success f has
// its entries (data still NULL) in offset order, the name index and the metadata.
static int s_parse_header(ser_st_file *f, const unsigned char *hdr, size_t hlen, uint64_t data_len,
                          char *err) {
    const char *label = f->label;
    int rc = SER_OK;
    char *text = NULL;
    cJSON *root = NULL;
    s_item *items = NULL;
    const ser_st_entry **byname = NULL;
    int nitems = 0;

    if (!s_utf8_valid(hdr, hlen)) {
        rc = ser_errf(err, SER_EFORMAT, "%s: header is not valid UTF-8", label);
        goto done;
    }
    // cJSON wants a NUL-terminated string; the copy also makes an embedded NUL an error below.
    text = malloc(hlen + 1);
    if (!text) {
        rc = ser_errf(err, SER_ENOMEM, "%s: out of memory for a %zu-byte header", label, hlen);
        goto done;
    }
    memcpy(text, hdr, hlen);
    text[hlen] = 0;
    const char *end = NULL;
    root = cJSON_ParseWithOpts(text, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - text) : 0;
        rc = ser_errf(err, SER_EFORMAT, "%s: header is not valid JSON (error at byte %zu of %zu)",
                    label, at, hlen);
        goto done;
    }
    for (const char *p = end; p < text + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = ser_errf(err, SER_EFORMAT,
                        "%s: header has unexpected bytes after the JSON object (at byte %zu)",
                        label, (size_t)(p - text));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = ser_errf(err, SER_EFORMAT, "%s: header is not a JSON object", label);
        goto done;
    }

    int nchild = cJSON_GetArraySize(root);
    items = calloc((size_t)nchild + 1, sizeof *items);
    if (!items) {
        rc = ser_errf(err, SER_ENOMEM, "%s: out of memory for %d header entries", label, nchild);
        goto done;
    }
    int seen_meta = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, root) {
        if (strcmp(c->string, S_META_KEY) == 0) {
            if (seen_meta++) {
                rc = ser_errf(err, SER_EFORMAT, "%s: duplicate __metadata__", label);
                goto done;
            }
            if ((rc = s_parse_meta(f, c, label, err)) != SER_OK) goto done;
            continue;
        }
        items[nitems].index = nitems;
        if ((rc = s_parse_entry(&items[nitems], c, label, data_len, err)) != SER_OK) goto done;
        nitems++;
    }

    // Duplicate names: cJSON keeps every member of an object, so look for equal neighbours.
    byname = malloc(((size_t)nitems + 1) * sizeof *byname);
    if (!byname) {
        rc = ser_errf(err, SER_ENOMEM, "%s: out of memory", label);
        goto done;
    }
    for (int i = 0; i < nitems; i++) byname[i] = &items[i].e;
    qsort(byname, (size_t)nitems, sizeof *byname, s_cmp_entry_name);
    for (int i = 1; i < nitems; i++) {
        if (strcmp(byname[i - 1]->name, byname[i]->name) == 0) {
            rc = ser_errf(err, SER_EFORMAT, "%s: duplicate tensor name '%s'", label, byname[i]->name);
            goto done;
        }
    }

    // Coverage: in (begin, end) order every tensor starts where the previous one ended and
    // the last one ends at the end of the buffer.
    qsort(items, (size_t)nitems, sizeof *items, s_cmp_item_offset);
    uint64_t cursor = 0;
    for (int i = 0; i < nitems; i++) {
        const s_item *it = &items[i];
        if (it->begin > cursor) {
            rc = ser_errf(err, SER_EFORMAT,
                        "%s: bytes [%llu, %llu) of the data buffer are not covered by any tensor "
                        "(hole before '%s')",
                        label, (unsigned long long)cursor, (unsigned long long)it->begin,
                        it->e.name);
            goto done;
        }
        if (it->begin < cursor) {
            rc = ser_errf(err, SER_EFORMAT,
                        "%s: tensor '%s' data_offsets [%llu, %llu] overlap tensor '%s' "
                        "(ends at %llu)",
                        label, it->e.name, (unsigned long long)it->begin,
                        (unsigned long long)it->end, items[i - 1].e.name,
                        (unsigned long long)cursor);
            goto done;
        }
        cursor = it->end;
    }
    if (cursor != data_len) {
        rc = ser_errf(err, SER_EFORMAT,
                    "%s: bytes [%llu, %llu) at the end of the data buffer are not covered by any "
                    "tensor",
                    label, (unsigned long long)cursor, (unsigned long long)data_len);
        goto done;
    }

    // Entries in offset order, and the name index over them.
    f->e = calloc((size_t)nitems + 1, sizeof *f->e);
    if (!f->e) {
        rc = ser_errf(err, SER_ENOMEM, "%s: out of memory", label);
        goto done;
    }
    f->n = nitems;
    for (int i = 0; i < nitems; i++) {
        f->e[i] = items[i].e;
        byname[i] = &f->e[i];
    }
    qsort(byname, (size_t)nitems, sizeof *byname, s_cmp_entry_name);
    f->by_name = byname;
    byname = NULL;

done:
    cJSON_Delete(root);
    free(text);
    free(items);
    free(byname);
    return rc;
}

// The writable address of the slot at byte offset at of the arena (entries only get const).
static void *s_slot(ser_st_file *f, size_t at) {
    return (char *)f->arena + at;
}

// Allocates the arena and points each entry at its 64-byte aligned slot.
static int s_alloc_arena(ser_st_file *f, char *err) {
    size_t total = 0;
    for (int i = 0; i < f->n; i++) total += s_round64(f->e[i].nbytes);
    f->arena = aligned_alloc(64, total ? total : 64);
    if (!f->arena)
        return ser_errf(err, SER_ENOMEM, "%s: out of memory for %zu bytes of tensor data", f->label,
                      total);
    size_t at = 0;
    for (int i = 0; i < f->n; i++) {
        f->e[i].data = s_slot(f, at);
        at += s_round64(f->e[i].nbytes);
    }
    return SER_OK;
}

void ser_st_destroy(ser_st_file **fp) {
    if (!fp || !*fp) return;
    ser_st_file *f = *fp;
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta[i].k);
        free(f->meta[i].v);
    }
    free(f->meta);
    free(f->e);
    free(f->by_name);
    free(f->arena);
    free(f);
    *fp = NULL;
}

static ser_st_file *s_file_new(const char *label, char *err) {
    ser_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        ser_errf(err, SER_ENOMEM, "%s: out of memory", label);
        return NULL;
    }
    s_label(f->label, label);
    return f;
}

int ser_st_open_mem(ser_st_file **out, const void *buf, size_t n, char err[SER_ERR_LEN]) {
    SER_ASSERT(out);
    *out = NULL;
    const unsigned char *b = buf;
    ser_st_file *f = s_file_new("<memory>", err);
    if (!f) return SER_ENOMEM;
    int rc;
    if (n < 8) {
        rc = ser_errf(err, SER_EFORMAT, "%s: %zu bytes, shorter than the 8-byte header length",
                    f->label, n);
        goto fail;
    }
    uint64_t hlen = s_load_u64le(b);
    if ((rc = s_check_header_len(hlen, n, f->label, err)) != SER_OK) goto fail;
    const unsigned char *data = b + 8 + hlen;
    if ((rc = s_parse_header(f, b + 8, (size_t)hlen, n - 8 - hlen, err)) != SER_OK) goto fail;
    if ((rc = s_alloc_arena(f, err)) != SER_OK) goto fail;
    // Offsets in the file: entries are in order and contiguous, so they are running sums.
    size_t at = 0, slot = 0;
    for (int i = 0; i < f->n; i++) {
        if (f->e[i].nbytes) memcpy(s_slot(f, slot), data + at, f->e[i].nbytes);
        at += f->e[i].nbytes;
        slot += s_round64(f->e[i].nbytes);
    }
    *out = f;
    return SER_OK;
fail:
    ser_st_destroy(&f);
    return rc;
}

int ser_st_open(ser_st_file **out, const char *path, char err[SER_ERR_LEN]) {
    SER_ASSERT(out && path);
    *out = NULL;
    int rc = SER_OK;
    unsigned char *hdr = NULL;
    FILE *fp = NULL;
    ser_st_file *f = s_file_new(path, err);
    if (!f) return SER_ENOMEM;

    fp = fopen(path, "rb");
    if (!fp) {
        rc = ser_errf(err, errno == ENOENT ? SER_ENOENT : SER_EIO, "%s: cannot open: %s", f->label,
                    strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        rc = ser_errf(err, SER_EIO, "%s: cannot stat: %s", f->label, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ser_errf(err, SER_EIO, "%s: not a regular file", f->label);
        goto fail;
    }
    uint64_t n = (uint64_t)st.st_size;
    unsigned char lenbuf[8];
    if (n < 8) {
        rc = ser_errf(err, SER_EFORMAT, "%s: %llu bytes, shorter than the 8-byte header length",
                    f->label, (unsigned long long)n);
        goto fail;
    }
    if (fread(lenbuf, 1, 8, fp) != 8) goto short_read;
    uint64_t hlen = s_load_u64le(lenbuf);
    if ((rc = s_check_header_len(hlen, n, f->label, err)) != SER_OK) goto fail;
    hdr = malloc((size_t)hlen);
    if (!hdr) {
        rc = ser_errf(err, SER_ENOMEM, "%s: out of memory for the header", f->label);
        goto fail;
    }
    if (fread(hdr, 1, (size_t)hlen, fp) != hlen) goto short_read;
    if ((rc = s_parse_header(f, hdr, (size_t)hlen, n - 8 - hlen, err)) != SER_OK) goto fail;
    if ((rc = s_alloc_arena(f, err)) != SER_OK) goto fail;
    size_t slot = 0;
    for (int i = 0; i < f->n; i++) {
        size_t nb = f->e[i].nbytes;
        if (nb && fread(s_slot(f, slot), 1, nb, fp) != nb) goto short_read;
        slot += s_round64(nb);
    }
    fclose(fp);
    free(hdr);
    *out = f;
    return SER_OK;

short_read:
    rc = ser_errf(err, SER_EIO, "%s: short read (%s)", f->label,
                ferror(fp) ? strerror(errno) : "file changed while reading?");
fail:
    if (fp) fclose(fp);
    free(hdr);
    ser_st_destroy(&f);
    return rc;
}

// --- reader: queries -------------------------------------------------------------------------
int ser_st_count(const ser_st_file *f) {
    return f->n;
}

const ser_st_entry *ser_st_at(const ser_st_file *f, int i) {
    SER_ASSERT(i >= 0 && i < f->n);
    return &f->e[i];
}

const ser_st_entry *ser_st_find(const ser_st_file *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const ser_st_entry *e = f->by_name[mid];
        int c = strcmp(name, e->name);
        if (c == 0) return e;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *ser_st_meta(const ser_st_file *f, const char *key) {
    int lo = 0, hi = f->nmeta - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(key, f->meta[mid].k);
        if (c == 0) return f->meta[mid].v;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

// --- reader: conversion to float -------------------------------------------------------------
// IEEE binary16 -> binary32, exact for every input (subnormals, infinities, NaN payloads).
static float s_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 -> 127
    } else {
        f = (float)man * 0x1p-24f;  // zero or subnormal: man * 2^-24, exact in float
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    memcpy(&f, &bits, 4);
    return f;
}

static float s_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static int s_is_float_dtype(ser_dtype t) {
    return t == SER_DT_F32 || t == SER_DT_F64 || t == SER_DT_F16 || t == SER_DT_BF16;
}

// dst[0..numel) = e's data as float; the dtype must pass s_is_float_dtype.
static void s_to_f32(float *dst, const ser_st_entry *e) {
    const unsigned char *src = e->data;
    size_t n = e->numel;
    switch (e->dtype) {
        case SER_DT_F32:
            if (n) memcpy(dst, src, n * 4);
            break;
        case SER_DT_F64:
            for (size_t i = 0; i < n; i++) {
                double d;
                memcpy(&d, src + 8 * i, 8);
                dst[i] = (float)d;
            }
            break;
        case SER_DT_F16:
        case SER_DT_BF16:
            for (size_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, src + 2 * i, 2);
                dst[i] = e->dtype == SER_DT_F16 ? s_f16_to_f32(h) : s_bf16_to_f32(h);
            }
            break;
        default:
            SER_ABORT("s_to_f32: dtype %s is not a float type", ser_dtype_name(e->dtype));
    }
}

static int s_shape_eq(const ser_st_entry *e, int ndim, const int64_t *shape) {
    if (e->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (e->shape[i] != shape[i]) return 0;
    return 1;
}

// Shape and dtype checks shared by read_f32 and load_ptab.
static int s_check_f32(const ser_st_file *f, const ser_st_entry *e, int ndim, const int64_t *shape,
                       char *err) {
    if (!s_shape_eq(e, ndim, shape)) {
        char a[96], b[96];
        return ser_errf(err, SER_ESHAPE, "%s: tensor '%s': shape %s in the file, %s expected",
                      f->label, e->name, s_shape_str(a, sizeof a, e->ndim, e->shape),
                      s_shape_str(b, sizeof b, ndim, shape));
    }
    if (!s_is_float_dtype(e->dtype))
        return ser_errf(err, SER_EDTYPE,
                      "%s: tensor '%s': dtype %s cannot be read as F32 (F32/F64/F16/BF16 only)",
                      f->label, e->name, ser_dtype_name(e->dtype));
    return SER_OK;
}

int ser_st_read_f32(const ser_st_file *f, const char *name, float *dst, int ndim,
                    const int64_t *shape, char err[SER_ERR_LEN]) {
    const ser_st_entry *e = ser_st_find(f, name);
    if (!e) return ser_errf(err, SER_ENOENT, "%s: no tensor named '%s'", f->label, name);
    int rc = s_check_f32(f, e, ndim, shape, err);
    if (rc != SER_OK) return rc;
    s_to_f32(dst, e);
    return SER_OK;
}

// prefix + name into buf; 0 if it does not fit a tensor name (then no file tensor has it).
static int s_join(char *buf, const char *prefix, const char *name) {
    int n = snprintf(buf, SER_TINFO_NAME_LEN, "%s%s", prefix, name);
    return n >= 0 && n < SER_TINFO_NAME_LEN;
}

// The entry of any of the n tables named `name`, or NULL; *which gets its table index.
static const ser_tinfo *s_find_any(const ser_ptab *const *p, int n, const char *name, int *which) {
    for (int k = 0; k < n; k++) {
        const ser_tinfo *t = ser_ptab_find(p[k], name);
        if (t) {
            if (which) *which = k;
            return t;
        }
    }
    return NULL;
}

int ser_st_load_ptabs(const ser_st_file *f, const ser_ptab *const *p, float *const *arena, int np,
                      const char *prefix, int strict, char err[SER_ERR_LEN]) {
    if (!prefix) prefix = "";
    size_t plen = strlen(prefix);
    char full[SER_TINFO_NAME_LEN];

    // Key sets first, like load_state_dict: count missing and unexpected names.
    int nmiss = 0, nunexp = 0;
    char first_miss[SER_TINFO_NAME_LEN] = "", first_unexp[SER_TINFO_NAME_LEN] = "";
    for (int k = 0; k < np; k++)
        for (int i = 0; i < p[k]->n; i++) {
            int fits = s_join(full, prefix, p[k]->t[i].name);
            if (fits && ser_st_find(f, full)) continue;
            if (!nmiss++) snprintf(first_miss, sizeof first_miss, "%s%s", prefix, p[k]->t[i].name);
        }
    for (int i = 0; i < f->n; i++) {
        const char *name = f->e[i].name;
        if (strncmp(name, prefix, plen) != 0 || s_find_any(p, np, name + plen, NULL)) continue;
        if (!nunexp++) snprintf(first_unexp, sizeof first_unexp, "%s", name);
    }
    if (strict && (nmiss || nunexp)) {
        char a[SER_TINFO_NAME_LEN + 48] = "", b[SER_TINFO_NAME_LEN + 48] = "";
        if (nmiss) snprintf(a, sizeof a, "; %d missing, first '%s'", nmiss, first_miss);
        if (nunexp) snprintf(b, sizeof b, "; %d unexpected, first '%s'", nunexp, first_unexp);
        return ser_errf(err, nmiss ? SER_ENOENT : SER_EFORMAT, "%s: strict load (prefix '%.32s')%s%s",
                      f->label, prefix, a, b);
    }

    // Shapes and dtypes of everything present, before touching any arena. A counter
    // (num_batches_tracked) is a 0-d integer in PyTorch files and may also come as F32.
    for (int k = 0; k < np; k++)
        for (int i = 0; i < p[k]->n; i++) {
            const ser_tinfo *t = &p[k]->t[i];
            const ser_st_entry *e = s_join(full, prefix, t->name) ? ser_st_find(f, full) : NULL;
            if (!e) continue;
            if ((t->flags & SER_TINFO_COUNTER) && e->ndim == 0 &&
                (e->dtype == SER_DT_I64 || e->dtype == SER_DT_I32))
                continue;
            int rc = s_check_f32(f, e, t->ndim, t->shape, err);
            if (rc != SER_OK) return rc;
        }
    for (int k = 0; k < np; k++)
        for (int i = 0; i < p[k]->n; i++) {
            const ser_tinfo *t = &p[k]->t[i];
            const ser_st_entry *e = s_join(full, prefix, t->name) ? ser_st_find(f, full) : NULL;
            if (!e) continue;
            if (e->dtype == SER_DT_I64 && e->ndim == 0) {
                int64_t v;
                memcpy(&v, e->data, sizeof v);
                arena[k][t->offset] = (float)v;
            } else if (e->dtype == SER_DT_I32 && e->ndim == 0) {
                int32_t v;
                memcpy(&v, e->data, sizeof v);
                arena[k][t->offset] = (float)v;
            } else {
                s_to_f32(arena[k] + t->offset, e);
            }
        }
    return SER_OK;
}

int ser_st_load_ptab(const ser_st_file *f, const ser_ptab *p, float *arena, const char *prefix,
                     int strict, char err[SER_ERR_LEN]) {
    return ser_st_load_ptabs(f, &p, &arena, 1, prefix, strict, err);
}

// --- writer ----------------------------------------------------------------------------------
typedef struct s_wtensor {
    char name[SER_TINFO_NAME_LEN];
    ser_dtype dtype;
    int ndim;
    int64_t shape[SER_ST_MAX_DIM];
    size_t nbytes;
    const void *data;
} s_wtensor;

struct ser_st_writer {
    s_wtensor *t;
    int n, cap;
    char **meta;  // nmeta (key, value) pairs: meta[2i], meta[2i+1]
    int nmeta, metacap;
};

ser_st_writer *ser_st_writer_new(void) {
    return ser_xcalloc(1, sizeof(ser_st_writer));
}

void ser_st_writer_destroy(ser_st_writer **wp) {
    if (!wp || !*wp) return;
    ser_st_writer *w = *wp;
    for (int i = 0; i < 2 * w->nmeta; i++) free(w->meta[i]);
    free(w->meta);
    free(w->t);
    free(w);
    *wp = NULL;
}

void ser_st_writer_add(ser_st_writer *w, const char *name, ser_dtype dt, int ndim,
                       const int64_t *shape, const void *data) {
    SER_ASSERT(w && name);
    SER_ASSERT(strlen(name) < SER_TINFO_NAME_LEN);
    SER_ASSERT(strcmp(name, S_META_KEY) != 0);
    SER_ASSERT(s_utf8_valid((const unsigned char *)name, strlen(name)));
    SER_ASSERT(ndim >= 0 && ndim <= SER_ST_MAX_DIM);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0) SER_ABORT("duplicate safetensors name '%s'", name);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        w->t = realloc(w->t, (size_t)w->cap * sizeof *w->t);
        if (!w->t) SER_ABORT("out of memory");
    }
    s_wtensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = ndim;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        SER_ASSERT(shape[i] >= 0);
        t->shape[i] = shape[i];
        SER_ASSERT(!__builtin_mul_overflow(numel, (size_t)shape[i], &numel));
    }
    SER_ASSERT(!__builtin_mul_overflow(numel, ser_dtype_size(dt), &t->nbytes));
    SER_ASSERT(data || t->nbytes == 0);
    t->data = data;
}

void ser_st_writer_add_ptab(ser_st_writer *w, const ser_ptab *p, const float *arena,
                            const char *prefix) {
    char full[SER_TINFO_NAME_LEN];
    if (!prefix) prefix = "";
    for (int i = 0; i < p->n; i++) {
        const ser_tinfo *t = &p->t[i];
        if (!s_join(full, prefix, t->name))
            SER_ABORT("tensor name '%s%s' is too long for safetensors", prefix, t->name);
        ser_st_writer_add(w, full, SER_DT_F32, t->ndim, t->shape, arena + t->offset);
    }
}

void ser_st_writer_meta(ser_st_writer *w, const char *key, const char *value) {
    SER_ASSERT(w && key && value);
    SER_ASSERT(s_utf8_valid((const unsigned char *)key, strlen(key)));
    SER_ASSERT(s_utf8_valid((const unsigned char *)value, strlen(value)));
    for (int i = 0; i < w->nmeta; i++) {
        if (strcmp(w->meta[2 * i], key) == 0) {
            free(w->meta[2 * i + 1]);
            w->meta[2 * i + 1] = ser_xstrdup(value);
            return;
        }
    }
    if (w->nmeta == w->metacap) {
        w->metacap = w->metacap ? 2 * w->metacap : 8;
        w->meta = realloc(w->meta, 2 * (size_t)w->metacap * sizeof *w->meta);
        if (!w->meta) SER_ABORT("out of memory");
    }
    w->meta[2 * w->nmeta] = ser_xstrdup(key);
    w->meta[2 * w->nmeta + 1] = ser_xstrdup(value);
    w->nmeta++;
}

static cJSON *s_json_int(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(buf);  // exact integer text, never 1e+15
}

// The layout: order[] (dtype size descending, stable) and the padded header text.
typedef struct s_layout {
    int *order;
    char *header;  // hlen bytes, a multiple of 8, space padded (not NUL-terminated)
    size_t hlen;
    uint64_t data_len;
} s_layout;

static void s_layout_free(s_layout *l) {
    free(l->order);
    free(l->header);
    memset(l, 0, sizeof *l);
}

static int s_layout_make(s_layout *l, const ser_st_writer *w, char *err) {
    memset(l, 0, sizeof *l);
    int rc = SER_OK;
    cJSON *root = NULL;
    char *text = NULL;
    l->order = malloc(((size_t)w->n + 1) * sizeof *l->order);
    root = cJSON_CreateObject();
    if (!l->order || !root) goto oom;
    int k = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (int i = 0; i < w->n; i++)
            if (ser_dtype_size(w->t[i].dtype) == size) l->order[k++] = i;
    SER_ASSERT(k == w->n);

    if (w->nmeta) {
        cJSON *meta = cJSON_AddObjectToObject(root, S_META_KEY);
        if (!meta) goto oom;
        for (int i = 0; i < w->nmeta; i++)
            if (!cJSON_AddStringToObject(meta, w->meta[2 * i], w->meta[2 * i + 1])) goto oom;
    }
    uint64_t at = 0;
    for (int k2 = 0; k2 < w->n; k2++) {
        const s_wtensor *t = &w->t[l->order[k2]];
        cJSON *o = cJSON_AddObjectToObject(root, t->name);
        if (!o || !cJSON_AddStringToObject(o, "dtype", ser_dtype_name(t->dtype))) goto oom;
        cJSON *shape = cJSON_AddArrayToObject(o, "shape");
        if (!shape) goto oom;
        for (int d = 0; d < t->ndim; d++) {
            cJSON *v = s_json_int((uint64_t)t->shape[d]);
            if (!v) goto oom;
            cJSON_AddItemToArray(shape, v);
        }
        cJSON *off = cJSON_AddArrayToObject(o, "data_offsets"), *b, *e;
        if (!off || !(b = s_json_int(at))) goto oom;
        cJSON_AddItemToArray(off, b);
        if (!(e = s_json_int(at + t->nbytes))) goto oom;
        cJSON_AddItemToArray(off, e);
        at += t->nbytes;
    }
    l->data_len = at;
    text = cJSON_PrintUnformatted(root);
    if (!text) goto oom;
    size_t len = strlen(text);
    l->hlen = (len + 7) & ~(size_t)7;
    l->header = malloc(l->hlen);
    if (!l->header) goto oom;
    memcpy(l->header, text, len);
    memset(l->header + len, ' ', l->hlen - len);
    goto done;
oom:
    rc = ser_errf(err, SER_ENOMEM, "safetensors writer: out of memory building the header");
    s_layout_free(l);
done:
    cJSON_free(text);
    cJSON_Delete(root);
    return rc;
}

int ser_st_writer_to_mem(ser_st_writer *w, void **buf, size_t *n, char err[SER_ERR_LEN]) {
    SER_ASSERT(w && buf && n);
    *buf = NULL;
    *n = 0;
    s_layout l;
    int rc = s_layout_make(&l, w, err);
    if (rc != SER_OK) return rc;
    size_t total = 8 + l.hlen + (size_t)l.data_len;
    unsigned char *out = malloc(total);
    if (!out) {
        s_layout_free(&l);
        return ser_errf(err, SER_ENOMEM, "safetensors writer: out of memory for %zu bytes", total);
    }
    s_store_u64le(out, l.hlen);
    memcpy(out + 8, l.header, l.hlen);
    size_t at = 8 + l.hlen;
    for (int k = 0; k < w->n; k++) {
        const s_wtensor *t = &w->t[l.order[k]];
        if (t->nbytes) memcpy(out + at, t->data, t->nbytes);
        at += t->nbytes;
    }
    s_layout_free(&l);
    *buf = out;
    *n = total;
    return SER_OK;
}

// fsync the directory holding path so that the rename itself is durable.
static int s_fsync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return ENOMEM;
    int rc = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        rc = errno;
    else {
        if (fsync(fd) != 0 && errno != EINVAL) rc = errno;  // EINVAL: not supported here
        close(fd);
    }
    free(dir);
    return rc;
}

int ser_st_writer_save(ser_st_writer *w, const char *path, char err[SER_ERR_LEN]) {
    SER_ASSERT(w && path);
    char label[S_LABEL_LEN];
    s_label(label, path);
    s_layout l;
    int rc = s_layout_make(&l, w, err);
    if (rc != SER_OK) return rc;
    FILE *fp = NULL;
    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (!tmp) {
        rc = ser_errf(err, SER_ENOMEM, "%s: out of memory", label);
        goto done;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    fp = fopen(tmp, "wb");
    if (!fp) {
        rc = ser_errf(err, SER_EIO, "%s: cannot create %s: %s", label, tmp, strerror(errno));
        free(tmp);
        tmp = NULL;  // nothing to remove
        goto done;
    }
    unsigned char lenbuf[8];
    s_store_u64le(lenbuf, l.hlen);
    int ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(l.header, 1, l.hlen, fp) == l.hlen;
    for (int k = 0; ok && k < w->n; k++) {
        const s_wtensor *t = &w->t[l.order[k]];
        ok = t->nbytes == 0 || fwrite(t->data, 1, t->nbytes, fp) == t->nbytes;
    }
    if (!ok || fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        rc = ser_errf(err, SER_EIO, "%s: cannot write %s: %s", label, tmp, strerror(errno));
        goto done;
    }
    int cl = fclose(fp);
    fp = NULL;
    if (cl != 0) {
        rc = ser_errf(err, SER_EIO, "%s: cannot close %s: %s", label, tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        rc = ser_errf(err, SER_EIO, "%s: cannot rename %s over it: %s", label, tmp, strerror(errno));
        goto done;
    }
    free(tmp);
    tmp = NULL;  // renamed: nothing to remove
    int e = s_fsync_dir(path);
    if (e)
        rc = ser_errf(err, SER_EIO, "%s: written, but fsync of its directory failed: %s", label,
                    strerror(e));
done:
    if (fp) fclose(fp);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    s_layout_free(&l);
    return rc;
}
