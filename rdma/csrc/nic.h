/* The "NIC" interface: what the protocol engine (engine.c) asks of a carrier. One tfos_nic is
 * one end of a reliable, connected, ordered link to one peer, shaped like an RDMA RC queue
 * pair, so the verbs carrier maps onto it one to one and the other carriers imitate it:
 *
 *   - memory the peer may write into is registered first (alloc_mr: the carrier allocates it,
 *     because on shm:// only memory it maps into both processes is writable by the peer);
 *   - export_mr gives the peer-usable description of a region (address, length, key), small
 *     enough to travel inside a protocol message; the peer names it in write();
 *   - write() copies bytes from a local registered region into the peer's region; with
 *     TFOS_NIC_IMM it also delivers a 32-bit immediate to the peer, after the bytes (RDMA
 *     WRITE with immediate). Writes complete at the peer in the order they were posted;
 *   - poll() returns completions: this side's writes that finished (the local buffer may be
 *     reused) and immediates that arrived. It spins a bounded time, then blocks (a machine with
 *     2 cores and 3 spinning ranks starves), and returns at once when the peer is gone.
 *
 * A carrier never interprets the immediates or the bytes: the protocol is engine.c's alone.
 * Every function that can fail returns a negative TFOS_NIC_E* code with a sentence in err
 * (TFOS_NIC_ERRLEN bytes): what failed, on which link, and what to do.
 *
 * Threads and bounds (what the engine promises, so a carrier can size its queues):
 *   - write() is called by one thread at a time, poll() by one thread at a time, but a write()
 *     (or alloc_mr/free_mr) may run while another thread is inside poll(); interrupt() may come from any thread, and
 *     when no poll() is blocked it makes the next one return at once (it is never lost);
 *   - at most TFOS_NIC_MAX_POSTED writes are posted whose SENT completion was not yet polled,
 *     and at most TFOS_NIC_MAX_UNPOLLED immediates travel toward the peer that its poll() has
 *     not yet returned (the protocol's credits bound them): queues of these depths never fill.
 *
 * Set-up is carrier specific (each has its own constructor in its own header: loopback pairs
 * in one process, shm over a connected Unix socket, verbs over the authenticated TCP
 * bootstrap socket, which stays open so a dead peer is noticed at once); after it the engine
 * sees only this interface. */
#ifndef TFOS_NIC_H
#define TFOS_NIC_H

#include <stddef.h>
#include <stdint.h>

#define TFOS_NIC_ERRLEN 256
#define TFOS_NIC_MAX_POSTED 256
#define TFOS_NIC_MAX_UNPOLLED 4096

enum {
    TFOS_NIC_OK = 0,
    TFOS_NIC_ETIMEDOUT = -1,   /* poll: nothing within the timeout (not an error of the link) */
    TFOS_NIC_ECLOSED = -2,     /* the peer closed or died; the link is unusable */
    TFOS_NIC_EACCESS = -3,     /* a write named a key or a range the peer did not register */
    TFOS_NIC_ENOMEM = -4,      /* registration failed: no memory, or the memlock limit */
    TFOS_NIC_EINVAL = -5,      /* a caller's bug: bad argument, region or length */
    TFOS_NIC_EIO = -6,         /* anything else the carrier or device reported */
};

/* A registered local region. addr/length are this process's mapping. */
typedef struct {
    void *addr;
    uint64_t length;
    uint32_t lkey;       /* the carrier's handle for local use */
    uint32_t rkey;       /* what the peer must name to write into it */
    void *carrier;       /* carrier-private (e.g. struct ibv_mr *) */
} tfos_mr;

/* The peer's view of one of its regions: what export_mr produced on its side. Plain data, 24
 * bytes, sent inside protocol messages (little-endian on the wire, as the engine writes it). */
typedef struct {
    uint64_t addr;       /* the carrier's address of the region's first byte (a virtual address
                            for verbs, an offset into the shared arena for shm) */
    uint64_t length;
    uint32_t rkey;
    uint32_t reserved;
} tfos_remote_mr;

enum { TFOS_NIC_IMM = 1 };                         /* write() flags */
enum { TFOS_NIC_SENT = 1, TFOS_NIC_RECV_IMM = 2 }; /* completion kinds */

typedef struct {
    int kind;            /* TFOS_NIC_SENT or TFOS_NIC_RECV_IMM */
    uint64_t wr_id;      /* SENT: the wr_id given to write() */
    uint32_t imm;        /* RECV_IMM: the immediate */
    uint64_t length;     /* RECV_IMM: bytes of the write that carried it */
} tfos_completion;

typedef struct tfos_nic tfos_nic;

/* A piece of this process's memory. */
typedef struct {
    const void *base;
    uint64_t len;
} tfos_iov;

typedef struct {
    const char *name;    /* "loopback", "shm", "verbs" */
    int (*alloc_mr)(tfos_nic *nic, uint64_t length, tfos_mr *out, char *err);
    void (*free_mr)(tfos_nic *nic, tfos_mr *mr);
    void (*export_mr)(tfos_nic *nic, const tfos_mr *mr, tfos_remote_mr *out);
    /* Copies length bytes at local->addr + local_offset into the peer's region remote at
     * remote_offset. Returns once the write is posted (it may still be in flight); its
     * TFOS_NIC_SENT completion carries wr_id. The peer's bounds and key are checked: a write
     * outside what the peer registered fails with TFOS_NIC_EACCESS (at once or at poll). */
    int (*write)(tfos_nic *nic, const tfos_mr *local, uint64_t local_offset,
                 const tfos_remote_mr *remote, uint64_t remote_offset, uint64_t length,
                 int flags, uint32_t imm, uint64_t wr_id, char *err);
    /* Optional, for any_source carriers (NULL: the engine gathers pieces into registered
     * memory and calls write()): one write of the n pieces laid one after another at
     * remote_offset, copied before it returns; one completion, and with TFOS_NIC_IMM one
     * immediate whose length is the pieces' total. */
    int (*write_gather)(tfos_nic *nic, const tfos_iov *pieces, int n,
                        const tfos_remote_mr *remote, uint64_t remote_offset, int flags,
                        uint32_t imm, uint64_t wr_id, char *err);
    /* Up to max completions into out; returns how many (>= 1), or TFOS_NIC_ETIMEDOUT when none
     * came within timeout_ms (-1: wait without limit; 0: do not wait), or an error code. */
    int (*poll)(tfos_nic *nic, tfos_completion *out, int max, int timeout_ms, char *err);
    /* Wakes a poll() blocked on this nic from another thread (it returns TFOS_NIC_ETIMEDOUT). */
    void (*interrupt)(tfos_nic *nic);
    void (*destroy)(tfos_nic *nic);
    /* 1 when write() also takes unregistered memory of this process: local == &TFOS_NIC_ANY
     * (addr NULL, length UINT64_MAX) and local_offset is then the source's address; the copy
     * is done before write() returns. A carrier that copies with the CPU (shm) says so, and
     * the engine sends the caller's memory without a staging copy; a device (verbs) cannot. */
    int any_source;
    /* Optional (NULL: nothing to wait for). Called when the engine closes, before it frees its
     * regions: tells the peer this end is going and waits, bounded, until the peer has let go
     * of this end's memory, so writes it still has in flight land in registered memory and are
     * acknowledged instead of failing (a device's queue pair outlives its regions otherwise). */
    void (*quiesce)(tfos_nic *nic);
} tfos_nic_ops;

/* The pseudo-region of any_source writes: every address of this process. */
static const tfos_mr TFOS_NIC_ANY = {NULL, UINT64_MAX, 0, 0, NULL};

struct tfos_nic {
    const tfos_nic_ops *ops;
    char peer[128];      /* who is at the other end, for error messages ("rank 2", "pid 123") */
};

#endif
