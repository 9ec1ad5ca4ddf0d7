// ser_dl_service.h — `ser dataloader`: serves shards over ZeroMQ, and the worker-side client.
//
// Wire (proto/loader.proto, version SER_DL_PROTOCOL_VERSION): the loader binds a ROUTER; a
// client's DEALER sends ["", LoaderShardRequest] and receives ["", LoaderShard, view frames]
// with one raw uint8 frame per view (sample-major, view 0 then view 1, h*w*3 bytes each),
// sent zero-copy from the shard's arena. A request whose job id, config hash or protocol
// version differs gets a LoaderShard with a negative status and an error text; a malformed
// message is logged and dropped. Several loader processes may serve one job: every shard is
// a pure function of (config, step, shard), and a client connected to several endpoints
// spreads its requests over them (DEALER round robin).
//
// The service builds each requested shard (or takes it from its cache), then, while idle,
// prefetches the next `prefetch` steps of the same shard index into a cache of at most
// `cache_shards` shards (bounded memory).
//
// A job's end reaches its workers (the coordinator's SHUTDOWN), not its loaders: a loader
// learns it from the silence that follows. Once it has served a shard, a service with an idle
// exit returns from run after that long without a request (ser_dl_service_set_idle_exit).
//
// defines:
//   SER_DL_PROTOCOL_VERSION
//   ser_dl_service (opaque), ser_dl_service_new(), ser_dl_service_set_idle_exit(),
//   ser_dl_service_run(),
//   ser_dl_service_endpoint(), ser_dl_service_stats, ser_dl_service_get_stats(),
//   ser_dl_service_destroy()
//   ser_dl_client (opaque), ser_dl_client_new(), ser_dl_client_fetch(), ser_dl_client_prefetch(),
//   ser_dl_client_loaders(),
//   ser_dl_client_destroy()
#ifndef SER_DL_SERVICE_H
#define SER_DL_SERVICE_H

#include <signal.h>
#include <stdint.h>

#include "ser_dl.h"
#include "ser_loadstat.h"

#define SER_DL_PROTOCOL_VERSION 1u
// Largest accepted view side and sample count on the wire (validation bounds).
#define SER_DL_WIRE_MAX_SIDE 8192
#define SER_DL_WIRE_MAX_SAMPLES 65536

typedef struct ser_dl_service ser_dl_service;

typedef struct ser_dl_service_stats {
    uint64_t requests, served, cache_hits, prefetched, dropped, refused;
    uint64_t bad_files, replacements;
} ser_dl_service_stats;

// Borrows dl (it must outlive the service). endpoint: e.g. "tcp://127.0.0.1:*" for an
// ephemeral port. NULL with a reason in err on failure.
ser_dl_service *ser_dl_service_new(ser_dl *dl, const char *endpoint, int prefetch,
                                   int cache_shards, char err[256]);
// The endpoint actually bound (with the port chosen).
const char *ser_dl_service_endpoint(const ser_dl_service *s);
// After it has served a shard, run returns when no request has come for ms milliseconds
// (0, the default: never). It logs once when a minute of silence passes.
void ser_dl_service_set_idle_exit(ser_dl_service *s, int64_t ms);
// Serves until *stop becomes non-zero (checked at least every 100 ms) or the idle exit.
// Returns SER_OK.
int ser_dl_service_run(ser_dl_service *s, volatile sig_atomic_t *stop);
void ser_dl_service_get_stats(const ser_dl_service *s, ser_dl_service_stats *out);
void ser_dl_service_destroy(ser_dl_service **sp);

typedef struct ser_dl_client ser_dl_client;

// endpoints: one or more, comma-separated. max_msg: the largest reply frame taken
// (ZMQ_MAXMSGSIZE: a loader that sends a larger one is disconnected before it is buffered;
// ser_dl_reply_max_bytes() sizes it for a job), or -1 for no limit. NULL with a reason in err
// on failure.
ser_dl_client *ser_dl_client_new(const char *endpoints, const char *job_id, uint64_t config_hash,
                                 int64_t max_msg, char err[256]);
// The largest legitimate reply frame of a job's loader: a shard of per_shard samples, each
// with two views of at most (img x scale_max + 2 x patch) pixels a side, plus 1 MiB.
int64_t ser_dl_reply_max_bytes(int per_shard, int img, int patch, double scale_max);
// Requests shard (step, shard) and waits at most timeout_ms for a valid reply; replies for
// other requests (late answers to an earlier timeout) and malformed replies are dropped.
// Fills *out (free with ser_dl_shard_free). Returns SER_OK, SER_ETIMEDOUT, or the loader's
// negative status (SER_EVERSION, SER_ECONFIG, ...) with its text in err.
int ser_dl_client_fetch(ser_dl_client *c, uint64_t step, uint32_t shard, int timeout_ms,
                        ser_dl_shard *out, char err[256]);
// Sends the request for shard (step, shard) now without waiting (the worker asks for its next
// step's shards while it computes); the reply is kept for the fetch of that shard. At most
// SER_DL_AHEAD_MAX are kept (the oldest step's go first); a fetch of a later step drops those
// of earlier steps.
enum { SER_DL_AHEAD_MAX = 8 };
void ser_dl_client_prefetch(ser_dl_client *c, uint64_t step, uint32_t shard);
// What the loaders' replies said about them (proto/ser_loadstat.h): one record per loader, by
// the endpoint this client connected to (or, for a loader that does not say where it is bound,
// "?"), with its counters, the step of its last reply and when that came. Copies at most max
// records into out; returns how many.
int ser_dl_client_loaders(const ser_dl_client *c, ser_loadstat *out, int max);
void ser_dl_client_destroy(ser_dl_client **cp);

#endif
