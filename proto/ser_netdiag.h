// ser_netdiag.h — why a ZeroMQ client connection does not come up, in one log line per cause.
//
// ZeroMQ connects in the background and retries for ever, so a worker pointed at a dead port, a
// host name that does not resolve or a CURVE server without the key saw only silence. A netdiag
// watches a client socket with zmq_socket_monitor and turns the monitor's events into the
// likely cause, per endpoint of the socket (libzmq 4.3):
//   CONNECT_DELAYED, CLOSED, CONNECT_RETRIED     connection refused (nothing listening)
//   CLOSED, CONNECT_RETRIED                       no route (connect() failed at once)
//   CONNECT_RETRIED alone                         no socket could be opened: the host name does
//                                                 not resolve (confirmed with getaddrinfo,
//                                                 whose message is quoted)
//   HANDSHAKE_FAILED_PROTOCOL (mechanism mismatch)  one side uses CURVE, the other not
//   HANDSHAKE_FAILED_PROTOCOL (cryptographic)     a wrong server key
//   HANDSHAKE_FAILED_AUTH                         the server's ZAP handler refused this key
//   HANDSHAKE_FAILED_NO_DETAIL                    the server hung up during the handshake (a
//                                                 CURVE server drops a client whose HELLO it
//                                                 cannot decrypt); named only when nothing
//                                                 more precise follows within a second, since
//                                                 attempts against a CURVE server without a key
//                                                 end so too until one sees the mismatch
//   DISCONNECTED after HANDSHAKE_SUCCEEDED         the connection was lost
// A cause is logged (WARNING) once when it appears or changes, then at most every
// SER_NETDIAG_REPEAT_MS with the number of failed attempts since; after a logged cause, the
// connection coming up is logged once (INFO). Logging happens in ser_netdiag_drain(), from the
// thread that owns the netdiag: its PAIR socket, like every ZeroMQ socket, belongs to one
// thread, and the watched socket itself is never touched after ser_netdiag_watch().
//
// Endpoints are checked before zmq_connect (ser_netdiag_connect): "localhost:5555" or "tcp:/x"
// is named with what is expected ("tcp://HOST:PORT") instead of libzmq's "Invalid argument".
//
// defines:
//   ser_netdiag (opaque), ser_netdiag_new(), ser_netdiag_destroy()
//   ser_netdiag_watch()       monitor a socket (before its zmq_connect calls)
//   ser_netdiag_socket()      the PAIR socket to poll beside the watched one
//   ser_netdiag_drain()       read the waiting events, log what changed
//   ser_netdiag_describe()    the endpoints' state in words, for a timeout message
//   ser_netdiag_check_endpoint(), ser_netdiag_check_endpoints(), ser_netdiag_check_bind(),
//   ser_netdiag_connect()
#ifndef SER_NETDIAG_H
#define SER_NETDIAG_H

#include <stddef.h>

#include "ser_base.h"

#define SER_NETDIAG_REPEAT_MS 30000  // a cause that lasts is logged again this often
#define SER_NETDIAG_MAX_ENDPOINTS 16 // endpoints of one socket that are told apart

// The state of the watched endpoints (the worst one over them).
enum ser_netdiag_state {
    SER_NETDIAG_UNKNOWN = 0,  // nothing learnt yet (or nothing watched)
    SER_NETDIAG_UP,           // every endpoint that reported is connected (handshake done)
    SER_NETDIAG_DOWN,         // some endpoint is not, and its cause is not in the log yet
    SER_NETDIAG_DOWN_LOGGED,  // some endpoint is not, and its cause is in the log already
};

typedef struct ser_netdiag ser_netdiag;

// ctx: the context of the sockets to watch. who: the prefix of the log lines ("worker w3");
// copied. Never NULL; release with ser_netdiag_destroy().
ser_netdiag *ser_netdiag_new(void *ctx, const char *who);
// Closes the PAIR socket (never touches the watched one, which may be closed already or later);
// does nothing on NULL and sets *dp to NULL. Call it before zmq_ctx_term of ctx.
void ser_netdiag_destroy(ser_netdiag **dp);

// Watches sock from now on; call it before sock's zmq_connect calls, or events of the first
// attempt are lost. A socket watched before is forgotten (close it: its monitor ends with it);
// the causes already logged are kept, so a socket made again for a reconnect does not log them
// again. SER_EIO with the reason in err when the monitor cannot be attached.
int ser_netdiag_watch(ser_netdiag *d, void *sock, char err[SER_ERR_LEN]);
// The PAIR socket that becomes readable when events wait (NULL before watch, or for d NULL):
// poll it beside the watched socket and call ser_netdiag_drain() when it is.
void *ser_netdiag_socket(const ser_netdiag *d);
// Reads every waiting event without blocking and logs the causes that appeared or changed (and
// those due again). Does nothing on NULL.
void ser_netdiag_drain(ser_netdiag *d);
// Drains, then writes into buf the state of the endpoints that are not connected, for a timeout
// message: "tcp://h:1: connection refused (nothing listening on h:1?)" ("" when none is known to
// be down). Returns enum ser_netdiag_state.
int ser_netdiag_describe(ser_netdiag *d, char *buf, size_t n);

// Checks an endpoint's form before zmq_connect: SER_OK, or SER_EINVAL with err naming it and
// what is expected ("endpoint 'localhost:5555' has no transport: expected tcp://HOST:PORT (did
// you mean tcp://localhost:5555?)"). tcp:// needs HOST:PORT with a port in 1..65535; ipc:// and
// inproc:// a name; other transports libzmq knows are left to it.
int ser_netdiag_check_endpoint(const char *endpoint, char err[SER_ERR_LEN]);
// The same for each item of a comma-separated list ("tcp://a:1,tcp://b:2"); an empty list or
// item is an error too.
int ser_netdiag_check_endpoints(const char *list, char err[SER_ERR_LEN]);
// The same for an endpoint to bind: the host may also be "*" and the port "*", "!" or 0 (any
// free one; libzmq's "*[lo-hi]" ranges too).
int ser_netdiag_check_bind(const char *endpoint, char err[SER_ERR_LEN]);
// ser_netdiag_check_endpoint(), then zmq_connect(sock, endpoint); SER_EINVAL / SER_EIO with err
// naming the endpoint.
int ser_netdiag_connect(void *sock, const char *endpoint, char err[SER_ERR_LEN]);

#endif
