/* See ring.h. The same decisions as rdma/ring.py, line for line; tests/unit/test_core_ring.py
 * drives both with the same random operations and compares every answer. */
#include "ring.h"

#include <inttypes.h>
#include <stdio.h>

#define ERR(...) (snprintf(err, TFOS_RING_ERRLEN, __VA_ARGS__), -1)

static int64_t aligned(int64_t size) {
    return (size + TFOS_RING_ALIGN - 1) / TFOS_RING_ALIGN * TFOS_RING_ALIGN;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* (start, end) of a size-byte message written at head; the credit it needs. */
static void place(int64_t head, int64_t size, int64_t capacity, int64_t *start, int64_t *end,
                  int64_t *needed) {
    int64_t offset = head % capacity;
    *start = offset + size <= capacity ? head : head - offset + capacity;
    *end = *start + aligned(size);
    *needed = size ? min64(*end - capacity, head) : 0;
}

int tfos_ring_check_capacity(int64_t capacity, char *err) {
    if (capacity <= 0 || capacity % TFOS_RING_ALIGN)
        return ERR("ring capacity %" PRId64 " must be a positive multiple of %d", capacity,
                   TFOS_RING_ALIGN);
    return 0;
}

int tfos_ring_writer_init(tfos_ring_writer *w, int64_t capacity, char *err) {
    if (tfos_ring_check_capacity(capacity, err)) return -1;
    w->capacity = capacity;
    w->head = w->tail = 0;
    return 0;
}

int tfos_ring_writer_reserve(const tfos_ring_writer *w, int64_t size, int64_t *start,
                             int64_t *end, int64_t *needed, char *err) {
    if (size < 0) return ERR("message size %" PRId64 " is negative", size);
    if (size > w->capacity)
        return ERR("message of %" PRId64 " bytes is larger than the ring of %" PRId64 " bytes",
                   size, w->capacity);
    place(w->head, size, w->capacity, start, end, needed);
    return 0;
}

void tfos_ring_writer_commit(tfos_ring_writer *w, int64_t end) { w->head = end; }

int tfos_ring_writer_credit(tfos_ring_writer *w, int64_t released, char *err) {
    if (!(w->tail <= released && released <= w->head))
        return ERR("ring credit %" PRId64 " outside [%" PRId64 ", %" PRId64 "]: the peer's "
                   "ring bookkeeping is corrupt", released, w->tail, w->head);
    w->tail = released;
    return 0;
}

int tfos_ring_reader_init(tfos_ring_reader *r, int64_t capacity, char *err) {
    if (tfos_ring_check_capacity(capacity, err)) return -1;
    r->capacity = capacity;
    r->head = r->released = r->credited = 0;
    r->need = -1;
    r->credit_every = capacity / 4 > TFOS_RING_ALIGN ? capacity / 4 : TFOS_RING_ALIGN;
    r->nskips = 0;
    return 0;
}

static void skip_dead(tfos_ring_reader *r) {
    int done = 0;
    while (done < r->nskips && r->skips[done][0] == r->released)
        r->released = r->skips[done++][1];
    for (int i = done; i < r->nskips; i++) {
        r->skips[i - done][0] = r->skips[i][0];
        r->skips[i - done][1] = r->skips[i][1];
    }
    r->nskips -= done;
}

int tfos_ring_reader_publish(tfos_ring_reader *r, int64_t size, int64_t *start, int64_t *end,
                             char *err) {
    int64_t needed;
    if (size < 0) return ERR("peer announced a message of negative size %" PRId64, size);
    if (size > r->capacity)
        return ERR("peer announced a message of %" PRId64 " bytes in a ring of %" PRId64
                   " bytes", size, r->capacity);
    place(r->head, size, r->capacity, start, end, &needed);
    if (r->credited < needed)
        return ERR("peer overran the ring: a %" PRId64 "-byte message at %" PRId64 " needs "
                   "credit %" PRId64 ", granted %" PRId64, size, *start, needed, r->credited);
    if (*start > r->head) {
        if (r->nskips == TFOS_RING_MAX_SKIPS)
            return ERR("more than %d dead stretches pending: the ring bookkeeping is corrupt",
                       TFOS_RING_MAX_SKIPS);
        r->skips[r->nskips][0] = r->head;
        r->skips[r->nskips][1] = *start;
        r->nskips++;
        skip_dead(r);
    }
    r->head = *end;
    return 0;
}

int tfos_ring_reader_release(tfos_ring_reader *r, int64_t end, char *err) {
    if (!(r->released <= end && end <= r->head))
        return ERR("release of %" PRId64 " outside [%" PRId64 ", %" PRId64 "]", end,
                   r->released, r->head);
    r->released = end;
    if (r->nskips) skip_dead(r);
    return 0;
}

int tfos_ring_reader_request(tfos_ring_reader *r, int64_t needed, char *err) {
    if (needed > r->head)
        return ERR("peer waits for credit %" PRId64 " beyond what it wrote (%" PRId64 ")",
                   needed, r->head);
    r->need = needed;
    return 0;
}

int64_t tfos_ring_reader_credit_due(tfos_ring_reader *r) {
    int due;
    if (r->need < 0 && r->released - r->credited < r->credit_every)
        return -1;   /* the usual answer, once per message received */
    if (r->need >= 0 && r->credited >= r->need)
        r->need = -1;    /* a credit already sent answers it */
    due = r->released > r->credited &&
          ((r->need >= 0 && r->released >= r->need) ||
           r->released - r->credited >= r->credit_every);
    if (!due) return -1;
    r->credited = r->released;
    r->need = -1;
    return r->released;
}
