// fuzz_loader_request.c — fuzzes the data loader's request handling: s_handle() of
// dataloader/ser_dl_service.c, which takes one multipart message a ROUTER received
// ([identity, "", LoaderShardRequest]), validates it (frame count, empty delimiter, protobuf,
// protocol version, job id, config hash, shard and step range) and answers with a refusal or
// a built shard (proto/loader.proto).
//
// s_handle() is static and only reachable through ser_dl_service_run() on a socket, so this
// file includes ser_dl_service.c itself (its own copy of the service code, instrumented with
// the harness; the linker then leaves the library's copy out) and calls s_handle() directly on
// frames made from the fuzz input: the service is a real one (ser_dl_service_new() on an
// inproc endpoint, over a real ser_dl on a small synthetic ImageFolder in a temporary folder),
// and the replies really go out of its ROUTER (to an identity nobody has, so ZeroMQ drops
// them after s_reply() has packed and sent every frame).
//
// Input: one option byte, then the frames in the framing of fuzz_util.h.
//   option bit 0: mark the message as truncated (more frames than the service keeps)
// Checked here beyond "no crash": every request is counted exactly once as served, refused,
// dropped or failed (the service's own counters).
#include "../../dataloader/ser_dl_service.c"

#include "fuzz_fixtures.h"
#include "fuzz_util.h"

static ser_dl *s_dl;
static ser_dl_service *s_svc;

static void s_cleanup(void) {
    ser_dl_service_destroy(&s_svc);
    ser_dl_destroy(&s_dl);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    char root[512], err[256];
    snprintf(root, sizeof root, "%s/data", ser_fuzz_tmpdir());
    ser_dl_config c;
    ser_fuzz_loader_config(&c, root);
    if (ser_fuzz_loader_data(root, err) != SER_OK || !(s_dl = ser_dl_new(&c, err)) ||
        !(s_svc = ser_dl_service_new(s_dl, "inproc://ser-fuzz-loader", 0, 1, err))) {
        fprintf(stderr, "fuzz_loader_request: setup failed: %s\n", err);
        abort();
    }
    atexit(s_cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_svc) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1) return 0;
    ser_fuzz_frame f[SER_FUZZ_MAX_FRAMES];
    int nf = ser_fuzz_split(data + 1, size - 1, f);
    s_parts p = {0};
    p.m = ser_fuzz_msgs(f, nf);
    p.cap = nf ? nf : 1, p.n = nf;
    p.truncated = data[0] & 1;
    ser_dl_service_stats before = s_svc->st;
    s_handle(s_svc, &p);
    s_parts_free(&p);
    const ser_dl_service_stats *a = &s_svc->st;
    uint64_t outcomes =
        (a->served - before.served) + (a->refused - before.refused) + (a->dropped - before.dropped);
    if (a->requests != before.requests + 1 || outcomes > 1) {
        fprintf(stderr, "fuzz_loader_request: one request counted %llu times\n",
                (unsigned long long)outcomes);
        abort();
    }
    return 0;
}
