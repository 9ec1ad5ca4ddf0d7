// fuzz_util.c — see fuzz_util.h (helpers shared by the fuzz harnesses; tests nothing itself).
#define _GNU_SOURCE  // nftw

#include "fuzz_util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ser_base.h"
#include "ser_dl_ops.h"
#include "ser_rng.h"

zmq_msg_t *ser_fuzz_msgs(const ser_fuzz_frame *f, int n) {
    zmq_msg_t *m = ser_xcalloc((size_t)(n ? n : 1), sizeof(zmq_msg_t));
    for (int i = 0; i < n; i++) {
        zmq_msg_init_size(&m[i], f[i].n);
        if (f[i].n) memcpy(zmq_msg_data(&m[i]), f[i].p, f[i].n);
    }
    return m;
}

int ser_fuzz_split(const uint8_t *data, size_t size, ser_fuzz_frame f[SER_FUZZ_MAX_FRAMES]) {
    int n = 0;
    size_t off = 0;
    while (off < size && n < SER_FUZZ_MAX_FRAMES) {
        size_t left = size - off;
        if (left < 2) {  // a lone trailing byte: an empty frame
            f[n++] = (ser_fuzz_frame){data + size, 0};
            break;
        }
        size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        if (len > size - off) len = size - off;
        f[n++] = (ser_fuzz_frame){data + off, len};
        off += len;
    }
    return n;
}

size_t ser_fuzz_join(const ser_fuzz_frame *f, int n, uint8_t *out, size_t cap) {
    size_t need = 0;
    for (int i = 0; i < n; i++) {
        size_t len = f[i].n > 0xffff ? 0xffff : f[i].n;
        uint8_t hdr[2] = {(uint8_t)(len & 0xff), (uint8_t)(len >> 8)};
        for (int k = 0; k < 2; k++, need++)
            if (need < cap) out[need] = hdr[k];
        for (size_t k = 0; k < len; k++, need++)
            if (need < cap) out[need] = f[i].p[k];
    }
    return need;
}

void ser_fuzz_quiet(void) {
    if (!getenv("SER_FUZZ_VERBOSE")) ser_log_set_level(SER_LL_SILENT);
}

static char s_tmp[256];

static int s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void ser_fuzz_rm_rf(const char *path) {
    nftw(path, s_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static pid_t s_tmp_owner;

static void s_tmp_cleanup(void) {
    // A forked child (none today) must not remove its parent's folder.
    if (s_tmp[0] && getpid() == s_tmp_owner) ser_fuzz_rm_rf(s_tmp);
}

const char *ser_fuzz_tmpdir(void) {
    if (s_tmp[0]) return s_tmp;
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(s_tmp, sizeof s_tmp, "%s/ser_fuzz_XXXXXX", base);
    if (!mkdtemp(s_tmp)) {
        fprintf(stderr, "fuzz: cannot make a temporary folder under %s: %s\n", base,
                strerror(errno));
        abort();
    }
    s_tmp_owner = getpid();
    atexit(s_tmp_cleanup);
    return s_tmp;
}

int ser_fuzz_write_file(const char *path, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        p += w, n -= (size_t)w;
    }
    return close(fd);
}

int ser_fuzz_augment(const ser_dl_image *im, const uint8_t *data, size_t size, char *why,
                     size_t n) {
    enum { S_OUT = 16 };
    ser_rng r;
    uint32_t key = size ? (uint32_t)data[size / 2] << 8 | data[size - 1] : 0;
    ser_rng_init(&r, 1, key, (uint32_t)size, SER_RNG_CROP);
    int i, j, h, w;
    ser_dl_rrc_params(&r, im->w, im->h, 0.08, 1.0, 3.0 / 4.0, 4.0 / 3.0, &i, &j, &h, &w);
    if (h < 1 || w < 1 || i < 0 || j < 0 || i + h > im->h || j + w > im->w) {
        snprintf(why, n, "RandomResizedCrop box outside the image: crop (%d, %d, %d, %d) of "
                 "%d x %d", i, j, h, w, im->w, im->h);
        return -1;
    }
    uint8_t out[S_OUT * S_OUT * 3];
    int interp = (int)(key & 1);  // bilinear or bicubic, by the input
    ser_dl_pil_resize(out, S_OUT, S_OUT, im->px, im->w * 3, j, i, w, h, interp);
    ser_dl_hflip_u8(out, S_OUT, S_OUT);
    ser_dl_photo p;
    ser_dl_photo_draw(&p, SER_DL_POLICY_TORCHVISION, 1, key, (uint32_t)size, interp, NULL, NULL);
    ser_dl_photo_apply_u8(out, S_OUT, S_OUT, &p);
    return 0;
}
