/* rdma._core: tfos's compiled transport.
 *
 *   RingWriter, RingReader   the ring bookkeeping (ring.h), drop-in twins of rdma/ring.py's;
 *                            protocol violations raise FrameError, a bad capacity ValueError.
 *   Link                     one end of a link run by the protocol engine (engine.h) over a
 *                            carrier: loopback_pair() in one process, shm_link(fd) between two
 *                            on one host, verbs_link(fd) between two with RDMA (libibverbs is
 *                            dlopen'ed when the first verbs link is made, so this module loads
 *                            on hosts without rdma-core).
 *
 * A carrier joins by getting a constructor here that builds its tfos_nic and hands it to
 * link_from_nic(). shm_link and verbs_link take ``peer``: the name errors give the other end
 * (rdma.shm and rdma.verbs pass the Comm's peer address).
 * Link errors: CommTimeout, CommClosed, FrameError (protocol violations, a bad key, a message
 * too large for recv_into's buffer) and CommError from rdma.errors; ValueError for a caller's
 * bad argument. Every call that can block releases the GIL. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <structmember.h>

#include "engine.h"
#include "loopback.h"
#include "ring.h"
#include "shm_carrier.h"
#include "verbs_carrier.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static PyObject *FrameError, *CommError, *CommClosed, *CommTimeout;

static int fail(PyObject *type, const char *err) {
    PyErr_SetString(type, err);
    return -1;
}

/* -- RingWriter -------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    tfos_ring_writer w;
} RingWriter;

static int RingWriter_init(RingWriter *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"capacity", NULL};
    long long capacity;
    char err[TFOS_RING_ERRLEN];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L", names, &capacity)) return -1;
    if (tfos_ring_writer_init(&self->w, capacity, err)) return fail(PyExc_ValueError, err);
    return 0;
}

static PyObject *RingWriter_reserve(RingWriter *self, PyObject *arg) {
    int64_t start, end, needed;
    char err[TFOS_RING_ERRLEN];
    long long size = PyLong_AsLongLong(arg);
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (tfos_ring_writer_reserve(&self->w, size, &start, &end, &needed, err))
        return fail(FrameError, err), NULL;
    return Py_BuildValue("(LLL)", (long long)start, (long long)end, (long long)needed);
}

static PyObject *RingWriter_commit(RingWriter *self, PyObject *arg) {
    long long end = PyLong_AsLongLong(arg);
    if (end == -1 && PyErr_Occurred()) return NULL;
    tfos_ring_writer_commit(&self->w, end);
    Py_RETURN_NONE;
}

static PyObject *RingWriter_credit(RingWriter *self, PyObject *arg) {
    char err[TFOS_RING_ERRLEN];
    long long released = PyLong_AsLongLong(arg);
    if (released == -1 && PyErr_Occurred()) return NULL;
    if (tfos_ring_writer_credit(&self->w, released, err)) return fail(FrameError, err), NULL;
    Py_RETURN_NONE;
}

static PyMethodDef RingWriter_methods[] = {
    {"reserve", (PyCFunction)RingWriter_reserve, METH_O,
     "(start, end, needed): the message goes to [start, end) once tail >= needed."},
    {"commit", (PyCFunction)RingWriter_commit, METH_O, "The message up to end is published."},
    {"credit", (PyCFunction)RingWriter_credit, METH_O, "The reader released up to this."},
    {NULL}};

static PyMemberDef RingWriter_members[] = {
    {"capacity", T_LONGLONG, offsetof(RingWriter, w.capacity), READONLY, NULL},
    {"head", T_LONGLONG, offsetof(RingWriter, w.head), READONLY, NULL},
    {"tail", T_LONGLONG, offsetof(RingWriter, w.tail), READONLY, NULL},
    {NULL}};

static PyTypeObject RingWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rdma._core.RingWriter",
    .tp_doc = "The writer's view of a ring: where to put the next message, what is credited.",
    .tp_basicsize = sizeof(RingWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RingWriter_init,
    .tp_methods = RingWriter_methods,
    .tp_members = RingWriter_members,
};

/* -- RingReader -------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    tfos_ring_reader r;
} RingReader;

static int RingReader_init(RingReader *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"capacity", NULL};
    long long capacity;
    char err[TFOS_RING_ERRLEN];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L", names, &capacity)) return -1;
    if (tfos_ring_reader_init(&self->r, capacity, err)) return fail(PyExc_ValueError, err);
    return 0;
}

static PyObject *RingReader_publish(RingReader *self, PyObject *arg) {
    int64_t start, end;
    char err[TFOS_RING_ERRLEN];
    long long size = PyLong_AsLongLong(arg);
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (tfos_ring_reader_publish(&self->r, size, &start, &end, err))
        return fail(FrameError, err), NULL;
    return Py_BuildValue("(LL)", (long long)start, (long long)end);
}

static PyObject *RingReader_release(RingReader *self, PyObject *arg) {
    char err[TFOS_RING_ERRLEN];
    long long end = PyLong_AsLongLong(arg);
    if (end == -1 && PyErr_Occurred()) return NULL;
    if (tfos_ring_reader_release(&self->r, end, err)) return fail(FrameError, err), NULL;
    Py_RETURN_NONE;
}

static PyObject *RingReader_request(RingReader *self, PyObject *arg) {
    char err[TFOS_RING_ERRLEN];
    long long needed = PyLong_AsLongLong(arg);
    if (needed == -1 && PyErr_Occurred()) return NULL;
    if (tfos_ring_reader_request(&self->r, needed, err)) return fail(FrameError, err), NULL;
    Py_RETURN_NONE;
}

static PyObject *RingReader_credit_due(RingReader *self, PyObject *Py_UNUSED(ignored)) {
    int64_t due = tfos_ring_reader_credit_due(&self->r);
    if (due < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(due);
}

static PyObject *RingReader_get_need(RingReader *self, void *Py_UNUSED(closure)) {
    if (self->r.need < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(self->r.need);
}

static PyMethodDef RingReader_methods[] = {
    {"publish", (PyCFunction)RingReader_publish, METH_O,
     "(start, end) of the next message the writer announced."},
    {"release", (PyCFunction)RingReader_release, METH_O, "Done with the messages up to end."},
    {"request", (PyCFunction)RingReader_request, METH_O,
     "The writer waits until released >= needed is credited."},
    {"credit_due", (PyCFunction)RingReader_credit_due, METH_NOARGS,
     "The counter to send as CREDIT now, or None."},
    {NULL}};

static PyMemberDef RingReader_members[] = {
    {"capacity", T_LONGLONG, offsetof(RingReader, r.capacity), READONLY, NULL},
    {"head", T_LONGLONG, offsetof(RingReader, r.head), READONLY, NULL},
    {"released", T_LONGLONG, offsetof(RingReader, r.released), READONLY, NULL},
    {"credited", T_LONGLONG, offsetof(RingReader, r.credited), READONLY, NULL},
    {NULL}};

static PyGetSetDef RingReader_getset[] = {
    {"need", (getter)RingReader_get_need, NULL, "the counter a waiting writer asked for", NULL},
    {NULL}};

static PyTypeObject RingReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rdma._core.RingReader",
    .tp_doc = "The reader's view of a ring: where each message lies, when to credit the writer.",
    .tp_basicsize = sizeof(RingReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RingReader_init,
    .tp_methods = RingReader_methods,
    .tp_members = RingReader_members,
    .tp_getset = RingReader_getset,
};

/* -- errors and arguments ---------------------------------------------------------------- */
static PyObject *raise_code(int code, const char *err) {
    PyObject *type = CommError;
    switch (code) {
    case TFOS_NIC_ETIMEDOUT: type = CommTimeout; break;
    case TFOS_NIC_ECLOSED: type = CommClosed; break;
    case TFOS_NIC_EACCESS:
    case TFOS_ENGINE_EPROTO:
    case TFOS_ENGINE_ETOOBIG: type = FrameError; break;
    case TFOS_NIC_EINVAL: type = PyExc_ValueError; break;
    default: break;
    }
    PyErr_SetString(type, err);
    return NULL;
}

/* Seconds (None: no limit) to the engine's milliseconds (-1: no limit). */
static int parse_timeout(PyObject *obj, int *ms) {
    double seconds, millis;
    if (obj == NULL || obj == Py_None) {
        *ms = -1;
        return 0;
    }
    seconds = PyFloat_AsDouble(obj);
    if (seconds == -1.0 && PyErr_Occurred()) return -1;
    if (!(seconds >= 0)) {
        PyErr_Format(PyExc_ValueError, "timeout=%R: pass seconds >= 0, or None to wait until "
                     "the peer answers or goes away", obj);
        return -1;
    }
    millis = ceil(seconds * 1000.0);
    *ms = millis > INT_MAX - 1 ? INT_MAX - 1 : (int)millis;
    return 0;
}

/* -- Region: memory a Link hands out (a received message, or alloc()'d registered memory) - */
typedef struct Link Link;

typedef struct {
    PyObject_HEAD
    Link *link;          /* keeps the link's memory mapped while a view exists */
    void *addr;
    Py_ssize_t len;
    int readonly, owned;
} Region;

struct Link {
    PyObject_HEAD
    tfos_engine *e;
};

static void link_free_memory(Link *link, void *addr);

static int Region_getbuffer(Region *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->len, self->readonly,
                             flags);
}

static void Region_dealloc(Region *self) {
    if (self->owned && self->link) link_free_memory(self->link, self->addr);
    Py_XDECREF(self->link);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs Region_as_buffer = {.bf_getbuffer = (getbufferproc)Region_getbuffer};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rdma._core.Region",
    .tp_doc = "Memory of a link: a received message, or registered memory from alloc().",
    .tp_basicsize = sizeof(Region),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_as_buffer = &Region_as_buffer,
};

static PyObject *region_view(Link *link, void *addr, uint64_t len, int readonly, int owned) {
    PyObject *view;
    Region *r = PyObject_New(Region, &RegionType);
    if (!r) {
        if (owned) link_free_memory(link, addr);
        return NULL;
    }
    Py_INCREF(link);
    r->link = link;
    r->addr = addr;
    r->len = (Py_ssize_t)len;
    r->readonly = readonly;
    r->owned = owned;
    view = PyMemoryView_FromObject((PyObject *)r);
    Py_DECREF(r);
    return view;
}

/* -- Link --------------------------------------------------------------------------------- */
static PyTypeObject LinkType;

static void link_free_memory(Link *link, void *addr) {
    if (link->e) tfos_engine_free(link->e, addr);
}

/* The one way a carrier becomes a Link: the engine takes nic over (destroyed on failure). */
static PyObject *link_from_nic(tfos_nic *nic, const tfos_engine_opts *opts) {
    char err[TFOS_ENGINE_ERRLEN];
    tfos_engine *e;
    Link *link;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tfos_engine_create(nic, opts, &e, err);
    Py_END_ALLOW_THREADS
    if (rc < 0) return raise_code(rc, err);
    link = PyObject_New(Link, &LinkType);
    if (!link) {
        tfos_engine_destroy(e);
        return NULL;
    }
    link->e = e;
    return (PyObject *)link;
}

/* -- verbs links: their last writes land before the carrier hangs up ---------------------
 *
 * A verbs write completes after write() returned, when the peer's device acknowledges it, and
 * the engine's close() posts its farewell without waiting for what is still in flight. The
 * carrier's destroy() hangs the bootstrap socket up first, and a process that exits takes its
 * queue pair with it: either can end the link at the peer before the last messages landed.
 * So a verbs nic is wrapped here in one that counts writes posted and completed, and a closed
 * link is drained (its completions polled until every write completed, at most DRAIN_MS) before
 * it is destroyed. Then the destruction itself, whose carrier lingers up to 1 s for the peer's
 * own hang-up, goes to a detached thread: nothing here needs that wait. */
#define DRAIN_MS 1000

typedef struct {
    tfos_nic base;         /* first: what the engine holds */
    tfos_nic *inner;
    atomic_ullong posted, completed;
} counted_nic;

static int counted_alloc_mr(tfos_nic *nic, uint64_t length, tfos_mr *out, char *err) {
    tfos_nic *inner = ((counted_nic *)nic)->inner;
    return inner->ops->alloc_mr(inner, length, out, err);
}

static void counted_free_mr(tfos_nic *nic, tfos_mr *mr) {
    tfos_nic *inner = ((counted_nic *)nic)->inner;
    inner->ops->free_mr(inner, mr);
}

static void counted_export_mr(tfos_nic *nic, const tfos_mr *mr, tfos_remote_mr *out) {
    tfos_nic *inner = ((counted_nic *)nic)->inner;
    inner->ops->export_mr(inner, mr, out);
}

static int counted_write(tfos_nic *nic, const tfos_mr *local, uint64_t local_offset,
                         const tfos_remote_mr *remote, uint64_t remote_offset, uint64_t length,
                         int flags, uint32_t imm, uint64_t wr_id, char *err) {
    counted_nic *c = (counted_nic *)nic;
    int rc = c->inner->ops->write(c->inner, local, local_offset, remote, remote_offset, length,
                                  flags, imm, wr_id, err);
    if (rc == TFOS_NIC_OK) atomic_fetch_add(&c->posted, 1);
    return rc;
}

static int counted_poll(tfos_nic *nic, tfos_completion *out, int max, int timeout_ms,
                        char *err) {
    counted_nic *c = (counted_nic *)nic;
    int n = c->inner->ops->poll(c->inner, out, max, timeout_ms, err);
    for (int i = 0; i < n; i++)
        if (out[i].kind == TFOS_NIC_SENT) atomic_fetch_add(&c->completed, 1);
    return n;
}

static void counted_interrupt(tfos_nic *nic) {
    tfos_nic *inner = ((counted_nic *)nic)->inner;
    inner->ops->interrupt(inner);
}

static void counted_quiesce(tfos_nic *nic) {
    tfos_nic *inner = ((counted_nic *)nic)->inner;
    if (inner->ops->quiesce) inner->ops->quiesce(inner);
}

static void counted_destroy(tfos_nic *nic) {
    counted_nic *c = (counted_nic *)nic;
    c->inner->ops->destroy(c->inner);
    free(c);
}

static const tfos_nic_ops COUNTED_VERBS_OPS = {
    .name = "verbs",
    .alloc_mr = counted_alloc_mr,
    .free_mr = counted_free_mr,
    .export_mr = counted_export_mr,
    .write = counted_write,
    .poll = counted_poll,
    .interrupt = counted_interrupt,
    .destroy = counted_destroy,
    .quiesce = counted_quiesce,
};

/* inner wrapped (NULL, inner destroyed, when out of memory). */
static tfos_nic *count_writes(tfos_nic *inner) {
    counted_nic *c = calloc(1, sizeof *c);
    if (!c) {
        inner->ops->destroy(inner);
        return NULL;
    }
    c->base.ops = &COUNTED_VERBS_OPS;
    memcpy(c->base.peer, inner->peer, sizeof c->base.peer);
    c->inner = inner;
    atomic_init(&c->posted, 0);
    atomic_init(&c->completed, 0);
    return &c->base;
}

/* Polls a closed link's nic until every write it posted completed (or the peer is gone, or
 * DRAIN_MS passed). Only when nobody else can call the engine: from the Link's deallocation. */
static void drain_writes(tfos_nic *nic) {
    counted_nic *c = (counted_nic *)nic;
    tfos_completion done[64];
    char err[TFOS_NIC_ERRLEN];
    struct timespec now;
    long long until, left;
    clock_gettime(CLOCK_MONOTONIC, &now);
    until = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 + DRAIN_MS;
    while (atomic_load(&c->completed) < atomic_load(&c->posted)) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        left = until - ((long long)now.tv_sec * 1000 + now.tv_nsec / 1000000);
        if (left <= 0) break;
        int n = counted_poll(nic, done, 64, (int)left, err);
        if (n < 0 && n != TFOS_NIC_ETIMEDOUT) break;   /* the peer is gone, or the link broke */
    }
}

static void *destroy_engine(void *e) {
    tfos_engine_destroy(e);
    return NULL;
}

static void dispose_engine(tfos_engine *e) {
    pthread_attr_t attr;
    pthread_t thread;
    int rc = -1;
    if (tfos_engine_nic(e)->ops == &COUNTED_VERBS_OPS && !pthread_attr_init(&attr)) {
        drain_writes(tfos_engine_nic(e));
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&thread, &attr, destroy_engine, e);
        pthread_attr_destroy(&attr);
    }
    if (rc) tfos_engine_destroy(e);
}

static void Link_dealloc(Link *self) {
    if (self->e) {
        tfos_engine *e = self->e;
        self->e = NULL;
        Py_BEGIN_ALLOW_THREADS
        tfos_engine_close(e);
        dispose_engine(e);
        Py_END_ALLOW_THREADS
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Link_ring_descriptor(Link *self, PyObject *Py_UNUSED(ignored)) {
    uint8_t desc[TFOS_ENGINE_DESC_LEN];
    tfos_engine_descriptor(self->e, desc);
    return PyBytes_FromStringAndSize((const char *)desc, TFOS_ENGINE_DESC_LEN);
}

static PyObject *Link_start(Link *self, PyObject *arg) {
    char err[TFOS_ENGINE_ERRLEN];
    Py_buffer desc;
    int rc;
    if (PyObject_GetBuffer(arg, &desc, PyBUF_SIMPLE) < 0) return NULL;
    rc = tfos_engine_start(self->e, desc.buf, (size_t)desc.len, err);
    PyBuffer_Release(&desc);
    if (rc < 0) return raise_code(rc, err);
    Py_RETURN_NONE;
}

static PyObject *Link_send(Link *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"parts", "timeout", NULL};
    char err[TFOS_ENGINE_ERRLEN];
    PyObject *parts, *timeout = Py_None, *seq;
    Py_buffer *views;
    tfos_iov *iov;
    Py_ssize_t n, got = 0;
    int ms, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O", names, &parts, &timeout)) return NULL;
    if (parse_timeout(timeout, &ms) < 0) return NULL;
    if (PyBytes_Check(parts) || PyByteArray_Check(parts) || PyMemoryView_Check(parts)) {
        PyErr_SetString(PyExc_TypeError, "send() takes a sequence of parts: wrap a single "
                        "buffer as [buffer]");
        return NULL;
    }
    seq = PySequence_Fast(parts, "send() takes a sequence of bytes-like parts");
    if (!seq) return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    if (n > INT_MAX) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "a message of %zd parts is too many", n);
    }
    views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    iov = PyMem_Calloc(n ? (size_t)n : 1, sizeof(tfos_iov));
    if (!views || !iov) {
        PyErr_NoMemory();
        goto out;
    }
    for (; got < n; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &views[got],
                               PyBUF_SIMPLE) < 0) {
            PyErr_Format(PyExc_TypeError, "message part %zd is not a C-contiguous bytes-like "
                         "object (pass numpy.ascontiguousarray(part))", got);
            goto out;
        }
        iov[got].base = views[got].buf;
        iov[got].len = (uint64_t)views[got].len;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = tfos_engine_send(self->e, iov, (int)n, ms, err);
    Py_END_ALLOW_THREADS
    if (rc < 0) raise_code(rc, err);
out:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(iov);
    Py_DECREF(seq);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Link_recv(Link *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"timeout", NULL};
    char err[TFOS_ENGINE_ERRLEN];
    PyObject *timeout = Py_None;
    const void *data;
    uint64_t size;
    int ms, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", names, &timeout)) return NULL;
    if (parse_timeout(timeout, &ms) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = tfos_engine_recv(self->e, &data, &size, ms, err);
    Py_END_ALLOW_THREADS
    if (rc < 0) return raise_code(rc, err);
    return region_view(self, (void *)data, size, 1, 0);
}

static PyObject *Link_recv_into(Link *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"buffer", "timeout", NULL};
    char err[TFOS_ENGINE_ERRLEN];
    PyObject *buffer, *timeout = Py_None;
    Py_buffer view;
    uint64_t size = 0;
    int ms, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O", names, &buffer, &timeout)) return NULL;
    if (parse_timeout(timeout, &ms) < 0) return NULL;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = tfos_engine_recv_into(self->e, view.buf, (uint64_t)view.len, &size, ms, err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc < 0) return raise_code(rc, err);
    return PyLong_FromUnsignedLongLong(size);
}

static PyObject *Link_alloc(Link *self, PyObject *arg) {
    char err[TFOS_ENGINE_ERRLEN];
    long long size = PyLong_AsLongLong(arg);
    void *addr;
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (size < 0) return PyErr_Format(PyExc_ValueError, "alloc(%lld): pass bytes >= 0", size);
    Py_BEGIN_ALLOW_THREADS
    addr = tfos_engine_alloc(self->e, (uint64_t)size, err);
    Py_END_ALLOW_THREADS
    if (!addr) return raise_code(TFOS_NIC_ENOMEM, err);
    return region_view(self, addr, (uint64_t)size, 0, 1);
}

static PyObject *Link_close(Link *self, PyObject *Py_UNUSED(ignored)) {
    Py_BEGIN_ALLOW_THREADS
    tfos_engine_close(self->e);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Link_enter(Link *self, PyObject *Py_UNUSED(ignored)) {
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *Link_exit(Link *self, PyObject *Py_UNUSED(args)) {
    return Link_close(self, NULL);
}

#define STAT(name) PyLong_FromUnsignedLongLong(s.name)
static PyObject *Link_stats(Link *self, PyObject *Py_UNUSED(ignored)) {
    tfos_engine_stats s;
    tfos_engine_get_stats(self->e, &s);
    return Py_BuildValue(
        "{sNsNsNsNsNsNsNsNsNsN}", "sent_eager", STAT(sent_eager), "sent_rendezvous",
        STAT(sent_rendezvous), "received_eager", STAT(received_eager), "received_rendezvous",
        STAT(received_rendezvous), "credits_sent", STAT(credits_sent), "credits_received",
        STAT(credits_received), "needs_sent", STAT(needs_sent), "staged_bytes",
        STAT(staged_bytes), "direct_bytes", STAT(direct_bytes), "landing_bytes",
        STAT(landing_bytes));
}
#undef STAT

/* Fault knobs of the loopback carrier (the faults hit what this end's writes deliver). */
static tfos_nic *loopback_nic(Link *self) {
    tfos_nic *nic = tfos_engine_nic(self->e);
    if (tfos_is_loopback(nic)) return nic;
    PyErr_Format(PyExc_TypeError, "fault injection needs a loopback link, not a %s one",
                 nic->ops->name);
    return NULL;
}

static const char *KIND_NAMES[] = {NULL, "eager", "rts", "cts", "data", "credit", "need", "bye"};

static PyObject *Link_drop_immediates(Link *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"kind", "count", NULL};
    const char *kind;
    int count = 1;
    tfos_nic *nic = loopback_nic(self);
    if (!nic || !PyArg_ParseTupleAndKeywords(args, kwds, "s|i", names, &kind, &count))
        return NULL;
    for (uint32_t k = 1; k < sizeof KIND_NAMES / sizeof *KIND_NAMES; k++) {
        if (!strcmp(kind, KIND_NAMES[k])) {
            tfos_loopback_drop(nic, ~TFOS_IMM_VALUE, k << TFOS_IMM_SHIFT, count);
            Py_RETURN_NONE;
        }
    }
    return PyErr_Format(PyExc_ValueError, "kind=%s: pass one of eager, rts, cts, data, credit, "
                        "need, bye", kind);
}

static PyObject *Link_corrupt_keys(Link *self, PyObject *args) {
    int count = 1;
    tfos_nic *nic = loopback_nic(self);
    if (!nic || !PyArg_ParseTuple(args, "|i", &count)) return NULL;
    tfos_loopback_corrupt_keys(nic, count);
    Py_RETURN_NONE;
}

static PyObject *Link_reorder_immediates(Link *self, PyObject *args) {
    int count = 1;
    tfos_nic *nic = loopback_nic(self);
    if (!nic || !PyArg_ParseTuple(args, "|i", &count)) return NULL;
    tfos_loopback_reorder(nic, count);
    Py_RETURN_NONE;
}

static PyObject *Link_kill(Link *self, PyObject *Py_UNUSED(ignored)) {
    tfos_nic *nic = loopback_nic(self);
    if (!nic) return NULL;
    tfos_loopback_kill(nic);
    Py_RETURN_NONE;
}

static PyObject *Link_get_closed(Link *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(tfos_engine_closed(self->e));
}

static PyObject *Link_get_peer(Link *self, void *Py_UNUSED(closure)) {
    return PyUnicode_FromString(tfos_engine_nic(self->e)->peer);
}

static PyObject *Link_get_carrier(Link *self, void *Py_UNUSED(closure)) {
    return PyUnicode_FromString(tfos_engine_nic(self->e)->ops->name);
}

static PyObject *Link_get_name(Link *self, void *Py_UNUSED(closure)) {
    return PyUnicode_FromString(tfos_engine_name(self->e));
}

static PyObject *Link_repr(Link *self) {
    return PyUnicode_FromFormat("<rdma._core.Link %s%s>", tfos_engine_name(self->e),
                                tfos_engine_closed(self->e) ? " closed" : "");
}

static PyMethodDef Link_methods[] = {
    {"ring_descriptor", (PyCFunction)Link_ring_descriptor, METH_NOARGS,
     "The 24 bytes that tell the peer where our receive ring is."},
    {"start", (PyCFunction)Link_start, METH_O, "start(peer_descriptor): begin talking."},
    {"send", (PyCFunction)(void (*)(void))Link_send, METH_VARARGS | METH_KEYWORDS,
     "send(parts, timeout=None): one message gathered from the bytes-like parts."},
    {"recv", (PyCFunction)(void (*)(void))Link_recv, METH_VARARGS | METH_KEYWORDS,
     "recv(timeout=None) -> read-only memoryview, valid until the next receive."},
    {"recv_into", (PyCFunction)(void (*)(void))Link_recv_into, METH_VARARGS | METH_KEYWORDS,
     "recv_into(buffer, timeout=None) -> size; FrameError (message kept) if it does not fit."},
    {"alloc", (PyCFunction)Link_alloc, METH_O,
     "alloc(size) -> writable registered memory: parts inside it are sent without a copy."},
    {"close", (PyCFunction)Link_close, METH_NOARGS, "Close (idempotent); the peer is told."},
    {"stats", (PyCFunction)Link_stats, METH_NOARGS, "Counters of the protocol engine."},
    {"drop_immediates", (PyCFunction)(void (*)(void))Link_drop_immediates,
     METH_VARARGS | METH_KEYWORDS,
     "Loopback fault: the next count immediates of kind this end sends are lost."},
    {"corrupt_keys", (PyCFunction)Link_corrupt_keys, METH_VARARGS,
     "Loopback fault: the next count writes of this end name a wrong key."},
    {"reorder_immediates", (PyCFunction)Link_reorder_immediates, METH_VARARGS,
     "Loopback fault: the next count immediates arrive after the one that follows each."},
    {"kill", (PyCFunction)Link_kill, METH_NOARGS, "Loopback fault: both ends die at once."},
    {"__enter__", (PyCFunction)Link_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Link_exit, METH_VARARGS, NULL},
    {NULL}};

static PyGetSetDef Link_getset[] = {
    {"closed", (getter)Link_get_closed, NULL, "True once close() was called", NULL},
    {"peer", (getter)Link_get_peer, NULL, "who is at the other end", NULL},
    {"carrier", (getter)Link_get_carrier, NULL, "loopback, shm or verbs", NULL},
    {"name", (getter)Link_get_name, NULL, "the link as errors name it", NULL},
    {NULL}};

static PyTypeObject LinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rdma._core.Link",
    .tp_doc = "One end of a link run by the compiled protocol engine (see rdma.core).",
    .tp_basicsize = sizeof(Link),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Link_dealloc,
    .tp_repr = (reprfunc)Link_repr,
    .tp_methods = Link_methods,
    .tp_getset = Link_getset,
};

/* -- constructors ------------------------------------------------------------------------- */
#define ENGINE_KWARGS "ring_bytes", "eager_max", "chunk_bytes"

static PyObject *core_loopback_pair(PyObject *Py_UNUSED(module), PyObject *args,
                                    PyObject *kwds) {
    static char *names[] = {ENGINE_KWARGS, NULL};
    char err[TFOS_ENGINE_ERRLEN];
    uint8_t da[TFOS_ENGINE_DESC_LEN], db[TFOS_ENGINE_DESC_LEN];
    tfos_engine_opts opts;
    tfos_nic *a, *b;
    PyObject *la, *lb;
    int rc;
    tfos_engine_default_opts(&opts);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$LLL", names, &opts.ring_bytes,
                                     &opts.eager_max, &opts.chunk_bytes))
        return NULL;
    if ((rc = tfos_loopback_pair(&a, &b, err)) < 0) return raise_code(rc, err);
    la = link_from_nic(a, &opts);
    if (!la) {
        b->ops->destroy(b);
        return NULL;
    }
    lb = link_from_nic(b, &opts);
    if (!lb) {
        Py_DECREF(la);
        return NULL;
    }
    tfos_engine_descriptor(((Link *)la)->e, da);
    tfos_engine_descriptor(((Link *)lb)->e, db);
    if ((rc = tfos_engine_start(((Link *)la)->e, db, sizeof db, err)) < 0 ||
        (rc = tfos_engine_start(((Link *)lb)->e, da, sizeof da, err)) < 0) {
        Py_DECREF(la);
        Py_DECREF(lb);
        return raise_code(rc, err);
    }
    return Py_BuildValue("(NN)", la, lb);
}

/* Names the peer in every error of the link (the carrier's own name for it otherwise). */
static void name_peer(tfos_nic *nic, const char *peer) {
    if (peer && *peer) snprintf(nic->peer, sizeof nic->peer, "%s", peer);
}

static PyObject *core_shm_link(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *names[] = {"fd", "timeout", "arena_bytes", "spin_us", "peer", ENGINE_KWARGS,
                            NULL};
    char err[TFOS_ENGINE_ERRLEN];
    tfos_engine_opts opts;
    tfos_shm_opts shm;
    PyObject *timeout = NULL;
    unsigned long long arena;
    const char *peer = NULL;
    tfos_nic *nic;
    int fd, rc;
    tfos_engine_default_opts(&opts);
    tfos_shm_default_opts(&shm);
    arena = shm.arena_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|$OKizLLL", names, &fd, &timeout, &arena,
                                     &shm.spin_us, &peer, &opts.ring_bytes, &opts.eager_max,
                                     &opts.chunk_bytes))
        return NULL;
    shm.arena_bytes = arena;
    if (timeout && parse_timeout(timeout, &shm.timeout_ms) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = tfos_shm_create(fd, &shm, &nic, err);
    Py_END_ALLOW_THREADS
    if (rc < 0) return raise_code(rc, err);
    name_peer(nic, peer);
    return link_from_nic(nic, &opts);
}

static PyObject *core_verbs_link(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *names[] = {"fd", "device", "port", "gid_index", "timeout", "send_depth",
                            "recv_depth", "spin_us", "peer", ENGINE_KWARGS, NULL};
    char err[TFOS_ENGINE_ERRLEN];
    tfos_engine_opts opts;
    tfos_verbs_options verbs;
    PyObject *timeout = NULL;
    tfos_nic *nic;
    int fd, ms, rc;
    tfos_engine_default_opts(&opts);
    tfos_verbs_default_options(&verbs);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|zii$OiiizLLL", names, &fd, &verbs.device,
                                     &verbs.port, &verbs.gid_index, &timeout, &verbs.send_depth,
                                     &verbs.recv_depth, &verbs.spin_us, &verbs.peer,
                                     &opts.ring_bytes, &opts.eager_max, &opts.chunk_bytes))
        return NULL;
    if (timeout && timeout != Py_None) {   /* None: the carrier's own deadline (30 s) */
        if (parse_timeout(timeout, &ms) < 0) return NULL;
        verbs.setup_timeout_ms = ms > 0 ? ms : 1;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = tfos_verbs_create(fd, &verbs, &nic, err);
    if (rc == 0) nic = count_writes(nic);
    Py_END_ALLOW_THREADS
    if (rc < 0) return raise_code(rc, err);
    if (!nic) return PyErr_NoMemory();
    return link_from_nic(nic, &opts);
}

static PyMethodDef core_functions[] = {
    {"loopback_pair", (PyCFunction)(void (*)(void))core_loopback_pair,
     METH_VARARGS | METH_KEYWORDS,
     "loopback_pair(*, ring_bytes, eager_max, chunk_bytes) -> (Link, Link), started."},
    {"shm_link", (PyCFunction)(void (*)(void))core_shm_link, METH_VARARGS | METH_KEYWORDS,
     "shm_link(fd, *, timeout=10, arena_bytes=1 GiB, spin_us=20, peer=None, ring_bytes, "
     "eager_max, chunk_bytes) -> Link over a connected, authenticated Unix socket; exchange "
     "ring_descriptor()s and start() it."},
    {"verbs_link", (PyCFunction)(void (*)(void))core_verbs_link, METH_VARARGS | METH_KEYWORDS,
     "verbs_link(fd, device=None, port=0, gid_index=-1, *, timeout=None (30 s), send_depth=128, "
     "recv_depth=256, spin_us=50, peer=None, ring_bytes, eager_max, chunk_bytes) -> Link over "
     "an RDMA RC queue pair, set up through fd, a connected, authenticated stream socket the "
     "peer passes to its own verbs_link at the same time; exchange ring_descriptor()s and "
     "start() it. libibverbs is loaded on first use (TFOS_IBVERBS_LIBRARY names another)."},
    {NULL}};

/* -- the module -------------------------------------------------------------------------- */
static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rdma._core",
    .m_doc = "tfos's compiled transport: ring bookkeeping, the protocol engine, its carriers.",
    .m_size = -1,
    .m_methods = core_functions,
};

static int add_defaults(PyObject *module) {
    tfos_engine_opts opts;
    tfos_shm_opts shm;
    PyObject *kinds = PyDict_New(), *defaults;
    tfos_engine_default_opts(&opts);
    tfos_shm_default_opts(&shm);
    if (!kinds) return -1;
    for (int k = 1; k < (int)(sizeof KIND_NAMES / sizeof *KIND_NAMES); k++) {
        PyObject *v = PyLong_FromLong(k);
        if (!v || PyDict_SetItemString(kinds, KIND_NAMES[k], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(kinds);
            return -1;
        }
        Py_DECREF(v);
    }
    if (PyModule_AddObject(module, "IMM_KINDS", kinds) < 0) {
        Py_DECREF(kinds);
        return -1;
    }
    defaults = Py_BuildValue("{sLsLsLsKsi}", "ring_bytes", (long long)opts.ring_bytes,
                             "eager_max", (long long)opts.eager_max, "chunk_bytes",
                             (long long)opts.chunk_bytes, "arena_bytes",
                             (unsigned long long)shm.arena_bytes, "spin_us", shm.spin_us);
    if (!defaults || PyModule_AddObject(module, "DEFAULTS", defaults) < 0) {
        Py_XDECREF(defaults);
        return -1;
    }
    return PyModule_AddIntConstant(module, "DESCRIPTOR_BYTES", TFOS_ENGINE_DESC_LEN);
}

PyMODINIT_FUNC PyInit__core(void) {
    PyObject *errors, *module;
    if (PyType_Ready(&RingWriterType) < 0 || PyType_Ready(&RingReaderType) < 0 ||
        PyType_Ready(&RegionType) < 0 || PyType_Ready(&LinkType) < 0)
        return NULL;
    errors = PyImport_ImportModule("rdma.errors");
    if (errors == NULL) return NULL;
    FrameError = PyObject_GetAttrString(errors, "FrameError");
    CommError = PyObject_GetAttrString(errors, "CommError");
    CommClosed = PyObject_GetAttrString(errors, "CommClosed");
    CommTimeout = PyObject_GetAttrString(errors, "CommTimeout");
    Py_DECREF(errors);
    if (!FrameError || !CommError || !CommClosed || !CommTimeout) return NULL;
    module = PyModule_Create(&core_module);
    if (module == NULL) return NULL;
    Py_INCREF(&RingWriterType);
    Py_INCREF(&RingReaderType);
    Py_INCREF(&LinkType);
    if (PyModule_AddObject(module, "RingWriter", (PyObject *)&RingWriterType) < 0 ||
        PyModule_AddObject(module, "RingReader", (PyObject *)&RingReaderType) < 0 ||
        PyModule_AddObject(module, "Link", (PyObject *)&LinkType) < 0 ||
        PyModule_AddIntConstant(module, "ALIGN", TFOS_RING_ALIGN) < 0 ||
        add_defaults(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
