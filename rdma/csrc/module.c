/* rdma._core: tfos's compiled transport. For now the ring bookkeeping (ring.h) as RingWriter and
 * RingReader, drop-in twins of rdma/ring.py's classes; protocol violations raise
 * rdma.errors.FrameError, a bad capacity ValueError. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "ring.h"

static PyObject *FrameError;

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

/* -- the module -------------------------------------------------------------------------- */
static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rdma._core",
    .m_doc = "tfos's compiled transport (ring bookkeeping so far).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__core(void) {
    PyObject *errors, *module;
    if (PyType_Ready(&RingWriterType) < 0 || PyType_Ready(&RingReaderType) < 0) return NULL;
    errors = PyImport_ImportModule("rdma.errors");
    if (errors == NULL) return NULL;
    FrameError = PyObject_GetAttrString(errors, "FrameError");
    Py_DECREF(errors);
    if (FrameError == NULL) return NULL;
    module = PyModule_Create(&core_module);
    if (module == NULL) return NULL;
    Py_INCREF(&RingWriterType);
    Py_INCREF(&RingReaderType);
    if (PyModule_AddObject(module, "RingWriter", (PyObject *)&RingWriterType) < 0 ||
        PyModule_AddObject(module, "RingReader", (PyObject *)&RingReaderType) < 0 ||
        PyModule_AddIntConstant(module, "ALIGN", TFOS_RING_ALIGN) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
