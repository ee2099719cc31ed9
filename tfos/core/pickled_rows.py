"""An RDD's rows read from the pickled batches PySpark keeps them in, numpy arrays left as
their bytes until a whole column of them is joined (pure core; run by the feed tasks).

PySpark hands a task's function the rows of a cached (or JVM-side) RDD by unpickling each
batch of rows in the Python worker. A numpy array unpickles through a Python function of
numpy's (``_frombuffer``), once per row: on the 2-core test machine that is 3.3 of the 5.2 µs
it takes to unpickle an MNIST-shaped ``(float32[784], label)`` row, whatever the feed then
does with it. Feed tasks instead take the batches as bytes (``pickled_batches``, driver side)
and unpickle them here, with that function replaced by ``PickledArray``, a plain record of the
array's bytes, dtype, shape and order. A column of them becomes one array by joining their
bytes (``pickled_column``), which the feed would have copied into a column anyway. The
batches are the bytes the executor's JVM streams to its own Python worker for the task, which
PySpark would otherwise unpickle there itself: nothing from a tfos socket is unpickled.

Only arrays that are a row, or a field of one, take this path. A partition whose first row
holds arrays deeper (a list of arrays as one field) is read with numpy's own function instead,
and so is any column whose arrays differ in dtype, shape or memory order: ``materialize``
turns the records back into arrays, and rows go on exactly as PySpark would have given them,
errors included.
"""
from __future__ import annotations

import io
import operator
import pickle

import numpy as np

# What numpy (1.x, 2.x) names in a pickled contiguous array (protocol 5): called with the
# array's bytes, dtype, shape and order ('C' or 'F').
_FROMBUFFER = {("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer")}
_data = operator.attrgetter("data")
_dtype_and_shape = operator.attrgetter("dtype", "shape")
_order = operator.attrgetter("order")


class PickledArray:
    """A numpy array as it was pickled: its bytes (``data``), ``dtype``, ``shape`` and
    ``order``."""

    __slots__ = ("data", "dtype", "shape", "order")

    def __init__(self, data, dtype, shape, order):
        self.data = data
        self.dtype = dtype
        self.shape = shape
        self.order = order

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, self.dtype).reshape(self.shape, order=self.order)

    def __repr__(self) -> str:
        return repr(self.array())


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _FROMBUFFER:
            return PickledArray
        return super().find_class(module, name)


def unpickle_batch(frame: bytes, keep_arrays_pickled: bool = True) -> list:
    """The rows of one pickled batch; with ``keep_arrays_pickled``, contiguous numpy arrays
    come as ``PickledArray`` records."""
    if keep_arrays_pickled:
        return _BatchUnpickler(io.BytesIO(frame)).load()
    return pickle.loads(frame)


def shallow(row) -> bool:
    """True when every ``PickledArray`` in ``row`` is the row itself or one of its fields
    (a tuple's or list's element, a dict's value): those are the columns joined whole."""
    fields = row.values() if isinstance(row, dict) else \
        row if isinstance(row, (tuple, list)) else ()
    return not any(holds_pickled(field) for field in fields
                   if isinstance(field, (tuple, list, dict)))


def holds_pickled(value) -> bool:
    """True when ``value`` is or contains (in tuples, lists, dicts) a ``PickledArray``."""
    if isinstance(value, PickledArray):
        return True
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, (tuple, list)):
        return False
    return any(holds_pickled(v) for v in value)


def materialize(value):
    """``value`` with every ``PickledArray`` in it turned into its numpy array (tuples, lists,
    dicts and Spark ``Row``s are rebuilt with the same type)."""
    if isinstance(value, PickledArray):
        return value.array()
    if isinstance(value, dict):
        return type(value)((k, materialize(v)) for k, v in value.items())
    if isinstance(value, (tuple, list)) and holds_pickled(value):
        items = [materialize(v) for v in value]
        fields = getattr(value, "__fields__", None)
        if fields is not None:           # a Row: the same names
            return type(value)(**dict(zip(fields, items)))
        if hasattr(value, "_fields"):    # a namedtuple
            return type(value)(*items)
        return type(value)(items)
    return value


def pickled_column(values) -> np.ndarray | None:
    """The column of ``PickledArray`` records ``values`` as one array (row axis first) in one
    copy; None when they differ in dtype or shape, or are not all in C order (1-D arrays are
    in both orders)."""
    first = values[0]
    if len(set(map(_dtype_and_shape, values))) != 1:
        return None
    if len(first.shape) > 1 and set(map(_order, values)) != {"C"}:
        return None
    joined = b"".join(map(_data, values))
    return np.frombuffer(joined, first.dtype).reshape((len(values),) + tuple(first.shape))
