/* Drives the verbs carrier (rdma/csrc/verbs_carrier.c, compiled in) through nic.h, for
 * tests/unit/test_verbs_carrier.py. Two-process modes run as a server and a client joined by
 * a TCP socket on 127.0.0.1, the bootstrap the carrier expects; solo modes run in one process
 * (a pair of links over a socketpair, one set up from a second thread, where a peer is needed).
 *
 *   nic_driver MODE server            listens, prints "port N", serves one client
 *   nic_driver MODE client PORT
 *   nic_driver MODE solo
 *
 * Every check that fails prints "FAIL: ..." and exits 1; success ends with "PASS". */
#define _GNU_SOURCE
#include "verbs_carrier.h"

#include "ibv_abi.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *role = "solo";

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL (%s): ", role);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    exit(1);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void full_io(int fd, void *buf, size_t len, int writing) {
    char *p = buf;
    while (len) {
        ssize_t n = writing ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n <= 0)
            fail("bootstrap %s: %s", writing ? "send" : "recv", n ? strerror(errno) : "EOF");
        p += n;
        len -= (size_t)n;
    }
}

static int bootstrap(const char *how, const char *port) {
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (!strcmp(how, "client")) {
        addr.sin_port = htons((uint16_t)atoi(port));
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr))
            fail("connect: %s", strerror(errno));
        return fd;
    }
    socklen_t len = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) || listen(fd, 1) ||
        getsockname(fd, (struct sockaddr *)&addr, &len))
        fail("listen: %s", strerror(errno));
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    int conn = accept(fd, NULL, NULL);
    close(fd);
    return conn;
}

static tfos_nic *create(int fd, int send_depth, int recv_depth) {
    tfos_verbs_options o;
    tfos_verbs_default_options(&o);
    o.send_depth = send_depth;
    o.recv_depth = recv_depth;
    o.peer = !strcmp(role, "server") ? "the client" : "the server";
    o.setup_timeout_ms = 10000;
    char err[TFOS_NIC_ERRLEN];
    tfos_nic *nic = NULL;
    int rc = tfos_verbs_create(fd, &o, &nic, err);
    if (rc) fail("tfos_verbs_create: %d %s", rc, err);
    return nic;
}

static void alloc(tfos_nic *nic, uint64_t length, tfos_mr *mr) {
    char err[TFOS_NIC_ERRLEN];
    int rc = nic->ops->alloc_mr(nic, length, mr, err);
    if (rc) fail("alloc_mr(%" PRIu64 "): %d %s", length, rc, err);
}

/* A message cut at TFOS_NIC_ERRLEN loses its advice: every one printed must fit. */
static void whole(const char *err) {
    if (strlen(err) >= TFOS_NIC_ERRLEN - 1) fail("message truncated: %s", err);
}

/* Trades region descriptors over the bootstrap socket, which the carrier leaves to us. */
static tfos_remote_mr trade(tfos_nic *nic, int fd, const tfos_mr *mine) {
    tfos_remote_mr out, in;
    nic->ops->export_mr(nic, mine, &out);
    full_io(fd, &out, sizeof out, 1);
    full_io(fd, &in, sizeof in, 0);
    return in;
}

static void post(tfos_nic *nic, const tfos_mr *local, uint64_t loff, const tfos_remote_mr *r,
                 uint64_t roff, uint64_t len, int flags, uint32_t imm, uint64_t wr_id) {
    char err[TFOS_NIC_ERRLEN];
    int rc = nic->ops->write(nic, local, loff, r, roff, len, flags, imm, wr_id, err);
    if (rc) fail("write(%" PRIu64 " bytes): %d %s", len, rc, err);
}

static tfos_completion next(tfos_nic *nic, int timeout_ms) {
    tfos_completion c;
    char err[TFOS_NIC_ERRLEN];
    int rc = nic->ops->poll(nic, &c, 1, timeout_ms, err);
    if (rc != 1) fail("poll: %d %s", rc, err);
    return c;
}

static void fill(uint8_t *p, uint64_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 12345;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

static int same(const uint8_t *p, uint64_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 12345;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        if (p[i] != (uint8_t)x) return 0;
    }
    return 1;
}

/* ---- ping-pong: 0 B .. 16 MiB at odd offsets, every byte checked on both sides ---------- */

static const uint64_t sizes[] = {0, 1, 2, 3, 63, 64, 4095, 4096, 4097, 65536, 1 << 20,
                                 (3 << 20) + 5, 16 << 20};
#define NSIZES (sizeof sizes / sizeof *sizes)
#define REGION ((16 << 20) + 65536)
#define ECHO 0x80000000u

static uint64_t offset_of(unsigned i) { return sizes[i] == 16 << 20 ? 0 : 7 * i + 1; }

/* The next immediate; the SENT completions met on the way are checked and counted (a peer
 * may answer before this side's own send completion arrives). */
static tfos_completion next_immediate(tfos_nic *nic, unsigned *sent) {
    for (;;) {
        tfos_completion c = next(nic, 10000);
        if (c.kind == TFOS_NIC_RECV_IMM) return c;
        if (c.wr_id != 100 + *sent) fail("SENT wr_id %" PRIu64 ", wanted %u", c.wr_id, 100 + *sent);
        ++*sent;
    }
}

static void pingpong(tfos_nic *nic, int fd, int client) {
    tfos_mr send, recv;
    alloc(nic, REGION, &send);
    alloc(nic, REGION, &recv);
    tfos_remote_mr peer = trade(nic, fd, &recv);
    uint8_t *in = recv.addr;
    unsigned sent = 0;
    int64_t start = now_ms();
    for (unsigned i = 0; i < NSIZES; i++) {
        uint64_t n = sizes[i], off = offset_of(i);
        if (client) {
            memset(in + (off ? off - 1 : 0), 0xee, n + 2);
            fill((uint8_t *)send.addr + off, n, i);
            post(nic, &send, off, &peer, off, n, TFOS_NIC_IMM, i, 100 + i);
        }
        tfos_completion c = next_immediate(nic, &sent);
        uint32_t want = client ? (ECHO | i) : i;
        if (c.imm != want || c.length != n)
            fail("immediate %x of %" PRIu64 " bytes, wanted %x of %" PRIu64, c.imm, c.length,
                 want, n);
        if (!same(in + off, n, i)) fail("the %" PRIu64 "-byte write landed wrong", n);
        if (client && ((off && in[off - 1] != 0xee) || in[off + n] != 0xee))
            fail("the %" PRIu64 "-byte write touched bytes outside its range", n);
        if (!client)              /* echo straight out of the receive region */
            post(nic, &recv, off, &peer, off, n, TFOS_NIC_IMM, ECHO | i, 100 + i);
    }
    while (sent < NSIZES) {
        tfos_completion c = next(nic, 10000);
        if (c.kind != TFOS_NIC_SENT || c.wr_id != 100 + sent++)
            fail("completion kind %d wr_id %" PRIu64 " after the last echo", c.kind, c.wr_id);
    }
    int64_t ms = now_ms() - start;
    printf("pingpong: %zu sizes up to 16 MiB in %" PRId64 " ms\n", NSIZES, ms);
    nic->ops->free_mr(nic, &send);
    nic->ops->free_mr(nic, &recv);
}

/* ---- burst: many immediates through a 4-deep send queue and 8 posted receives ----------- */

#define BURST 3000
#define SLOTS 512

static void burst(tfos_nic *nic, int fd, int client) {
    tfos_mr region;
    alloc(nic, SLOTS * 8, &region);
    tfos_remote_mr peer = trade(nic, fd, &region);
    uint64_t *slots = region.addr;
    if (client) {
        for (uint32_t i = 0; i < BURST; i++) {      /* never polls: write() must make room */
            slots[i % SLOTS] = i;
            post(nic, &region, (i % SLOTS) * 8, &peer, (i % SLOTS) * 8, 8, TFOS_NIC_IMM, i, i);
            /* the slot is reused SLOTS writes later, long after its completion */
        }
        uint64_t sent = 0;
        int done = 0;
        while (sent < BURST || !done) {
            tfos_completion c = next(nic, 10000);
            if (c.kind == TFOS_NIC_SENT && c.wr_id != sent++)
                fail("SENT out of order: %" PRIu64 " before %" PRIu64, c.wr_id, sent - 1);
            if (c.kind == TFOS_NIC_RECV_IMM) {
                if (c.imm != 0xd0e) fail("unexpected immediate %x", c.imm);
                done = 1;
            }
        }
    } else {
        uint32_t got = 0;
        while (got < BURST) {
            tfos_completion c[3];
            char err[TFOS_NIC_ERRLEN];
            int n = nic->ops->poll(nic, c, 3, 10000, err);
            if (n < 1) fail("poll after %u immediates: %d %s", got, n, err);
            for (int k = 0; k < n; k++, got++)
                if (c[k].kind != TFOS_NIC_RECV_IMM || c[k].imm != got || c[k].length != 8)
                    fail("completion %d/%u: kind %d imm %u", k, got, c[k].kind, c[k].imm);
        }
        for (uint32_t i = BURST - SLOTS; i < BURST; i++)
            if (slots[i % SLOTS] != i) fail("slot %u holds %" PRIu64, i % SLOTS, slots[i % SLOTS]);
        post(nic, &region, 0, &peer, 0, 0, TFOS_NIC_IMM, 0xd0e, 1);
        if (next(nic, 10000).kind != TFOS_NIC_SENT) fail("no SENT for the last write");
    }
    printf("burst: %d immediates in order\n", BURST);
    nic->ops->free_mr(nic, &region);
}

/* ---- refused writes ------------------------------------------------------------------ */

static void expect_error(tfos_nic *nic, int want, const char *needle) {
    tfos_completion c;
    char err[TFOS_NIC_ERRLEN];
    int rc = nic->ops->poll(nic, &c, 1, 10000, err);
    if (rc != want || !strstr(err, needle))
        fail("poll gave %d (%s), wanted %d with \"%s\"", rc, err, want, needle);
    whole(err);
    printf("poll: %d %s\n", rc, err);
    rc = nic->ops->poll(nic, &c, 1, 0, err);
    if (rc != want) fail("the failure is not sticky: then %d %s", rc, err);
}

/* The server of the refused-write modes: its link fails or closes, never hangs. */
static void victim(tfos_nic *nic) {
    tfos_completion c;
    char err[TFOS_NIC_ERRLEN];
    int rc = nic->ops->poll(nic, &c, 1, 10000, err);
    if (rc >= 0 || rc == TFOS_NIC_ETIMEDOUT) fail("the peer's refused write left poll at %d", rc);
    whole(err);
    printf("victim: %d %s\n", rc, err);
}

static void badkey(tfos_nic *nic, int fd, int client) {
    tfos_mr region;
    alloc(nic, 4096, &region);
    tfos_remote_mr peer = trade(nic, fd, &region);
    if (client) {
        peer.rkey ^= 0x100;
        post(nic, &region, 0, &peer, 0, 16, TFOS_NIC_IMM, 1, 1);
        expect_error(nic, TFOS_NIC_EACCESS, "REM_ACCESS_ERR");
        char err[TFOS_NIC_ERRLEN];
        int rc = nic->ops->write(nic, &region, 0, &peer, 0, 16, 0, 0, 2, err);
        if (rc != TFOS_NIC_EACCESS) fail("write on a failed link gave %d %s", rc, err);
    } else {
        victim(nic);
    }
    nic->ops->free_mr(nic, &region);
}

static void outofbounds(tfos_nic *nic, int fd, int client) {
    tfos_mr region;
    alloc(nic, 4096, &region);
    tfos_remote_mr peer = trade(nic, fd, &region);
    if (!client) {
        victim(nic);
        return nic->ops->free_mr(nic, &region);
    }
    char err[TFOS_NIC_ERRLEN];
    int rc = nic->ops->write(nic, &region, 0, &peer, 4090, 16, 0, 0, 1, err);
    if (rc != TFOS_NIC_EACCESS || !strstr(err, "past the peer's region"))
        fail("a write past the peer's region gave %d %s", rc, err);
    printf("write: %d %s\n", rc, err);
    rc = nic->ops->write(nic, &region, 4090, &peer, 0, 16, 0, 0, 1, err);
    if (rc != TFOS_NIC_EINVAL) fail("a write past the local region gave %d %s", rc, err);
    peer.length += 8192;                  /* a forged descriptor: only the device can tell */
    post(nic, &region, 0, &peer, 8000, 16, 0, 0, 3);
    expect_error(nic, TFOS_NIC_EACCESS, "REM_ACCESS_ERR");
    nic->ops->free_mr(nic, &region);
}

/* ---- a peer that dies -------------------------------------------------------------------- */

static void peerdeath(tfos_nic *nic, int fd, int client) {
    tfos_mr region;
    alloc(nic, 4096, &region);
    trade(nic, fd, &region);
    if (client) {
        usleep(300 * 1000);
        raise(SIGKILL);
    }
    int64_t start = now_ms();
    tfos_completion c;
    char err[TFOS_NIC_ERRLEN];
    int rc = nic->ops->poll(nic, &c, 1, -1, err);
    int64_t ms = now_ms() - start;
    if (rc != TFOS_NIC_ECLOSED) fail("poll after the peer died: %d %s", rc, err);
    whole(err);
    printf("ECLOSED after %" PRId64 " ms: %s\n", ms, err);
    if (ms > 3000) fail("the dead peer was noticed only after %" PRId64 " ms", ms);
    nic->ops->free_mr(nic, &region);
}

/* ---- solo modes -------------------------------------------------------------------------- */

typedef struct {
    int fd, rc;
    tfos_nic *nic;
    char err[TFOS_NIC_ERRLEN];
} side;

static void *create_side(void *arg) {
    side *s = arg;
    s->rc = tfos_verbs_create(s->fd, NULL, &s->nic, s->err);
    return NULL;
}

/* Two linked nics in this process. */
static void pair(tfos_nic **a, tfos_nic **b) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds)) fail("socketpair");
    side other = {.fd = fds[1]};
    pthread_t t;
    pthread_create(&t, NULL, create_side, &other);
    side mine = {.fd = fds[0]};
    create_side(&mine);
    pthread_join(t, NULL);
    if (mine.rc || other.rc) fail("pair: %d %s / %d %s", mine.rc, mine.err, other.rc, other.err);
    close(fds[0]);
    close(fds[1]);
    *a = mine.nic;
    *b = other.nic;
}

static void *destroy_later(void *arg) {
    tfos_nic *nic = arg;
    nic->ops->destroy(nic);
    return NULL;
}

/* Both ends at once, as two processes would (each destroy lingers for the other's close). */
static void destroy_both(tfos_nic *a, tfos_nic *b) {
    pthread_t t;
    pthread_create(&t, NULL, destroy_later, b);
    a->ops->destroy(a);
    pthread_join(t, NULL);
}

/* A create that must fail with code and a message holding needle. */
static void refused(int fd, const tfos_verbs_options *o, int code, const char *needle) {
    tfos_nic *nic = NULL;
    char err[TFOS_NIC_ERRLEN];
    int rc = tfos_verbs_create(fd, o, &nic, err);
    if (rc != code || nic || !strstr(err, needle))
        fail("create gave %d (%s), wanted %d with \"%s\"", rc, err, code, needle);
    whole(err);
    printf("create: %d %s\n", rc, err);
}

static void *interrupt_later(void *arg) {
    usleep(200 * 1000);
    tfos_nic *nic = arg;
    nic->ops->interrupt(nic);
    return NULL;
}

static void solo(const char *mode) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds)) fail("socketpair");
    tfos_verbs_options o;
    tfos_verbs_default_options(&o);
    const char *lib = getenv("TFOS_IBVERBS_LIBRARY");
    if (!strcmp(mode, "nolib")) {
        refused(fds[0], &o, TFOS_NIC_EIO, lib ? lib : "libibverbs.so.1");
    } else if (!strcmp(mode, "nosymbol")) {
        refused(fds[0], &o, TFOS_NIC_EIO, "has no symbol ibv_get_device_list");
    } else if (!strcmp(mode, "nodevice")) {
        refused(fds[0], &o, TFOS_NIC_EIO, "no RDMA device found");
    } else if (!strcmp(mode, "portdown")) {
        refused(fds[0], &o, TFOS_NIC_EIO, "no ACTIVE port (fake_mlx0 port 1: DOWN)");
    } else if (!strcmp(mode, "baddevice")) {
        o.device = "mlx5_7";
        refused(fds[0], &o, TFOS_NIC_EINVAL, "no RDMA device named mlx5_7 (found: fake_mlx0)");
    } else if (!strcmp(mode, "peerless")) {
        close(fds[1]);
        refused(fds[0], &o, TFOS_NIC_ECLOSED, "hung up during set-up");
    } else if (!strcmp(mode, "badrecord")) {
        char junk[64];
        memset(junk, 'X', sizeof junk);
        full_io(fds[1], junk, sizeof junk, 1);
        refused(fds[0], &o, TFOS_NIC_EIO, "is not a verbs carrier's");
    } else if (!strcmp(mode, "memlock")) {
        tfos_nic *a, *b;
        pair(&a, &b);
        tfos_mr mr;
        char err[TFOS_NIC_ERRLEN];
        int rc = a->ops->alloc_mr(a, 2 << 20, &mr, err);
        if (rc != TFOS_NIC_ENOMEM || !strstr(err, "ulimit -l"))
            fail("alloc_mr past the memlock limit gave %d %s", rc, err);
        whole(err);
        printf("alloc_mr: %d %s\n", rc, err);
        destroy_both(a, b);
    } else if (!strcmp(mode, "interrupt")) {
        tfos_nic *a, *b;
        pair(&a, &b);
        tfos_completion c;
        char err[TFOS_NIC_ERRLEN];
        int64_t start = now_ms();
        int rc = a->ops->poll(a, &c, 1, 150, err);
        int64_t waited = now_ms() - start;
        if (rc != TFOS_NIC_ETIMEDOUT || waited < 140 || waited > 2000)
            fail("poll(150 ms) gave %d after %" PRId64 " ms", rc, waited);
        pthread_t t;
        pthread_create(&t, NULL, interrupt_later, a);
        start = now_ms();
        rc = a->ops->poll(a, &c, 1, -1, err);
        waited = now_ms() - start;
        pthread_join(t, NULL);
        if (rc != TFOS_NIC_ETIMEDOUT || waited < 150 || waited > 3000)
            fail("interrupted poll(-1) gave %d after %" PRId64 " ms", rc, waited);
        printf("interrupted after %" PRId64 " ms\n", waited);
        pthread_create(&t, NULL, destroy_later, b);   /* a's peer closes: a hears it at once */
        start = now_ms();
        rc = a->ops->poll(a, &c, 1, 5000, err);
        waited = now_ms() - start;
        if (rc != TFOS_NIC_ECLOSED || waited > 500)
            fail("after the peer's destroy poll gave %d after %" PRId64 " ms: %s", rc, waited,
                 err);
        a->ops->destroy(a);                            /* which ends b's linger */
        pthread_join(t, NULL);
    } else {
        fail("unknown solo mode %s", mode);
    }
    close(fds[0]);
    if (strcmp(mode, "peerless")) close(fds[1]);
}

/* ---- the fake's own rules, called directly: a lax fake would let a wrong carrier pass ------ */

#define LOOK(name) ibv_##name##_fn name = (ibv_##name##_fn)dlsym(h, "ibv_" #name)

static void rules(void) {
    void *h = dlopen(getenv("TFOS_IBVERBS_LIBRARY"), RTLD_NOW);
    if (!h) fail("dlopen: %s", dlerror());
    LOOK(get_device_list); LOOK(open_device); LOOK(alloc_pd); LOOK(create_cq);
    LOOK(create_qp); LOOK(modify_qp); LOOK(destroy_qp); LOOK(destroy_cq); LOOK(dealloc_pd);
    LOOK(close_device); LOOK(free_device_list);
    int n;
    struct ibv_device **list = get_device_list(&n);
    struct ibv_context *ctx = open_device(list[0]);
    struct ibv_pd *pd = alloc_pd(ctx);
    struct ibv_cq *cq = create_cq(ctx, 8, NULL, NULL, 0);
    struct ibv_qp_init_attr init = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                    .cap = {4, 4, 1, 1, 0}};
    struct ibv_qp *qp = create_qp(pd, &init);
    if (!qp) fail("create_qp: %s", strerror(errno));
    struct ibv_sge sge = {0, 0, 0};
    struct ibv_send_wr wr = {.sg_list = &sge, .opcode = IBV_WR_RDMA_WRITE}, *bad = NULL;
    if (tfos_ibv_post_send(qp, &wr, &bad) != EINVAL || bad != &wr)
        fail("post_send in RESET was not refused with EINVAL");
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTR};
    if (modify_qp(qp, &a, IBV_QP_STATE) != EINVAL) fail("RESET -> RTR was allowed");
    a.qp_state = IBV_QPS_INIT;
    a.port_num = 1;
    if (modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) != EINVAL)
        fail("RESET -> INIT without PKEY_INDEX was allowed");
    if (modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS |
                          IBV_QP_PKEY_INDEX | IBV_QP_SQ_PSN) != EINVAL)
        fail("RESET -> INIT with SQ_PSN was allowed");
    if (modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS | IBV_QP_PKEY_INDEX))
        fail("a correct RESET -> INIT was refused");
    if (tfos_ibv_post_send(qp, &wr, &bad) != EINVAL) fail("post_send in INIT was allowed");
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_1024;
    a.dest_qp_num = 5;
    a.ah_attr.port_num = 1;
    a.ah_attr.dlid = 1;                   /* no GRH: refused on RoCE */
    int rtr = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
              IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
    if (modify_qp(qp, &a, rtr & ~IBV_QP_RQ_PSN) != EINVAL) fail("RTR without RQ_PSN allowed");
    if (modify_qp(qp, &a, rtr) != EINVAL) fail("RTR without a GRH on RoCE was allowed");
    a.path_mtu = IBV_MTU_4096;
    a.ah_attr.is_global = 1;
    a.ah_attr.grh.dgid.raw[15] = 1;
    if (modify_qp(qp, &a, rtr) != EINVAL) fail("a path MTU above the port's was allowed");
    a.path_mtu = IBV_MTU_1024;
    if (modify_qp(qp, &a, rtr)) fail("a correct INIT -> RTR was refused");
    if (tfos_ibv_post_send(qp, &wr, &bad) != EINVAL) fail("post_send in RTR was allowed");
    destroy_qp(qp);
    destroy_cq(cq);
    dealloc_pd(pd);
    close_device(ctx);
    free_device_list(list);
}

int main(int argc, char **argv) {
    if (argc < 3) fail("usage: nic_driver MODE server|client PORT|solo");
    const char *mode = argv[1];
    role = argv[2];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(role, "solo")) {
        if (!strcmp(mode, "rules")) rules();
        else solo(mode);
        printf("PASS\n");
        return 0;
    }
    int client = !strcmp(role, "client");
    int fd = bootstrap(role, argc > 3 ? argv[3] : "0");
    int small = !strcmp(mode, "burst");
    tfos_nic *nic = create(fd, small ? 4 : 0, small ? 8 : 0);
    if (!strcmp(mode, "pingpong")) pingpong(nic, fd, client);
    else if (!strcmp(mode, "burst")) burst(nic, fd, client);
    else if (!strcmp(mode, "badkey")) badkey(nic, fd, client);
    else if (!strcmp(mode, "outofbounds")) outofbounds(nic, fd, client);
    else if (!strcmp(mode, "peerdeath")) peerdeath(nic, fd, client);
    else fail("unknown mode %s", mode);
    nic->ops->destroy(nic);
    close(fd);
    printf("PASS\n");
    return 0;
}
