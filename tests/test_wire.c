// test_wire.c — proto/ser_wire.h at the byte level: a string field with an embedded NUL byte
// (a job id "ser\0x" that protobuf-c would unpack as "ser") is refused before unpacking, in the
// envelope, in a tensor name and in the loader's request; well-formed messages pass; malformed
// protobuf is refused; and a ROUTER receiving such an envelope over ZeroMQ drops it with
// SER_EFORMAT while the next good message still arrives.
#define _GNU_SOURCE  // memmem
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "loader.pb-c.h"
#include "ser.pb-c.h"
#include "ser_test.h"
#include "ser_loadstat.h"
#include "ser_shard.h"
#include "ser_wire.h"

static const uint32_t s_env_strs[2] = {2, 8}, s_meta_strs[1] = {1};

// A packed envelope with job id jid (jn bytes, NULs allowed) and one tensor named name.
static size_t s_pack(uint8_t *out, const char *jid, size_t jn, const char *name, size_t nn) {
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.protocol_version = SER_PROTOCOL_VERSION;
    e.type = SER__MSG_TYPE__MSG_HEARTBEAT;
    e.job_id = "JJJJJJJJ";  // placeholders of the right lengths, patched below
    Ser__TensorMeta t, *tp = &t;
    ser__tensor_meta__init(&t);
    t.name = "NNNNNNNN";
    e.n_tensors = 1, e.tensors = &tp;
    size_t n = ser__envelope__pack(&e, out);
    uint8_t *j = memmem(out, n, "JJJJJJJJ", 8), *q = memmem(out, n, "NNNNNNNN", 8);
    assert_true(j && q && jn == 8 && nn == 8);
    memcpy(j, jid, jn), memcpy(q, name, nn);
    return n;
}

static void test_strings(void **state) {
    (void)state;
    uint8_t b[256];
    size_t n = s_pack(b, "job-0001", 8, "student0", 8);
    assert_int_equal(ser_wire_pb_strings_ok(b, n, s_env_strs, 2, 7, s_meta_strs, 1), 1);
    n = s_pack(b, "job\0-001", 8, "student0", 8);
    assert_int_equal(ser_wire_pb_strings_ok(b, n, s_env_strs, 2, 7, s_meta_strs, 1), 0);
    n = s_pack(b, "job-0001", 8, "g\0xxxxxx", 8);
    assert_int_equal(ser_wire_pb_strings_ok(b, n, s_env_strs, 2, 7, s_meta_strs, 1), 0);
    // The nested rule applies to field 7 only: without it the tensor name is not checked.
    assert_int_equal(ser_wire_pb_strings_ok(b, n, s_env_strs, 2, 0, NULL, 0), 1);
    // Truncated anywhere: refused (the unpack would fail too), never read past the end.
    n = s_pack(b, "job-0001", 8, "student0", 8);
    for (size_t k = 1; k < n; k++) {
        uint8_t *c = malloc(k);
        memcpy(c, b, k);
        (void)ser_wire_pb_strings_ok(c, k, s_env_strs, 2, 7, s_meta_strs, 1);
        free(c);
    }
    const uint8_t group[2] = {0x0b, 0x0c};  // a group start: not in these messages
    assert_int_equal(ser_wire_pb_strings_ok(group, 2, s_env_strs, 2, 7, s_meta_strs, 1), 0);
    const uint8_t longlen[3] = {0x12, 0x7f, 'a'};  // job_id claims 127 bytes, 1 follows
    assert_int_equal(ser_wire_pb_strings_ok(longlen, 3, s_env_strs, 2, 7, s_meta_strs, 1), 0);
    // The loader's request: job_id is field 2.
    Ser__LoaderShardRequest r;
    ser__loader_shard_request__init(&r);
    r.protocol_version = 1;
    r.job_id = "JJJJ";
    size_t rn = ser__loader_shard_request__pack(&r, b);
    uint8_t *j = memmem(b, rn, "JJJJ", 4);
    const uint32_t req_strs[1] = {2};
    memcpy(j, "ab\0c", 4);
    assert_int_equal(ser_wire_pb_strings_ok(b, rn, req_strs, 1, 0, NULL, 0), 0);
    memcpy(j, "abcd", 4);
    assert_int_equal(ser_wire_pb_strings_ok(b, rn, req_strs, 1, 0, NULL, 0), 1);
}

// A ROUTER bound at ep and a DEALER named "w0" connected to it (no linger).
static void s_router_dealer(void *ctx, const char *ep, void **r, void **d) {
    *r = zmq_socket(ctx, ZMQ_ROUTER), *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(*r, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(*d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(*d, ZMQ_ROUTING_ID, "w0", 2);
    assert_int_equal(zmq_bind(*r, ep), 0);
    assert_int_equal(zmq_connect(*d, ep), 0);
}

static void test_router_refuses_nul_job_id(void **state) {
    (void)state;
    void *ctx = zmq_ctx_new(), *r, *d;
    s_router_dealer(ctx, "inproc://wire", &r, &d);
    uint8_t b[256];
    size_t n = s_pack(b, "job\0-001", 8, "student0", 8);
    assert_int_equal(zmq_send(d, b, n, 0), (int)n);
    Ser__Envelope e;  // a good one, without tensors
    ser__envelope__init(&e);
    e.protocol_version = SER_PROTOCOL_VERSION;
    e.type = SER__MSG_TYPE__MSG_HEARTBEAT;
    e.job_id = "job-0001";
    n = ser__envelope__pack(&e, b);
    assert_int_equal(zmq_send(d, b, n, 0), (int)n);
    char err[SER_ERR_LEN];
    ser_wire_msg m;
    int rc = SER_ETIMEDOUT;
    for (int t = 0; t < 1000 && rc == SER_ETIMEDOUT; t++) rc = ser_wire_recv(r, 1, "job", &m, err);
    assert_int_equal(rc, SER_EFORMAT);  // not taken for job "job"
    print_message("refused: %s\n", err);
    for (rc = SER_ETIMEDOUT; rc == SER_ETIMEDOUT;) rc = ser_wire_recv(r, 1, "job-0001", &m, err);
    if (rc) fail_msg("the good envelope: %s", err);
    assert_string_equal(m.env->job_id, "job-0001");
    assert_string_equal(m.identity, "w0");
    ser_wire_msg_free(&m);
    zmq_close(d), zmq_close(r), zmq_ctx_term(ctx);
}

// The largest shard messages the runtime sends (a teacher, the SER maps, every local view, the
// views' parameters and the pooled maps of all 12 views: SER_SHARD_MAX_FWD frames) go through
// ZeroMQ and the shard schema whole: every frame arrives with its values; the BACKWARD too.
static void test_shard_frames_round_trip(void **state) {
    (void)state;
    enum { B = 3, C = 4, L = SER_MAX_LOCAL };
    ser_gathered g;
    memset(&g, 0, sizeof g);
    g.B = B, g.C = C, g.n_inv = B - 1, g.n_eq = 1, g.n_local = L, g.pool = 1;
    float vals = 0;
    float *bufs[64];
    int nb = 0;
#define S_ROWS(n) (bufs[nb] = malloc(sizeof(float) * (n)), bufs[nb++])
    ser_group_elem ge[2] = {{0, 1, 1, 2, 3}, {1, 0, 0, 2, 3}};
    const ser_group_elem *gp[2] = {&ge[0], &ge[1]};
    for (int v = 0; v < 2; v++) {
        g.qcls[v] = S_ROWS(B * C), g.kcls[v] = S_ROWS(B * C), g.dqcls[v] = S_ROWS(B * C);
        g.ntok[v] = 6;
        g.qmap[v] = S_ROWS(6 * C), g.kmap[v] = S_ROWS(6 * C), g.dqmap[v] = S_ROWS(6 * C);
    }
    for (int k = 0; k < L; k++) g.lcls[k] = S_ROWS(B * C), g.dlcls[k] = S_ROWS(B * C);
    for (int v = 0; v < 2 + L; v++) g.qpool[v] = S_ROWS(B * C), g.dqpool[v] = S_ROWS(B * C);
    g.vparams = S_ROWS(B * 2 * SER_VIEW_PARAMS);
    for (int i = 0; i < nb; i++) {
        size_t n = i == nb - 1 ? (size_t)B * 2 * SER_VIEW_PARAMS : (size_t)B * C;
        for (size_t j = 0; j < n; j++) bufs[i][j] = vals++;
    }
    for (int v = 0; v < 2; v++)  // the maps are 6 rows: refill them past B * C
        for (int j = 0; j < 6 * C; j++) g.qmap[v][j] = g.kmap[v][j] = g.dqmap[v][j] = vals++;
    // One local SER pair (grids 1 x 2 and 2 x 2): its group elements and maps.
    ser_group_elem lge[2] = {{0, 0, 0, 1, 2}, {1, 1, 1, 2, 2}};
    const ser_group_elem *lgp[2] = {&lge[0], &lge[1]};
    g.n_lpairs = 1, g.lntok[0] = 2, g.lntok[1] = 4;
    for (int v = 0; v < 2; v++) {
        g.lqmap[v] = S_ROWS(4 * C), g.dlqmap[v] = S_ROWS(4 * C);
        for (int j = 0; j < 4 * C; j++) g.lqmap[v][j] = g.dlqmap[v][j] = vals++;
    }
    ser_batch b = {.n_inv = B - 1, .n_eq = 1, .g = {gp[0], gp[1]}, .n_local = L, .n_lpairs = 1,
                   .lg = {lgp[0], lgp[1]}};
    void *ctx = zmq_ctx_new(), *r, *d;
    s_router_dealer(ctx, "inproc://shard", &r, &d);
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.protocol_version = SER_PROTOCOL_VERSION;
    e.type = SER__MSG_TYPE__MSG_FORWARD_DONE;
    e.job_id = "job";
    ser_wire_tensor t[SER_SHARD_MAX_FWD];
    float gbuf[21];
    int nt = ser_shard_pack_forward(t, &g, &b, 1, gbuf);
    assert_int_equal(nt, SER_SHARD_MAX_FWD);
    assert_int_equal(ser_wire_send(d, NULL, &e, t, nt), 0);
    char err[SER_ERR_LEN];
    ser_wire_msg m;
    int rc = SER_ETIMEDOUT;
    for (int i = 0; i < 1000 && rc == SER_ETIMEDOUT; i++) rc = ser_wire_recv(r, 1, "job", &m, err);
    if (rc) fail_msg("FORWARD_DONE: %s", err);
    ser_shard_fwd f;
    assert_int_equal(ser_shard_parse_forward(&m, B, C, 1, L, 1, 1, 1, 1, 8, &f), SER_OK);
    size_t BC = (size_t)B * C;
    for (int v = 0; v < 2; v++) {
        assert_memory_equal(f.cls[v], g.qcls[v], sizeof(float) * BC);
        assert_memory_equal(f.cls[2 + v], g.kcls[v], sizeof(float) * BC);
        assert_memory_equal(f.maps[v], g.qmap[v], sizeof(float) * 6 * C);
    }
    for (int k = 0; k < L; k++) assert_memory_equal(f.lcls[k], g.lcls[k], sizeof(float) * BC);
    for (int v = 0; v < 2 + L; v++) assert_memory_equal(f.qpool[v], g.qpool[v], sizeof(float) * BC);
    assert_memory_equal(f.vparams, g.vparams, sizeof(float) * B * 2 * SER_VIEW_PARAMS);
    assert_int_equal(f.n_eq, 1);
    for (int v = 0; v < 2; v++) {
        assert_int_equal(f.lntok[v], g.lntok[v]);
        assert_memory_equal(f.lmaps[v], g.lqmap[v], sizeof(float) * g.lntok[v] * C);
        assert_int_equal(f.lg[v][0].gh, lge[v].gh);
        assert_int_equal(f.lg[v][0].rot90, lge[v].rot90);
    }
    ser_shard_fwd_free(&f);
    // Another width than was sent: refused, nothing read past a frame.
    ser_shard_fwd f2;
    assert_int_equal(ser_shard_parse_forward(&m, B, C + 1, 1, L, 1, 1, 1, 1, 8, &f2), SER_EFORMAT);
    // Two pairs asked where one was sent: refused.
    assert_int_equal(ser_shard_parse_forward(&m, B, C, 1, L, 1, 1, 2, 1, 8, &f2), SER_EFORMAT);
    ser_wire_msg_free(&m);
    // BACKWARD: the coordinator's side to the worker's.
    e.type = SER__MSG_TYPE__MSG_BACKWARD;
    size_t map0[2] = {0, 0};
    nt = ser_shard_pack_backward(t, &g, 0, B, map0, g.ntok, map0, g.lntok);
    assert_int_equal(nt, SER_SHARD_MAX_BWD);
    assert_int_equal(ser_wire_send(r, "w0", &e, t, nt), 0);
    for (rc = SER_ETIMEDOUT; rc == SER_ETIMEDOUT;) rc = ser_wire_recv(d, 0, "job", &m, err);
    if (rc) fail_msg("BACKWARD: %s", err);
    const float *out[SER_SHARD_MAX_BWD];
    assert_int_equal(ser_shard_parse_backward(&m, B, C, g.ntok, L, 1, g.lntok, out), SER_OK);
    for (int v = 0; v < 2 + L; v++)
        assert_memory_equal(out[4 + L + v], g.dqpool[v], sizeof(float) * BC);
    for (int v = 0; v < 2; v++)
        assert_memory_equal(out[4 + L + 2 + L + v], g.dlqmap[v], sizeof(float) * g.lntok[v] * C);
    assert_memory_equal(out[2], g.dqmap[0], sizeof(float) * 6 * C);
    // Without its pooled frames (a worker that does not expect them would not ask): the
    // message still parses when pool is not asked, and a pool ask of a message without is refused.
    assert_int_equal(ser_shard_parse_backward(&m, B, C, g.ntok, L, 0, NULL, out), SER_OK);
    ser_wire_msg_free(&m);
    nt = ser_shard_pack_backward(t, &(ser_gathered){.B = B, .C = C, .n_local = L,
                                                    .dqcls = {g.dqcls[0], g.dqcls[1]},
                                                    .dqmap = {g.dqmap[0], g.dqmap[1]},
                                                    .dlcls = {g.dlcls[0], g.dlcls[1], g.dlcls[2],
                                                              g.dlcls[3], g.dlcls[4], g.dlcls[5],
                                                              g.dlcls[6], g.dlcls[7], g.dlcls[8],
                                                              g.dlcls[9]}},
                                 0, B, map0, g.ntok, map0, map0);
    assert_int_equal(nt, 4 + L);
    assert_int_equal(ser_wire_send(r, "w0", &e, t, nt), 0);
    for (rc = SER_ETIMEDOUT; rc == SER_ETIMEDOUT;) rc = ser_wire_recv(d, 0, "job", &m, err);
    if (rc) fail_msg("BACKWARD without pool: %s", err);
    assert_int_equal(ser_shard_parse_backward(&m, B, C, g.ntok, L, 1, NULL, out), SER_EFORMAT);
    ser_wire_msg_free(&m);
    zmq_close(d), zmq_close(r), zmq_ctx_term(ctx);
    for (int i = 0; i < nb; i++) free(bufs[i]);
#undef S_ROWS
}

// The loader records a worker sends in FORWARD_DONE: format -> parse round trip (ages, not
// timestamps), hostile or foreign lines skipped, and the coordinator's merge by endpoint.
static void test_loadstat(void **state) {
    (void)state;
    ser_loadstat in[2], out[4];
    memset(in, 0, sizeof in);
    snprintf(in[0].endpoint, sizeof in[0].endpoint, "tcp://10.0.0.1:5600");
    in[0].served = 120, in[0].bad_files = 2, in[0].replacements = 5, in[0].step = 59;
    in[0].heard_ms = 1000;
    snprintf(in[1].endpoint, sizeof in[1].endpoint, "tcp://10.0.0.2:5600");
    in[1].served = 7, in[1].step = -1, in[1].heard_ms = 400;
    char text[1024];
    size_t len = ser_loadstat_format(text, sizeof text, in, 2, 1012);
    assert_int_equal(len, strlen(text));
    assert_non_null(strstr(text, "loader tcp://10.0.0.1:5600 served=120 bad_files=2 "
                                 "replacements=5 step=59 age_ms=12\n"));
    assert_int_equal(ser_loadstat_parse(text, out, 4, 5000), 2);  // another clock: ages count
    assert_string_equal(out[0].endpoint, "tcp://10.0.0.1:5600");
    assert_true(out[0].served == 120 && out[0].bad_files == 2 && out[0].replacements == 5);
    assert_true(out[0].step == 59 && out[0].heard_ms == 5000 - 12);
    assert_true(out[1].step == -1 && out[1].heard_ms == 5000 - 612);
    // Too small a buffer: whole lines only.
    char small[100];
    ser_loadstat_format(small, sizeof small, in, 2, 1012);
    assert_int_equal(ser_loadstat_parse(small, out, 4, 0), 1);
    // Foreign text, broken lines, odd endpoints, trailing junk, an old worker's empty text.
    const char *junk = "busy\nloader tcp://a:1 served=1\nloader  served=1 bad_files=0 "
                       "replacements=0 step=0 age_ms=0\nloader tcp://b:2 served=1 bad_files=0 "
                       "replacements=0 step=0 age_ms=0 extra\nloader tcp://c:3 served=x "
                       "bad_files=0 replacements=0 step=0 age_ms=0\nloader tcp://d:4 served=1 "
                       "bad_files=0 replacements=0 step=3 age_ms=-5";
    assert_int_equal(ser_loadstat_parse(junk, out, 4, 100), 1);
    assert_string_equal(out[0].endpoint, "tcp://d:4");
    assert_true(out[0].heard_ms == 100);  // a negative age counts as 0
    assert_int_equal(ser_loadstat_parse("", out, 4, 0), 0);
    char lng[400];
    memset(lng, 'x', sizeof lng);
    memcpy(lng, "loader tcp://", 13);
    lng[sizeof lng - 1] = 0;
    assert_int_equal(ser_loadstat_parse(lng, out, 4, 0), 0);
    // Merge: by endpoint; the later report's counters (a restarted loader counts from 0), the
    // larger step; a full table takes no new endpoint.
    ser_loadstat tab[2];
    int n = 0;
    assert_int_equal(ser_loadstat_merge(tab, &n, 2, &in[0]), 0);
    ser_loadstat later = in[0];
    later.served = 3, later.step = 50, later.heard_ms = 2000;
    assert_int_equal(ser_loadstat_merge(tab, &n, 2, &later), 0);
    assert_true(n == 1 && tab[0].served == 3 && tab[0].step == 59 && tab[0].heard_ms == 2000);
    ser_loadstat older = in[0];
    older.served = 1, older.step = 70, older.heard_ms = 10;
    ser_loadstat_merge(tab, &n, 2, &older);
    assert_true(tab[0].served == 3 && tab[0].step == 70);
    assert_int_equal(ser_loadstat_merge(tab, &n, 2, &in[1]), 1);
    ser_loadstat third = in[1];
    snprintf(third.endpoint, sizeof third.endpoint, "tcp://10.0.0.3:5600");
    assert_int_equal(ser_loadstat_merge(tab, &n, 2, &third), -1);
    assert_int_equal(n, 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_router_refuses_nul_job_id),
        cmocka_unit_test(test_loadstat),
        cmocka_unit_test(test_shard_frames_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
