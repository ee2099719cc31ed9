/* See engine.h. Layout of this file: helpers; posting writes and their completions; the
 * dispatcher (every immediate the peer can send); the single-poller wait; receiving; sending;
 * set-up and tear-down. Everything that touches the link's state holds e->mu. */
#define _GNU_SOURCE
#include "engine.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring.h"

#define MB_RTS 0            /* mailbox offsets: {size, seq} of an announced large message */
#define MB_CTS 64           /* {landing addr, length, rkey, reserved, seq} */
#define RTS_LEN 16
#define CTS_LEN 32
#define CTRL_BYTES 128      /* staging's first bytes: our outgoing RTS and CTS records */
#define DESC_MAGIC 0x31454654u   /* "TFE1" in the descriptor's reserved word */
#define MAX_MSGS 1024
#define BATCH 64
#define DATA_POSTED (TFOS_NIC_MAX_POSTED - 64)   /* the rest is for control writes */
#define DIRECT_CHUNK ((uint64_t)4 << 20)
#define NO_DEADLINE INT64_MAX
#define NONE UINT64_MAX

enum { RX_EAGER, RX_RTS };
enum { RDV_WAITING, RDV_PROMISED, RDV_DONE };
enum { LAND_FREE, LAND_PROMISED, LAND_FULL, LAND_HELD };
enum { TX_IDLE, TX_WAIT_CTS, TX_CTS_READY };

typedef struct {
    int kind, state;
    uint64_t seq, size;
    int64_t start, end;
} entry;

typedef struct {
    int64_t stage_end;   /* staging is free up to here once this write completed; -1: none */
    int done;
} posted_write;

struct tfos_engine {
    tfos_nic *nic;
    tfos_engine_opts opts;
    char name[200];
    pthread_mutex_t mu, tx_mu, rx_mu;
    pthread_cond_t cv;
    int polling, started, closed, peer_gone, broken, broken_code;
    char why[TFOS_ENGINE_ERRLEN];
    tfos_engine_stats stats;

    /* receiving: our ring (the peer writes into it) and our landing region */
    tfos_mr ring;
    tfos_ring_reader reader;
    int64_t rx_slot;
    uint64_t rx_seq;
    entry *q;
    int qcap, qhead, qlen;
    int64_t current_end;
    tfos_mr landing;
    int has_landing, land_state;
    uint64_t land_seq;

    /* sending: the peer's ring, our staging area, the rendezvous in progress */
    tfos_remote_mr peer;
    int64_t peer_cap, tx_slot, eager_limit, need_sent;
    tfos_ring_writer writer;
    uint64_t tx_seq;
    int tx_state;
    uint64_t rdv_seq, rdv_size;
    tfos_remote_mr rdv_landing;
    tfos_mr stage;
    int64_t stage_cap, stage_head, stage_tail;
    uint64_t ctrl_wr[2];   /* last write from the RTS / CTS control slot */
    posted_write posted[TFOS_NIC_MAX_POSTED];
    uint64_t wr_next, wr_oldest;

    tfos_mr *regions;
    int nregions, cap_regions;
};

/* -- helpers ---------------------------------------------------------------------------- */

static int fail(char *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, TFOS_ENGINE_ERRLEN, fmt, ap);
    va_end(ap);
    return code;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t deadline_of(int timeout_ms) {
    return timeout_ms < 0 ? NO_DEADLINE : now_ns() + (int64_t)timeout_ms * 1000000;
}

static int ms_left(int64_t deadline) {
    int64_t left;
    if (deadline == NO_DEADLINE) return -1;
    left = (deadline - now_ns() + 999999) / 1000000;
    return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

static void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint32_t get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void pack_remote(uint8_t *p, const tfos_remote_mr *r) {
    put_le64(p, r->addr);
    put_le64(p + 8, r->length);
    put_le32(p + 16, r->rkey);
    put_le32(p + 20, r->reserved);
}

static void unpack_remote(const uint8_t *p, tfos_remote_mr *r) {
    r->addr = get_le64(p);
    r->length = get_le64(p + 8);
    r->rkey = get_le32(p + 16);
    r->reserved = get_le32(p + 20);
}

/* The smallest ring stretch a message takes: at most MAX_MSGS messages fit in the ring. */
static int64_t slot_of(int64_t capacity) {
    int64_t slot = capacity / MAX_MSGS / TFOS_RING_ALIGN * TFOS_RING_ALIGN;
    return slot < TFOS_RING_ALIGN ? TFOS_RING_ALIGN : slot;
}

static int64_t inflate(int64_t size, int64_t slot) { return size < slot ? slot : size; }

static uint8_t *mailbox(tfos_engine *e) { return (uint8_t *)e->ring.addr; }

static uint8_t *ring_data(tfos_engine *e) {
    return (uint8_t *)e->ring.addr + TFOS_ENGINE_MAILBOX;
}

/* The link becomes unusable; every later call answers with this. */
static int break_link(tfos_engine *e, int code, const char *fmt, ...) {
    if (!e->broken) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->why, sizeof e->why, fmt, ap);
        va_end(ap);
        e->broken = 1;
        e->broken_code = code;
    }
    pthread_cond_broadcast(&e->cv);
    return e->broken_code;
}

static void set_peer_gone(tfos_engine *e, const char *reason) {
    if (!e->peer_gone && !e->broken) {
        snprintf(e->why, sizeof e->why, "%s", reason);
        e->peer_gone = 1;
    }
    pthread_cond_broadcast(&e->cv);
}

static int check_usable(tfos_engine *e, int sending, char *err) {
    if (e->closed) return fail(err, TFOS_NIC_ECLOSED, "%s is closed", e->name);
    if (e->broken) return fail(err, e->broken_code, "%s", e->why);
    if (!e->started)
        return fail(err, TFOS_NIC_EINVAL, "%s is not started: call start() with the peer's "
                    "ring descriptor first", e->name);
    if (sending && e->peer_gone) return fail(err, TFOS_NIC_ECLOSED, "%s", e->why);
    return 0;
}

/* -- writes and their completions -------------------------------------------------------- */

static uint32_t imm_of(int kind, uint64_t value) {
    return (uint32_t)kind << TFOS_IMM_SHIFT | (uint32_t)(value & TFOS_IMM_VALUE);
}

/* Posts one write: of length bytes of local at local_offset or, when pieces is given, of the
 * npieces pieces of any memory laid one after another (the carrier's write_gather); its
 * completion frees staging up to stage_end. On failure the link is broken (or the peer gone)
 * and the code returned, with the reason in err. */
static int post_write(tfos_engine *e, const tfos_mr *local, uint64_t local_offset,
                      const tfos_iov *pieces, int npieces, const tfos_remote_mr *remote,
                      uint64_t remote_offset, uint64_t length, int with_imm, uint32_t imm,
                      int64_t stage_end, const char *what, char *err) {
    char nerr[TFOS_NIC_ERRLEN];
    uint64_t id = e->wr_next;
    int rc;
    if (e->wr_next - e->wr_oldest >= TFOS_NIC_MAX_POSTED)
        return fail(err, break_link(e, TFOS_NIC_EIO, "%s: more than %d writes posted at once "
                    "(an engine bug): the link is unusable", e->name, TFOS_NIC_MAX_POSTED),
                    "%s", e->why);
    e->posted[id % TFOS_NIC_MAX_POSTED].stage_end = stage_end;
    e->posted[id % TFOS_NIC_MAX_POSTED].done = 0;
    rc = pieces ? e->nic->ops->write_gather(e->nic, pieces, npieces, remote, remote_offset,
                                            with_imm ? TFOS_NIC_IMM : 0, imm, id, nerr)
                : e->nic->ops->write(e->nic, local, local_offset, remote, remote_offset, length,
                                     with_imm ? TFOS_NIC_IMM : 0, imm, id, nerr);
    if (rc == TFOS_NIC_ECLOSED) {
        set_peer_gone(e, nerr);
        return fail(err, rc, "%s", nerr);
    }
    if (rc < 0) {
        break_link(e, rc, "%s: writing %s failed: %s", e->name, what, nerr);
        return fail(err, rc, "%s", e->why);
    }
    e->wr_next++;
    return 0;
}

static int post(tfos_engine *e, const tfos_mr *local, uint64_t local_offset,
                const tfos_remote_mr *remote, uint64_t remote_offset, uint64_t length,
                int with_imm, uint32_t imm, int64_t stage_end, const char *what, char *err) {
    return post_write(e, local, local_offset, NULL, 0, remote, remote_offset, length, with_imm,
                      imm, stage_end, what, err);
}

static int post_control(tfos_engine *e, int kind, uint64_t value, const char *what) {
    char err[TFOS_ENGINE_ERRLEN];
    return post(e, &e->stage, 0, &e->peer, 0, 0, 1, imm_of(kind, value), -1, what, err);
}

static int on_sent(tfos_engine *e, uint64_t wr_id) {
    if (wr_id < e->wr_oldest || wr_id >= e->wr_next)
        return break_link(e, TFOS_NIC_EIO, "%s: the carrier completed write #%" PRIu64 " that "
                          "was not posted (a carrier bug): the link is unusable", e->name, wr_id);
    e->posted[wr_id % TFOS_NIC_MAX_POSTED].done = 1;
    while (e->wr_oldest < e->wr_next && e->posted[e->wr_oldest % TFOS_NIC_MAX_POSTED].done) {
        int64_t end = e->posted[e->wr_oldest % TFOS_NIC_MAX_POSTED].stage_end;
        if (end >= 0) e->stage_tail = end;
        e->wr_oldest++;
    }
    return 0;
}

static int write_done(tfos_engine *e, uint64_t wr_id) {
    return wr_id == NONE || wr_id < e->wr_oldest;
}

/* -- the receiver's landing region and credits ------------------------------------------- */

static entry *find_rts(tfos_engine *e, uint64_t seq) {
    for (int i = 0; i < e->qlen; i++) {
        entry *en = &e->q[(e->qhead + i) % e->qcap];
        if (en->kind == RX_RTS && en->seq == seq) return en;
    }
    return NULL;
}

/* Clear-to-send for en: our landing region, grown if needed, described in the peer's mailbox. */
static int grant(tfos_engine *e, entry *en) {
    char nerr[TFOS_NIC_ERRLEN];
    uint8_t *rec = (uint8_t *)e->stage.addr + 64;
    tfos_remote_mr land;
    if (!e->has_landing || e->landing.length < en->size) {
        uint64_t want = en->size, grown = e->has_landing ? e->landing.length * 2 : 0;
        if (grown > want && grown <= want + (want >> 1)) want = grown;   /* fewer regrowths */
        want = (want + 65535) & ~(uint64_t)65535;
        if (e->has_landing) e->nic->ops->free_mr(e->nic, &e->landing);
        e->has_landing = 0;
        if (e->nic->ops->alloc_mr(e->nic, want, &e->landing, nerr) < 0)
            return break_link(e, TFOS_NIC_ENOMEM, "%s: no landing region for a %" PRIu64
                              "-byte message: %s", e->name, en->size, nerr);
        e->has_landing = 1;
        e->stats.landing_bytes = want;
    }
    e->nic->ops->export_mr(e->nic, &e->landing, &land);
    pack_remote(rec, &land);
    put_le64(rec + 24, en->seq);
    if (post(e, &e->stage, 64, &e->peer, MB_CTS, CTS_LEN, 1, imm_of(TFOS_IMM_CTS, en->seq), -1,
             "a clear-to-send", nerr) < 0)
        return -1;
    e->ctrl_wr[1] = e->wr_next - 1;
    e->land_state = LAND_PROMISED;
    e->land_seq = en->seq;
    en->state = RDV_PROMISED;
    return 0;
}

/* What the receiving side owes the peer: a credit, a clear-to-send. Never blocks. */
static void flush(tfos_engine *e) {
    int64_t due;
    if (!e->started || e->broken || e->closed || e->peer_gone) return;
    due = tfos_ring_reader_credit_due(&e->reader);
    if (due >= 0) {
        if (post_control(e, TFOS_IMM_CREDIT, (uint64_t)due / TFOS_RING_ALIGN, "a credit") < 0)
            return;
        e->stats.credits_sent++;
    }
    if (e->land_state == LAND_FREE && write_done(e, e->ctrl_wr[1])) {
        for (int i = 0; i < e->qlen; i++) {
            entry *en = &e->q[(e->qhead + i) % e->qcap];
            if (en->kind == RX_RTS && en->state == RDV_WAITING) {
                grant(e, en);
                break;
            }
        }
    }
}

/* -- the dispatcher: every immediate the peer may send ------------------------------------ */

static int push_entry(tfos_engine *e, const entry *en) {
    if (e->qlen == e->qcap) {
        int cap = e->qcap * 2;
        entry *q = malloc(sizeof(entry) * cap);
        if (!q) return break_link(e, TFOS_NIC_ENOMEM, "%s: out of memory", e->name);
        for (int i = 0; i < e->qlen; i++) q[i] = e->q[(e->qhead + i) % e->qcap];
        free(e->q);
        e->q = q;
        e->qcap = cap;
        e->qhead = 0;
    }
    e->q[(e->qhead + e->qlen) % e->qcap] = *en;
    e->qlen++;
    return 0;
}

static int out_of_sequence(tfos_engine *e, const char *what, uint64_t expected, uint32_t imm) {
    return break_link(e, TFOS_ENGINE_EPROTO, "%s: out-of-sequence %s (immediate 0x%08x, "
                      "expected #%" PRIu64 "): the peer broke the protocol or the carrier "
                      "reordered writes; the link is unusable, reconnect", e->name, what, imm,
                      expected);
}

static int protocol_error(tfos_engine *e, const char *fmt, const char *detail) {
    return break_link(e, TFOS_ENGINE_EPROTO, "%s: the peer broke the protocol (%s: %s); the "
                      "link is unusable, reconnect", e->name, fmt, detail);
}

static int on_message(tfos_engine *e, uint32_t imm, uint64_t length, int kind) {
    char rerr[TFOS_RING_ERRLEN];
    entry en = {0};
    uint32_t value = imm & TFOS_IMM_VALUE;
    if (value != (e->rx_seq & TFOS_IMM_VALUE))
        return out_of_sequence(e, kind == TFOS_IMM_EAGER ? "message" : "announcement",
                               e->rx_seq, imm);
    if (e->land_state == LAND_PROMISED)   /* writes arrive in order: its DATA was lost */
        return break_link(e, TFOS_ENGINE_EPROTO, "%s: message #%" PRIu64 " arrived before the "
                          "payload of #%" PRIu64 " was announced complete (a lost immediate): "
                          "the link is unusable, reconnect", e->name, e->rx_seq, e->land_seq);
    en.seq = e->rx_seq;
    if (kind == TFOS_IMM_EAGER) {
        if (length > (uint64_t)e->reader.capacity)
            return protocol_error(e, "eager message", "larger than our ring");
        en.kind = RX_EAGER;
        en.size = length;
        if (tfos_ring_reader_publish(&e->reader, inflate((int64_t)length, e->rx_slot),
                                     &en.start, &en.end, rerr))
            return protocol_error(e, "eager message", rerr);
        e->stats.received_eager++;
    } else {
        uint64_t seq = get_le64(mailbox(e) + MB_RTS + 8);
        en.kind = RX_RTS;
        en.size = get_le64(mailbox(e) + MB_RTS);
        if (seq != e->rx_seq) return out_of_sequence(e, "announcement record", e->rx_seq, imm);
        if (en.size == 0 || en.size > ((uint64_t)1 << 48))
            return protocol_error(e, "announcement", "a size no message has");
        en.state = RDV_WAITING;
        e->stats.received_rendezvous++;
    }
    e->rx_seq++;
    return push_entry(e, &en);
}

static int on_credit(tfos_engine *e, uint32_t value) {
    char rerr[TFOS_RING_ERRLEN];
    uint64_t base = (uint64_t)e->writer.tail / TFOS_RING_ALIGN;
    uint64_t units = base + ((value - base) & TFOS_IMM_VALUE);
    if (tfos_ring_writer_credit(&e->writer, (int64_t)(units * TFOS_RING_ALIGN), rerr))
        return protocol_error(e, "credit", rerr);
    e->stats.credits_received++;
    return 0;
}

static int on_need(tfos_engine *e, uint32_t value) {
    char rerr[TFOS_RING_ERRLEN];
    uint64_t top = (uint64_t)e->reader.head / TFOS_RING_ALIGN;
    uint64_t units = top - ((top - value) & TFOS_IMM_VALUE);
    if (tfos_ring_reader_request(&e->reader, (int64_t)(units * TFOS_RING_ALIGN), rerr))
        return protocol_error(e, "credit request", rerr);
    return 0;
}

static int on_cts(tfos_engine *e, uint32_t imm) {
    const uint8_t *rec = mailbox(e) + MB_CTS;
    if (e->tx_state != TX_WAIT_CTS || (imm & TFOS_IMM_VALUE) != (e->rdv_seq & TFOS_IMM_VALUE))
        return out_of_sequence(e, "clear-to-send", e->rdv_seq, imm);
    if (get_le64(rec + 24) != e->rdv_seq)
        return out_of_sequence(e, "clear-to-send record", e->rdv_seq, imm);
    unpack_remote(rec, &e->rdv_landing);
    if (e->rdv_landing.length < e->rdv_size)
        return protocol_error(e, "clear-to-send", "a landing region smaller than the message");
    e->tx_state = TX_CTS_READY;
    return 0;
}

static int on_data(tfos_engine *e, uint32_t imm) {
    entry *en;
    if (e->land_state != LAND_PROMISED ||
        (imm & TFOS_IMM_VALUE) != (e->land_seq & TFOS_IMM_VALUE))
        return out_of_sequence(e, "payload", e->land_seq, imm);
    en = find_rts(e, e->land_seq);
    if (!en) return protocol_error(e, "payload", "no announcement for it");
    en->state = RDV_DONE;
    e->land_state = LAND_FULL;
    return 0;
}

static int on_imm(tfos_engine *e, uint32_t imm, uint64_t length) {
    int kind = (int)(imm >> TFOS_IMM_SHIFT);
    char detail[TFOS_ENGINE_ERRLEN];
    switch (kind) {
    case TFOS_IMM_EAGER:
    case TFOS_IMM_RTS: return on_message(e, imm, length, kind);
    case TFOS_IMM_CTS: return on_cts(e, imm);
    case TFOS_IMM_DATA: return on_data(e, imm);
    case TFOS_IMM_CREDIT: return on_credit(e, imm & TFOS_IMM_VALUE);
    case TFOS_IMM_NEED: return on_need(e, imm & TFOS_IMM_VALUE);
    case TFOS_IMM_BYE:
        snprintf(detail, sizeof detail, "%s: the peer closed the link", e->name);
        set_peer_gone(e, detail);
        return 0;
    default:
        snprintf(detail, sizeof detail, "immediate 0x%08x", imm);
        return protocol_error(e, "unknown immediate kind", detail);
    }
}

static void dispatch(tfos_engine *e, const tfos_completion *c, int n) {
    for (int i = 0; i < n && !e->broken; i++) {
        if (c[i].kind == TFOS_NIC_SENT)
            on_sent(e, c[i].wr_id);
        else if (c[i].kind == TFOS_NIC_RECV_IMM)
            on_imm(e, c[i].imm, c[i].length);
        else
            break_link(e, TFOS_NIC_EIO, "%s: the carrier returned a completion of unknown "
                       "kind %d (a carrier bug)", e->name, c[i].kind);
    }
}

/* -- waiting: one thread polls, the others sleep on the condition ------------------------- */

typedef int (*pred_fn)(tfos_engine *e, const void *arg);

/* Until pred holds: 0; else ETIMEDOUT (err empty: the caller says what it waited for),
 * ECLOSED, or the error that broke the link. Called and returns with e->mu held. */
static int wait_for(tfos_engine *e, pred_fn pred, const void *arg, int64_t deadline,
                    int sending, char *err) {
    tfos_completion c[BATCH];
    char nerr[TFOS_NIC_ERRLEN];
    int polled = 0, rc, ms, n;
    for (;;) {
        if (pred(e, arg)) return 0;
        if ((rc = check_usable(e, sending, err))) return rc;
        if (e->peer_gone) return fail(err, TFOS_NIC_ECLOSED, "%s", e->why);
        ms = ms_left(deadline);
        if (ms == 0 && (polled || e->polling)) return fail(err, TFOS_NIC_ETIMEDOUT, "%s", "");
        if (e->polling) {
            if (deadline == NO_DEADLINE) {
                pthread_cond_wait(&e->cv, &e->mu);
            } else {
                struct timespec ts = {deadline / 1000000000, deadline % 1000000000};
                pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            }
            continue;
        }
        e->polling = 1;
        polled = 1;
        pthread_mutex_unlock(&e->mu);
        n = e->nic->ops->poll(e->nic, c, BATCH, ms, nerr);
        pthread_mutex_lock(&e->mu);
        e->polling = 0;
        if (n > 0) {
            dispatch(e, c, n);
            flush(e);
        } else if (n == TFOS_NIC_ECLOSED) {
            set_peer_gone(e, nerr);
        } else if (n != TFOS_NIC_ETIMEDOUT) {
            break_link(e, n, "%s: polling failed: %s", e->name, nerr);
        }
        pthread_cond_broadcast(&e->cv);
    }
}

/* -- receiving ------------------------------------------------------------------------------ */

static int head_known(tfos_engine *e, const void *arg) {
    (void)arg;
    return e->qlen > 0;
}

static int head_ready(tfos_engine *e, const void *arg) {
    const entry *en = &e->q[e->qhead];
    (void)arg;
    return e->qlen > 0 && (en->kind == RX_EAGER || en->state == RDV_DONE);
}

static void release_current(tfos_engine *e) {
    char rerr[TFOS_RING_ERRLEN];
    if (e->current_end >= 0) {
        if (tfos_ring_reader_release(&e->reader, e->current_end, rerr))
            break_link(e, TFOS_NIC_EIO, "%s: %s (an engine bug)", e->name, rerr);
        e->current_end = -1;
    }
    if (e->land_state == LAND_HELD) e->land_state = LAND_FREE;
    flush(e);
}

static void take_head(tfos_engine *e, const void **data, uint64_t *size) {
    entry en = e->q[e->qhead];
    e->qhead = (e->qhead + 1) % e->qcap;
    e->qlen--;
    *size = en.size;
    if (en.kind == RX_EAGER) {
        *data = ring_data(e) + en.start % e->reader.capacity;
        e->current_end = en.end;
    } else {
        *data = e->landing.addr;
        e->land_state = LAND_HELD;
    }
}

static int recv_timeout(tfos_engine *e, int timeout_ms, char *err) {
    return fail(err, TFOS_NIC_ETIMEDOUT, "%s: no message within %d ms", e->name, timeout_ms);
}

int tfos_engine_recv(tfos_engine *e, const void **data, uint64_t *size, int timeout_ms,
                     char *err) {
    int64_t deadline = deadline_of(timeout_ms);
    int rc;
    pthread_mutex_lock(&e->rx_mu);
    pthread_mutex_lock(&e->mu);
    rc = check_usable(e, 0, err);
    if (!rc) {
        release_current(e);
        rc = wait_for(e, head_ready, NULL, deadline, 0, err);
    }
    if (!rc) take_head(e, data, size);
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->rx_mu);
    return rc == TFOS_NIC_ETIMEDOUT ? recv_timeout(e, timeout_ms, err) : rc;
}

int tfos_engine_recv_into(tfos_engine *e, void *buf, uint64_t cap, uint64_t *size,
                          int timeout_ms, char *err) {
    int64_t deadline = deadline_of(timeout_ms);
    const void *data = NULL;
    int rc;
    pthread_mutex_lock(&e->rx_mu);
    pthread_mutex_lock(&e->mu);
    rc = check_usable(e, 0, err);
    if (!rc) {
        release_current(e);
        rc = wait_for(e, head_known, NULL, deadline, 0, err);
    }
    if (!rc && e->q[e->qhead].size > cap)
        rc = fail(err, TFOS_ENGINE_ETOOBIG, "%s: a message of %" PRIu64 " bytes does not fit "
                  "the buffer of %" PRIu64 " bytes; it stays queued (receive it with recv(), "
                  "or pass a larger buffer)", e->name, e->q[e->qhead].size, cap);
    if (!rc) rc = wait_for(e, head_ready, NULL, deadline, 0, err);
    if (!rc) {
        take_head(e, &data, size);
        /* The message stays ours (current_end / LAND_HELD) while we copy without the lock. */
        pthread_mutex_unlock(&e->mu);
        memcpy(buf, data, *size);
        pthread_mutex_lock(&e->mu);
        release_current(e);
    }
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->rx_mu);
    return rc == TFOS_NIC_ETIMEDOUT ? recv_timeout(e, timeout_ms, err) : rc;
}

/* -- sending -------------------------------------------------------------------------------- */

static int credit_reaches(tfos_engine *e, const void *needed) {
    return e->writer.tail >= *(const int64_t *)needed;
}

static int posted_room(tfos_engine *e, const void *arg) {
    (void)arg;
    return e->wr_next - e->wr_oldest < DATA_POSTED;
}

static int completed(tfos_engine *e, const void *wr_id) {
    return write_done(e, *(const uint64_t *)wr_id);
}

static int cts_ready(tfos_engine *e, const void *arg) {
    (void)arg;
    return e->tx_state == TX_CTS_READY;
}

/* Where a staged write of n bytes starts: [*start, *start + n) of the staging FIFO. */
static int stage_fits(tfos_engine *e, const void *n_arg) {
    int64_t n = *(const int64_t *)n_arg, head = e->stage_head, off = head % e->stage_cap;
    int64_t start = off + n <= e->stage_cap ? head : head - off + e->stage_cap;
    return start + n - e->stage_tail <= e->stage_cap;
}

static int stage_alloc(tfos_engine *e, int64_t n, int64_t deadline, uint64_t *offset,
                       int64_t *end, char *err) {
    int64_t head, off, start;
    int rc;
    n = (n + TFOS_RING_ALIGN - 1) / TFOS_RING_ALIGN * TFOS_RING_ALIGN;
    if ((rc = wait_for(e, posted_room, NULL, deadline, 1, err))) return rc;
    if ((rc = wait_for(e, stage_fits, &n, deadline, 1, err))) return rc;
    head = e->stage_head;
    off = head % e->stage_cap;
    start = off + n <= e->stage_cap ? head : head - off + e->stage_cap;
    e->stage_head = *end = start + n;
    *offset = CTRL_BYTES + (uint64_t)(start % e->stage_cap);
    return 0;
}

static int inside(const tfos_mr *mr, const void *base, uint64_t len) {
    const uint8_t *p = base, *a = mr->addr;
    return p >= a && p + len <= a + mr->length;
}

/* The registered region holding [base, base + len), copied into *out: alloc()'d memory, or a
 * message received on this link (forwarding one needs no staging copy either). */
static int find_region(tfos_engine *e, const void *base, uint64_t len, tfos_mr *out) {
    const tfos_mr *hit = NULL;
    for (int i = 0; i < e->nregions && !hit; i++)
        if (inside(&e->regions[i], base, len)) hit = &e->regions[i];
    if (!hit && e->has_landing && inside(&e->landing, base, len)) hit = &e->landing;
    if (!hit && inside(&e->ring, base, len)) hit = &e->ring;
    if (!hit && e->nic->ops->any_source) hit = &TFOS_NIC_ANY;   /* shm: no staging copy */
    if (hit) *out = *hit;
    return hit != NULL;
}

static void gather(uint8_t *dst, const tfos_iov *parts, int nparts) {
    for (int i = 0; i < nparts; i++) {
        if (parts[i].len) memcpy(dst, parts[i].base, parts[i].len);
        dst += parts[i].len;
    }
}

static int send_eager(tfos_engine *e, const tfos_iov *parts, int nparts, uint64_t total,
                      int64_t deadline, int timeout_ms, char *err) {
    char rerr[TFOS_RING_ERRLEN];
    int64_t start, end, needed, stage_end = -1;
    uint64_t local_offset, wr;
    tfos_mr local = e->stage;
    int rc;
    if (tfos_ring_writer_reserve(&e->writer, inflate((int64_t)total, e->tx_slot), &start, &end,
                                 &needed, rerr))
        return fail(err, TFOS_NIC_EINVAL, "%s: %s", e->name, rerr);
    if (e->writer.tail < needed) {
        if (needed > e->need_sent) {
            if (post_control(e, TFOS_IMM_NEED, (uint64_t)needed / TFOS_RING_ALIGN,
                             "a credit request") < 0)
                return check_usable(e, 1, err);
            e->need_sent = needed;
            e->stats.needs_sent++;
        }
        rc = wait_for(e, credit_reaches, &needed, deadline, 1, err);
        if (rc == TFOS_NIC_ETIMEDOUT)
            return fail(err, rc, "%s: no room in the peer's ring for %d ms: the peer is not "
                        "returning credits (it is not receiving, is stuck, or its credits were "
                        "lost)", e->name, timeout_ms);
        if (rc) return rc;
    }
    if ((rc = wait_for(e, posted_room, NULL, deadline, 1, err))) return rc;
    /* Several parts on a carrier that gathers them itself (shm): each written from where it
     * lies, one copy per byte; otherwise one part from registered memory, or staging. */
    const int gathered = nparts > 1 && e->nic->ops->write_gather;
    if (gathered || (nparts == 1 && total && find_region(e, parts[0].base, total, &local))) {
        local_offset = gathered ? 0 : (uint64_t)((uintptr_t)parts[0].base - (uintptr_t)local.addr);
        e->stats.direct_bytes += total;
    } else {
        if ((rc = stage_alloc(e, (int64_t)total, deadline, &local_offset, &stage_end, err)))
            return rc;
        gather((uint8_t *)e->stage.addr + local_offset, parts, nparts);
        e->stats.staged_bytes += total;
    }
    rc = post_write(e, &local, local_offset, gathered ? parts : NULL, nparts, &e->peer,
                    TFOS_ENGINE_MAILBOX + (uint64_t)(start % e->writer.capacity), total, 1,
                    imm_of(TFOS_IMM_EAGER, e->tx_seq), stage_end, "a message", err);
    if (rc) return rc;
    wr = e->wr_next - 1;
    tfos_ring_writer_commit(&e->writer, end);
    e->tx_seq++;
    e->stats.sent_eager++;
    /* A direct write from the caller's region is waited for, so that memory is free on
     * return; a gathered one was copied before write_gather returned, and waiting would only
     * report a peer that closed after it got the message (a node replying to a feeder that
     * has all its results, say). */
    if (stage_end < 0 && !gathered) return wait_for(e, completed, &wr, NO_DEADLINE, 1, err);
    return 0;
}

static int rdv_announce(tfos_engine *e, uint64_t total, int64_t deadline, char *err) {
    uint8_t *rec = (uint8_t *)e->stage.addr;
    int rc;
    if ((rc = wait_for(e, completed, &e->ctrl_wr[0], deadline, 1, err))) return rc;
    put_le64(rec, total);
    put_le64(rec + 8, e->tx_seq);
    rc = post(e, &e->stage, 0, &e->peer, MB_RTS, RTS_LEN, 1, imm_of(TFOS_IMM_RTS, e->tx_seq),
              -1, "an announcement", err);
    if (rc) return rc;
    e->ctrl_wr[0] = e->wr_next - 1;
    e->tx_state = TX_WAIT_CTS;
    e->rdv_seq = e->tx_seq++;
    e->rdv_size = total;
    e->stats.sent_rendezvous++;
    return 0;
}

/* The payload into the peer's landing region: registered parts directly, the others through
 * staging chunks; the write that ends the message carries DATA. */
static int rdv_payload(tfos_engine *e, const tfos_iov *parts, int nparts, uint64_t total,
                       int64_t deadline, char *err) {
    uint64_t off = 0, last_direct = NONE, local_offset, n;
    uint32_t imm = imm_of(TFOS_IMM_DATA, e->rdv_seq);
    int64_t stage_end;
    int i = 0, rc;
    uint64_t in_part = 0;
    while (off < total) {
        tfos_mr mr;
        while (in_part == parts[i].len) i++, in_part = 0;
        if (find_region(e, parts[i].base, parts[i].len, &mr)) {
            if ((rc = wait_for(e, posted_room, NULL, deadline, 1, err))) return rc;
            if (!find_region(e, parts[i].base, parts[i].len, &mr))
                return fail(err, TFOS_NIC_EINVAL, "%s: registered memory was freed while it "
                            "was being sent", e->name);
            n = parts[i].len - in_part;
            if (n > DIRECT_CHUNK) n = DIRECT_CHUNK;
            local_offset = (uint64_t)((uintptr_t)parts[i].base + in_part - (uintptr_t)mr.addr);
            rc = post(e, &mr, local_offset, &e->rdv_landing, off, n, off + n == total, imm, -1,
                      "a payload", err);
            if (rc) return rc;
            last_direct = e->wr_next - 1;
            in_part += n;
            e->stats.direct_bytes += n;
        } else {
            /* One chunk gathered from this part and the unregistered ones after it. */
            uint64_t want = 0, filled = 0;
            int j = i;
            uint64_t at = in_part;
            while (j < nparts && want < (uint64_t)e->opts.chunk_bytes) {
                if (parts[j].len > at && find_region(e, parts[j].base, parts[j].len, &mr)) break;
                want += parts[j].len - at;
                j++, at = 0;
            }
            if (want > (uint64_t)e->opts.chunk_bytes) want = (uint64_t)e->opts.chunk_bytes;
            if ((rc = stage_alloc(e, (int64_t)want, deadline, &local_offset, &stage_end, err)))
                return rc;
            while (filled < want) {
                uint64_t take = parts[i].len - in_part;
                if (take > want - filled) take = want - filled;
                memcpy((uint8_t *)e->stage.addr + local_offset + filled,
                       (const uint8_t *)parts[i].base + in_part, take);
                filled += take;
                in_part += take;
                if (in_part == parts[i].len && filled < want) i++, in_part = 0;
            }
            n = want;
            rc = post(e, &e->stage, local_offset, &e->rdv_landing, off, n, off + n == total,
                      imm, stage_end, "a payload", err);
            if (rc) return rc;
            e->stats.staged_bytes += n;
        }
        off += n;
    }
    e->tx_state = TX_IDLE;
    return wait_for(e, completed, &last_direct, NO_DEADLINE, 1, err);
}

static int send_rendezvous(tfos_engine *e, const tfos_iov *parts, int nparts, uint64_t total,
                           int64_t deadline, int timeout_ms, char *err) {
    int rc;
    if (e->tx_state == TX_IDLE && (rc = rdv_announce(e, total, deadline, err))) {
        if (rc == TFOS_NIC_ETIMEDOUT)
            return fail(err, rc, "%s: could not announce a %" PRIu64 "-byte message within "
                        "%d ms (the carrier did not complete earlier writes)", e->name, total,
                        timeout_ms);
        return rc;
    }
    rc = wait_for(e, cts_ready, NULL, deadline, 1, err);
    if (rc == TFOS_NIC_ETIMEDOUT)
        return fail(err, rc, "%s: the peer did not clear a %" PRIu64 "-byte message to land "
                    "within %d ms (it is not receiving, or its previous large message is "
                    "still held); send the same message again to keep waiting", e->name,
                    total, timeout_ms);
    if (rc) return rc;
    rc = rdv_payload(e, parts, nparts, total, deadline, err);
    if (rc == TFOS_NIC_ETIMEDOUT) {
        break_link(e, TFOS_NIC_ECLOSED, "%s: a send timed out in the middle of a %" PRIu64
                   "-byte payload; the link is unusable, reconnect", e->name, total);
        return fail(err, rc, "%s", e->why);
    }
    return rc;
}

int tfos_engine_send(tfos_engine *e, const tfos_iov *parts, int nparts, int timeout_ms,
                     char *err) {
    int64_t deadline = deadline_of(timeout_ms);
    uint64_t total = 0;
    int rc;
    for (int i = 0; i < nparts; i++) total += parts[i].len;
    pthread_mutex_lock(&e->tx_mu);
    pthread_mutex_lock(&e->mu);
    rc = check_usable(e, 1, err);
    if (!rc && e->tx_state != TX_IDLE && total != e->rdv_size)
        rc = fail(err, TFOS_NIC_EINVAL, "%s: the previous send of %" PRIu64 " bytes timed out "
                  "after announcing it; send that same message again (this one has %" PRIu64
                  " bytes), or close the link", e->name, e->rdv_size, total);
    if (!rc) {
        if (e->tx_state == TX_IDLE && total <= (uint64_t)e->eager_limit)
            rc = send_eager(e, parts, nparts, total, deadline, timeout_ms, err);
        else
            rc = send_rendezvous(e, parts, nparts, total, deadline, timeout_ms, err);
    }
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->tx_mu);
    return rc;
}

/* -- registered memory ------------------------------------------------------------------ */

void *tfos_engine_alloc(tfos_engine *e, uint64_t size, char *err) {
    char nerr[TFOS_NIC_ERRLEN];
    tfos_mr mr;
    void *addr = NULL;
    pthread_mutex_lock(&e->mu);
    if (e->nregions == e->cap_regions) {
        int cap = e->cap_regions ? e->cap_regions * 2 : 8;
        tfos_mr *grown = realloc(e->regions, sizeof(tfos_mr) * cap);
        if (!grown) {
            fail(err, TFOS_NIC_ENOMEM, "%s: out of memory", e->name);
            goto out;
        }
        e->regions = grown;
        e->cap_regions = cap;
    }
    if (e->nic->ops->alloc_mr(e->nic, size ? size : 1, &mr, nerr) < 0) {
        fail(err, TFOS_NIC_ENOMEM, "%s: cannot register %" PRIu64 " bytes: %s", e->name, size,
             nerr);
        goto out;
    }
    e->regions[e->nregions++] = mr;
    addr = mr.addr;
out:
    pthread_mutex_unlock(&e->mu);
    return addr;
}

void tfos_engine_free(tfos_engine *e, void *addr) {
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->nregions; i++) {
        if (e->regions[i].addr == addr) {
            e->nic->ops->free_mr(e->nic, &e->regions[i]);
            e->regions[i] = e->regions[--e->nregions];
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
}

/* -- set-up and tear-down --------------------------------------------------------------- */

void tfos_engine_default_opts(tfos_engine_opts *opts) {
    opts->ring_bytes = 4 << 20;
    opts->eager_max = 64 << 10;
    opts->chunk_bytes = 256 << 10;
}

static int check_opts(const tfos_engine_opts *o, char *err) {
    if (o->ring_bytes < 4096 || o->ring_bytes > ((int64_t)1 << 32) ||
        o->ring_bytes % TFOS_RING_ALIGN)
        return fail(err, TFOS_NIC_EINVAL, "ring_bytes=%" PRId64 ": pass a multiple of %d "
                    "between 4096 and 4 GiB", o->ring_bytes, TFOS_RING_ALIGN);
    if (o->eager_max < 0 || o->eager_max > ((int64_t)64 << 20))
        return fail(err, TFOS_NIC_EINVAL, "eager_max=%" PRId64 ": pass 0 to 64 MiB",
                    o->eager_max);
    if (o->chunk_bytes < 4096 || o->chunk_bytes > ((int64_t)64 << 20))
        return fail(err, TFOS_NIC_EINVAL, "chunk_bytes=%" PRId64 ": pass 4 KiB to 64 MiB",
                    o->chunk_bytes);
    return 0;
}

int tfos_engine_create(tfos_nic *nic, const tfos_engine_opts *opts, tfos_engine **out,
                       char *err) {
    char nerr[TFOS_NIC_ERRLEN], rerr[TFOS_RING_ERRLEN];
    pthread_condattr_t attr;
    tfos_engine *e;
    int rc;
    if ((rc = check_opts(opts, err))) {
        nic->ops->destroy(nic);
        return rc;
    }
    e = calloc(1, sizeof *e);
    if (!e) {
        nic->ops->destroy(nic);
        return fail(err, TFOS_NIC_ENOMEM, "out of memory");
    }
    e->nic = nic;
    e->opts = *opts;
    snprintf(e->name, sizeof e->name, "%s link to %s", nic->ops->name, nic->peer);
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->tx_mu, NULL);
    pthread_mutex_init(&e->rx_mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cv, &attr);
    pthread_condattr_destroy(&attr);
    e->current_end = -1;
    e->ctrl_wr[0] = e->ctrl_wr[1] = NONE;
    e->qcap = 64;
    e->q = malloc(sizeof(entry) * e->qcap);
    e->stage_cap = 4 * opts->chunk_bytes;
    if (e->stage_cap < 2 * opts->eager_max) e->stage_cap = 2 * opts->eager_max;
    e->stage_cap = (e->stage_cap + TFOS_RING_ALIGN - 1) / TFOS_RING_ALIGN * TFOS_RING_ALIGN;
    tfos_ring_reader_init(&e->reader, opts->ring_bytes, rerr);
    e->rx_slot = slot_of(opts->ring_bytes);
    if (!e->q) {
        rc = fail(err, TFOS_NIC_ENOMEM, "out of memory");
        goto fail;
    }
    if (nic->ops->alloc_mr(nic, TFOS_ENGINE_MAILBOX + (uint64_t)opts->ring_bytes, &e->ring,
                           nerr) < 0) {
        rc = fail(err, TFOS_NIC_ENOMEM, "%s: cannot register the receive ring: %s", e->name,
                  nerr);
        goto fail;
    }
    if (nic->ops->alloc_mr(nic, CTRL_BYTES + (uint64_t)e->stage_cap, &e->stage, nerr) < 0) {
        nic->ops->free_mr(nic, &e->ring);
        rc = fail(err, TFOS_NIC_ENOMEM, "%s: cannot register the staging area: %s", e->name,
                  nerr);
        goto fail;
    }
    *out = e;
    return 0;
fail:
    free(e->q);
    nic->ops->destroy(nic);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->tx_mu);
    pthread_mutex_destroy(&e->rx_mu);
    free(e);
    return rc;
}

void tfos_engine_descriptor(tfos_engine *e, uint8_t out[TFOS_ENGINE_DESC_LEN]) {
    tfos_remote_mr r;
    e->nic->ops->export_mr(e->nic, &e->ring, &r);
    r.reserved = DESC_MAGIC;
    pack_remote(out, &r);
}

int tfos_engine_start(tfos_engine *e, const uint8_t *desc, size_t len, char *err) {
    char rerr[TFOS_RING_ERRLEN];
    tfos_remote_mr r;
    int64_t cap;
    int rc = 0;
    if (len != TFOS_ENGINE_DESC_LEN)
        return fail(err, TFOS_ENGINE_EPROTO, "%s: a ring descriptor has %d bytes, got %zu",
                    e->name, TFOS_ENGINE_DESC_LEN, len);
    unpack_remote(desc, &r);
    if (r.reserved != DESC_MAGIC)
        return fail(err, TFOS_ENGINE_EPROTO, "%s: the peer's ring descriptor is not one of "
                    "this engine's (version word 0x%08x): run the same tfos on both ends",
                    e->name, r.reserved);
    cap = (int64_t)r.length - TFOS_ENGINE_MAILBOX;
    pthread_mutex_lock(&e->mu);
    if (e->started) {
        rc = fail(err, TFOS_NIC_EINVAL, "%s is already started", e->name);
    } else if (r.length <= TFOS_ENGINE_MAILBOX || tfos_ring_writer_init(&e->writer, cap, rerr)) {
        rc = fail(err, TFOS_ENGINE_EPROTO, "%s: the peer's ring of %" PRIu64 " bytes is not a "
                  "ring this engine makes", e->name, r.length);
    } else {
        e->peer = r;
        e->peer_cap = cap;
        e->tx_slot = slot_of(cap);
        e->eager_limit = e->opts.eager_max < cap / 2 ? e->opts.eager_max : cap / 2;
        if (e->eager_limit > e->stage_cap) e->eager_limit = e->stage_cap;
        e->started = 1;
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

void tfos_engine_close(tfos_engine *e) {
    pthread_mutex_lock(&e->mu);
    if (!e->closed) {
        if (e->started && !e->broken && !e->peer_gone &&
            e->wr_next - e->wr_oldest < TFOS_NIC_MAX_POSTED)
            post_control(e, TFOS_IMM_BYE, 0, "the farewell");
        e->closed = 1;
    }
    e->nic->ops->interrupt(e->nic);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

int tfos_engine_closed(tfos_engine *e) {
    int closed;
    pthread_mutex_lock(&e->mu);
    closed = e->closed;
    pthread_mutex_unlock(&e->mu);
    return closed;
}

void tfos_engine_destroy(tfos_engine *e) {
    const tfos_nic_ops *ops = e->nic->ops;
    if (ops->quiesce) ops->quiesce(e->nic);     /* the peer lets go of our regions first */
    for (int i = 0; i < e->nregions; i++) ops->free_mr(e->nic, &e->regions[i]);
    if (e->has_landing) ops->free_mr(e->nic, &e->landing);
    ops->free_mr(e->nic, &e->stage);
    ops->free_mr(e->nic, &e->ring);
    ops->destroy(e->nic);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->tx_mu);
    pthread_mutex_destroy(&e->rx_mu);
    free(e->regions);
    free(e->q);
    free(e);
}

tfos_nic *tfos_engine_nic(tfos_engine *e) { return e->nic; }

const char *tfos_engine_name(tfos_engine *e) { return e->name; }

void tfos_engine_get_stats(tfos_engine *e, tfos_engine_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    pthread_mutex_unlock(&e->mu);
}
