/* A test-only libibverbs: one fake device ("fake_mlx0", one port) whose RC queue pairs really
 * move bytes between processes, so the verbs carrier's own code runs in CI without RDMA.
 * Built by tests/unit/test_verbs_carrier.py into a shared library that the carrier loads
 * through TFOS_IBVERBS_LIBRARY. Only what the carrier uses exists: RDMA WRITE and WRITE WITH
 * IMMEDIATE on RC queue pairs, one completion channel per CQ.
 *
 * How bytes move: every queue pair listens on a Unix socket, $TFOS_FAKE_VERBS_DIR/qp-<qpn>.
 * A posted send is queued (post_send never blocks, as on a NIC) and a per-QP sender thread
 * streams it (header + bytes) to the socket of the QP it was connected to at RTR; the peer's
 * listener thread checks what a responder checks, lands the bytes in the registered region,
 * consumes a receive work request for an immediate, and answers with a status the sender
 * turns into the send completion.
 *
 * What it enforces, as rdma-core and the hardware do: RC state transitions with their
 * required and allowed attribute masks (EINVAL otherwise); post_send before RTS fails with
 * EINVAL; queue depths (ENOMEM when full); lkeys and local bounds (IBV_WC_LOC_PROT_ERR);
 * rkeys, bounds and remote-write access (IBV_WC_REM_ACCESS_ERR, and the responder's QP goes
 * to the error state); the source QPN and PSN a responder expects, and the GID (RoCE) or LID
 * (InfiniBand) the sender aimed at (a mismatch is dropped: IBV_WC_RETRY_EXC_ERR); a write
 * with immediate waits for a posted receive when rnr_retry is 7 (else
 * IBV_WC_RNR_RETRY_EXC_ERR); errors flush everything queued (IBV_WC_WR_FLUSH_ERR); completion
 * events only when armed, each to be acknowledged before the CQ is destroyed. Misuse that the
 * real stack would punish with a hang or an overrun is reported on stderr with the prefix
 * "fake_ibverbs:" so tests can fail on it.
 *
 * Knobs (environment): TFOS_FAKE_VERBS_DIR (socket directory, default /tmp),
 * TFOS_FAKE_VERBS_DEVICES=0 (no device), TFOS_FAKE_VERBS_LINK=ib (InfiniBand; default RoCE),
 * TFOS_FAKE_VERBS_PORT_STATE=down, TFOS_FAKE_VERBS_MEMLOCK=<bytes> (registration limit),
 * TFOS_FAKE_VERBS_HOST=<n> (which simulated host: its GIDs and LID differ per n). */
#define _GNU_SOURCE
#include "ibv_abi.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_SGE 4
#define MAX_WR 16384

static void complain(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fake_ibverbs: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static long env_long(const char *name, long fallback) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 0) : fallback;
}

static int link_is_ib(void) {
    const char *v = getenv("TFOS_FAKE_VERBS_LINK");
    return v && !strcmp(v, "ib");
}

static int gid_count(void) { return link_is_ib() ? 1 : 2; }

/* The port's GID table: a link-local GID and (RoCE) an IPv4-mapped one, per simulated host. */
static void port_gid(int index, union ibv_gid *gid) {
    uint8_t host = (uint8_t)env_long("TFOS_FAKE_VERBS_HOST", 1);
    memset(gid, 0, sizeof *gid);
    if (index == 0) {
        static const uint8_t prefix[8] = {0xfe, 0x80};
        memcpy(gid->raw, prefix, 8);
        gid->raw[8] = 0x02, gid->raw[11] = 0xff, gid->raw[12] = 0xfe, gid->raw[15] = host;
    } else {
        gid->raw[10] = gid->raw[11] = 0xff;
        gid->raw[12] = 10, gid->raw[15] = host;             /* ::ffff:10.0.0.<host> */
    }
}

static uint16_t port_lid(void) {
    return link_is_ib() ? (uint16_t)(0x10 + env_long("TFOS_FAKE_VERBS_HOST", 1)) : 0;
}

static int active_mtu(void) { return link_is_ib() ? IBV_MTU_4096 : IBV_MTU_1024; }

/* ---- device and context --------------------------------------------------------------- */

static struct ibv_device fake_device;

struct ibv_device **ibv_get_device_list(int *num_devices) {
    int count = env_long("TFOS_FAKE_VERBS_DEVICES", 1) > 0;
    struct ibv_device **list = calloc(2, sizeof *list);
    if (!list) {
        errno = ENOMEM;
        return NULL;
    }
    fake_device.node_type = IBV_NODE_CA;
    fake_device.transport_type = IBV_TRANSPORT_IB;
    snprintf(fake_device.name, sizeof fake_device.name, "fake_mlx0");
    snprintf(fake_device.dev_name, sizeof fake_device.dev_name, "uverbs0");
    if (count) list[0] = &fake_device;
    if (num_devices) *num_devices = count;
    return list;
}

void ibv_free_device_list(struct ibv_device **list) { free(list); }

const char *ibv_get_device_name(struct ibv_device *device) { return device->name; }

typedef struct {
    struct ibv_context ctx;       /* first: the library hands out &ctx */
    int pds, channels, cqs;
} fake_context;

static int fake_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);
static int fake_req_notify_cq(struct ibv_cq *cq, int solicited_only);
static int fake_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
static int fake_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);

static pthread_mutex_t big_lock = PTHREAD_MUTEX_INITIALIZER;   /* resource counts, MR list */

struct ibv_context *ibv_open_device(struct ibv_device *device) {
    if (device != &fake_device) {
        errno = ENODEV;
        return NULL;
    }
    fake_context *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->ctx.device = device;
    c->ctx.ops.poll_cq = fake_poll_cq;
    c->ctx.ops.req_notify_cq = fake_req_notify_cq;
    c->ctx.ops.post_send = fake_post_send;
    c->ctx.ops.post_recv = fake_post_recv;
    c->ctx.cmd_fd = c->ctx.async_fd = -1;
    c->ctx.num_comp_vectors = 1;
    pthread_mutex_init(&c->ctx.mutex, NULL);
    return &c->ctx;
}

int ibv_close_device(struct ibv_context *context) {
    fake_context *c = (fake_context *)context;
    if (c->pds || c->channels || c->cqs)
        complain("close_device with %d PDs, %d channels, %d CQs still open", c->pds,
                 c->channels, c->cqs);
    pthread_mutex_destroy(&c->ctx.mutex);
    free(c);
    return 0;
}

int ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *a) {
    (void)context;
    if (port_num != 1) return EINVAL;
    memset(a, 0, sizeof *a);
    const char *state = getenv("TFOS_FAKE_VERBS_PORT_STATE");
    a->state = state && !strcmp(state, "down") ? IBV_PORT_DOWN : IBV_PORT_ACTIVE;
    a->max_mtu = IBV_MTU_4096;
    a->active_mtu = active_mtu();
    a->gid_tbl_len = gid_count();
    a->max_msg_sz = 1u << 30;
    a->pkey_tbl_len = 1;
    a->lid = port_lid();
    a->sm_lid = link_is_ib() ? 1 : 0;
    a->phys_state = 5;
    a->link_layer = link_is_ib() ? IBV_LINK_LAYER_INFINIBAND : IBV_LINK_LAYER_ETHERNET;
    return 0;
}

int ibv_query_gid(struct ibv_context *context, uint8_t port_num, int index,
                  union ibv_gid *gid) {
    (void)context;
    if (port_num != 1 || index < 0 || index >= gid_count()) {
        errno = EINVAL;
        return -1;
    }
    port_gid(index, gid);
    return 0;
}

/* ---- protection domains and memory regions ---------------------------------------------- */

typedef struct {
    struct ibv_pd pd;
    int mrs, qps;
} fake_pd;

typedef struct fake_mr {
    struct ibv_mr mr;
    int access, busy;
    struct fake_mr *next;
} fake_mr;

static fake_mr *mr_list;
static pthread_cond_t mr_idle = PTHREAD_COND_INITIALIZER;
static size_t locked_bytes;
static uint32_t key_counter;

struct ibv_pd *ibv_alloc_pd(struct ibv_context *context) {
    fake_pd *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->pd.context = context;
    pthread_mutex_lock(&big_lock);
    ((fake_context *)context)->pds++;
    pthread_mutex_unlock(&big_lock);
    return &p->pd;
}

int ibv_dealloc_pd(struct ibv_pd *pd) {
    fake_pd *p = (fake_pd *)pd;
    if (p->mrs || p->qps) {
        complain("dealloc_pd with %d MRs and %d QPs still in it", p->mrs, p->qps);
        return EBUSY;
    }
    pthread_mutex_lock(&big_lock);
    ((fake_context *)pd->context)->pds--;
    pthread_mutex_unlock(&big_lock);
    free(p);
    return 0;
}

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
    if (!addr || !length ||
        ((access & IBV_ACCESS_REMOTE_WRITE) && !(access & IBV_ACCESS_LOCAL_WRITE))) {
        errno = EINVAL;            /* remote write needs local write, as the kernel insists */
        return NULL;
    }
    long limit = env_long("TFOS_FAKE_VERBS_MEMLOCK", -1);
    pthread_mutex_lock(&big_lock);
    if (limit >= 0 && locked_bytes + length > (size_t)limit) {
        pthread_mutex_unlock(&big_lock);
        errno = ENOMEM;            /* what pinning past RLIMIT_MEMLOCK gives */
        return NULL;
    }
    fake_mr *m = calloc(1, sizeof *m);
    if (!m) {
        pthread_mutex_unlock(&big_lock);
        return NULL;
    }
    uint32_t key = (++key_counter * 0x9e3779b1u) ^ ((uint32_t)getpid() << 8);
    m->mr = (struct ibv_mr){pd->context, pd, addr, length, key_counter, key, key};
    m->access = access;
    m->next = mr_list;
    mr_list = m;
    locked_bytes += length;
    ((fake_pd *)pd)->mrs++;
    pthread_mutex_unlock(&big_lock);
    return &m->mr;
}

int ibv_dereg_mr(struct ibv_mr *mr) {
    pthread_mutex_lock(&big_lock);
    fake_mr **at = &mr_list;
    while (*at && &(*at)->mr != mr) at = &(*at)->next;
    if (!*at) {
        pthread_mutex_unlock(&big_lock);
        complain("dereg_mr of an MR that is not registered");
        return EINVAL;
    }
    fake_mr *m = *at;
    while (m->busy) pthread_cond_wait(&mr_idle, &big_lock);   /* a transfer is using it */
    *at = m->next;
    locked_bytes -= m->mr.length;
    ((fake_pd *)m->mr.pd)->mrs--;
    pthread_mutex_unlock(&big_lock);
    free(m);
    return 0;
}

/* The registered region of pd that key names and that holds [addr, addr + len) with the
 * access asked for; marked busy until released. */
static fake_mr *claim(struct ibv_pd *pd, uint32_t key, int remote, uint64_t addr, uint64_t len,
                      int access) {
    pthread_mutex_lock(&big_lock);
    fake_mr *m = mr_list;
    for (; m; m = m->next) {
        uint64_t start = (uint64_t)(uintptr_t)m->mr.addr;
        if (m->mr.pd != pd || (remote ? m->mr.rkey : m->mr.lkey) != key) continue;
        if (addr < start || len > m->mr.length || addr - start > m->mr.length - len) continue;
        if ((m->access & access) != access) continue;
        m->busy++;
        break;
    }
    pthread_mutex_unlock(&big_lock);
    return m;
}

static void release(fake_mr *m) {
    if (!m) return;
    pthread_mutex_lock(&big_lock);
    if (!--m->busy) pthread_cond_broadcast(&mr_idle);
    pthread_mutex_unlock(&big_lock);
}

/* ---- completion channels and queues ------------------------------------------------------- */

typedef struct {
    struct ibv_comp_channel ch;
    int write_fd;
} fake_channel;

typedef struct {
    struct ibv_cq cq;
    pthread_mutex_t lock;
    struct ibv_wc *ring;
    int head, len, armed, unacked, qps;
} fake_cq;

struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context) {
    fake_channel *c = calloc(1, sizeof *c);
    int fds[2];
    if (!c || pipe2(fds, O_CLOEXEC)) {
        free(c);
        return NULL;
    }
    c->ch.context = context;
    c->ch.fd = fds[0];
    c->write_fd = fds[1];
    pthread_mutex_lock(&big_lock);
    ((fake_context *)context)->channels++;
    pthread_mutex_unlock(&big_lock);
    return &c->ch;
}

int ibv_destroy_comp_channel(struct ibv_comp_channel *channel) {
    fake_channel *c = (fake_channel *)channel;
    if (channel->refcnt) {
        complain("destroy_comp_channel with %d CQs still on it", channel->refcnt);
        return EBUSY;
    }
    close(c->ch.fd);
    close(c->write_fd);
    pthread_mutex_lock(&big_lock);
    ((fake_context *)channel->context)->channels--;
    pthread_mutex_unlock(&big_lock);
    free(c);
    return 0;
}

struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context,
                             struct ibv_comp_channel *channel, int comp_vector) {
    if (cqe < 1 || cqe > 4 * MAX_WR || comp_vector < 0 ||
        comp_vector >= context->num_comp_vectors) {
        errno = EINVAL;
        return NULL;
    }
    fake_cq *q = calloc(1, sizeof *q);
    if (!q || !(q->ring = calloc((size_t)cqe, sizeof *q->ring))) {
        free(q);
        errno = ENOMEM;
        return NULL;
    }
    q->cq.context = context;
    q->cq.channel = channel;
    q->cq.cq_context = cq_context;
    q->cq.cqe = cqe;
    pthread_mutex_init(&q->lock, NULL);
    pthread_mutex_lock(&big_lock);
    if (channel) channel->refcnt++;
    ((fake_context *)context)->cqs++;
    pthread_mutex_unlock(&big_lock);
    return &q->cq;
}

int ibv_destroy_cq(struct ibv_cq *cq) {
    fake_cq *q = (fake_cq *)cq;
    if (q->qps) {
        complain("destroy_cq while %d QPs use it", q->qps);
        return EBUSY;
    }
    if (q->unacked) {              /* the real library would wait for the acks forever */
        complain("destroy_cq with %d completion events not acknowledged", q->unacked);
        return EBUSY;
    }
    pthread_mutex_lock(&big_lock);
    if (cq->channel) cq->channel->refcnt--;
    ((fake_context *)cq->context)->cqs--;
    pthread_mutex_unlock(&big_lock);
    pthread_mutex_destroy(&q->lock);
    free(q->ring);
    free(q);
    return 0;
}

static void push_completion(struct ibv_cq *cq, const struct ibv_wc *wc) {
    fake_cq *q = (fake_cq *)cq;
    pthread_mutex_lock(&q->lock);
    if (q->len == cq->cqe) {
        complain("CQ overrun: more than %d completions unpolled (the real CQ would go to the "
                 "error state)", cq->cqe);
    } else {
        q->ring[(q->head + q->len++) % cq->cqe] = *wc;
    }
    if (q->armed && cq->channel) {
        q->armed = 0;
        fake_channel *c = (fake_channel *)cq->channel;
        if (write(c->write_fd, &cq, sizeof cq) != sizeof cq) complain("event pipe full");
    }
    pthread_mutex_unlock(&q->lock);
}

static int fake_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc) {
    fake_cq *q = (fake_cq *)cq;
    pthread_mutex_lock(&q->lock);
    int n = 0;
    for (; n < num_entries && q->len; n++, q->len--) {
        wc[n] = q->ring[q->head];
        q->head = (q->head + 1) % cq->cqe;
    }
    pthread_mutex_unlock(&q->lock);
    return n;
}

static int fake_req_notify_cq(struct ibv_cq *cq, int solicited_only) {
    (void)solicited_only;
    fake_cq *q = (fake_cq *)cq;
    if (!cq->channel) return EINVAL;
    pthread_mutex_lock(&q->lock);
    q->armed = 1;                  /* the next completion added raises one event */
    pthread_mutex_unlock(&q->lock);
    return 0;
}

int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq, void **cq_context) {
    struct ibv_cq *got;
    ssize_t n = read(channel->fd, &got, sizeof got);
    if (n != sizeof got) return -1;                       /* errno: EAGAIN when non-blocking */
    fake_cq *q = (fake_cq *)got;
    pthread_mutex_lock(&q->lock);
    q->unacked++;
    pthread_mutex_unlock(&q->lock);
    *cq = got;
    *cq_context = got->cq_context;
    return 0;
}

void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents) {
    fake_cq *q = (fake_cq *)cq;
    pthread_mutex_lock(&q->lock);
    if ((unsigned)q->unacked < nevents)
        complain("ack_cq_events(%u) with only %d events taken", nevents, q->unacked);
    else
        q->unacked -= (int)nevents;
    pthread_mutex_unlock(&q->lock);
}

/* ---- queue pairs ---------------------------------------------------------------------- */

typedef struct {
    uint64_t wr_id;
    int opcode, signaled, num_sge;
    uint32_t imm;
    struct ibv_sge sge[MAX_SGE];
    uint64_t raddr;
    uint32_t rkey;
} send_entry;

typedef struct {
    struct ibv_qp qp;
    struct ibv_qp_cap cap;
    int sq_sig_all;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* attributes set by modify_qp */
    unsigned access;
    uint32_t dest_qpn, rq_psn, sq_psn;
    int mtu, rnr_retry;
    struct ibv_ah_attr ah;
    /* queues */
    send_entry *sq;
    int sq_head, sq_len, sending;
    uint64_t *rq;
    int rq_head, rq_len;
    /* the wire */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int listen_fd, serve_fd, peer_fd, stopping;
    pthread_t listener, sender;
} fake_qp;

typedef struct {
    uint32_t magic, src_qpn, psn, opcode, imm, rkey;
    uint64_t raddr, len;
    union ibv_gid sgid, dgid;
    uint16_t dlid, pad[3];
} wire_header;

enum { WIRE_MAGIC = 0x46564231 };

static int full_io(int fd, void *buf, size_t len, int writing) {
    char *p = buf;
    while (len) {
        ssize_t n = writing ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void complete(struct ibv_cq *cq, fake_qp *q, uint64_t wr_id, int status, int opcode,
                     uint32_t len, uint32_t imm, uint32_t src_qp) {
    struct ibv_wc wc;
    memset(&wc, 0, sizeof wc);
    wc.wr_id = wr_id;
    wc.status = status;
    wc.opcode = opcode;
    wc.byte_len = len;
    wc.imm_data = imm;
    wc.wc_flags = opcode == IBV_WC_RECV_RDMA_WITH_IMM && status == IBV_WC_SUCCESS
                      ? IBV_WC_WITH_IMM : 0;
    wc.qp_num = q->qp.qp_num;
    wc.src_qp = src_qp;
    push_completion(cq, &wc);
}

/* The error state: everything queued completes with IBV_WC_WR_FLUSH_ERR (lock held). */
static void to_error(fake_qp *q) {
    q->qp.state = IBV_QPS_ERR;
    for (int i = q->sending; i < q->sq_len; i++)
        complete(q->qp.send_cq, q, q->sq[(q->sq_head + i) % q->cap.max_send_wr].wr_id,
                 IBV_WC_WR_FLUSH_ERR, IBV_WC_RDMA_WRITE, 0, 0, 0);
    q->sq_len = q->sending;
    for (; q->rq_len; q->rq_len--, q->rq_head = (q->rq_head + 1) % q->cap.max_recv_wr)
        complete(q->qp.recv_cq, q, q->rq[q->rq_head], IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, 0,
                 0);
    pthread_cond_broadcast(&q->cond);
}

static int gid_equal(const union ibv_gid *a, const union ibv_gid *b) {
    return !memcmp(a->raw, b->raw, 16);
}

/* The responder's checks of an incoming write, before any byte lands (lock held). */
static int accept_write(fake_qp *q, const wire_header *h) {
    if (q->qp.state != IBV_QPS_RTR && q->qp.state != IBV_QPS_RTS) return IBV_WC_RETRY_EXC_ERR;
    if (h->src_qpn != q->dest_qpn) {
        complain("QP %06x got a write from QP %06x but is connected to QP %06x", q->qp.qp_num,
                 h->src_qpn, q->dest_qpn);
        return IBV_WC_RETRY_EXC_ERR;
    }
    if (h->psn != q->rq_psn) {
        complain("QP %06x expected PSN %06x, got %06x", q->qp.qp_num, q->rq_psn, h->psn);
        return IBV_WC_RETRY_EXC_ERR;
    }
    int aimed_here = 0;
    for (int i = 0; i < gid_count(); i++) {
        union ibv_gid mine;
        port_gid(i, &mine);
        aimed_here |= gid_equal(&mine, &h->dgid);
    }
    if (link_is_ib() ? h->dlid != port_lid() : !aimed_here) {
        complain("QP %06x got a write addressed to another port (LID %x / GID mismatch)",
                 q->qp.qp_num, h->dlid);
        return IBV_WC_RETRY_EXC_ERR;
    }
    if (!link_is_ib() && !gid_equal(&h->sgid, &q->ah.grh.dgid)) {
        complain("QP %06x got a write from a GID it was not connected to", q->qp.qp_num);
        return IBV_WC_RETRY_EXC_ERR;
    }
    return IBV_WC_SUCCESS;
}

/* Lands one incoming write; returns the status for the sender. */
static int respond(fake_qp *q, int fd, const wire_header *h) {
    pthread_mutex_lock(&q->lock);
    int status = accept_write(q, h);
    pthread_mutex_unlock(&q->lock);
    fake_mr *m = NULL;
    if (status == IBV_WC_SUCCESS && h->len &&
        (!(q->access & IBV_ACCESS_REMOTE_WRITE) ||
         !(m = claim(q->qp.pd, h->rkey, 1, h->raddr, h->len, IBV_ACCESS_REMOTE_WRITE))))
        status = IBV_WC_REM_ACCESS_ERR;
    if (status == IBV_WC_SUCCESS) {
        if (h->len && full_io(fd, (void *)(uintptr_t)h->raddr, h->len, 0)) status = -1;
    } else {
        char sink[4096];                       /* keep the stream in step */
        for (uint64_t left = h->len; left && status >= 0;) {
            size_t n = left < sizeof sink ? left : sizeof sink;
            if (full_io(fd, sink, n, 0)) status = -1;
            left -= n;
        }
    }
    release(m);
    if (status < 0) return status;
    pthread_mutex_lock(&q->lock);
    if (status == IBV_WC_SUCCESS && h->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
        while (!q->rq_len && !q->stopping && q->qp.state != IBV_QPS_ERR && q->rnr_retry == 7)
            pthread_cond_wait(&q->cond, &q->lock);      /* RNR NAKs, retried forever */
        if (!q->rq_len) {
            status = q->rnr_retry == 7 ? IBV_WC_RETRY_EXC_ERR : IBV_WC_RNR_RETRY_EXC_ERR;
        } else {
            uint64_t wr_id = q->rq[q->rq_head];
            q->rq_head = (q->rq_head + 1) % q->cap.max_recv_wr;
            q->rq_len--;
            complete(q->qp.recv_cq, q, wr_id, IBV_WC_SUCCESS, IBV_WC_RECV_RDMA_WITH_IMM,
                     (uint32_t)h->len, h->imm, h->src_qpn);
        }
    }
    if (status == IBV_WC_SUCCESS) q->rq_psn = (q->rq_psn + 1) & 0xffffff;
    pthread_mutex_unlock(&q->lock);
    return status;
}

static void *listener_main(void *arg) {
    fake_qp *q = arg;
    for (;;) {
        int fd = accept4(q->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            break;                                 /* shut down by destroy_qp */
        }
        pthread_mutex_lock(&q->lock);
        int stop = q->stopping;
        q->serve_fd = stop ? -1 : fd;
        pthread_mutex_unlock(&q->lock);
        wire_header h;
        while (!stop && !full_io(fd, &h, sizeof h, 0) && h.magic == WIRE_MAGIC) {
            int32_t status = respond(q, fd, &h);
            if (status < 0 || full_io(fd, &status, sizeof status, 1)) break;
            if (status == IBV_WC_REM_ACCESS_ERR) {     /* NAK sent: the responder fails too */
                pthread_mutex_lock(&q->lock);
                to_error(q);
                pthread_mutex_unlock(&q->lock);
            }
        }
        pthread_mutex_lock(&q->lock);
        q->serve_fd = -1;
        pthread_mutex_unlock(&q->lock);
        close(fd);
    }
    return NULL;
}

static void socket_path(uint32_t qpn, char *out, size_t size) {
    const char *dir = getenv("TFOS_FAKE_VERBS_DIR");
    snprintf(out, size, "%s/qp-%06x", dir && *dir ? dir : "/tmp", qpn);
}

/* Sends one queued write to the connected QP; returns the work-completion status. */
static int transmit(fake_qp *q, const send_entry *w, uint32_t psn, uint32_t *len) {
    fake_mr *local[MAX_SGE] = {0};
    int status = IBV_WC_SUCCESS;
    uint64_t total = 0;
    for (int i = 0; i < w->num_sge && status == IBV_WC_SUCCESS; i++) {
        total += w->sge[i].length;
        if (w->sge[i].length &&
            !(local[i] = claim(q->qp.pd, w->sge[i].lkey, 0, w->sge[i].addr, w->sge[i].length,
                               0)))
            status = IBV_WC_LOC_PROT_ERR;
    }
    *len = (uint32_t)total;
    if (status == IBV_WC_SUCCESS && q->peer_fd < 0) {
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        socket_path(q->dest_qpn, addr.sun_path, sizeof addr.sun_path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
            close(fd);
            fd = -1;
        }
        if (fd < 0) status = IBV_WC_RETRY_EXC_ERR;    /* nobody answers at that QPN */
        pthread_mutex_lock(&q->lock);
        q->peer_fd = fd;
        pthread_mutex_unlock(&q->lock);
    }
    if (status == IBV_WC_SUCCESS) {
        wire_header h;
        memset(&h, 0, sizeof h);
        h.magic = WIRE_MAGIC;
        h.src_qpn = q->qp.qp_num;
        h.psn = psn;
        h.opcode = (uint32_t)w->opcode;
        h.imm = w->imm;
        h.rkey = w->rkey;
        h.raddr = w->raddr;
        h.len = total;
        h.dlid = q->ah.dlid;
        h.dgid = q->ah.grh.dgid;
        port_gid(q->ah.grh.sgid_index, &h.sgid);
        int32_t answer = -1;
        int failed = full_io(q->peer_fd, &h, sizeof h, 1);
        for (int i = 0; i < w->num_sge && !failed; i++)
            if (w->sge[i].length)
                failed = full_io(q->peer_fd, (void *)(uintptr_t)w->sge[i].addr,
                                 w->sge[i].length, 1);
        if (!failed) failed = full_io(q->peer_fd, &answer, sizeof answer, 0);
        status = failed ? IBV_WC_RETRY_EXC_ERR : answer;   /* a dead peer never acks */
    }
    for (int i = 0; i < MAX_SGE; i++) release(local[i]);
    return status;
}

static void *sender_main(void *arg) {
    fake_qp *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (!q->stopping && (!q->sq_len || q->qp.state != IBV_QPS_RTS))
            pthread_cond_wait(&q->cond, &q->lock);
        if (q->stopping) break;
        send_entry w = q->sq[q->sq_head];
        uint32_t psn = q->sq_psn, len = 0;
        q->sending = 1;
        pthread_mutex_unlock(&q->lock);
        int status = transmit(q, &w, psn, &len);
        pthread_mutex_lock(&q->lock);
        q->sending = 0;
        q->sq_head = (q->sq_head + 1) % q->cap.max_send_wr;
        q->sq_len--;
        if (status == IBV_WC_SUCCESS) q->sq_psn = (q->sq_psn + 1) & 0xffffff;
        if (status != IBV_WC_SUCCESS || w.signaled)
            complete(q->qp.send_cq, q, w.wr_id, status, IBV_WC_RDMA_WRITE, len, 0, 0);
        if (status != IBV_WC_SUCCESS && q->qp.state != IBV_QPS_ERR) to_error(q);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

static int bind_qpn(fake_qp *q) {
    static uint32_t counter;
    for (int tries = 0; tries < 4096; tries++) {
        uint32_t qpn = ((uint32_t)getpid() * 64 + __atomic_add_fetch(&counter, 1,
                                                                      __ATOMIC_RELAXED)) &
                       0xffffff;
        if (qpn < 2) continue;                     /* QPs 0 and 1 are special */
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        socket_path(qpn, addr.sun_path, sizeof addr.sun_path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        if (!bind(fd, (struct sockaddr *)&addr, sizeof addr) && !listen(fd, 4)) {
            q->qp.qp_num = qpn;
            q->listen_fd = fd;
            snprintf(q->path, sizeof q->path, "%s", addr.sun_path);
            return 0;
        }
        int e = errno;
        close(fd);
        if (e != EADDRINUSE) {
            complain("cannot listen on %s (%s): set TFOS_FAKE_VERBS_DIR", addr.sun_path,
                     strerror(e));
            errno = e;
            return -1;
        }
    }
    return -1;
}

struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *init) {
    struct ibv_qp_cap *cap = &init->cap;
    if (init->qp_type != IBV_QPT_RC || init->srq || !init->send_cq || !init->recv_cq ||
        !cap->max_send_wr || cap->max_send_wr > MAX_WR || !cap->max_recv_wr ||
        cap->max_recv_wr > MAX_WR || cap->max_send_sge > MAX_SGE ||
        cap->max_recv_sge > MAX_SGE) {
        errno = EINVAL;
        return NULL;
    }
    fake_qp *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->sq = calloc(cap->max_send_wr, sizeof *q->sq);
    q->rq = calloc(cap->max_recv_wr, sizeof *q->rq);
    if (!q->sq || !q->rq || bind_qpn(q)) {
        free(q->sq);
        free(q->rq);
        free(q);
        return NULL;
    }
    q->qp.context = pd->context;
    q->qp.qp_context = init->qp_context;
    q->qp.pd = pd;
    q->qp.send_cq = init->send_cq;
    q->qp.recv_cq = init->recv_cq;
    q->qp.state = IBV_QPS_RESET;
    q->qp.qp_type = IBV_QPT_RC;
    q->cap = *cap;
    q->sq_sig_all = init->sq_sig_all;
    q->serve_fd = q->peer_fd = -1;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    pthread_mutex_lock(&big_lock);
    ((fake_pd *)pd)->qps++;
    ((fake_cq *)init->send_cq)->qps++;
    ((fake_cq *)init->recv_cq)->qps++;
    pthread_mutex_unlock(&big_lock);
    pthread_create(&q->listener, NULL, listener_main, q);
    pthread_create(&q->sender, NULL, sender_main, q);
    return &q->qp;
}

int ibv_destroy_qp(struct ibv_qp *qp) {
    fake_qp *q = (fake_qp *)qp;
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_broadcast(&q->cond);
    shutdown(q->listen_fd, SHUT_RDWR);
    if (q->serve_fd >= 0) shutdown(q->serve_fd, SHUT_RDWR);
    if (q->peer_fd >= 0) shutdown(q->peer_fd, SHUT_RDWR);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->listener, NULL);
    pthread_join(q->sender, NULL);
    close(q->listen_fd);
    if (q->peer_fd >= 0) close(q->peer_fd);
    unlink(q->path);
    pthread_mutex_lock(&big_lock);
    ((fake_pd *)qp->pd)->qps--;
    ((fake_cq *)qp->send_cq)->qps--;
    ((fake_cq *)qp->recv_cq)->qps--;
    pthread_mutex_unlock(&big_lock);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->lock);
    free(q->sq);
    free(q->rq);
    free(q);
    return 0;
}

/* Required and allowed attribute masks of each RC transition (the IB spec's QP state
 * table, as the kernel's ib_modify_qp_is_ok applies it). */
static int transition_ok(int from, int to, int mask) {
    int required = IBV_QP_STATE, allowed = 0;
    if (to == IBV_QPS_RESET || to == IBV_QPS_ERR) {
        allowed = 0;
    } else if (from == IBV_QPS_RESET && to == IBV_QPS_INIT) {
        required |= IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
    } else if (from == IBV_QPS_INIT && to == IBV_QPS_INIT) {
        allowed = IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
    } else if (from == IBV_QPS_INIT && to == IBV_QPS_RTR) {
        required |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                    IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
        allowed = IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS | IBV_QP_PKEY_INDEX;
    } else if (from == IBV_QPS_RTR && to == IBV_QPS_RTS) {
        required |= IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                    IBV_QP_MAX_QP_RD_ATOMIC;
        allowed = IBV_QP_CUR_STATE | IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS |
                  IBV_QP_MIN_RNR_TIMER | IBV_QP_PATH_MIG_STATE;
    } else if (from == IBV_QPS_RTS && to == IBV_QPS_RTS) {
        allowed = IBV_QP_CUR_STATE | IBV_QP_ACCESS_FLAGS | IBV_QP_ALT_PATH |
                  IBV_QP_PATH_MIG_STATE | IBV_QP_MIN_RNR_TIMER;
    } else {
        return 0;
    }
    return (mask & required) == required && !(mask & ~(required | allowed));
}

/* The values a device would refuse (lock held). */
static int values_ok(const struct ibv_qp_attr *a, int mask) {
    if ((mask & IBV_QP_PORT) && a->port_num != 1) return 0;
    if ((mask & IBV_QP_PKEY_INDEX) && a->pkey_index != 0) return 0;
    int mtu = (int)a->path_mtu;
    if ((mask & IBV_QP_PATH_MTU) && (mtu < IBV_MTU_256 || mtu > active_mtu())) return 0;
    if ((mask & (IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_SQ_PSN)) &&
        (a->dest_qp_num > 0xffffff || a->rq_psn > 0xffffff || a->sq_psn > 0xffffff))
        return 0;
    if ((mask & IBV_QP_RETRY_CNT) && a->retry_cnt > 7) return 0;
    if ((mask & IBV_QP_RNR_RETRY) && a->rnr_retry > 7) return 0;
    if ((mask & IBV_QP_TIMEOUT) && a->timeout > 31) return 0;
    if (mask & IBV_QP_AV) {
        const struct ibv_ah_attr *ah = &a->ah_attr;
        if (ah->port_num != 1) return 0;
        if (!link_is_ib() && !ah->is_global) return 0;      /* RoCE needs the GRH */
        if (link_is_ib() && !ah->is_global && !ah->dlid) return 0;
        if (ah->is_global && ah->grh.sgid_index >= gid_count()) return 0;
        union ibv_gid zero;
        memset(&zero, 0, sizeof zero);
        if (ah->is_global && gid_equal(&ah->grh.dgid, &zero)) return 0;
    }
    return 1;
}

int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask) {
    fake_qp *q = (fake_qp *)qp;
    pthread_mutex_lock(&q->lock);
    int from = qp->state, to = (mask & IBV_QP_STATE) ? (int)attr->qp_state : from;
    if (!(mask & IBV_QP_STATE) || !transition_ok(from, to, mask) || !values_ok(attr, mask) ||
        ((mask & IBV_QP_CUR_STATE) && (int)attr->cur_qp_state != from)) {
        pthread_mutex_unlock(&q->lock);
        return EINVAL;
    }
    if (mask & IBV_QP_ACCESS_FLAGS) q->access = attr->qp_access_flags;
    if (mask & IBV_QP_AV) q->ah = attr->ah_attr;
    if (mask & IBV_QP_PATH_MTU) q->mtu = attr->path_mtu;
    if (mask & IBV_QP_DEST_QPN) q->dest_qpn = attr->dest_qp_num;
    if (mask & IBV_QP_RQ_PSN) q->rq_psn = attr->rq_psn;
    if (mask & IBV_QP_SQ_PSN) q->sq_psn = attr->sq_psn;
    if (mask & IBV_QP_RNR_RETRY) q->rnr_retry = attr->rnr_retry;
    if (to == IBV_QPS_ERR) {
        to_error(q);
    } else {
        if (to == IBV_QPS_RESET) q->sq_len = q->rq_len = 0;
        qp->state = to;
    }
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

static int fake_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
    fake_qp *q = (fake_qp *)qp;
    int rc = 0;
    pthread_mutex_lock(&q->lock);
    for (; wr && !rc; wr = wr->next) {
        if (qp->state != IBV_QPS_RTS && qp->state != IBV_QPS_ERR) rc = EINVAL;
        else if (wr->opcode != IBV_WR_RDMA_WRITE && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM)
            rc = EINVAL, complain("only RDMA WRITE (with immediate) is faked");
        else if (wr->num_sge < 0 || (uint32_t)wr->num_sge > q->cap.max_send_sge) rc = EINVAL;
        else if ((uint32_t)q->sq_len >= q->cap.max_send_wr) rc = ENOMEM;
        if (rc) {
            *bad = wr;
            break;
        }
        if (qp->state == IBV_QPS_ERR) {
            complete(qp->send_cq, q, wr->wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RDMA_WRITE, 0, 0,
                     0);
            continue;
        }
        send_entry *e = &q->sq[(q->sq_head + q->sq_len++) % q->cap.max_send_wr];
        memset(e, 0, sizeof *e);
        e->wr_id = wr->wr_id;
        e->opcode = wr->opcode;
        e->signaled = q->sq_sig_all || (wr->send_flags & IBV_SEND_SIGNALED);
        e->imm = wr->imm_data;
        e->num_sge = wr->num_sge;
        memcpy(e->sge, wr->sg_list, (size_t)wr->num_sge * sizeof *e->sge);
        e->raddr = wr->wr.rdma.remote_addr;
        e->rkey = wr->wr.rdma.rkey;
    }
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return rc;
}

static int fake_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
    fake_qp *q = (fake_qp *)qp;
    int rc = 0;
    pthread_mutex_lock(&q->lock);
    for (; wr && !rc; wr = wr->next) {
        if (qp->state == IBV_QPS_RESET) rc = EINVAL;
        else if (wr->num_sge < 0 || (uint32_t)wr->num_sge > q->cap.max_recv_sge) rc = EINVAL;
        else if ((uint32_t)q->rq_len >= q->cap.max_recv_wr) rc = ENOMEM;
        if (rc) {
            *bad = wr;
            break;
        }
        if (qp->state == IBV_QPS_ERR)
            complete(qp->recv_cq, q, wr->wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, 0, 0);
        else
            q->rq[(q->rq_head + q->rq_len++) % q->cap.max_recv_wr] = wr->wr_id;
    }
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return rc;
}
