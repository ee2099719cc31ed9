/* The shm carrier: a link between two processes on one host. Set-up runs over a connected Unix
 * stream socket that the caller has already authenticated (rdma.core does the handshake): each
 * side creates one sealed memfd arena (sparse: pages cost nothing until touched), from which
 * alloc_mr sub-allocates, and passes it to the peer with SCM_RIGHTS; the peer maps it.
 *
 * write() is a bounds- and key-checked memcpy into the peer's mapping, then the immediate goes
 * into the completion queue in the peer's arena (single producer, single consumer, C11
 * release/acquire) and a futex wakes the peer only when it said it sleeps. SENT completions are
 * immediate: the bytes are there once memcpy returns. poll() spins spin_us, then sleeps on the
 * futex in slices of 50 ms; before sleeping and after every slice it asks the socket (kept open
 * for that alone) whether the peer hung up, so a SIGKILLed peer is noticed within a slice and
 * a graceful one at once (its destroy sets a flag and wakes us). */
#ifndef TFOS_SHM_CARRIER_H
#define TFOS_SHM_CARRIER_H

#include <stdint.h>

#include "nic.h"

typedef struct {
    uint64_t arena_bytes;   /* this side's arena (sparse); everything alloc_mr gives comes from it */
    int spin_us;            /* how long poll spins before it sleeps */
    int timeout_ms;         /* deadline of the set-up exchange; -1: none */
} tfos_shm_opts;

void tfos_shm_default_opts(tfos_shm_opts *opts);
/* sock_fd stays the caller's: the carrier keeps a duplicate. */
int tfos_shm_create(int sock_fd, const tfos_shm_opts *opts, tfos_nic **out, char *err);

#endif
