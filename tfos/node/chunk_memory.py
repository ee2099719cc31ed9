"""Memory for the chunks a TF node keeps, reused instead of asked of the kernel again.

A fed chunk arrives in the transport's receive area, which the next message overwrites, so the
node copies it out (``FeedServer``). A chunk's column is about a mebibyte, so a fresh array
is fresh pages: each is faulted in and zeroed by the kernel before the copy, and given back
when the array dies. On the 2-core test machine that cost about 2 us per 3 KB record, six times
the copy itself (a node's CPU per MNIST record: 4.4-5.1 us with a fresh array per chunk, 2.8 us
without the copy). ``ChunkMemory`` hands out arrays over buffers it keeps instead.

A buffer is free again once nothing references it: numpy views (slices handed to ``map_fun``,
batches not yet given to TensorFlow) keep their base array alive, so a buffer whose only
reference is the pool's own list is unused, whatever took views of it (``sys.getrefcount``).
The pool keeps at most ``limit_bytes`` of buffers (the feed server gives its feed buffer and a
quarter: the chunks the queues hold, those on their way in and those still read); beyond that,
copies get ordinary arrays, as do small columns and columns of Python objects.

Pooled arrays start on a 64-byte boundary. TensorFlow then takes them without a copy
(``tf.data`` generators, ``tf.constant``: it copies an array that is not aligned to its 64
bytes), which matters as much as the pool: the copy it made went to fresh pages too.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

# Smaller columns are copied into ordinary arrays: the allocator reuses small blocks itself.
MIN_POOLED_BYTES = 256 << 10
_ROUND = 64 << 10            # buffer sizes are rounded up to this, so similar chunks share
ALIGN = 64                   # where pooled arrays start (TensorFlow's EIGEN_MAX_ALIGN_BYTES)
# sys.getrefcount of a pooled buffer that nothing else holds: the pool's list, the local name
# in _free_buffer, and getrefcount's own argument.
_UNUSED_REFS = 3


class ChunkMemory:
    def __init__(self, limit_bytes: int):
        self._limit = limit_bytes
        self._buffers: list[np.ndarray] = []     # uint8 arrays owned by the pool
        self._pooled = 0
        self._lock = threading.Lock()

    @property
    def pooled_bytes(self) -> int:
        return self._pooled

    def copy(self, array: np.ndarray) -> np.ndarray:
        """A copy of ``array`` (C-contiguous) that owns nothing the caller must free."""
        if array.dtype.hasobject:
            return array.copy()
        out = self.empty(array.shape, array.dtype)
        np.copyto(out, array)
        return out

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype`` (not of Python objects), from the
        pool when it is large enough and the pool has room."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes < MIN_POOLED_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            buffer = self._free_buffer(nbytes)
            if buffer is None:
                size = -(-nbytes // _ROUND) * _ROUND
                if self._pooled + size > self._limit:
                    return aligned_empty(shape, dtype)
                buffer = np.empty(size + ALIGN, np.uint8)
                self._buffers.append(buffer)
                self._pooled += size
            return _aligned_view(buffer, shape, dtype)

    def _free_buffer(self, nbytes: int) -> np.ndarray | None:
        """An unused buffer of at least ``nbytes`` and at most a quarter more, if there is one."""
        for index in range(len(self._buffers)):
            buffer = self._buffers[index]
            if nbytes + ALIGN <= buffer.nbytes <= nbytes + nbytes // 4 + _ROUND + ALIGN and \
                    sys.getrefcount(buffer) == _UNUSED_REFS:
                return buffer
        return None

    def release(self) -> None:
        """Forgets every buffer (those still in use live on with their arrays)."""
        with self._lock:
            self._buffers.clear()
            self._pooled = 0


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array starting on an ``ALIGN``-byte boundary (outside any pool)."""
    dtype = np.dtype(dtype)
    return _aligned_view(np.empty(int(np.prod(shape)) * dtype.itemsize + ALIGN, np.uint8),
                         shape, dtype)


def _aligned_view(raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` over ``raw`` (a uint8 array at least ``ALIGN``
    bytes longer), starting at its first ``ALIGN``-byte boundary."""
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
