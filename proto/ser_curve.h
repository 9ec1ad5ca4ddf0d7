// ser_curve.h — ZeroMQ CURVE for a job's sockets: encryption, server authentication, and an
// allow-list of client keys (design.md §7).
//
// A key file, written by `ser keygen FILE` (mode 0600), holds two lines, "public <z85>" and
// "secret <z85>"; FILE.pub holds the public line only, to hand to peers. A process takes its
// settings from the job's [cluster] keys (docs/config.md) or, where it has no job file (a
// worker before its WELCOME), from the environment: SER_CURVE_KEY, SER_CURVE_SERVER_KEY,
// SER_CURVE_ALLOW, SER_PLAINTEXT=1.
//   curve_key         this process's keypair; empty: plaintext
//   curve_server_key  the servers' public key (coordinator and loaders share one server
//                     keypair); empty: curve_key's own public half (one key for the whole job)
//   curve_allow       servers: the client public keys allowed (one per line); empty: curve_key's
//                     own public key only. Checked by a ZAP handler thread per server context;
//                     a refused client's handshake fails and the server logs its key.
//   plaintext         without a key, sockets bound to an address other than the loopback are
//                     refused unless this is true (plaintext only when asked for off one host).
//
// defines:
//   ser_curve_keygen()                       write a keypair file and its .pub
//   ser_curve_setup(), ser_curve_setup_env() load this process's settings (once)
//   ser_curve_on()                           whether CURVE is on
//   ser_curve_server(), ser_curve_client()   apply to a socket before bind / connect
//   ser_curve_client_to(), ser_curve_public() a worker's link to another worker's peer socket
#ifndef SER_CURVE_H
#define SER_CURVE_H

#include "ser_base.h"
#include "ser_config.h"

int ser_curve_keygen(const char *path, char err[SER_ERR_LEN]);

// Loads the settings of cfg's [cluster] (an empty key falls back to the environment).
// SER_EINVAL / SER_EIO with a message naming the file for a missing or malformed key file.
int ser_curve_setup(const ser_config *cfg, char err[SER_ERR_LEN]);
// The same from the environment only.
int ser_curve_setup_env(char err[SER_ERR_LEN]);
int ser_curve_on(void);

// A server socket of context ctx, before zmq_bind(endpoint): CURVE server with this process's
// secret key and the ZAP allow-list (the handler starts once per context and ends with it), or
// plaintext, refused (SER_EPEER with the reason) for a non-loopback endpoint unless allowed.
int ser_curve_server(void *ctx, void *sock, const char *endpoint, char err[SER_ERR_LEN]);
// A client socket, before zmq_connect: CURVE client with this process's keypair and the
// servers' public key; nothing in plaintext.
int ser_curve_client(void *sock, char err[SER_ERR_LEN]);
// A client socket to a peer server with its own keypair (a worker's peer socket, which takes
// the chain's running sums): CURVE client with this process's keypair and server_key (Z85, as
// the peer announced it); nothing in plaintext. SER_EPEER for a malformed key.
int ser_curve_client_to(void *sock, const char *server_key, char err[SER_ERR_LEN]);
// This process's public key (Z85), "" in plaintext.
const char *ser_curve_public(void);

#endif
