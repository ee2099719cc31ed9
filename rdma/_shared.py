"""Memory the ranks of a one-host group all map, for all-reduces that read each other's tensors
in place instead of passing them round a ring.

Each rank owns one memfd, its *slot*, that holds a copy of its input (all but the chunk it
reduces itself); rank 0 also owns ``RESULTS`` result buffers. Every rank maps every other
rank's memfds through ``/proc/<pid>/fd/<fd>`` (the same user's processes may open them).
An all-reduce is then:

1. copy the input into the own slot (the parts the others read: ``(size-1)/size`` of it);
2. sync: the ranks exchange a ``record`` (which memfds they own, which result buffers they
   still hold), so each knows the others' inputs are in place and maps what is new;
3. reduce chunk ``rank`` of every input, read in place, into the chosen result buffer, tile by
   tile so the partial sum stays in cache;
4. sync again: the result is complete, and it is returned as a read-only view (no copy out).

Per rank that moves about ``(2 (size-1) + size + 1) / size`` of the tensor through memory,
against ``~6 (size-1)/size`` for a ring over a transport: the reason this exists.

A result buffer is reused only once no rank holds a view of it any more (each rank reports
its holds in the first sync; all pick the same free buffer from the same records). A rank that
cannot map a peer's memory says so in the second sync and every rank goes back to the ring,
for that call and the group's life.
"""
from __future__ import annotations

import mmap
import os
import threading
import weakref

import numpy as np

# Result buffers rank 0 keeps: a step's result may be held while the next is computed.
RESULTS = 2
# Reduction tile: the partial sum of a tile stays in a core's L2 between the inputs.
TILE_BYTES = 256 << 10
# Slots and result buffers grow in steps of this many bytes.
GRANULE = 1 << 20
# A rank's record for the first sync (Arena.prepare): pid, slot fd, result fd (rank 0; -1
# elsewhere), capacity, held-results mask, status (FINE, or BROKEN: it cannot take part).
FINE, BROKEN = 0, 1


class Arena:
    """This rank's view of the group's shared memory."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size
        self.capacity = 0
        self.broken = ""                    # why this rank cannot take part, once it cannot
        self._fds: list[int] = []           # memfds this rank owns (kept open while current)
        self._mapped: dict[tuple, tuple] = {}   # (rank, role) -> ((pid, fd, size), memory)
        self.slots: list[np.ndarray | None] = [None] * size
        self.results: list[np.ndarray] = []
        self._held = [0] * RESULTS
        self._lock = threading.Lock()

    # -- before the first sync ------------------------------------------------------------------
    def prepare(self, nbytes: int) -> np.ndarray:
        """Grows this rank's memory to hold ``nbytes`` (every rank grows at the same call: they
        all reduce the same shapes) and returns the record for the first sync."""
        if not self.broken and nbytes > self.capacity:
            try:
                self._grow(-(-nbytes // GRANULE) * GRANULE)
            except OSError as error:
                self.broken = f"rank {self.rank} could not create shared memory: {error}"
        slot_fd, result_fd = (self._fds + [-1, -1])[:2]
        held = sum(1 << i for i, count in enumerate(self._held) if count)
        return np.array([os.getpid(), slot_fd, result_fd if self.rank == 0 else -1,
                         self.capacity, held, BROKEN if self.broken else FINE], np.int64)

    def _grow(self, capacity: int) -> None:
        for fd in self._fds:
            os.close(fd)     # mappings of the old memory stay valid while views of it live
        self._fds = []
        self._fds.append(_memfd("tfos-slot", capacity))
        if self.rank == 0:
            self._fds.append(_memfd("tfos-results", capacity * RESULTS))
        self.capacity = capacity
        self._held = [0] * RESULTS    # views of the old result buffers keep the old mapping
        self.slots[self.rank] = self._map(self.rank, "slot", os.getpid(), self._fds[0], capacity)

    # -- after the first sync -------------------------------------------------------------------
    def attach(self, records: np.ndarray) -> int | None:
        """Maps what changed in the peers' records; returns the result buffer every rank will
        use, or None when the call must take the ring: every rank's result buffers are held (all
        ranks see that), or this rank could not map a peer's memory (it says so in the second
        sync). Call only when every record's status is FINE."""
        try:
            for rank, (pid, slot_fd, _, capacity, _, _) in enumerate(records.tolist()):
                self.slots[rank] = self._map(rank, "slot", pid, slot_fd, capacity)
            pid, _, result_fd, capacity, _, _ = records[0].tolist()
            whole = self._map(0, "results", pid, result_fd, capacity * RESULTS)
            self.results = [whole[i * capacity:(i + 1) * capacity] for i in range(RESULTS)]
        except OSError as error:
            self.broken = (f"rank {self.rank} could not map a peer's shared memory "
                           f"({error}); are the ranks' processes run by one user?")
            return None
        held = np.bitwise_or.reduce(records[:, 4])
        free = [i for i in range(RESULTS) if not held & (1 << i)]
        return free[0] if free else None

    def _map(self, owner: int, role: str, pid: int, fd: int, capacity: int) -> np.ndarray:
        """``owner``'s memfd ``role`` mapped here (again only when its record changed: it grew;
        live views of the old mapping keep it)."""
        known = self._mapped.get((owner, role))
        if known is None or known[0] != (pid, fd, capacity):
            path = f"/proc/self/fd/{fd}" if pid == os.getpid() else f"/proc/{pid}/fd/{fd}"
            handle = os.open(path, os.O_RDWR)
            try:
                memory = mmap.mmap(handle, capacity, flags=mmap.MAP_SHARED | _POPULATE)
            finally:
                os.close(handle)
            known = self._mapped[(owner, role)] = ((pid, fd, capacity),
                                                   np.frombuffer(memory, np.uint8))
        return known[1]

    # -- the result -----------------------------------------------------------------------------
    def hand_out(self, index: int, nbytes: int, dtype, shape) -> np.ndarray:
        """A read-only view of result buffer ``index``, counted as held until it is dropped."""
        view = np.frombuffer(self.results[index].data, np.uint8, nbytes)
        with self._lock:
            self._held[index] += 1
        weakref.finalize(view, self._release, index, self._held)
        out = view.view(dtype).reshape(shape)
        out.flags.writeable = False
        return out

    def _release(self, index: int, held: list) -> None:
        with self._lock:
            held[index] -= 1        # a list of an older size is simply forgotten

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._mapped.clear()
        self.slots = [None] * self.size
        self.results = []


def reduce_chunk(out: np.ndarray, sources: list[np.ndarray], reduce, mean_of: int) -> None:
    """``out`` = ``reduce`` over ``sources`` in their order (the same order on every rank, so
    the bits do not depend on who reduced which chunk), tile by tile; ``mean_of``: divide."""
    step = max(1, TILE_BYTES // out.itemsize)
    for start in range(0, out.size, step):
        tile = out[start:start + step]
        reduce(sources[0][start:start + step], sources[1][start:start + step], out=tile)
        for source in sources[2:]:
            reduce(tile, source[start:start + step], out=tile)
        if mean_of:
            if np.issubdtype(tile.dtype, np.integer):
                tile //= mean_of
            else:
                tile /= mean_of


def _memfd(name: str, capacity: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, capacity)
    except OSError:
        os.close(fd)
        raise
    return fd


# Map with the pages in place: a fault per 4 KiB page on first touch would cost more than the
# reduction (64 MiB: 16,384 faults).
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
