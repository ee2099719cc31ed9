/* See shm_carrier.h. Layout: the arena header shared by both processes; the private
 * allocator; set-up; write; poll; tear-down. */
#define _GNU_SOURCE
#include "shm_carrier.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#define ARENA_MAGIC 0x314e455241534f46ull   /* "FOSAREN1" */
#define HELLO_MAGIC "TFOSSHM1"
#define VERSION 1
#define CQ_DEPTH TFOS_NIC_MAX_UNPOLLED
#define MR_SLOTS 1024
#define SENT_DEPTH (2 * TFOS_NIC_MAX_POSTED)
#define SLICE_MS 50
#define CHECK_PEER_BYTES ((uint64_t)1 << 20)   /* writes this large first ask if the peer lives */
#define PUNCH_BYTES ((uint64_t)1 << 20)        /* freed regions this large give their pages back */
#define STREAM_BYTES ((uint64_t)4 << 20)       /* writes this large bypass the cache (x86-64) */

/* The start of every arena, shared by both processes. The owner consumes the completion queue
 * and publishes its registrations; the peer produces completions and reads registrations. */
typedef struct {
    _Alignas(64) uint64_t magic;
    uint64_t size;
    uint32_t pid, version;
    _Alignas(64) _Atomic uint64_t cq_head;   /* written by the peer */
    _Alignas(64) _Atomic uint64_t cq_tail;   /* written by the owner */
    _Alignas(64) _Atomic uint32_t sleeping;  /* the owner's poll sleeps on wake */
    _Atomic uint32_t wake;
    _Atomic uint32_t closed;                 /* the owner destroyed its end */
    _Alignas(64) struct {
        _Atomic uint32_t key;
        uint32_t pad;
        uint64_t offset, length;
    } mr[MR_SLOTS];
    struct {
        uint32_t imm, pad;
        uint64_t length;
    } cq[CQ_DEPTH];
} arena_header;

#define DATA_START (((uint64_t)sizeof(arena_header) + 65535) & ~(uint64_t)65535)

typedef struct {
    char magic[8];
    uint32_t version, pid;
    uint64_t arena_bytes;
} hello;

typedef struct {
    uint64_t off, len;
} extent;

typedef struct {
    tfos_nic base;
    int sock, memfd, spin_us;
    arena_header *mine, *theirs;
    uint64_t mine_size, theirs_size;
    uint64_t tx_head, rx_tail;   /* our ends of the two completion queues */
    _Atomic int dead, interrupted;
    /* SENT completions: written by the writing thread, read by the polling one */
    uint64_t sent[SENT_DEPTH];
    _Atomic uint64_t sent_head, sent_tail;
    /* the allocator, private to this process */
    pthread_mutex_t alloc_mu;
    extent *free_list;
    int nfree, cap_free;
    uint32_t gen[MR_SLOTS];
    uint8_t used[MR_SLOTS];
} shm_nic;

static const tfos_nic_ops SHM_OPS;

static int fail(char *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, TFOS_NIC_ERRLEN, fmt, ap);
    va_end(ap);
    return code;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void futex_wake(_Atomic uint32_t *word) {
    atomic_fetch_add_explicit(word, 1, memory_order_release);
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void futex_wait(_Atomic uint32_t *word, uint32_t seen, int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, &ts, NULL, 0);
}

/* Wakes the poller of the arena h if it sleeps (the Dekker pair of poll's sleep below). */
static void wake_if_sleeping(arena_header *h) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->sleeping, memory_order_relaxed)) futex_wake(&h->wake);
}

static int peer_hung_up(shm_nic *n) {
    struct pollfd p = {.fd = n->sock, .events = POLLIN | POLLRDHUP};
    if (atomic_load(&n->dead)) return 1;
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))) {
        atomic_store(&n->dead, 1);
        return 1;
    }
    return 0;
}

static int peer_gone(shm_nic *n) {
    return atomic_load(&n->dead) || atomic_load_explicit(&n->theirs->closed, memory_order_acquire);
}

static int closed_error(shm_nic *n, char *err) {
    return fail(err, TFOS_NIC_ECLOSED, "shm link to %s: the peer %s", n->base.peer,
                atomic_load_explicit(&n->theirs->closed, memory_order_acquire)
                    ? "closed the link" : "died (its socket hung up)");
}

/* -- the private allocator over this side's arena ----------------------------------------- */

static int take_extent(shm_nic *n, uint64_t len, uint64_t align, uint64_t *off) {
    for (int i = 0; i < n->nfree; i++) {
        extent x = n->free_list[i];
        uint64_t at = (x.off + align - 1) & ~(align - 1);
        if (at + len > x.off + x.len) continue;
        *off = at;
        /* keep the stretch before (in place) and after (inserted) what we took */
        if (at > x.off) {
            n->free_list[i].len = at - x.off;
            i++;
        } else {
            memmove(&n->free_list[i], &n->free_list[i + 1], sizeof(extent) * (n->nfree - i - 1));
            n->nfree--;
        }
        if (at + len < x.off + x.len) {
            memmove(&n->free_list[i + 1], &n->free_list[i], sizeof(extent) * (n->nfree - i));
            n->free_list[i] = (extent){at + len, x.off + x.len - at - len};
            n->nfree++;
        }
        return 0;
    }
    return -1;
}

static void give_extent(shm_nic *n, uint64_t off, uint64_t len) {
    int i = 0;
    while (i < n->nfree && n->free_list[i].off < off) i++;
    memmove(&n->free_list[i + 1], &n->free_list[i], sizeof(extent) * (n->nfree - i));
    n->free_list[i] = (extent){off, len};
    n->nfree++;
    if (i + 1 < n->nfree && off + len == n->free_list[i + 1].off) {
        n->free_list[i].len += n->free_list[i + 1].len;
        memmove(&n->free_list[i + 1], &n->free_list[i + 2], sizeof(extent) * (n->nfree - i - 2));
        n->nfree--;
    }
    if (i > 0 && n->free_list[i - 1].off + n->free_list[i - 1].len == off) {
        n->free_list[i - 1].len += n->free_list[i].len;
        memmove(&n->free_list[i], &n->free_list[i + 1], sizeof(extent) * (n->nfree - i - 1));
        n->nfree--;
    }
}

static int shm_alloc_mr(tfos_nic *nic, uint64_t length, tfos_mr *out, char *err) {
    shm_nic *n = (shm_nic *)nic;
    uint64_t len = (length + 63) & ~(uint64_t)63, off;
    uint64_t align = len >= (64 << 10) ? 4096 : 64;
    int slot = -1, rc = 0;
    if (length == 0) return fail(err, TFOS_NIC_EINVAL, "shm: a region of 0 bytes");
    pthread_mutex_lock(&n->alloc_mu);
    for (int i = 0; i < MR_SLOTS && slot < 0; i++)
        if (!n->used[i]) slot = i;
    if (slot < 0) {
        rc = fail(err, TFOS_NIC_ENOMEM, "shm link to %s: all %d regions are registered; free "
                  "some", n->base.peer, MR_SLOTS);
    } else if (n->nfree + 2 > n->cap_free) {
        rc = fail(err, TFOS_NIC_ENOMEM, "shm link to %s: the arena is too fragmented",
                  n->base.peer);
    } else if (take_extent(n, len, align, &off) < 0) {
        rc = fail(err, TFOS_NIC_ENOMEM, "shm link to %s: no %" PRIu64 " bytes left in this "
                  "side's arena of %" PRIu64 " bytes (raise arena_bytes)", n->base.peer, len,
                  n->mine_size);
    } else {
        uint32_t key;
        n->used[slot] = 1;
        n->gen[slot] = (n->gen[slot] + 1) & 0x3fffff;
        if (!n->gen[slot]) n->gen[slot] = 1;
        key = n->gen[slot] << 10 | (uint32_t)slot;
        n->mine->mr[slot].offset = off;
        n->mine->mr[slot].length = len;
        atomic_store_explicit(&n->mine->mr[slot].key, key, memory_order_release);
        out->addr = (uint8_t *)n->mine + off;
        out->length = length;
        out->lkey = out->rkey = key;
        out->carrier = NULL;
    }
    pthread_mutex_unlock(&n->alloc_mu);
    return rc;
}

static void shm_free_mr(tfos_nic *nic, tfos_mr *mr) {
    shm_nic *n = (shm_nic *)nic;
    int slot = (int)(mr->rkey & (MR_SLOTS - 1));
    uint64_t off, len;
    pthread_mutex_lock(&n->alloc_mu);
    if (n->used[slot] && atomic_load(&n->mine->mr[slot].key) == mr->rkey) {
        off = n->mine->mr[slot].offset;
        len = n->mine->mr[slot].length;
        atomic_store_explicit(&n->mine->mr[slot].key, 0, memory_order_release);
        n->used[slot] = 0;
        if (len >= PUNCH_BYTES) {
            uint64_t from = (off + 4095) & ~(uint64_t)4095, to = (off + len) & ~(uint64_t)4095;
            if (to > from)
                fallocate(n->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)from,
                          (off_t)(to - from));
        }
        give_extent(n, off, len);
    }
    pthread_mutex_unlock(&n->alloc_mu);
    mr->addr = NULL;
}

static void shm_export_mr(tfos_nic *nic, const tfos_mr *mr, tfos_remote_mr *out) {
    shm_nic *n = (shm_nic *)nic;
    out->addr = (uint64_t)((uint8_t *)mr->addr - (uint8_t *)n->mine);
    out->length = mr->length;
    out->rkey = mr->rkey;
    out->reserved = 0;
}

/* -- write ------------------------------------------------------------------------------ */

static int push_sent(shm_nic *n, uint64_t wr_id, char *err) {
    uint64_t head = atomic_load_explicit(&n->sent_head, memory_order_relaxed);
    if (head - atomic_load_explicit(&n->sent_tail, memory_order_acquire) >= SENT_DEPTH)
        return fail(err, TFOS_NIC_EIO, "shm link to %s: more than %d completions unpolled "
                    "(the engine broke nic.h's bound)", n->base.peer, SENT_DEPTH);
    n->sent[head % SENT_DEPTH] = wr_id;
    atomic_store_explicit(&n->sent_head, head + 1, memory_order_release);
    wake_if_sleeping(n->mine);   /* another thread of ours may be asleep in poll */
    return 0;
}

/* memcpy, except that a write of STREAM_BYTES or more goes with non-temporal stores on x86-64.
 * The engine writes a large message in pieces of 4 MiB (DIRECT_CHUNK), each too large to be
 * read back from the peer's cache, and glibc's memcpy streams only larger copies (its threshold
 * follows the cache size): it copies a 4 MiB piece through the cache, reading each destination
 * line first. Into shared memory on a 2-core VM, in one run: 64 MiB in 4 MiB pieces at 5.9 GB/s
 * by memcpy, 8.0 streamed. Smaller messages stay on memcpy, as the peer may still find them in
 * its cache (a 1 MiB ping-pong ran at 16.7 GB/s by memcpy, 9.4 streamed). */
static void copy_out(uint8_t *to, const uint8_t *from, uint64_t len) {
#if defined(__x86_64__)
    if (len >= STREAM_BYTES) {
        uint64_t head = (16 - ((uintptr_t)to & 15)) & 15, i = 0;
        memcpy(to, from, head);
        to += head, from += head, len -= head;
        for (; i + 64 <= len; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(from + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(from + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(from + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(from + i + 48));
            _mm_stream_si128((__m128i *)(to + i), a);
            _mm_stream_si128((__m128i *)(to + i + 16), b);
            _mm_stream_si128((__m128i *)(to + i + 32), c);
            _mm_stream_si128((__m128i *)(to + i + 48), d);
        }
        memcpy(to + i, from + i, len - i);
        _mm_sfence();   /* visible before anything this thread publishes next */
        return;
    }
#endif
    memcpy(to, from, len);
}

/* The pieces' total length bytes into the peer's region remote at remote_offset, then the
 * immediate (if asked) and this side's completion. */
static int write_pieces(shm_nic *n, const tfos_iov *pieces, int npieces, uint64_t length,
                        const tfos_remote_mr *remote, uint64_t remote_offset, int flags,
                        uint32_t imm, uint64_t wr_id, char *err) {
    arena_header *peer = n->theirs;
    int slot = (int)(remote->rkey & (MR_SLOTS - 1));
    uint32_t key = atomic_load_explicit(&peer->mr[slot].key, memory_order_acquire);
    uint64_t off = peer->mr[slot].offset, len = peer->mr[slot].length;
    if (peer_gone(n)) return closed_error(n, err);
    if (key == 0 || key != remote->rkey || remote->addr != off || off < DATA_START ||
        off > n->theirs_size || len > n->theirs_size - off || remote_offset > len ||
        length > len - remote_offset)
        return fail(err, TFOS_NIC_EACCESS, "shm link to %s: a write of %" PRIu64 " bytes names "
                    "key 0x%x at offset %" PRIu64 ", which the peer did not register",
                    n->base.peer, length, remote->rkey, remote_offset);
    if (length >= CHECK_PEER_BYTES && peer_hung_up(n)) return closed_error(n, err);
    uint8_t *to = (uint8_t *)peer + off + remote_offset;
    for (int i = 0; i < npieces; i++) {
        if (pieces[i].len) copy_out(to, pieces[i].base, pieces[i].len);
        to += pieces[i].len;
    }
    if (flags & TFOS_NIC_IMM) {
        uint64_t head = n->tx_head;
        if (head - atomic_load_explicit(&peer->cq_tail, memory_order_acquire) >= CQ_DEPTH)
            return fail(err, TFOS_NIC_EIO, "shm link to %s: the peer's completion queue is "
                        "full (%d immediates unpolled: the engine broke nic.h's bound)",
                        n->base.peer, CQ_DEPTH);
        peer->cq[head % CQ_DEPTH].imm = imm;
        peer->cq[head % CQ_DEPTH].length = length;
        atomic_thread_fence(memory_order_seq_cst);   /* orders non-temporal stores too */
        atomic_store_explicit(&peer->cq_head, head + 1, memory_order_release);
        n->tx_head = head + 1;
        wake_if_sleeping(peer);
    }
    return push_sent(n, wr_id, err);
}

static int shm_write(tfos_nic *nic, const tfos_mr *local, uint64_t local_offset,
                     const tfos_remote_mr *remote, uint64_t remote_offset, uint64_t length,
                     int flags, uint32_t imm, uint64_t wr_id, char *err) {
    shm_nic *n = (shm_nic *)nic;
    if (local_offset > local->length || length > local->length - local_offset)
        return fail(err, TFOS_NIC_EINVAL, "shm link to %s: a write of %" PRIu64 " bytes at %"
                    PRIu64 " reads past the local region of %" PRIu64 " bytes", n->base.peer,
                    length, local_offset, local->length);
    tfos_iov piece = {local->addr ? (const uint8_t *)local->addr + local_offset
                                  : (const uint8_t *)(uintptr_t)local_offset, length};
    return write_pieces(n, &piece, 1, length, remote, remote_offset, flags, imm, wr_id, err);
}

static int shm_write_gather(tfos_nic *nic, const tfos_iov *pieces, int npieces,
                            const tfos_remote_mr *remote, uint64_t remote_offset, int flags,
                            uint32_t imm, uint64_t wr_id, char *err) {
    uint64_t length = 0;
    for (int i = 0; i < npieces; i++) length += pieces[i].len;
    return write_pieces((shm_nic *)nic, pieces, npieces, length, remote, remote_offset, flags,
                        imm, wr_id, err);
}

/* -- poll ------------------------------------------------------------------------------- */

static int pending(shm_nic *n) {
    return atomic_load_explicit(&n->sent_head, memory_order_acquire) !=
               atomic_load_explicit(&n->sent_tail, memory_order_relaxed) ||
           atomic_load_explicit(&n->mine->cq_head, memory_order_acquire) != n->rx_tail;
}

static int drain(shm_nic *n, tfos_completion *out, int max, char *err) {
    uint64_t tail = atomic_load_explicit(&n->sent_tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&n->sent_head, memory_order_acquire);
    int k = 0;
    while (k < max && tail < head)
        out[k++] = (tfos_completion){.kind = TFOS_NIC_SENT, .wr_id = n->sent[tail++ % SENT_DEPTH]};
    atomic_store_explicit(&n->sent_tail, tail, memory_order_release);
    tail = n->rx_tail;
    head = atomic_load_explicit(&n->mine->cq_head, memory_order_acquire);
    if (head - tail > CQ_DEPTH)
        return fail(err, TFOS_NIC_EIO, "shm link to %s: the peer's completion counter is "
                    "corrupt (%" PRIu64 " after %" PRIu64 ")", n->base.peer, head, tail);
    while (k < max && tail < head) {
        out[k].kind = TFOS_NIC_RECV_IMM;
        out[k].imm = n->mine->cq[tail % CQ_DEPTH].imm;
        out[k].length = n->mine->cq[tail % CQ_DEPTH].length;
        out[k++].wr_id = 0;
        tail++;
    }
    n->rx_tail = tail;
    atomic_store_explicit(&n->mine->cq_tail, tail, memory_order_release);
    return k;
}

/* After a wait: what to return, or 0 to keep waiting. */
static int settle(shm_nic *n, tfos_completion *out, int max, int64_t deadline, char *err) {
    int k = drain(n, out, max, err);
    if (k) return k;
    if (atomic_exchange(&n->interrupted, 0)) return TFOS_NIC_ETIMEDOUT;
    if (peer_gone(n)) return closed_error(n, err);
    if (deadline >= 0 && now_ns() >= deadline) return TFOS_NIC_ETIMEDOUT;
    return 0;
}

static int shm_poll(tfos_nic *nic, tfos_completion *out, int max, int timeout_ms, char *err) {
    shm_nic *n = (shm_nic *)nic;
    int64_t start = now_ns(), spin_until = start + (int64_t)n->spin_us * 1000;
    int64_t deadline = timeout_ms < 0 ? -1 : start + (int64_t)timeout_ms * 1000000;
    int rc = settle(n, out, max, timeout_ms == 0 ? 0 : -1, err);
    if (rc || timeout_ms == 0) return rc ? rc : TFOS_NIC_ETIMEDOUT;
    for (int64_t t = start; t < spin_until && (deadline < 0 || t < deadline); t = now_ns()) {
        for (int i = 0; i < 16; i++) cpu_relax();
        sched_yield();   /* a peer waiting for this core runs now (2 cores, 3 ranks) */
        if (pending(n) || atomic_load(&n->interrupted) || peer_gone(n))
            if ((rc = settle(n, out, max, deadline, err))) return rc;
    }
    for (;;) {
        uint32_t seen;
        int slice = SLICE_MS;
        if (peer_hung_up(n) && (rc = settle(n, out, max, deadline, err))) return rc;
        seen = atomic_load_explicit(&n->mine->wake, memory_order_acquire);
        atomic_store_explicit(&n->mine->sleeping, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        if (!pending(n) && !atomic_load(&n->interrupted) && !peer_gone(n)) {
            if (deadline >= 0) {
                int64_t left = (deadline - now_ns() + 999999) / 1000000;
                if (left < slice) slice = left < 1 ? 1 : (int)left;
            }
            futex_wait(&n->mine->wake, seen, slice);
        }
        atomic_store_explicit(&n->mine->sleeping, 0, memory_order_relaxed);
        if ((rc = settle(n, out, max, deadline, err))) return rc;
    }
}

static void shm_interrupt(tfos_nic *nic) {
    shm_nic *n = (shm_nic *)nic;
    atomic_store(&n->interrupted, 1);
    futex_wake(&n->mine->wake);
}

/* The engine is about to free its regions: the peer is told the link is closed first, so a
 * write of its that finds one of them gone reports the close, not an unregistered key. What
 * we wrote is in the peer's own arena and what it wrote to us we no longer read: nothing is
 * lost by saying so early. */
static void shm_quiesce(tfos_nic *nic) {
    shm_nic *n = (shm_nic *)nic;
    if (!n->mine) return;
    atomic_store_explicit(&n->mine->closed, 1, memory_order_release);
    if (n->theirs) futex_wake(&n->theirs->wake);
}

static void shm_destroy(tfos_nic *nic) {
    shm_nic *n = (shm_nic *)nic;
    if (n->mine) {
        atomic_store_explicit(&n->mine->closed, 1, memory_order_release);
        if (n->theirs) futex_wake(&n->theirs->wake);   /* the peer notices at once */
        munmap(n->mine, n->mine_size);
    }
    if (n->theirs) munmap(n->theirs, n->theirs_size);
    if (n->memfd >= 0) close(n->memfd);
    if (n->sock >= 0) close(n->sock);
    pthread_mutex_destroy(&n->alloc_mu);
    free(n->free_list);
    free(n);
}

static const tfos_nic_ops SHM_OPS = {
    .name = "shm",
    .alloc_mr = shm_alloc_mr,
    .free_mr = shm_free_mr,
    .export_mr = shm_export_mr,
    .write = shm_write,
    .write_gather = shm_write_gather,
    .poll = shm_poll,
    .interrupt = shm_interrupt,
    .destroy = shm_destroy,
    .any_source = 1,   /* write() is a memcpy: any memory of this process is a fine source */
    .quiesce = shm_quiesce,
};

/* -- set-up ------------------------------------------------------------------------------ */

void tfos_shm_default_opts(tfos_shm_opts *opts) {
    opts->arena_bytes = (uint64_t)1 << 30;
    opts->spin_us = 20;
    opts->timeout_ms = 10000;
}

static int wait_socket(int fd, short events, int64_t deadline, const char *what, char *err) {
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int ms = deadline < 0 ? -1 : (int)((deadline - now_ns() + 999999) / 1000000);
        int r;
        if (deadline >= 0 && ms <= 0)
            return fail(err, TFOS_NIC_ETIMEDOUT, "shm set-up: timed out %s the peer (is it "
                        "running the same tfos, and setting up too?)", what);
        r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fail(err, TFOS_NIC_EIO, "shm set-up: poll: %s", strerror(errno));
        if (r > 0 && (p.revents & events)) return 0;
        if (r > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
            return fail(err, TFOS_NIC_ECLOSED, "shm set-up: the peer hung up while %s it",
                        what);
    }
}

static int make_arena(shm_nic *n, uint64_t size, char *err) {
    n->memfd = memfd_create("tfos-core-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (n->memfd < 0) return fail(err, TFOS_NIC_EIO, "shm: memfd_create: %s", strerror(errno));
    if (ftruncate(n->memfd, (off_t)size) < 0 ||
        fcntl(n->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        return fail(err, TFOS_NIC_ENOMEM, "shm: cannot size the arena to %" PRIu64 " bytes: %s",
                    size, strerror(errno));
    n->mine = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, n->memfd, 0);
    if (n->mine == MAP_FAILED) {
        n->mine = NULL;
        return fail(err, TFOS_NIC_ENOMEM, "shm: cannot map the arena of %" PRIu64 " bytes: %s",
                    size, strerror(errno));
    }
    n->mine_size = size;
    madvise(n->mine, size, MADV_HUGEPAGE);   /* where shmem THP is "advise": fewer TLB misses */
    n->mine->magic = ARENA_MAGIC;
    n->mine->size = size;
    n->mine->pid = (uint32_t)getpid();
    n->mine->version = VERSION;
    n->cap_free = 2 * MR_SLOTS + 4;
    n->free_list = malloc(sizeof(extent) * n->cap_free);
    if (!n->free_list) return fail(err, TFOS_NIC_ENOMEM, "shm: out of memory");
    n->free_list[0] = (extent){DATA_START, size - DATA_START};
    n->nfree = 1;
    return 0;
}

static int send_hello(shm_nic *n, int64_t deadline, char *err) {
    hello h = {.version = VERSION, .pid = (uint32_t)getpid(), .arena_bytes = n->mine_size};
    char control[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {&h, sizeof h};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    ssize_t sent;
    int rc;
    memcpy(h.magic, HELLO_MAGIC, 8);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &n->memfd, sizeof(int));
    if ((rc = wait_socket(n->sock, POLLOUT, deadline, "sending the arena to", err))) return rc;
    sent = sendmsg(n->sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent != (ssize_t)sizeof h)
        return fail(err, TFOS_NIC_ECLOSED, "shm set-up: sending the arena failed: %s",
                    sent < 0 ? strerror(errno) : "short write");
    return 0;
}

static int recv_hello(shm_nic *n, int64_t deadline, hello *h, int *fd, char *err) {
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {h, sizeof *h};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *c;
    ssize_t got;
    int rc;
    *fd = -1;
    do {
        if ((rc = wait_socket(n->sock, POLLIN, deadline, "receiving the arena from", err)))
            return rc;
        got = recvmsg(n->sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (got < 0 && (errno == EAGAIN || errno == EINTR));
    c = got > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
        c->cmsg_len == CMSG_LEN(sizeof(int)))
        memcpy(fd, CMSG_DATA(c), sizeof(int));
    if (got == 0) return fail(err, TFOS_NIC_ECLOSED, "shm set-up: the peer closed the socket");
    if (got < 0) return fail(err, TFOS_NIC_ECLOSED, "shm set-up: %s", strerror(errno));
    if (got != (ssize_t)sizeof *h || memcmp(h->magic, HELLO_MAGIC, 8) || h->version != VERSION ||
        *fd < 0 || (msg.msg_flags & MSG_CTRUNC))
        return fail(err, TFOS_NIC_EIO, "shm set-up: the peer did not send a tfos core arena "
                    "(wrong version or not a tfos core): run the same tfos on both ends");
    return 0;
}

static int map_peer(shm_nic *n, const hello *h, int fd, char *err) {
    struct stat st;
    int seals = fcntl(fd, F_GET_SEALS);
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != h->arena_bytes ||
        h->arena_bytes < DATA_START)
        return fail(err, TFOS_NIC_EINVAL, "shm set-up: the peer's arena is not the %" PRIu64
                    "-byte file it announced", h->arena_bytes);
    if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
        return fail(err, TFOS_NIC_EINVAL, "shm set-up: the peer's arena may change size under "
                    "us (not sealed)");
    n->theirs = mmap(NULL, h->arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                     fd, 0);
    if (n->theirs == MAP_FAILED) {
        n->theirs = NULL;
        return fail(err, TFOS_NIC_ENOMEM, "shm set-up: cannot map the peer's arena: %s",
                    strerror(errno));
    }
    n->theirs_size = h->arena_bytes;
    madvise(n->theirs, n->theirs_size, MADV_HUGEPAGE);
    if (n->theirs->magic != ARENA_MAGIC || n->theirs->size != h->arena_bytes)
        return fail(err, TFOS_NIC_EINVAL, "shm set-up: the peer's arena has no tfos header");
    n->tx_head = atomic_load(&n->theirs->cq_head);
    return 0;
}

int tfos_shm_create(int sock_fd, const tfos_shm_opts *opts, tfos_nic **out, char *err) {
    int64_t deadline = opts->timeout_ms < 0 ? -1 : now_ns() + (int64_t)opts->timeout_ms * 1000000;
    shm_nic *n;
    hello h;
    struct ucred cred;
    socklen_t len = sizeof cred;
    int peer_fd = -1, rc;
    if (opts->arena_bytes < DATA_START + ((uint64_t)1 << 20) || opts->arena_bytes % 4096 ||
        opts->arena_bytes > ((uint64_t)1 << 44))
        return fail(err, TFOS_NIC_EINVAL, "arena_bytes=%" PRIu64 ": pass a multiple of 4096 of "
                    "at least %" PRIu64, opts->arena_bytes, DATA_START + ((uint64_t)1 << 20));
    if (opts->spin_us < 0 || opts->spin_us > 1000000)
        return fail(err, TFOS_NIC_EINVAL, "spin_us=%d: pass 0 to 1000000", opts->spin_us);
    n = calloc(1, sizeof *n);
    if (!n) return fail(err, TFOS_NIC_ENOMEM, "out of memory");
    n->base.ops = &SHM_OPS;
    n->memfd = -1;
    n->spin_us = opts->spin_us;
    pthread_mutex_init(&n->alloc_mu, NULL);
    n->sock = fcntl(sock_fd, F_DUPFD_CLOEXEC, 3);
    if (n->sock < 0) {
        rc = fail(err, TFOS_NIC_EINVAL, "shm set-up: not a socket descriptor: %s",
                  strerror(errno));
        goto fail;
    }
    if (getsockopt(n->sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
        snprintf(n->base.peer, sizeof n->base.peer, "pid %d", (int)cred.pid);
    else
        snprintf(n->base.peer, sizeof n->base.peer, "an unknown process");
    if ((rc = make_arena(n, opts->arena_bytes, err)) || (rc = send_hello(n, deadline, err)) ||
        (rc = recv_hello(n, deadline, &h, &peer_fd, err)) ||
        (rc = map_peer(n, &h, peer_fd, err)))
        goto fail;
    close(peer_fd);
    *out = &n->base;
    return 0;
fail:
    if (peer_fd >= 0) close(peer_fd);
    if (n->theirs) munmap(n->theirs, n->theirs_size);
    n->theirs = NULL;   /* nothing to tell a peer we never finished meeting */
    shm_destroy(&n->base);
    return rc;
}
