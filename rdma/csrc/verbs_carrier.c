/* See verbs_carrier.h. One RC queue pair per link; every write is an RDMA WRITE (WITH_IMM
 * when flagged), signalled; immediates arrive as receive completions of work requests that
 * carry no buffer (the bytes land where the writer aimed them) and are reposted as they are
 * consumed; one completion queue with a completion channel serves both directions.
 *
 * What was checked where. Against rdma-core 44's real headers and library (installed for
 * the purpose; tests/unit/test_verbs_carrier.py repeats both checks wherever they are
 * installed and skips them elsewhere): every struct layout and enum value of ibv_abi.h, that
 * each symbol bound below is exported, and the real library's "no device" answer (ENOSYS on a
 * kernel without RDMA) turned into our message. Against the test-only fake libibverbs
 * (tests/fakeverbs) only, between real processes: the RC state transitions and their attribute
 * masks, PSN/QPN/GID/LID agreement, writes and immediates delivered byte-exact, rkeys and
 * bounds enforced by the "device", receive reposting, a full send queue, the completion-channel
 * arm/get/ack protocol, a killed peer, memlock refusals. Not yet run on an RDMA device: the
 * timing constants (spin, RNR timer, retry timeout, close grace) are untuned there.
 *
 * Not done: async events (ibv_get_async_event: port down, a QP access error on the responder
 * side) are not read, so a responder learns of a peer's refused write only as flushed receives;
 * ibv_fork_init is not called (kernels from 5.13 with rdma-core 35+ need none); one queue pair
 * per link, one SGE, no inline data or unsignalled batching. */
#define _GNU_SOURCE
#include "verbs_carrier.h"

#include "ibv_abi.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_LIBRARY "libibverbs.so.1"
#define MAX_PORTS 8               /* ports probed per device when none is named */
#define HARVEST_BATCH 16
#define CLOSE_GRACE_MS 200        /* see after_hang_up */
#define LINGER_MS 1000            /* see verbs_destroy */

/* ---- libibverbs, bound at run time --------------------------------------------------------- */

#define VERBS_SYMBOLS(X)                                                                       \
    X(get_device_list) X(free_device_list) X(get_device_name) X(open_device) X(close_device)   \
    X(query_port) X(query_gid) X(alloc_pd) X(dealloc_pd) X(reg_mr) X(dereg_mr)               \
    X(create_comp_channel) X(destroy_comp_channel) X(create_cq) X(destroy_cq)                 \
    X(get_cq_event) X(ack_cq_events) X(create_qp) X(modify_qp) X(destroy_qp)

typedef struct {
    char path[256];
#define FIELD(name) ibv_##name##_fn name;
    VERBS_SYMBOLS(FIELD)
#undef FIELD
} verbs_library;

static verbs_library lib;
static int lib_loaded;
static pthread_mutex_t lib_lock = PTHREAD_MUTEX_INITIALIZER;

static int say(char *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, TFOS_NIC_ERRLEN, fmt, ap);
    va_end(ap);
    return code;
}

/* Binds every symbol or none; the library stays loaded for the life of the process. */
static int load_library(char *err) {
    pthread_mutex_lock(&lib_lock);
    if (lib_loaded) {
        pthread_mutex_unlock(&lib_lock);
        return TFOS_NIC_OK;
    }
    const char *path = getenv("TFOS_IBVERBS_LIBRARY");
    if (!path || !*path) path = DEFAULT_LIBRARY;
    int rc = TFOS_NIC_OK;
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *why = dlerror();
        rc = say(err, TFOS_NIC_EIO, "verbs: cannot load %s%s%s; install libibverbs (apt install "
                 "libibverbs1 ibverbs-providers) or set TFOS_IBVERBS_LIBRARY to its path",
                 strstr(why, path) ? "" : path, strstr(why, path) ? "" : ": ", why);
        goto out;
    }
    verbs_library found;
    memset(&found, 0, sizeof found);
    snprintf(found.path, sizeof found.path, "%s", path);
#define BIND(name)                                                                             \
    if (!(*(void **)&found.name = dlsym(handle, "ibv_" #name))) {                              \
        dlclose(handle);                                                                       \
        rc = say(err, TFOS_NIC_EIO,                                                            \
                 "verbs: %s has no symbol ibv_" #name ": it is not libibverbs, or one too old " \
                 "(rdma-core 17 or newer is needed); check TFOS_IBVERBS_LIBRARY", path);        \
        goto out;                                                                              \
    }
    VERBS_SYMBOLS(BIND)
#undef BIND
    lib = found;
    lib_loaded = 1;
out:
    pthread_mutex_unlock(&lib_lock);
    return rc;
}

/* ---- the link ---------------------------------------------------------------------------- */

typedef struct {
    tfos_nic base;                /* first: the engine holds a tfos_nic * */
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *channel;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    char device[IBV_SYSFS_NAME_MAX];
    int port, gid_index, link_layer;
    uint32_t max_msg;
    int send_depth, recv_depth, spin_us;
    int boot_fd;                  /* our dup of the bootstrap socket, watched for hang-up */
    int quiesced;                 /* verbs_quiesce ran: we hung up and the peer let go */
    int interrupt_fd;             /* interrupt(): poll() returns TFOS_NIC_ETIMEDOUT */
    int stash_fd;                 /* a blocked write() stashed completions poll() must see */
    int room_fd;                  /* poll() freed send slots a blocked write() waits for */
    pthread_mutex_t lock;         /* guards what follows */
    int in_flight;                /* signalled writes whose completion was not yet harvested */
    int room_wanted;
    tfos_completion *stash;       /* harvested by write() while it waited for room */
    int stash_head, stash_len, stash_cap;
    int failed;                   /* sticky: once the link failed every call says so */
    char failure[TFOS_NIC_ERRLEN];
} verbs_nic;

static const char *const wc_status_names[] = {
    "SUCCESS", "LOC_LEN_ERR", "LOC_QP_OP_ERR", "LOC_EEC_OP_ERR", "LOC_PROT_ERR",
    "WR_FLUSH_ERR", "MW_BIND_ERR", "BAD_RESP_ERR", "LOC_ACCESS_ERR", "REM_INV_REQ_ERR",
    "REM_ACCESS_ERR", "REM_OP_ERR", "RETRY_EXC_ERR", "RNR_RETRY_EXC_ERR", "LOC_RDD_VIOL_ERR",
    "REM_INV_RD_REQ_ERR", "REM_ABORT_ERR", "INV_EECN_ERR", "INV_EEC_STATE_ERR", "FATAL_ERR",
    "RESP_TIMEOUT_ERR", "GENERAL_ERR",
};

static const char *wc_status_name(int status) {
    int n = (int)(sizeof wc_status_names / sizeof *wc_status_names);
    return status >= 0 && status < n ? wc_status_names[status] : "unknown status";
}

static const char *port_state_name(int state) {
    static const char *const names[] = {"NOP", "DOWN", "INIT", "ARMED", "ACTIVE",
                                        "ACTIVE_DEFER"};
    return state >= 0 && state <= IBV_PORT_ACTIVE_DEFER ? names[state] : "unknown";
}

/* A sentence naming the link: "verbs mlx5_0 port 1, peer rank 2: ...". */
static int link_say(const verbs_nic *n, char *err, int code, const char *fmt, ...) {
    int used = snprintf(err, TFOS_NIC_ERRLEN, "verbs %s port %d, peer %s: ", n->device, n->port,
                        n->base.peer);
    if (used < 0 || used >= TFOS_NIC_ERRLEN) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, TFOS_NIC_ERRLEN - (size_t)used, fmt, ap);
    va_end(ap);
    return code;
}

/* Records a failure of the link itself (call with the lock held). */
static int link_failed(verbs_nic *n, char *err, int code) {
    if (!n->failed) {
        n->failed = code;
        memcpy(n->failure, err, TFOS_NIC_ERRLEN);
    }
    return code;
}

static int sticky(const verbs_nic *n, char *err) {
    memcpy(err, n->failure, TFOS_NIC_ERRLEN);
    return n->failed;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Whether the bootstrap socket says the peer is gone, without waiting. */
static int peer_gone(const verbs_nic *n) {
    struct pollfd p = {n->boot_fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static int closed_error(verbs_nic *n, char *err) {
    link_say(n, err, TFOS_NIC_ECLOSED,
             "the peer closed the link or its process died (its bootstrap socket hung up); "
             "its own log says why");
    return link_failed(n, err, TFOS_NIC_ECLOSED);
}

/* The nic.h code and sentence for a failed work completion. */
static int completion_error(verbs_nic *n, const struct ibv_wc *wc, char *err) {
    /* Only wr_id, status and vendor_err are defined in a failed completion: not its opcode. */
    const char *what = "a work request";
    const char *name = wc_status_name(wc->status);
    int code;
    switch (wc->status) {
    case IBV_WC_REM_ACCESS_ERR:
        code = link_say(n, err, TFOS_NIC_EACCESS,
                        "the peer refused a write (IBV_WC_%s): its key or range matches no "
                        "region the peer registered, so the two sides' region descriptors are "
                        "out of step (a protocol bug, or a region freed too early)", name);
        break;
    case IBV_WC_LOC_PROT_ERR: case IBV_WC_LOC_LEN_ERR: case IBV_WC_LOC_ACCESS_ERR:
        code = link_say(n, err, TFOS_NIC_EINVAL,
                        "a write failed on this side (IBV_WC_%s): its local range is not "
                        "inside a region registered on this link", name);
        break;
    case IBV_WC_RETRY_EXC_ERR: case IBV_WC_RNR_RETRY_EXC_ERR:
        if (peer_gone(n)) return closed_error(n, err);
        code = link_say(n, err, TFOS_NIC_EIO,
                        "%s got no answer from the peer's queue pair (IBV_WC_%s): the peer is "
                        "stuck or the path is wrong; check the link (ibv_devinfo), and on RoCE "
                        "the GID index (a RoCE v2 GID with an IP address on both hosts) and the "
                        "MTU", what, name);
        break;
    case IBV_WC_WR_FLUSH_ERR:
        if (peer_gone(n)) return closed_error(n, err);
        code = link_say(n, err, TFOS_NIC_EIO,
                        "%s was flushed (IBV_WC_%s): the queue pair went to the error state "
                        "after an earlier failure on this link; the first error, on this side "
                        "or the peer's, is the cause", what, name);
        break;
    default:
        code = link_say(n, err, TFOS_NIC_EIO, "%s failed (IBV_WC_%s, vendor error 0x%x)", what,
                        name, wc->vendor_err);
    }
    return link_failed(n, err, code);
}

static int post_receive(verbs_nic *n, uint64_t wr_id, char *err) {
    struct ibv_recv_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = wr_id;              /* no buffer: a write with immediate consumes only the WR */
    int rc = tfos_ibv_post_recv(n->qp, &wr, &bad);
    if (rc)
        return link_say(n, err, TFOS_NIC_EIO, "ibv_post_recv failed (%s)", strerror(rc));
    return TFOS_NIC_OK;
}

/* One work completion into nic.h's terms; the lock is held. */
static int convert(verbs_nic *n, const struct ibv_wc *wc, tfos_completion *out, char *err) {
    if (wc->status != IBV_WC_SUCCESS) return completion_error(n, wc, err);
    memset(out, 0, sizeof *out);
    if (wc->opcode & IBV_WC_RECV) {
        if (wc->opcode != IBV_WC_RECV_RDMA_WITH_IMM || !(wc->wc_flags & IBV_WC_WITH_IMM)) {
            link_say(n, err, TFOS_NIC_EIO,
                     "the peer sent a message that is no write with immediate (opcode %d): "
                     "is it a tfos verbs carrier of the same version?", (int)wc->opcode);
            return link_failed(n, err, TFOS_NIC_EIO);
        }
        int rc = post_receive(n, wc->wr_id, err);
        if (rc) return link_failed(n, err, rc);
        out->kind = TFOS_NIC_RECV_IMM;
        out->imm = ntohl(wc->imm_data);
        out->length = wc->byte_len;
    } else {
        out->kind = TFOS_NIC_SENT;
        out->wr_id = wc->wr_id;
        n->in_flight--;
        if (n->room_wanted) {
            uint64_t one = 1;
            if (write(n->room_fd, &one, sizeof one) < 0) { /* a counter: cannot overflow here */ }
        }
    }
    return 1;
}

/* Moves up to max completions from the completion queue into out; the lock is held. Returns
 * how many, or the link's failure when there are none before it. */
static int harvest(verbs_nic *n, tfos_completion *out, int max, char *err) {
    int got = 0;
    while (got < max) {
        struct ibv_wc wc[HARVEST_BATCH];
        int want = max - got < HARVEST_BATCH ? max - got : HARVEST_BATCH;
        int polled = tfos_ibv_poll_cq(n->cq, want, wc);
        if (polled < 0) {
            link_say(n, err, TFOS_NIC_EIO, "ibv_poll_cq failed (%d)", polled);
            return got ? got : link_failed(n, err, TFOS_NIC_EIO);
        }
        for (int i = 0; i < polled; i++) {
            int rc = convert(n, &wc[i], &out[got], err);
            if (rc < 0) return got ? got : rc;    /* sticky: the next call reports it */
            got++;
        }
        if (polled < want) break;
    }
    return got;
}

/* Completions for poll(): stashed ones first, then the queue's. */
static int take(verbs_nic *n, tfos_completion *out, int max, char *err) {
    pthread_mutex_lock(&n->lock);
    int got = 0;
    while (got < max && n->stash_len) {
        out[got++] = n->stash[n->stash_head];
        n->stash_head = (n->stash_head + 1) % n->stash_cap;
        n->stash_len--;
    }
    if (got < max && !n->failed) {
        int rc = harvest(n, out + got, max - got, err);
        if (rc < 0 && !got) got = rc;
        else if (rc > 0) got += rc;
    } else if (!got && n->failed) {
        got = sticky(n, err);
    }
    pthread_mutex_unlock(&n->lock);
    return got;
}

enum { WOKE_EVENT = 1, WOKE_TIMEOUT = 0, WOKE_INTERRUPT = -100, WOKE_CLOSED = -101 };

static void drain_counter(int fd) {
    uint64_t count;
    if (read(fd, &count, sizeof count) < 0) { /* EAGAIN: another thread took it */ }
}

/* Sleeps until the completion channel fires, the peer hangs up, the extra descriptor (or
 * interrupt_fd, when interruptible) is readable, or timeout_ms passes. */
static int wait_once(verbs_nic *n, int extra_fd, int interruptible, int timeout_ms) {
    struct pollfd p[4] = {
        {n->channel->fd, POLLIN, 0}, {extra_fd, POLLIN, 0}, {n->boot_fd, POLLRDHUP, 0},
        {interruptible ? n->interrupt_fd : -1, POLLIN, 0},
    };
    int rc = poll(p, 4, timeout_ms);
    if (rc < 0) return WOKE_EVENT;          /* EINTR: look again */
    if (rc == 0) return WOKE_TIMEOUT;
    if (p[0].revents & POLLIN) {
        struct ibv_cq *cq;
        void *cq_context;
        if (lib.get_cq_event(n->channel, &cq, &cq_context) == 0) lib.ack_cq_events(cq, 1);
        return WOKE_EVENT;
    }
    if (p[1].revents & POLLIN) {
        drain_counter(extra_fd);
        return WOKE_EVENT;
    }
    if (p[3].revents & POLLIN) {
        drain_counter(n->interrupt_fd);
        return WOKE_INTERRUPT;
    }
    if (p[2].revents) return WOKE_CLOSED;
    return WOKE_EVENT;
}

static int arm(verbs_nic *n, char *err) {
    int rc = tfos_ibv_req_notify_cq(n->cq, 0);
    if (!rc) return TFOS_NIC_OK;
    pthread_mutex_lock(&n->lock);
    link_say(n, err, TFOS_NIC_EIO, "ibv_req_notify_cq failed (%s)", strerror(rc));
    rc = link_failed(n, err, TFOS_NIC_EIO);
    pthread_mutex_unlock(&n->lock);
    return rc;
}

static int on_closed(verbs_nic *n, char *err) {
    pthread_mutex_lock(&n->lock);
    int rc = n->failed ? sticky(n, err) : closed_error(n, err);
    pthread_mutex_unlock(&n->lock);
    return rc;
}

/* The peer hung up. Writes still in flight may yet complete with the error that made it
 * close (a refused key, say), and that error is the root cause to report: give them a short
 * grace before calling the link closed. A peer that died leaves them unanswered. */
static int after_hang_up(verbs_nic *n, tfos_completion *out, int max, char *err) {
    int64_t deadline = now_ms() + CLOSE_GRACE_MS;
    for (;;) {
        int got = take(n, out, max, err);
        pthread_mutex_lock(&n->lock);
        int waiting = n->in_flight > 0 && !n->failed;
        pthread_mutex_unlock(&n->lock);
        int64_t left = deadline - now_ms();
        if (got || !waiting || left <= 0) return got ? got : on_closed(n, err);
        struct pollfd p = {n->channel->fd, POLLIN, 0};
        int rc = arm(n, err);
        if (rc) return rc;
        if ((got = take(n, out, max, err))) return got;
        if (poll(&p, 1, (int)left) == 1) {
            struct ibv_cq *cq;
            void *cq_context;
            if (lib.get_cq_event(n->channel, &cq, &cq_context) == 0) lib.ack_cq_events(cq, 1);
        }
    }
}

static int verbs_poll(tfos_nic *nic, tfos_completion *out, int max, int timeout_ms, char *err) {
    verbs_nic *n = (verbs_nic *)nic;
    if (max <= 0 || !out)
        return link_say(n, err, TFOS_NIC_EINVAL, "poll() needs room for a completion (max %d)",
                        max);
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    int64_t spin_end = now_us() + (n->spin_us > 0 ? n->spin_us : 0);
    for (;;) {
        int got = take(n, out, max, err);
        if (got) return got;
        int64_t left = deadline < 0 ? -1 : deadline - now_ms();
        if (left < 0 && deadline >= 0) left = 0;
        if (left != 0 && now_us() < spin_end) {
            sched_yield();
            continue;
        }
        /* Arm, then look once more: a completion that came before arming raises no event. */
        int rc = arm(n, err);
        if (rc) return rc;
        got = take(n, out, max, err);
        if (got) return got;
        switch (wait_once(n, n->stash_fd, 1, left > INT32_MAX ? INT32_MAX : (int)left)) {
        case WOKE_INTERRUPT:
            return link_say(n, err, TFOS_NIC_ETIMEDOUT, "poll() interrupted");
        case WOKE_CLOSED:
            return after_hang_up(n, out, max, err);
        case WOKE_TIMEOUT:
            got = take(n, out, max, err);
            if (got) return got;
            if (peer_gone(n)) return on_closed(n, err);
            return link_say(n, err, TFOS_NIC_ETIMEDOUT, "no completion within %d ms",
                            timeout_ms);
        default:
            break;
        }
    }
}

static void verbs_interrupt(tfos_nic *nic) {
    verbs_nic *n = (verbs_nic *)nic;
    uint64_t one = 1;
    if (write(n->interrupt_fd, &one, sizeof one) < 0) { /* the counter cannot overflow */ }
}

/* write() found every send slot taken: harvest into the stash (waking poll() for what it
 * holds) until a slot frees. Called and returns with the lock held. */
static int make_room(verbs_nic *n, char *err) {
    int armed = 0;
    while (n->in_flight >= n->send_depth) {
        if (n->failed) return sticky(n, err);
        if (n->stash_len == n->stash_cap) {
            int cap = n->stash_cap ? 2 * n->stash_cap : 64;
            tfos_completion *grown = malloc((size_t)cap * sizeof *grown);
            if (!grown) return link_say(n, err, TFOS_NIC_ENOMEM, "out of memory");
            for (int i = 0; i < n->stash_len; i++)
                grown[i] = n->stash[(n->stash_head + i) % n->stash_cap];
            free(n->stash);
            n->stash = grown;
            n->stash_cap = cap;
            n->stash_head = 0;
        }
        int tail = (n->stash_head + n->stash_len) % n->stash_cap;
        int room = n->stash_cap - n->stash_len;
        if (tail + room > n->stash_cap) room = n->stash_cap - tail;
        int got = harvest(n, n->stash + tail, room, err);
        if (got < 0) return got;
        if (got > 0) {
            n->stash_len += got;
            uint64_t one = 1;
            if (write(n->stash_fd, &one, sizeof one) < 0) { /* cannot overflow */ }
            armed = 0;
            continue;
        }
        n->room_wanted = 1;
        pthread_mutex_unlock(&n->lock);
        /* Arm, then harvest once more before sleeping: see verbs_poll. */
        int rc = armed ? wait_once(n, n->room_fd, 0, -1) : arm(n, err);
        pthread_mutex_lock(&n->lock);
        n->room_wanted = 0;
        if (!armed && rc) return rc;
        if (armed && rc == WOKE_CLOSED) return n->failed ? sticky(n, err) : closed_error(n, err);
        armed = !armed;
    }
    return TFOS_NIC_OK;
}

static int verbs_write(tfos_nic *nic, const tfos_mr *local, uint64_t local_offset,
                       const tfos_remote_mr *remote, uint64_t remote_offset, uint64_t length,
                       int flags, uint32_t imm, uint64_t wr_id, char *err) {
    verbs_nic *n = (verbs_nic *)nic;
    if (!local || !local->carrier || !remote || (flags & ~TFOS_NIC_IMM))
        return link_say(n, err, TFOS_NIC_EINVAL, "write() needs a local region of this link, "
                        "a remote region and flags 0 or TFOS_NIC_IMM (got %d)", flags);
    if (local_offset > local->length || length > local->length - local_offset)
        return link_say(n, err, TFOS_NIC_EINVAL,
                        "write of %" PRIu64 " bytes at offset %" PRIu64 " runs past the local "
                        "region (%" PRIu64 " bytes)", length, local_offset, local->length);
    if (remote_offset > remote->length || length > remote->length - remote_offset)
        return link_say(n, err, TFOS_NIC_EACCESS,
                        "write of %" PRIu64 " bytes at offset %" PRIu64 " runs past the peer's "
                        "region (%" PRIu64 " bytes, rkey 0x%x)", length, remote_offset,
                        remote->length, remote->rkey);
    if (length > n->max_msg)
        return link_say(n, err, TFOS_NIC_EINVAL,
                        "write of %" PRIu64 " bytes exceeds the port's largest message (%" PRIu32
                        " bytes): split it", length, n->max_msg);
    struct ibv_sge sge = {(uint64_t)(uintptr_t)local->addr + local_offset, (uint32_t)length,
                          local->lkey};
    struct ibv_send_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = wr_id;
    wr.sg_list = length ? &sge : NULL;
    wr.num_sge = length ? 1 : 0;
    wr.opcode = (flags & TFOS_NIC_IMM) ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.imm_data = htonl(imm);
    wr.wr.rdma.remote_addr = remote->addr + remote_offset;
    wr.wr.rdma.rkey = remote->rkey;

    pthread_mutex_lock(&n->lock);
    int rc = n->failed ? sticky(n, err) : make_room(n, err);
    if (!rc) {
        n->in_flight++;
        int posted = tfos_ibv_post_send(n->qp, &wr, &bad);
        if (posted) {
            n->in_flight--;
            link_say(n, err, TFOS_NIC_EIO, "ibv_post_send failed (%s)", strerror(posted));
            rc = link_failed(n, err, TFOS_NIC_EIO);
        }
    }
    pthread_mutex_unlock(&n->lock);
    return rc;
}

/* ---- regions ------------------------------------------------------------------------------ */

static void describe_memlock(char *out, size_t size) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_MEMLOCK, &limit)) snprintf(out, size, "unknown");
    else if (limit.rlim_cur == RLIM_INFINITY) snprintf(out, size, "unlimited");
    else snprintf(out, size, "%llu KiB", (unsigned long long)limit.rlim_cur / 1024);
}

static int verbs_alloc_mr(tfos_nic *nic, uint64_t length, tfos_mr *out, char *err) {
    verbs_nic *n = (verbs_nic *)nic;
    memset(out, 0, sizeof *out);
    if (length == 0 || length > SIZE_MAX / 2)
        return link_say(n, err, TFOS_NIC_EINVAL, "cannot register a region of %" PRIu64
                        " bytes", length);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t rounded = (length + page - 1) / page * page;
    void *addr = NULL;
    if (posix_memalign(&addr, page, rounded))
        return link_say(n, err, TFOS_NIC_ENOMEM, "cannot allocate %" PRIu64 " bytes", length);
    memset(addr, 0, rounded);
    struct ibv_mr *mr = lib.reg_mr(n->pd, addr, (size_t)length,
                                   IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (!mr) {
        int e = errno;
        free(addr);
        if (e == ENOMEM || e == EAGAIN || e == EPERM) {
            char limit[32];
            describe_memlock(limit, sizeof limit);
            return link_say(n, err, TFOS_NIC_ENOMEM,
                            "cannot register %" PRIu64 " bytes (%s): locked-memory limit "
                            "%s; raise it: ulimit -l unlimited, memlock in limits.conf, "
                            "LimitMEMLOCK= (systemd), --ulimit memlock=-1 (docker)", length,
                            strerror(e), limit);
        }
        return link_say(n, err, TFOS_NIC_EIO, "cannot register %" PRIu64 " bytes (ibv_reg_mr: "
                        "%s)", length, strerror(e));
    }
    out->addr = addr;
    out->length = length;
    out->lkey = mr->lkey;
    out->rkey = mr->rkey;
    out->carrier = mr;
    return TFOS_NIC_OK;
}

static void verbs_free_mr(tfos_nic *nic, tfos_mr *mr) {
    (void)nic;
    if (!mr || !mr->carrier) return;
    lib.dereg_mr((struct ibv_mr *)mr->carrier);
    free(mr->addr);
    memset(mr, 0, sizeof *mr);
}

static void verbs_export_mr(tfos_nic *nic, const tfos_mr *mr, tfos_remote_mr *out) {
    (void)nic;
    out->addr = (uint64_t)(uintptr_t)mr->addr;
    out->length = mr->length;
    out->rkey = mr->rkey;
    out->reserved = 0;
}

static void teardown(verbs_nic *n) {
    if (n->qp) lib.destroy_qp(n->qp);
    if (n->cq) lib.destroy_cq(n->cq);
    if (n->channel) lib.destroy_comp_channel(n->channel);
    if (n->pd) lib.dealloc_pd(n->pd);
    if (n->ctx) lib.close_device(n->ctx);
    int fds[] = {n->boot_fd, n->interrupt_fd, n->stash_fd, n->room_fd};
    for (size_t i = 0; i < sizeof fds / sizeof *fds; i++)
        if (fds[i] >= 0) close(fds[i]);
    pthread_mutex_destroy(&n->lock);
    free(n->stash);
    free(n);
}

/* Closing: the hang-up tells the peer's carrier; the queue pair and the engine's regions then
 * live on until the peer hangs up too (or LINGER_MS passes), so writes the peer still has in
 * flight land in registered memory and are acknowledged, instead of failing with a remote
 * access error (regions gone) or retry-exceeded (queue pair gone), on a device as with the
 * fake. The engine calls this before it frees its regions; destroy calls it again (a no-op). */
static void verbs_quiesce(tfos_nic *nic) {
    verbs_nic *n = (verbs_nic *)nic;
    if (!n || n->quiesced) return;
    n->quiesced = 1;
    int64_t deadline = now_ms() + LINGER_MS;
    /* Our own writes first (the farewell last): each one acknowledged has landed, and its
     * completion waits in the peer's queue before our hang-up can reach the peer, so the peer
     * harvests our last message before it learns we are gone. */
    for (;;) {
        pthread_mutex_lock(&n->lock);
        int pending = n->in_flight > 0 && !n->failed;
        pthread_mutex_unlock(&n->lock);
        int64_t left = deadline - now_ms();
        if (!pending || left <= 0 || peer_gone(n)) break;
        tfos_completion done[HARVEST_BATCH];
        char err[TFOS_NIC_ERRLEN];
        int got = take(n, done, HARVEST_BATCH, err);
        if (got < 0) break;
        if (got == 0 && arm(n, err) == TFOS_NIC_OK && take(n, done, HARVEST_BATCH, err) == 0)
            wait_once(n, -1, 0, left < 10 ? (int)left : 10);
    }
    shutdown(n->boot_fd, SHUT_WR);
    for (int64_t left = LINGER_MS; left > 0 && !peer_gone(n); left = deadline - now_ms()) {
        struct pollfd p = {n->boot_fd, POLLRDHUP, 0};
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR) break;
    }
}

static void verbs_destroy(tfos_nic *nic) {
    verbs_nic *n = (verbs_nic *)nic;
    if (!n) return;
    verbs_quiesce(nic);
    teardown(n);
}

static const tfos_nic_ops verbs_ops = {
    .name = "verbs",
    .alloc_mr = verbs_alloc_mr,
    .free_mr = verbs_free_mr,
    .export_mr = verbs_export_mr,
    .write = verbs_write,
    .poll = verbs_poll,
    .interrupt = verbs_interrupt,
    .destroy = verbs_destroy,
    .any_source = 0,   /* the device reads registered memory only */
    .quiesce = verbs_quiesce,
};

/* ---- set-up: device and port --------------------------------------------------------------- */

static int port_active(struct ibv_context *ctx, int port, struct ibv_port_attr *attr) {
    memset(attr, 0, sizeof *attr);
    if (lib.query_port(ctx, (uint8_t)port, attr)) return -1;
    return attr->state == IBV_PORT_ACTIVE;
}

static void append(char *list, size_t size, const char *sep, const char *fmt, ...) {
    size_t used = strlen(list);
    if (used + 1 >= size) return;
    if (used) snprintf(list + used, size - used, "%s", sep);
    used = strlen(list);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(list + used, size - used, fmt, ap);
    va_end(ap);
}

/* Opens ctx's first active port among those asked for; 1 if one is, 0 if none, -1 if the
 * port asked for does not exist. Ports found down are listed in downs. */
static int pick_port(verbs_nic *n, struct ibv_context *ctx, const char *name, int wanted,
                     struct ibv_port_attr *attr, char *downs, size_t downs_size) {
    int first = wanted ? wanted : 1, last = wanted ? wanted : MAX_PORTS;
    for (int port = first; port <= last; port++) {
        int active = port_active(ctx, port, attr);
        if (active < 0) return port == first ? -1 : 0;    /* past the device's last port */
        if (active) {
            n->ctx = ctx;
            n->port = port;
            snprintf(n->device, sizeof n->device, "%s", name);
            return 1;
        }
        append(downs, downs_size, "; ", "%s port %d: %s", name, port,
               port_state_name(attr->state));
    }
    return 0;
}

/* Opens the named device (or the first with an active port) and picks the port. */
static int open_device(verbs_nic *n, const tfos_verbs_options *o, struct ibv_port_attr *attr,
                       char *err) {
    int count = 0;
    errno = 0;
    struct ibv_device **list = lib.get_device_list(&count);
    if (!list || count == 0) {
        int e = errno;
        if (list) lib.free_device_list(list);
        return say(err, TFOS_NIC_EIO,
                   "verbs: no RDMA device found (%s lists none%s%s): are the NIC's driver and "
                   "ib_uverbs loaded, /dev/infiniband/uverbs* readable? python -m rdma.check "
                   "tells", lib.path, e ? ": " : "", e ? strerror(e) : "");
    }
    char names[160] = "", downs[200] = "";
    int matched = 0, rc = TFOS_NIC_OK;
    for (int i = 0; i < count && !n->ctx && !rc; i++) {
        const char *name = lib.get_device_name(list[i]);
        append(names, sizeof names, ", ", "%s", name);
        if (o->device && strcmp(o->device, name)) continue;
        matched = 1;
        struct ibv_context *ctx = lib.open_device(list[i]);
        if (!ctx) {
            rc = say(err, TFOS_NIC_EIO, "verbs: cannot open %s (%s): check the permissions of "
                     "/dev/infiniband/uverbs*", name, strerror(errno));
            break;
        }
        int found = pick_port(n, ctx, name, o->port, attr, downs, sizeof downs);
        if (found < 0)
            rc = say(err, TFOS_NIC_EINVAL, "verbs: %s has no port %d", name, o->port);
        if (found <= 0) lib.close_device(ctx);
    }
    lib.free_device_list(list);
    if (rc || n->ctx) return rc;
    if (!matched)
        return say(err, TFOS_NIC_EINVAL, "verbs: no RDMA device named %s (found: %s)",
                   o->device, names);
    return say(err, TFOS_NIC_EIO, "verbs: no ACTIVE port (%s): check the cable and "
               "ibv_devinfo; on InfiniBand a subnet manager must run", downs);
}

static int gid_is_zero(const union ibv_gid *gid) {
    for (int i = 0; i < 16; i++)
        if (gid->raw[i]) return 0;
    return 1;
}

static int gid_is_ipv4(const union ibv_gid *gid) {
    for (int i = 0; i < 10; i++)
        if (gid->raw[i]) return 0;
    return gid->raw[10] == 0xff && gid->raw[11] == 0xff;
}

/* Whether sysfs calls this GID a RoCE v2 one (unknown, e.g. no sysfs: no). */
static int gid_is_roce_v2(const char *device, int port, int index) {
    char path[256], type[32] = "";
    snprintf(path, sizeof path, "/sys/class/infiniband/%s/ports/%d/gid_attrs/types/%d", device,
             port, index);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fgets(type, sizeof type, f) != NULL;
    fclose(f);
    return ok && strstr(type, "v2") != NULL;
}

/* The GID this side is reached at: the one asked for, or the best of the port's table. */
static int choose_gid(verbs_nic *n, int requested, int table_len, union ibv_gid *gid,
                      char *err) {
    if (requested >= 0) {
        if (lib.query_gid(n->ctx, (uint8_t)n->port, requested, gid) ||
            (n->link_layer == IBV_LINK_LAYER_ETHERNET && gid_is_zero(gid)))
            return link_say(n, err, TFOS_NIC_EINVAL, "GID index %d is empty or out of the "
                            "port's table (%d entries): see show_gids or ibv_devinfo -v",
                            requested, table_len);
        n->gid_index = requested;
        return TFOS_NIC_OK;
    }
    int best = -1, best_score = -1;
    for (int i = 0; i < table_len && i < 256; i++) {
        union ibv_gid candidate;
        if (lib.query_gid(n->ctx, (uint8_t)n->port, i, &candidate) || gid_is_zero(&candidate))
            continue;
        int score = 2 * gid_is_roce_v2(n->device, n->port, i) + gid_is_ipv4(&candidate);
        if (score > best_score) {
            best = i;
            best_score = score;
            *gid = candidate;
        }
    }
    if (best >= 0) {
        n->gid_index = best;
        return TFOS_NIC_OK;
    }
    if (n->link_layer != IBV_LINK_LAYER_ETHERNET) {   /* InfiniBand: LIDs route, GID unused */
        memset(gid, 0, sizeof *gid);
        n->gid_index = 0;
        return TFOS_NIC_OK;
    }
    return link_say(n, err, TFOS_NIC_EIO, "the port has no GID: on RoCE the Ethernet interface "
                    "needs an IP address (ip addr add ...)");
}

/* ---- set-up: the bootstrap exchange ------------------------------------------------------- */

enum { RECORD_SIZE = 64, RECORD_VERSION = 1 };
static const char record_magic[4] = {'T', 'F', 'V', 'B'};

typedef struct {
    uint32_t qpn, psn;
    uint16_t lid;
    uint8_t link_layer, mtu, port;
    union ibv_gid gid;
    char device[24];
} endpoint;

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) {
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return get16(p) | (uint32_t)get16(p + 2) << 16; }

/* The record, little-endian: magic, version, size, qpn, psn, lid, link layer, MTU, GID,
 * port, device name (for the peer's messages). */
static void encode(const endpoint *e, uint8_t *r) {
    memset(r, 0, RECORD_SIZE);
    memcpy(r, record_magic, 4);
    put16(r + 4, RECORD_VERSION);
    put16(r + 6, RECORD_SIZE);
    put32(r + 8, e->qpn);
    put32(r + 12, e->psn);
    put16(r + 16, e->lid);
    r[18] = e->link_layer;
    r[19] = e->mtu;
    memcpy(r + 20, e->gid.raw, 16);
    r[36] = e->port;
    memcpy(r + 40, e->device, sizeof e->device - 1);
}

static int decode(const verbs_nic *n, const uint8_t *r, endpoint *e, char *err) {
    if (memcmp(r, record_magic, 4) || get16(r + 4) != RECORD_VERSION ||
        get16(r + 6) != RECORD_SIZE)
        return link_say(n, err, TFOS_NIC_EIO, "the peer's set-up record is not a verbs "
                        "carrier's of version %d (magic %.4s, version %u): run the same tfos "
                        "on both sides", RECORD_VERSION, (const char *)r, get16(r + 4));
    memset(e, 0, sizeof *e);
    e->qpn = get32(r + 8) & 0xffffff;
    e->psn = get32(r + 12) & 0xffffff;
    e->lid = get16(r + 16);
    e->link_layer = r[18];
    e->mtu = r[19];
    memcpy(e->gid.raw, r + 20, 16);
    e->port = r[36];
    memcpy(e->device, r + 40, sizeof e->device - 1);
    return TFOS_NIC_OK;
}

/* Writes or reads all of buf on the bootstrap socket before the deadline. */
static int boot_io(const verbs_nic *n, void *buf, size_t len, int writing, int64_t deadline,
                   char *err) {
    uint8_t *p = buf;
    while (len) {
        int64_t left = deadline - now_ms();
        struct pollfd pfd = {n->boot_fd, writing ? POLLOUT : POLLIN, 0};
        int ready = left > 0 ? poll(&pfd, 1, (int)left) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0)
            return link_say(n, err, TFOS_NIC_ETIMEDOUT, "the peer did not take part in the "
                            "set-up exchange in time: is it a verbs carrier too, and alive?");
        ssize_t done = writing ? send(n->boot_fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT)
                               : recv(n->boot_fd, p, len, MSG_DONTWAIT);
        if (done < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        if (done <= 0)
            return link_say(n, err, TFOS_NIC_ECLOSED, "the peer hung up during set-up (%s): "
                            "its own log says why", done ? strerror(errno) : "end of stream");
        p += done;
        len -= (size_t)done;
    }
    return TFOS_NIC_OK;
}

static int exchange(verbs_nic *n, const endpoint *mine, endpoint *theirs, int64_t deadline,
                    char *err) {
    uint8_t out[RECORD_SIZE], in[RECORD_SIZE];
    encode(mine, out);
    int rc = boot_io(n, out, sizeof out, 1, deadline, err);
    if (!rc) rc = boot_io(n, in, sizeof in, 0, deadline, err);
    return rc ? rc : decode(n, in, theirs, err);
}

/* ---- set-up: the queue pair ------------------------------------------------------------- */

static int modify(verbs_nic *n, struct ibv_qp_attr *attr, int mask, const char *to, char *err) {
    int rc = lib.modify_qp(n->qp, attr, mask);
    if (rc)
        return link_say(n, err, TFOS_NIC_EIO, "ibv_modify_qp to %s failed (%s): check that "
                        "both hosts share a fabric and, on RoCE, the GID index and the MTU",
                        to, strerror(rc));
    return TFOS_NIC_OK;
}

static int to_init(verbs_nic *n, char *err) {
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = (uint8_t)n->port;
    a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
    return modify(n, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS,
                  "INIT", err);
}

static int to_rtr(verbs_nic *n, const endpoint *mine, const endpoint *peer, char *err) {
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = mine->mtu < peer->mtu ? mine->mtu : peer->mtu;
    a.dest_qp_num = peer->qpn;
    a.rq_psn = peer->psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;                 /* 0.64 ms between retries of an unposted receive */
    a.ah_attr.dlid = peer->lid;
    a.ah_attr.port_num = (uint8_t)n->port;
    if (n->link_layer == IBV_LINK_LAYER_ETHERNET || peer->lid == 0) {
        a.ah_attr.is_global = 1;          /* RoCE has no LIDs: the GRH carries the route */
        a.ah_attr.grh.dgid = peer->gid;
        a.ah_attr.grh.sgid_index = (uint8_t)n->gid_index;
        a.ah_attr.grh.hop_limit = 64;
    }
    return modify(n, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                  IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER, "RTR", err);
}

static int to_rts(verbs_nic *n, uint32_t psn, char *err) {
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.sq_psn = psn;
    a.timeout = 14;                       /* 4.096 us * 2^14 = 67 ms per try */
    a.retry_cnt = 7;
    a.rnr_retry = 7;                      /* a receiver that has not reposted yet: wait */
    a.max_rd_atomic = 1;
    return modify(n, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                  IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC, "RTS", err);
}

static int make_queues(verbs_nic *n, char *err) {
    if (!(n->pd = lib.alloc_pd(n->ctx)))
        return link_say(n, err, TFOS_NIC_EIO, "ibv_alloc_pd failed (%s)", strerror(errno));
    if (!(n->channel = lib.create_comp_channel(n->ctx)))
        return link_say(n, err, TFOS_NIC_EIO, "ibv_create_comp_channel failed (%s)",
                        strerror(errno));
    int flags = fcntl(n->channel->fd, F_GETFL);
    if (flags < 0 || fcntl(n->channel->fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return link_say(n, err, TFOS_NIC_EIO, "cannot make the completion channel "
                        "non-blocking (%s)", strerror(errno));
    int cqe = n->send_depth + n->recv_depth;
    if (!(n->cq = lib.create_cq(n->ctx, cqe, n, n->channel, 0)))
        return link_say(n, err, TFOS_NIC_EIO, "ibv_create_cq of %d entries failed (%s)", cqe,
                        strerror(errno));
    struct ibv_qp_init_attr init;
    memset(&init, 0, sizeof init);
    init.send_cq = init.recv_cq = n->cq;
    init.cap.max_send_wr = (uint32_t)n->send_depth;
    init.cap.max_recv_wr = (uint32_t)n->recv_depth;
    init.cap.max_send_sge = 1;
    init.cap.max_recv_sge = 1;
    init.qp_type = IBV_QPT_RC;
    if (!(n->qp = lib.create_qp(n->pd, &init)))
        return link_say(n, err, TFOS_NIC_EIO, "ibv_create_qp (RC, %d sends, %d receives) "
                        "failed (%s)", n->send_depth, n->recv_depth, strerror(errno));
    return TFOS_NIC_OK;
}

static uint32_t random_psn(void) {
    uint32_t x = (uint32_t)now_us() ^ (uint32_t)getpid() * 2654435761u;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    return (x ^ x >> 15) & 0xffffff;
}

static void name_peer(verbs_nic *n, int fd, const char *peer) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    char host[64];
    if (peer) {
        snprintf(n->base.peer, sizeof n->base.peer, "%s", peer);
    } else if (!getpeername(fd, (struct sockaddr *)&addr, &len) && addr.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&addr;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(n->base.peer, sizeof n->base.peer, "%s:%d", host, ntohs(in->sin_port));
    } else if (!getpeername(fd, (struct sockaddr *)&addr, &len) && addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(n->base.peer, sizeof n->base.peer, "[%s]:%d", host, ntohs(in6->sin6_port));
    } else {
        snprintf(n->base.peer, sizeof n->base.peer, "on fd %d", fd);
    }
}

static int connect_link(verbs_nic *n, const tfos_verbs_options *o, char *err) {
    struct ibv_port_attr attr;
    int rc = open_device(n, o, &attr, err);
    if (rc) return rc;
    n->link_layer = attr.link_layer == IBV_LINK_LAYER_ETHERNET ? IBV_LINK_LAYER_ETHERNET
                                                               : IBV_LINK_LAYER_INFINIBAND;
    n->max_msg = attr.max_msg_sz ? attr.max_msg_sz : 1u << 30;
    endpoint mine, peer;
    memset(&mine, 0, sizeof mine);
    if ((rc = choose_gid(n, o->gid_index, attr.gid_tbl_len, &mine.gid, err))) return rc;
    if ((rc = make_queues(n, err)) || (rc = to_init(n, err))) return rc;
    mine.qpn = n->qp->qp_num;
    mine.psn = random_psn();
    mine.lid = attr.lid;
    mine.link_layer = (uint8_t)n->link_layer;
    mine.mtu = (uint8_t)attr.active_mtu;
    mine.port = (uint8_t)n->port;
    snprintf(mine.device, sizeof mine.device, "%.23s", n->device);
    int64_t deadline = now_ms() + (o->setup_timeout_ms > 0 ? o->setup_timeout_ms : 30000);
    if ((rc = exchange(n, &mine, &peer, deadline, err))) return rc;
    if (peer.link_layer != mine.link_layer)
        return link_say(n, err, TFOS_NIC_EIO, "this port is %s but the peer's (%s port %d) is "
                        "%s: they share no fabric", n->link_layer == IBV_LINK_LAYER_ETHERNET ?
                        "RoCE" : "InfiniBand", peer.device, peer.port,
                        peer.link_layer == IBV_LINK_LAYER_ETHERNET ? "RoCE" : "InfiniBand");
    if ((rc = to_rtr(n, &mine, &peer, err)) || (rc = to_rts(n, mine.psn, err))) return rc;
    for (int i = 0; i < n->recv_depth; i++)
        if ((rc = post_receive(n, (uint64_t)i, err))) return rc;
    /* Neither side writes before the other is ready to receive. */
    uint8_t ready = 'R', theirs = 0;
    if ((rc = boot_io(n, &ready, 1, 1, deadline, err)) ||
        (rc = boot_io(n, &theirs, 1, 0, deadline, err)))
        return rc;
    if (theirs != 'R')
        return link_say(n, err, TFOS_NIC_EIO, "the peer's ready byte is 0x%02x, not 'R'",
                        theirs);
    return TFOS_NIC_OK;
}

void tfos_verbs_default_options(tfos_verbs_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->gid_index = -1;
}

int tfos_verbs_create(int bootstrap_fd, const tfos_verbs_options *opts, tfos_nic **out,
                      char *err) {
    tfos_verbs_options defaults;
    tfos_verbs_default_options(&defaults);
    const tfos_verbs_options *o = opts ? opts : &defaults;
    *out = NULL;
    err[0] = '\0';
    if (bootstrap_fd < 0 || o->port < 0 || o->port > 255 || o->gid_index > 255 ||
        o->send_depth < 0 || o->recv_depth < 0)
        return say(err, TFOS_NIC_EINVAL, "verbs: bad options (fd %d, port %d, GID index %d, "
                   "depths %d/%d)", bootstrap_fd, o->port, o->gid_index, o->send_depth,
                   o->recv_depth);
    int rc = load_library(err);
    if (rc) return rc;
    verbs_nic *n = calloc(1, sizeof *n);
    if (!n) return say(err, TFOS_NIC_ENOMEM, "verbs: out of memory");
    n->base.ops = &verbs_ops;
    n->boot_fd = n->interrupt_fd = n->stash_fd = n->room_fd = -1;
    pthread_mutex_init(&n->lock, NULL);
    n->send_depth = o->send_depth ? o->send_depth : 128;
    n->recv_depth = o->recv_depth ? o->recv_depth : 256;
    n->spin_us = o->spin_us ? o->spin_us : 50;
    snprintf(n->device, sizeof n->device, "(no device yet)");
    name_peer(n, bootstrap_fd, o->peer);
    n->boot_fd = fcntl(bootstrap_fd, F_DUPFD_CLOEXEC, 0);
    n->interrupt_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    n->stash_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    n->room_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (n->boot_fd < 0 || n->interrupt_fd < 0 || n->stash_fd < 0 || n->room_fd < 0) {
        rc = say(err, TFOS_NIC_EIO, "verbs: cannot create descriptors (%s)", strerror(errno));
    } else {
        rc = connect_link(n, o, err);
    }
    if (rc) {
        if (n->boot_fd >= 0) shutdown(n->boot_fd, SHUT_WR);   /* tell the peer at once */
        teardown(n);
        return rc;
    }
    *out = &n->base;
    return TFOS_NIC_OK;
}
