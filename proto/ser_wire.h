// ser_wire.h — ZeroMQ messages of the runtime: one protobuf Envelope frame + raw tensor frames.
//
// Every received message is validated before use (ser_wire_recv): the envelope unpacks, the
// protocol version and job id match, the frame count equals the tensor count, and each frame's
// size equals its metadata's shape x dtype. A bad message is reported as SER_EFORMAT with a
// reason and dropped by the caller; nothing crashes on garbage.
//
// defines:
//   SER_PROTOCOL_VERSION
//   ser_wire_tensor (outgoing), ser_wire_send()
//   ser_wire_msg (incoming), ser_wire_recv(), ser_wire_msg_free(), ser_wire_find()
//   ser_wire_fault_kill()   the fault plan (SER_FAULT), see below
#ifndef SER_WIRE_H
#define SER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "ser.pb-c.h"
#include "ser_base.h"

#define SER_PROTOCOL_VERSION 1
#define SER_WIRE_MAX_TENSORS 40
#define SER_WIRE_MAX_IDENTITY 64

typedef struct ser_wire_tensor {
    const char *name;
    int ndim;
    int64_t shape[4];
    const float *data;  // F32 only on this wire; not copied (sent with zero-copy semantics)
} ser_wire_tensor;

// 1 when id[0..n) can name a peer: 1 to SER_WIRE_MAX_IDENTITY - 1 bytes of printable ASCII
// without spaces (0x21..0x7e). A ROUTER refuses any other identity (SER_EPEER).
int ser_wire_identity_ok(const char *id, size_t n);

// 1 when no string field of a serialized protobuf message holds a NUL byte: strs[0..ns) are the
// numbers of its string fields at the top level, nested (0: none) the number of a repeated
// message field whose own string fields are nstrs[0..nns). protobuf-c keeps strings as C
// strings, so "w0\0x" would unpack as "w0": ids are compared as what they are, byte strings
// with a length. 0 as well for a message that does not parse (it is refused either way).
int ser_wire_pb_strings_ok(const uint8_t *b, size_t n, const uint32_t *strs, int ns,
                           uint32_t nested, const uint32_t *nstrs, int nns);

// Sends [identity,] envelope, tensors. env->protocol_version and env->tensors are filled here.
// identity is the ROUTER-side peer id (NULL on a DEALER). Returns SER_OK or SER_EIO.
int ser_wire_send(void *sock, const char *identity, Ser__Envelope *env, const ser_wire_tensor *t,
                  int n);

typedef struct ser_wire_msg {
    char identity[SER_WIRE_MAX_IDENTITY];  // "" on a DEALER
    char peer[64];                          // the sender's address ("10.0.0.7"; "" unknown)
    Ser__Envelope *env;
    int n;                                  // tensors
    void *frames;                           // zmq_msg_t[n]
} ser_wire_msg;

// Receives one whole message (non-blocking: SER_ETIMEDOUT when none is waiting). router: the
// socket is a ROUTER (first frame is the identity). job_id: checked when not NULL (HELLO is
// checked by the caller instead). Returns SER_OK, SER_ETIMEDOUT, or SER_EFORMAT/SER_EVERSION
// with a reason (the message was consumed and must be dropped).
int ser_wire_recv(void *sock, int router, const char *job_id, ser_wire_msg *m,
                  char err[SER_ERR_LEN]);
void ser_wire_msg_free(ser_wire_msg *m);
// The data of tensor `name` if present with exactly numel F32 elements, else NULL. The bytes
// sit in a received frame with no alignment guarantee: read them with memcpy.
const float *ser_wire_find(const ser_wire_msg *m, const char *name, size_t numel);

// Bytes of all frames this process has sent and received (envelopes and tensors; not the
// identity frames ZeroMQ adds, nor TCP/ZMTP framing).
void ser_wire_bytes(uint64_t *sent, uint64_t *received);

// --- fault plan ----------------------------------------------------------------------------
// SER_FAULT (environment) holds ';'-separated rules, each firing once in this process:
//   drop:TYPE@STEP         do not send the first TYPE message of step STEP
//   dup:TYPE@STEP          send it twice
//   delay:TYPE@STEP:MS     send it MS milliseconds late
//   nan:TYPE@STEP          send it with its first tensor's first element set to NaN
//   kill:TYPE@STEP         SIGKILL this process on receiving TYPE of step STEP (the start of
//                          that phase: kill:BACKWARD@5 dies holding step 5's activations)
//   bad:LOADER_SHARD@STEP  (a data loader) send the first reply of step STEP that holds an
//                          equivariant sample with that sample's first group element on twice
//                          its grid (a view cut at half the job's patch): a loader that lies
// TYPE is a message name without MSG_ (FORWARD_DONE, BACKWARD_DONE, PARAMS, HEARTBEAT, ...).
// A malformed SER_FAULT is reported once and ignored. Used by the fault tests.
void ser_wire_fault_kill(int type, uint64_t step);
// 1 once if a nan:TYPE@step rule is armed (and fires it): for data a message does not carry
// (a gradient the worker keeps for the chain instead of sending it), which the caller poisons.
int ser_wire_fault_nan(int type, uint64_t step);
// 1 once if a bad:LOADER_SHARD@step rule is armed (the caller corrupts the reply), else 0.
int ser_wire_fault_bad_loader_shard(uint64_t step);

#endif
