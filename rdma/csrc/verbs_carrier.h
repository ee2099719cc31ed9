/* The verbs carrier: nic.h over one RDMA RC queue pair, with libibverbs bound at run time.
 *
 * The library is dlopen'ed on first use (TFOS_IBVERBS_LIBRARY, default "libibverbs.so.1"),
 * so the same build serves hosts with and without rdma-core; a host without it gets an error
 * naming the library, never a load failure of the extension.
 *
 * Set-up runs over bootstrap_fd, a connected stream socket the caller has already
 * authenticated: both sides write one fixed record (queue-pair number, PSN, LID, GID, MTU)
 * and read the peer's, move their queue pair RESET -> INIT -> RTR -> RTS, post their receive
 * work requests, then exchange one "ready" byte so neither writes before the other can take
 * it. After that the carrier never reads bootstrap_fd again (the caller may still use it, for
 * example to trade its first region descriptors); it only watches it for hang-up, so poll()
 * returns TFOS_NIC_ECLOSED as soon as the peer process is gone (after a grace of 200 ms when
 * this side has writes in flight, so that an error that made the peer close, such as a
 * refused key, is reported instead). The carrier works on its own dup() of the descriptor;
 * destroy() shuts the socket down for writing, which the peer's carrier takes as the close of
 * the link, and keeps the queue pair until the peer closes too (at most 1 s) so the peer's
 * last writes are acknowledged.
 *
 * Threads: write() and poll() may be called from different threads; poll() from one thread
 * at a time. */
#ifndef TFOS_VERBS_CARRIER_H
#define TFOS_VERBS_CARRIER_H

#include "nic.h"

typedef struct {
    const char *device;     /* e.g. "mlx5_0"; NULL: the first device with an active port */
    int port;               /* 1-based; 0: the device's first active port */
    int gid_index;          /* -1: choose (RoCE v2 with an IPv4 address first, else the first
                               non-zero GID; InfiniBand ports need none) */
    int send_depth;         /* writes in flight at once; 0: 128 */
    int recv_depth;         /* receive work requests kept posted for immediates; 0: 256 */
    int spin_us;            /* poll()'s busy phase before it blocks; 0: 50; -1: none */
    int setup_timeout_ms;   /* deadline of the bootstrap exchange; 0: 30000 */
    const char *peer;       /* names the peer in messages ("rank 2"); NULL: its address */
} tfos_verbs_options;

/* Fills opts with the defaults (all zero but gid_index, which is -1: choose). */
void tfos_verbs_default_options(tfos_verbs_options *opts);

/* Opens the device, creates the queue pair and connects it to the peer at the other end of
 * bootstrap_fd (which the peer passes to its own tfos_verbs_create at the same time). opts may
 * be NULL for all defaults. Returns TFOS_NIC_OK with *out set, or a negative TFOS_NIC_E* code
 * and a sentence in err (TFOS_NIC_ERRLEN bytes) naming what is missing or what failed. */
int tfos_verbs_create(int bootstrap_fd, const tfos_verbs_options *opts, tfos_nic **out,
                      char *err);

#endif
