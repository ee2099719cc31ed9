/* Bookkeeping of a receiver-owned ring, one instance on each side: the C twin of rdma/ring.py.
 *
 * Both sides count bytes on one logical, ever-growing axis (the physical offset is
 * position % capacity). A message takes one contiguous, 64-byte aligned stretch; one that does
 * not fit before the end of the ring starts at the next lap, and the stretch it skipped is
 * dead space the reader's released counter jumps over. The writer places a message once the
 * reader has credited min(end - capacity, head). Pure arithmetic: no memory, no I/O, no
 * allocation, so the transport's protocol engine and the Python binding share it.
 *
 * Every function that can refuse returns 0 on success and -1 on a protocol violation, with a
 * message in the caller's buffer (the peer's bookkeeping is corrupt or it overran the ring).
 */
#ifndef TFOS_RING_H
#define TFOS_RING_H

#include <stddef.h>
#include <stdint.h>

#define TFOS_RING_ALIGN 64
#define TFOS_RING_MAX_SKIPS 4   /* dead stretches pending at once: at most 2 can be */
#define TFOS_RING_ERRLEN 200

typedef struct {
    int64_t capacity;
    int64_t head;   /* where the next message may start (published so far) */
    int64_t tail;   /* the highest released counter credited so far */
} tfos_ring_writer;

typedef struct {
    int64_t capacity;
    int64_t head;
    int64_t released;
    int64_t credited;
    int64_t need;        /* the counter a waiting writer asked for; -1: none */
    int64_t credit_every;
    int64_t skips[TFOS_RING_MAX_SKIPS][2];   /* dead stretches (from, to), oldest first */
    int nskips;
} tfos_ring_reader;

int tfos_ring_check_capacity(int64_t capacity, char *err);

int tfos_ring_writer_init(tfos_ring_writer *w, int64_t capacity, char *err);
/* Where a size-byte message goes, [*start, *end), once tail >= *needed. */
int tfos_ring_writer_reserve(const tfos_ring_writer *w, int64_t size, int64_t *start,
                             int64_t *end, int64_t *needed, char *err);
void tfos_ring_writer_commit(tfos_ring_writer *w, int64_t end);
int tfos_ring_writer_credit(tfos_ring_writer *w, int64_t released, char *err);

int tfos_ring_reader_init(tfos_ring_reader *r, int64_t capacity, char *err);
/* Placement of the next message the writer announced. */
int tfos_ring_reader_publish(tfos_ring_reader *r, int64_t size, int64_t *start, int64_t *end,
                             char *err);
int tfos_ring_reader_release(tfos_ring_reader *r, int64_t end, char *err);
/* The writer waits until released >= needed is credited. */
int tfos_ring_reader_request(tfos_ring_reader *r, int64_t needed, char *err);
/* The counter to send as CREDIT now, or -1 when none is due. */
int64_t tfos_ring_reader_credit_due(tfos_ring_reader *r);

#endif
