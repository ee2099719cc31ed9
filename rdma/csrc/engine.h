/* The protocol engine: whole messages both ways over one link, on any carrier (nic.h). Plain C,
 * no Python; the CPython binding (module.c) releases the GIL around every call that can block.
 *
 * Each side owns the ring it RECEIVES into: one registered region, a 4 KiB mailbox followed by
 * the ring (ring.h's bookkeeping places messages and counts credits). Its description, 24 bytes
 * (tfos_engine_descriptor), travels to the peer over whatever bootstrap socket the caller has;
 * tfos_engine_start takes the peer's. Then every message (a gather list of parts) goes one of
 * two ways, chosen by the sender:
 *
 *   eager (size <= eager_max):  one write of the bytes into the peer's ring, with the immediate
 *       EAGER|seq; the receiver's recv returns a view into its ring, released at the next recv.
 *       Credits (the receiver's released counter) come back as CREDIT immediates; a sender
 *       short of room asks once with NEED.
 *   rendezvous (larger):  the sender writes {size, seq} into the receiver's mailbox with RTS|seq;
 *       the receiver answers CTS|seq with its landing region (registered, grown on demand,
 *       reused) written into the sender's mailbox, as soon as that region is free; the sender
 *       writes the payload straight there, the last write carrying DATA|seq; recv returns a
 *       view of the landing region.
 *
 * An immediate is kind << 28 | a 28-bit value; every message carries its sequence number and
 * the receiver refuses one out of sequence (TFOS_ENGINE_EPROTO naming the link), as it refuses
 * credits outside what it wrote, a CTS or DATA it did not ask for, or an unknown kind. Every
 * message takes at least 1/1024 of the ring, so at most 1024 are in flight: with the few
 * control immediates this keeps nic.h's TFOS_NIC_MAX_UNPOLLED.
 *
 * Memory from tfos_engine_alloc is registered: a part that lies inside it is written to the
 * peer without a staging copy (send then waits until the carrier has read it). Other parts are
 * copied through a registered staging area in chunks.
 *
 * Threads: one thread may send while another receives (concurrent senders, or receivers, are
 * serialized). Both need completions from the same carrier: one of them polls at a time,
 * dispatches everything it gets under the engine's mutex and wakes the other. Timeouts are in
 * ms, -1 for none. A timeout that moved nothing leaves the link usable; a rendezvous send that
 * timed out waiting for clear-to-send may be retried with the same message (it resumes); a
 * timeout in the middle of a payload breaks the link. A broken link answers every later call
 * with the error that broke it.
 */
#ifndef TFOS_ENGINE_H
#define TFOS_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "nic.h"

#define TFOS_ENGINE_ERRLEN TFOS_NIC_ERRLEN
#define TFOS_ENGINE_DESC_LEN 24
#define TFOS_ENGINE_MAILBOX 4096

/* Return codes: nic.h's TFOS_NIC_E* (ETIMEDOUT, ECLOSED, EACCESS, ENOMEM, EINVAL, EIO) and: */
enum {
    TFOS_ENGINE_EPROTO = -7,   /* the peer broke the protocol; the link is unusable */
    TFOS_ENGINE_ETOOBIG = -8,  /* recv_into: the message does not fit; it stays queued */
};

/* Immediate kinds (bits 28..31); exported so tests can aim a carrier's faults at one kind. */
enum {
    TFOS_IMM_EAGER = 1,   /* value: message seq; the write's length is the message size */
    TFOS_IMM_RTS = 2,     /* value: message seq; mailbox: size, seq */
    TFOS_IMM_CTS = 3,     /* value: seq cleared; mailbox: landing region, seq */
    TFOS_IMM_DATA = 4,    /* value: seq; the payload is in the landing region */
    TFOS_IMM_CREDIT = 5,  /* value: released counter / 64 (mod 2^28) */
    TFOS_IMM_NEED = 6,    /* value: counter the sender waits for / 64 (mod 2^28) */
    TFOS_IMM_BYE = 7,     /* the peer closed the link */
};
#define TFOS_IMM_SHIFT 28
#define TFOS_IMM_VALUE 0x0fffffffu

typedef struct {
    int64_t ring_bytes;   /* the ring this side receives into (multiple of 64, >= 4096) */
    int64_t eager_max;    /* larger messages go by rendezvous (also capped at the peer's ring/2) */
    int64_t chunk_bytes;  /* staging chunk for large messages from unregistered memory */
} tfos_engine_opts;

typedef struct {
    uint64_t sent_eager, sent_rendezvous, received_eager, received_rendezvous;
    uint64_t credits_sent, credits_received, needs_sent, staged_bytes, direct_bytes;
    uint64_t landing_bytes;
} tfos_engine_stats;

typedef struct tfos_engine tfos_engine;

void tfos_engine_default_opts(tfos_engine_opts *opts);
/* Takes ownership of nic (destroyed with the engine, or here on failure). */
int tfos_engine_create(tfos_nic *nic, const tfos_engine_opts *opts, tfos_engine **out,
                       char *err);
void tfos_engine_descriptor(tfos_engine *e, uint8_t out[TFOS_ENGINE_DESC_LEN]);
int tfos_engine_start(tfos_engine *e, const uint8_t *desc, size_t len, char *err);

int tfos_engine_send(tfos_engine *e, const tfos_iov *parts, int nparts, int timeout_ms,
                     char *err);
/* The next message, *data valid until the next recv/recv_into/destroy. */
int tfos_engine_recv(tfos_engine *e, const void **data, uint64_t *size, int timeout_ms,
                     char *err);
int tfos_engine_recv_into(tfos_engine *e, void *buf, uint64_t cap, uint64_t *size,
                          int timeout_ms, char *err);

/* Registered memory for messages built in place; NULL with err on failure. */
void *tfos_engine_alloc(tfos_engine *e, uint64_t size, char *err);
void tfos_engine_free(tfos_engine *e, void *addr);

/* Closes the link (idempotent): the peer is told, blocked calls return TFOS_NIC_ECLOSED.
 * Memory stays mapped until tfos_engine_destroy, so views handed out stay readable. */
void tfos_engine_close(tfos_engine *e);
int tfos_engine_closed(tfos_engine *e);
void tfos_engine_destroy(tfos_engine *e);

tfos_nic *tfos_engine_nic(tfos_engine *e);
const char *tfos_engine_name(tfos_engine *e);   /* "shm link to pid 123" */
void tfos_engine_get_stats(tfos_engine *e, tfos_engine_stats *out);

#endif
