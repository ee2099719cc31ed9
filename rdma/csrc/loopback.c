/* See loopback.h. One mutex per pair guards both ends: the carrier is for tests, where
 * simplicity beats speed, and it still moves gigabytes a second. */
#define _GNU_SOURCE
#include "loopback.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct lb_nic lb_nic;

typedef struct {
    pthread_mutex_t mu;
    lb_nic *end[2];
    int refs, killed;
} lb_wire;

typedef struct {
    void *addr;
    uint64_t length;
    uint32_t key;
} lb_region;

struct lb_nic {
    tfos_nic base;
    lb_wire *w;
    int side, interrupted;
    pthread_cond_t cv;
    tfos_completion *cq;
    int cq_cap, cq_head, cq_len;
    lb_region *regions;
    int nregions, cap_regions;
    uint32_t next_key;
    /* faults on this end's writes */
    uint32_t drop_mask, drop_value;
    int drop_count, corrupt_count, reorder_count, holding;
    tfos_completion held;
};

static const tfos_nic_ops LOOPBACK_OPS;

static int fail(char *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, TFOS_NIC_ERRLEN, fmt, ap);
    va_end(ap);
    return code;
}

static lb_nic *peer_of(lb_nic *n) { return n->w->end[1 - n->side]; }

static int push(lb_nic *n, const tfos_completion *c) {
    if (n->cq_len == n->cq_cap) {
        int cap = n->cq_cap ? n->cq_cap * 2 : 256;
        tfos_completion *cq = malloc(sizeof *cq * cap);
        if (!cq) return -1;
        for (int i = 0; i < n->cq_len; i++) cq[i] = n->cq[(n->cq_head + i) % n->cq_cap];
        free(n->cq);
        n->cq = cq;
        n->cq_cap = cap;
        n->cq_head = 0;
    }
    n->cq[(n->cq_head + n->cq_len) % n->cq_cap] = *c;
    n->cq_len++;
    pthread_cond_broadcast(&n->cv);
    return 0;
}

static lb_region *find_key(lb_nic *n, uint32_t key) {
    for (int i = 0; i < n->nregions; i++)
        if (n->regions[i].key == key) return &n->regions[i];
    return NULL;
}

static int lb_alloc_mr(tfos_nic *nic, uint64_t length, tfos_mr *out, char *err) {
    lb_nic *n = (lb_nic *)nic;
    void *addr = NULL;
    int rc = 0;
    if (length == 0) return fail(err, TFOS_NIC_EINVAL, "loopback: a region of 0 bytes");
    if (posix_memalign(&addr, 4096, length) != 0)
        return fail(err, TFOS_NIC_ENOMEM, "loopback: no memory for %" PRIu64 " bytes", length);
    memset(addr, 0, length);
    pthread_mutex_lock(&n->w->mu);
    if (n->nregions == n->cap_regions) {
        int cap = n->cap_regions ? n->cap_regions * 2 : 16;
        lb_region *grown = realloc(n->regions, sizeof *grown * cap);
        if (!grown) {
            rc = fail(err, TFOS_NIC_ENOMEM, "loopback: out of memory");
            goto out;
        }
        n->regions = grown;
        n->cap_regions = cap;
    }
    out->addr = addr;
    out->length = length;
    out->lkey = out->rkey = n->next_key++;
    out->carrier = NULL;
    n->regions[n->nregions++] = (lb_region){addr, length, out->rkey};
out:
    pthread_mutex_unlock(&n->w->mu);
    if (rc) free(addr);
    return rc;
}

static void lb_free_mr(tfos_nic *nic, tfos_mr *mr) {
    lb_nic *n = (lb_nic *)nic;
    pthread_mutex_lock(&n->w->mu);
    for (int i = 0; i < n->nregions; i++) {
        if (n->regions[i].key == mr->rkey) {
            n->regions[i] = n->regions[--n->nregions];
            break;
        }
    }
    pthread_mutex_unlock(&n->w->mu);
    free(mr->addr);
    mr->addr = NULL;
}

static void lb_export_mr(tfos_nic *nic, const tfos_mr *mr, tfos_remote_mr *out) {
    (void)nic;
    out->addr = (uint64_t)(uintptr_t)mr->addr;
    out->length = mr->length;
    out->rkey = mr->rkey;
    out->reserved = 0;
}

/* Delivers imm to the peer, through this end's faults. */
static void deliver(lb_nic *n, lb_nic *peer, const tfos_completion *c) {
    if (n->drop_count > 0 && (c->imm & n->drop_mask) == n->drop_value) {
        n->drop_count--;
        return;
    }
    if (n->holding) {
        push(peer, c);
        push(peer, &n->held);
        n->holding = 0;
        return;
    }
    if (n->reorder_count > 0) {
        n->reorder_count--;
        n->held = *c;
        n->holding = 1;
        return;
    }
    push(peer, c);
}

static int lb_write(tfos_nic *nic, const tfos_mr *local, uint64_t local_offset,
                    const tfos_remote_mr *remote, uint64_t remote_offset, uint64_t length,
                    int flags, uint32_t imm, uint64_t wr_id, char *err) {
    lb_nic *n = (lb_nic *)nic, *peer;
    lb_region *region;
    uint32_t key = remote->rkey;
    uint64_t at;
    int rc = 0;
    pthread_mutex_lock(&n->w->mu);
    peer = peer_of(n);
    if (n->w->killed || !peer) {
        rc = fail(err, TFOS_NIC_ECLOSED, "loopback link to %s: the peer is gone (%s)",
                  n->base.peer, n->w->killed ? "killed" : "closed");
        goto out;
    }
    if (local_offset > local->length || length > local->length - local_offset) {
        rc = fail(err, TFOS_NIC_EINVAL, "loopback link to %s: a write of %" PRIu64 " bytes at "
                  "%" PRIu64 " reads past the local region of %" PRIu64 " bytes", n->base.peer,
                  length, local_offset, local->length);
        goto out;
    }
    if (n->corrupt_count > 0) {
        n->corrupt_count--;
        key ^= 0x5a5a0000u;
    }
    region = find_key(peer, key);
    at = remote->addr + remote_offset;
    if (!region || remote_offset > remote->length || length > remote->length - remote_offset ||
        at < (uint64_t)(uintptr_t)region->addr ||
        at + length > (uint64_t)(uintptr_t)region->addr + region->length) {
        rc = fail(err, TFOS_NIC_EACCESS, "loopback link to %s: a write of %" PRIu64 " bytes "
                  "names key 0x%x at offset %" PRIu64 ", which the peer did not register",
                  n->base.peer, length, key, remote_offset);
        goto out;
    }
    if (length) memmove((void *)(uintptr_t)at, (uint8_t *)local->addr + local_offset, length);
    push(n, &(tfos_completion){.kind = TFOS_NIC_SENT, .wr_id = wr_id});
    if (flags & TFOS_NIC_IMM)
        deliver(n, peer, &(tfos_completion){.kind = TFOS_NIC_RECV_IMM, .imm = imm,
                                            .length = length});
out:
    pthread_mutex_unlock(&n->w->mu);
    return rc;
}

static int lb_poll(tfos_nic *nic, tfos_completion *out, int max, int timeout_ms, char *err) {
    lb_nic *n = (lb_nic *)nic;
    struct timespec until;
    int rc = 0;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms > 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&n->w->mu);
    for (;;) {
        if (n->cq_len) {
            while (rc < max && n->cq_len) {
                out[rc++] = n->cq[n->cq_head];
                n->cq_head = (n->cq_head + 1) % n->cq_cap;
                n->cq_len--;
            }
            break;
        }
        if (n->w->killed || !peer_of(n)) {
            rc = fail(err, TFOS_NIC_ECLOSED, "loopback link to %s: the peer %s", n->base.peer,
                      n->w->killed ? "was killed" : "closed its end");
            break;
        }
        if (n->interrupted) {
            n->interrupted = 0;
            rc = TFOS_NIC_ETIMEDOUT;
            break;
        }
        if (timeout_ms == 0) {
            rc = TFOS_NIC_ETIMEDOUT;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&n->cv, &n->w->mu);
        } else if (pthread_cond_timedwait(&n->cv, &n->w->mu, &until) != 0 && !n->cq_len) {
            rc = TFOS_NIC_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&n->w->mu);
    return rc;
}

static void lb_interrupt(tfos_nic *nic) {
    lb_nic *n = (lb_nic *)nic;
    pthread_mutex_lock(&n->w->mu);
    n->interrupted = 1;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->w->mu);
}

static void lb_destroy(tfos_nic *nic) {
    lb_nic *n = (lb_nic *)nic, *peer;
    lb_wire *w = n->w;
    int last;
    pthread_mutex_lock(&w->mu);
    w->end[n->side] = NULL;
    peer = w->end[1 - n->side];
    if (peer) pthread_cond_broadcast(&peer->cv);
    last = --w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < n->nregions; i++) free(n->regions[i].addr);
    free(n->regions);
    free(n->cq);
    pthread_cond_destroy(&n->cv);
    free(n);
    if (last) {
        pthread_mutex_destroy(&w->mu);
        free(w);
    }
}

static const tfos_nic_ops LOOPBACK_OPS = {
    .name = "loopback",
    .alloc_mr = lb_alloc_mr,
    .free_mr = lb_free_mr,
    .export_mr = lb_export_mr,
    .write = lb_write,
    .poll = lb_poll,
    .interrupt = lb_interrupt,
    .destroy = lb_destroy,
    .any_source = 0,   /* registered memory only, like a device: keeps the staging path tested */
};

int tfos_loopback_pair(tfos_nic **a, tfos_nic **b, char *err) {
    lb_wire *w = calloc(1, sizeof *w);
    lb_nic *ends[2] = {calloc(1, sizeof(lb_nic)), calloc(1, sizeof(lb_nic))};
    pthread_condattr_t attr;
    if (!w || !ends[0] || !ends[1]) {
        free(w), free(ends[0]), free(ends[1]);
        return fail(err, TFOS_NIC_ENOMEM, "loopback: out of memory");
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    w->refs = 2;
    for (int side = 0; side < 2; side++) {
        lb_nic *n = ends[side];
        n->base.ops = &LOOPBACK_OPS;
        snprintf(n->base.peer, sizeof n->base.peer, "loopback end %c", side ? 'a' : 'b');
        n->w = w;
        n->side = side;
        n->next_key = 0x100u + (uint32_t)side * 0x10000u;
        pthread_cond_init(&n->cv, &attr);
        w->end[side] = n;
    }
    pthread_condattr_destroy(&attr);
    *a = &ends[0]->base;
    *b = &ends[1]->base;
    return 0;
}

int tfos_is_loopback(const tfos_nic *nic) { return nic->ops == &LOOPBACK_OPS; }

void tfos_loopback_drop(tfos_nic *nic, uint32_t mask, uint32_t value, int count) {
    lb_nic *n = (lb_nic *)nic;
    pthread_mutex_lock(&n->w->mu);
    n->drop_mask = mask;
    n->drop_value = value;
    n->drop_count = count;
    pthread_mutex_unlock(&n->w->mu);
}

void tfos_loopback_corrupt_keys(tfos_nic *nic, int count) {
    lb_nic *n = (lb_nic *)nic;
    pthread_mutex_lock(&n->w->mu);
    n->corrupt_count = count;
    pthread_mutex_unlock(&n->w->mu);
}

void tfos_loopback_reorder(tfos_nic *nic, int count) {
    lb_nic *n = (lb_nic *)nic;
    pthread_mutex_lock(&n->w->mu);
    n->reorder_count = count;
    pthread_mutex_unlock(&n->w->mu);
}

void tfos_loopback_kill(tfos_nic *nic) {
    lb_nic *n = (lb_nic *)nic;
    pthread_mutex_lock(&n->w->mu);
    n->w->killed = 1;
    for (int side = 0; side < 2; side++)
        if (n->w->end[side]) pthread_cond_broadcast(&n->w->end[side]->cv);
    pthread_mutex_unlock(&n->w->mu);
}
