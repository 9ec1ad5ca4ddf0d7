// ser_bf16.c — see ser_bf16.h.
//
// One process-wide oneDNN CPU engine and stream, and a cache of matmul primitives keyed by
// shape (oneDNN generates a kernel per primitive, ~0.1 ms, so each shape is made once). The
// inputs are rounded into packed bf16 buffers that the cache owns; the lock makes the buffers and
// the primitives' memory objects safe to share between threads (the parallelism is inside
// oneDNN, over the OpenMP threads of ser_kernels_set_threads).
#include "ser_bf16.h"

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"

enum { CACHE_MAX = 512 };

typedef struct {
    int M, N, K, trans_a, trans_b, acc, ldc;
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c;
} s_entry;

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static dnnl_engine_t s_engine;
static dnnl_stream_t s_stream;
static int s_native;  // oneDNN runs bf16 on native instructions here
static const char *s_isa_name = "none";
static s_entry s_cache[CACHE_MAX];
static int s_n;
static uint16_t *s_abuf, *s_bbuf;
static size_t s_acap, s_bcap;

#define S_CHECK(call, what)                                                                 \
    do {                                                                                    \
        dnnl_status_t st_ = (call);                                                         \
        if (st_ != dnnl_success)                                                            \
            SER_ABORT("oneDNN %s failed (status %d) for a bf16 product M=%d N=%d K=%d", what, \
                      (int)st_, M, N, K);                                                   \
    } while (0)

// Releases the primitives and memory objects of cache entries [0, n).
static void s_free_entries(int n) {
    for (int i = 0; i < n; i++) {
        dnnl_memory_destroy(s_cache[i].a);
        dnnl_memory_destroy(s_cache[i].b);
        dnnl_memory_destroy(s_cache[i].c);
        dnnl_primitive_destroy(s_cache[i].prim);
    }
}

static void s_cleanup(void) {
    s_free_entries(s_n);
    s_n = 0;
    free(s_abuf);
    free(s_bbuf);
    s_abuf = s_bbuf = NULL;
    s_acap = s_bcap = 0;
    if (s_stream) dnnl_stream_destroy(s_stream);
    if (s_engine) dnnl_engine_destroy(s_engine);
    s_stream = NULL;
    s_engine = NULL;
}

static void s_init(void) {
    // Native bf16 dot products: AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX. oneDNN can
    // emulate bf16 on plain AVX-512, several times slower than fp32 OpenBLAS: not offered.
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    static const struct {
        dnnl_cpu_isa_t isa;
        const char *name;
    } names[] = {{dnnl_cpu_isa_sse41, "SSE4.1"},
                 {dnnl_cpu_isa_avx, "AVX"},
                 {dnnl_cpu_isa_avx2, "AVX2"},
                 {dnnl_cpu_isa_avx2_vnni, "AVX2-VNNI"},
                 {dnnl_cpu_isa_avx512_core, "AVX-512 without BF16"},
                 {dnnl_cpu_isa_avx512_core_vnni, "AVX-512 VNNI without BF16"},
                 {dnnl_cpu_isa_avx512_core_bf16, "avx512_core_bf16"},
                 {dnnl_cpu_isa_avx512_core_amx, "avx512_core_amx"}};
    s_isa_name = "an instruction set it does not name";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (isa == names[i].isa) s_isa_name = names[i].name;
    s_native = isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx;
    if (dnnl_engine_create(&s_engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&s_stream, s_engine, dnnl_stream_default_flags) != dnnl_success) {
        s_native = 0;
        s_isa_name = "none (no oneDNN CPU engine)";
    }
    atexit(s_cleanup);
}

int ser_bf16_supported(void) {
    pthread_once(&s_once, s_init);
    return s_native;
}

const char *ser_bf16_isa(void) {
    pthread_once(&s_once, s_init);
    return s_isa_name;
}

void ser_bf16_round(uint16_t *out, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        uint16_t h = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        if ((u & 0x7fffffffu) > 0x7f800000u) h = (uint16_t)((u >> 16) | 0x40u);  // quiet NaN
        out[i] = h;
    }
}

// Rounds the stored matrix (rows x cols, row stride ld) into buf, packed (row stride cols).
static uint16_t *s_pack(uint16_t **buf, size_t *cap, const float *x, int rows, int cols, int ld) {
    size_t need = (size_t)rows * (size_t)cols;
    if (need > *cap) {
        free(*buf);
        *buf = ser_xmalloc(need * sizeof **buf);
        *cap = need;
    }
    if (ld == cols)
        ser_bf16_round(*buf, x, need);
    else
        for (int r = 0; r < rows; r++)
            ser_bf16_round(*buf + (size_t)r * cols, x + (size_t)r * ld, (size_t)cols);
    return *buf;
}

static s_entry *s_find(int M, int N, int K, int ta, int tb, int acc, int ldc) {
    for (int i = 0; i < s_n; i++) {
        s_entry *e = &s_cache[i];
        if (e->M == M && e->N == N && e->K == K && e->trans_a == ta && e->trans_b == tb &&
            e->acc == acc && e->ldc == ldc)
            return e;
    }
    if (s_n == CACHE_MAX) {  // a job has a few dozen shapes; drop the oldest half if not
        s_free_entries(CACHE_MAX / 2);
        memmove(s_cache, s_cache + CACHE_MAX / 2, sizeof s_cache[0] * (CACHE_MAX / 2));
        s_n = CACHE_MAX / 2;
    }
    s_entry *e = &s_cache[s_n];
    memset(e, 0, sizeof *e);
    dnnl_memory_desc_t a_md, b_md, c_md;
    dnnl_dims_t ad = {M, K}, bd = {K, N}, cd = {M, N};
    dnnl_dims_t as = {ta ? 1 : K, ta ? M : 1}, bs = {tb ? 1 : N, tb ? K : 1}, cs = {ldc, 1};
    S_CHECK(dnnl_memory_desc_init_by_strides(&a_md, 2, ad, dnnl_bf16, as), "src desc");
    S_CHECK(dnnl_memory_desc_init_by_strides(&b_md, 2, bd, dnnl_bf16, bs), "weights desc");
    S_CHECK(dnnl_memory_desc_init_by_strides(&c_md, 2, cd, dnnl_f32, cs), "dst desc");
    dnnl_matmul_desc_t md;
    S_CHECK(dnnl_matmul_desc_init(&md, &a_md, &b_md, NULL, &c_md), "matmul desc");
    dnnl_primitive_attr_t attr;
    S_CHECK(dnnl_primitive_attr_create(&attr), "attr");
    if (acc) {
        dnnl_post_ops_t po;
        S_CHECK(dnnl_post_ops_create(&po), "post-ops");
        S_CHECK(dnnl_post_ops_append_sum(po, 1.0f), "sum post-op");
        S_CHECK(dnnl_primitive_attr_set_post_ops(attr, po), "set post-ops");
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    S_CHECK(dnnl_primitive_desc_create(&pd, &md, attr, s_engine, NULL), "primitive desc");
    dnnl_primitive_attr_destroy(attr);
    S_CHECK(dnnl_primitive_create(&e->prim, pd), "primitive");
    dnnl_primitive_desc_destroy(pd);
    S_CHECK(dnnl_memory_create(&e->a, &a_md, s_engine, DNNL_MEMORY_NONE), "src memory");
    S_CHECK(dnnl_memory_create(&e->b, &b_md, s_engine, DNNL_MEMORY_NONE), "weights memory");
    S_CHECK(dnnl_memory_create(&e->c, &c_md, s_engine, DNNL_MEMORY_NONE), "dst memory");
    e->M = M, e->N = N, e->K = K, e->trans_a = ta, e->trans_b = tb, e->acc = acc, e->ldc = ldc;
    s_n++;
    return e;
}

void ser_bf16_gemm(float *C, int ldc, int acc, int trans_a, const float *A, int lda, int trans_b,
                   const float *B, int ldb, int M, int N, int K) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!acc)
            for (int m = 0; m < M; m++) memset(C + (size_t)m * ldc, 0, sizeof(float) * (size_t)N);
        return;
    }
    if (!ser_bf16_supported())
        SER_ABORT("a bf16 product (M=%d N=%d K=%d) on a CPU without native bf16 (%s)", M, N, K,
                  s_isa_name);
    acc = acc != 0, trans_a = trans_a != 0, trans_b = trans_b != 0;
    pthread_mutex_lock(&s_lock);
    s_entry *e = s_find(M, N, K, trans_a, trans_b, acc, ldc);
    uint16_t *a = trans_a ? s_pack(&s_abuf, &s_acap, A, K, M, lda)
                          : s_pack(&s_abuf, &s_acap, A, M, K, lda);
    uint16_t *b = trans_b ? s_pack(&s_bbuf, &s_bcap, B, N, K, ldb)
                          : s_pack(&s_bbuf, &s_bcap, B, K, N, ldb);
    S_CHECK(dnnl_memory_set_data_handle(e->a, a), "src handle");
    S_CHECK(dnnl_memory_set_data_handle(e->b, b), "weights handle");
    S_CHECK(dnnl_memory_set_data_handle(e->c, C), "dst handle");
    dnnl_exec_arg_t args[3] = {
        {DNNL_ARG_SRC, e->a}, {DNNL_ARG_WEIGHTS, e->b}, {DNNL_ARG_DST, e->c}};
    S_CHECK(dnnl_primitive_execute(e->prim, s_stream, 3, args), "execute");
    S_CHECK(dnnl_stream_wait(s_stream), "stream wait");
    pthread_mutex_unlock(&s_lock);
}

void ser_bf16_gemm_naive(float *C, int ldc, int acc, int trans_a, const float *A, int lda,
                         int trans_b, const float *B, int ldb, int M, int N, int K) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) {
                float a = trans_a ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k];
                float b = trans_b ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n];
                uint16_t ha, hb;
                ser_bf16_round(&ha, &a, 1);
                ser_bf16_round(&hb, &b, 1);
                s += (double)ser_bf16_to_float(ha) * (double)ser_bf16_to_float(hb);
            }
            float *c = C + (size_t)m * ldc + n;
            *c = acc ? (float)((double)*c + s) : (float)s;
        }
}
