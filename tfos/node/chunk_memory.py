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
"""
from __future__ import annotations

import sys
import threading

import numpy as np

# Smaller columns are copied into ordinary arrays: the allocator reuses small blocks itself.
MIN_POOLED_BYTES = 256 << 10
_ALIGN = 64 << 10            # buffer sizes are rounded up to this, so similar chunks share
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
        nbytes = array.nbytes
        if nbytes < MIN_POOLED_BYTES or array.dtype.hasobject:
            return array.copy()
        with self._lock:
            buffer = self._free_buffer(nbytes)
            if buffer is None:
                size = -(-nbytes // _ALIGN) * _ALIGN
                if self._pooled + size > self._limit:
                    return array.copy()
                buffer = np.empty(size, np.uint8)
                self._buffers.append(buffer)
                self._pooled += size
            out = buffer[:nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(out, array)
        return out

    def _free_buffer(self, nbytes: int) -> np.ndarray | None:
        """An unused buffer of at least ``nbytes`` and at most a quarter more, if there is one."""
        for index in range(len(self._buffers)):
            buffer = self._buffers[index]
            if nbytes <= buffer.nbytes <= nbytes + nbytes // 4 + _ALIGN and \
                    sys.getrefcount(buffer) == _UNUSED_REFS:
                return buffer
        return None

    def release(self) -> None:
        """Forgets every buffer (those still in use live on with their arrays)."""
        with self._lock:
            self._buffers.clear()
            self._pooled = 0
