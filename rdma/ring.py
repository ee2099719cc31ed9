"""Bookkeeping of a shared-memory ring, one instance on each side (pure: no memory, no sockets).

The ring is ``capacity`` bytes that only its reader creates (rdma.shm). Both sides count bytes
on one logical, ever-growing axis; the physical offset is ``position % capacity``:

* ``head``: where the writer's next message may start (messages published so far).
* ``released``: how far the reader has finished with messages (it holds at most one).

A message occupies one contiguous stretch starting on a 64-byte boundary (numpy columns of
the message stay aligned in place). One that does not fit before the end of the ring starts
at the next lap; the stretch it skipped is dead space. Both sides compute the same placement
from the sizes alone, so a control record needs only the size (``RING``) or a counter
(``CREDIT``, ``NEED``).

The reader's released counter jumps over a dead stretch as soon as everything before it is
released, so the writer's credit always points at live data. The writer may place a message
once the reader has released enough:
``released >= min(end - capacity, head)``, the second term meaning "the ring is empty", which
makes room for any message up to the capacity. The reader sends ``CREDIT`` after a quarter of
the ring has been released, or when a waiting writer asked (``NEED``) for a counter it has
reached; it checks every ``RING`` against what it has credited, so a writer that overruns is
caught (FrameError) instead of overwriting a message being read.
"""
from __future__ import annotations

import collections

from rdma.errors import FrameError

ALIGN = 64


def aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def placement(head: int, size: int, capacity: int) -> tuple[int, int]:
    """``(start, end)`` on the logical axis of a ``size``-byte message written at ``head``."""
    offset = head % capacity
    start = head if offset + size <= capacity else head - offset + capacity
    return start, start + aligned(size)


def room_needed(head: int, end: int, capacity: int, size: int) -> int:
    """The released counter that lets the writer use ``[.., end)``."""
    if size == 0:
        return 0
    return min(end - capacity, head)


def check_capacity(capacity: int) -> None:
    if capacity <= 0 or capacity % ALIGN:
        raise ValueError(f"ring capacity {capacity} must be a positive multiple of {ALIGN}")


class RingWriter:
    """The writer's view: where to put the next message and what the reader has released."""

    def __init__(self, capacity: int):
        check_capacity(capacity)
        self.capacity = capacity
        self.head = 0
        self.tail = 0   # the highest released counter credited so far

    def reserve(self, size: int) -> tuple[int, int, int]:
        """``(start, end, needed)``: the message goes to ``[start, end)`` once
        ``tail >= needed``."""
        capacity, head = self.capacity, self.head
        if size < 0:
            raise FrameError(f"message size {size} is negative")
        if size > capacity:
            raise FrameError(f"message of {size} bytes is larger than the ring of "
                             f"{capacity} bytes")
        # placement() and room_needed() inlined: this runs once per message sent.
        offset = head % capacity
        start = head if offset + size <= capacity else head - offset + capacity
        end = start - (-size // ALIGN) * ALIGN
        return start, end, min(end - capacity, head) if size else 0

    def commit(self, end: int) -> None:
        self.head = end

    def credit(self, released: int) -> None:
        if not self.tail <= released <= self.head:
            raise FrameError(f"ring credit {released} outside [{self.tail}, {self.head}]: the "
                             "peer's ring bookkeeping is corrupt")
        self.tail = released


class RingReader:
    """The reader's view: where each published message lies and when to credit the writer."""

    def __init__(self, capacity: int):
        check_capacity(capacity)
        self.capacity = capacity
        self.head = 0
        self.released = 0
        self.credited = 0
        self.need: int | None = None
        self._credit_every = max(capacity // 4, ALIGN)
        # Dead stretches at lap ends, (from, to): released jumps over them.
        self._skips: collections.deque[tuple[int, int]] = collections.deque()

    def publish(self, size: int) -> tuple[int, int]:
        """Placement of the next message the writer announced; FrameError if it cannot be."""
        if size < 0:
            raise FrameError(f"peer announced a message of negative size {size}")
        if size > self.capacity:
            raise FrameError(f"peer announced a message of {size} bytes in a ring of "
                             f"{self.capacity} bytes")
        start, end = placement(self.head, size, self.capacity)
        if self.credited < room_needed(self.head, end, self.capacity, size):
            raise FrameError(f"peer overran the ring: a {size}-byte message at {start} needs "
                             f"credit {room_needed(self.head, end, self.capacity, size)}, "
                             f"granted {self.credited}")
        if start > self.head:
            self._skips.append((self.head, start))
            self._skip_dead()
        self.head = end
        return start, end

    def release(self, end: int) -> None:
        if not self.released <= end <= self.head:
            raise FrameError(f"release of {end} outside [{self.released}, {self.head}]")
        self.released = end
        if self._skips:
            self._skip_dead()

    def _skip_dead(self) -> None:
        while self._skips and self._skips[0][0] == self.released:
            self.released = self._skips.popleft()[1]

    def request(self, needed: int) -> None:
        """The writer waits until ``released >= needed`` is credited."""
        if needed > self.head:
            raise FrameError(f"peer waits for credit {needed} beyond what it wrote "
                             f"({self.head})")
        self.need = needed

    def credit_due(self) -> int | None:
        """The counter to send as CREDIT now, or None."""
        if self.need is None and self.released - self.credited < self._credit_every:
            return None     # the usual answer, once per message received
        if self.need is not None and self.credited >= self.need:
            self.need = None    # a credit already sent answers it
        due = self.released > self.credited and (
            self.need is not None and self.released >= self.need
            or self.released - self.credited >= self._credit_every)
        if not due:
            return None
        self.credited, self.need = self.released, None
        return self.released
