// fuzz_loader_reply.c — fuzzes the worker side of the loader protocol: s_parse_reply() of
// dataloader/ser_dl_service.c, which validates a loader's reply ["", LoaderShard, view
// frames...] (protobuf, protocol version, step and shard, status, job and config hash, sample
// count against frame count, every view's size against its frame, the equivariant group
// elements against the view sizes) and copies the shard out of the frames.
//
// s_parse_reply() is static and reached only through ser_dl_client_fetch() waiting on a
// socket, so this file includes ser_dl_service.c itself (the linker then leaves the library's
// copy out) and calls it on zmq_msg_t frames made from the fuzz input, with a client whose job
// id and config hash are the fixture loader's (fuzz_fixtures.h).
//
// Input: one option byte, then the frames in the framing of fuzz_util.h.
//   option bit 0: mark the message as truncated
//   option bit 1: expect another step than the reply's (a late reply: must be dropped)
// The expected (step, shard) is the reply's own when its LoaderShard frame unpacks, so the
// fuzzer does not have to guess it. Checked here beyond "no crash": an accepted shard has as
// many samples as the reply and each view exactly its frame's bytes, in order.
#include "../../dataloader/ser_dl_service.c"

#include "fuzz_fixtures.h"
#include "fuzz_util.h"

static ser_dl_client s_client;
static int s_ready;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    ser_dl_config c;
    ser_fuzz_loader_config(&c, "/nonexistent");  // the hash does not depend on the path
    snprintf(s_client.job_id, sizeof s_client.job_id, "%s", c.job_id);
    s_client.hash = ser_dl_config_hash(&c);
    s_ready = 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_ready) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1) return 0;
    ser_fuzz_frame f[SER_FUZZ_MAX_FRAMES];
    int nf = ser_fuzz_split(data + 1, size - 1, f);
    s_parts p = {0};
    p.m = ser_fuzz_msgs(f, nf);
    p.cap = nf ? nf : 1, p.n = nf;
    p.truncated = data[0] & 1;
    uint64_t step = 0;
    uint32_t shard = 0;
    size_t nsamples = 0;
    if (nf >= 2) {
        Ser__LoaderShard *m = ser__loader_shard__unpack(NULL, f[1].n, f[1].p);
        if (m) {
            step = m->step, shard = m->shard, nsamples = m->n_samples;
            ser__loader_shard__free_unpacked(m, NULL);
        }
    }
    if (data[0] & 2) step++;
    ser_dl_shard out;
    memset(&out, 0, sizeof out);
    char err[256] = "";
    uint64_t rstep = step;
    uint32_t rshard = shard;
    int rc = s_parse_reply(&s_client, &p, step, shard, &out, &rstep, &rshard, err);
    if (rc == 1 && rstep == step && rshard == shard) {  // S_STALE names the reply's own shard
        fprintf(stderr, "fuzz_loader_reply: a reply for the shard asked called stale\n");
        abort();
    }
    if (rc == SER_OK) {
        int bad = (data[0] & 3) != 0 || (size_t)out.n != nsamples || out.step != step ||
                  out.shard != shard;
        size_t total = 0;
        for (int i = 0; !bad && i < out.n; i++)
            for (int v = 0; v < 2 && !bad; v++) {
                const ser_dl_sample *s = &out.samples[i];
                const ser_fuzz_frame *src = &f[2 + 2 * i + v];
                size_t len = (size_t)s->h[v] * (size_t)s->w[v] * 3;
                bad = len != src->n || s->view[v] != out.data + total ||
                      memcmp(s->view[v], src->p, len) != 0;
                total += len;
            }
        if (bad || total != out.nbytes) {
            fprintf(stderr, "fuzz_loader_reply: accepted a shard that is not the reply's\n");
            abort();
        }
        ser_dl_shard_free(&out);
    } else if (rc != 1 && !err[0]) {
        fprintf(stderr, "fuzz_loader_reply: refusal %d without a reason\n", rc);
        abort();
    }
    s_parts_free(&p);
    return 0;
}
