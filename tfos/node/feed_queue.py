"""A named feed's bounded buffer of column chunks, with epoch accounting (TF node side).

Feeder connections put chunks (dicts of numpy columns, row axis first) tagged with their
epoch; the node's ``DataFeed`` takes rows out in the batch sizes it wants. The buffer is
bounded in bytes: ``put`` blocks while it is full, which stops the connection's reader, which
stops the feeder (backpressure, never an unbounded queue).

An epoch's length is known only at its end (``tfos.core.feed_plan``: the data is read once):
until the driver ends it (``end_epoch``, with the count every worker keeps), the reader gets
the epoch's rows up to its *floor*, the count every worker is sure to reach, which arrives
with the chunks; the few rows above it wait for the end, and those above the final count are
dropped then. The driver also ends the data, so the consumer knows where an epoch ends even
when this worker gets no record at all in it.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tfos.core.errors import FeedError


@dataclass
class Chunk:
    columns: dict[str, np.ndarray]
    rows: int
    epoch: int
    nbytes: int
    # Called with the results of this chunk's rows, in order (inference); None when training.
    reply: Callable[[dict[str, np.ndarray]], None] | None = None
    taken: int = 0
    # Rows of this chunk's epoch every worker is sure to get (None: no limit, one worker).
    floor: int | None = None


@dataclass
class _Epoch:
    expected: int | None = None   # announced by the driver (at the start, or at the end)
    received: int = 0
    consumed: int = 0
    floor: float = 0              # rows the reader may take before the epoch's length is known
    cut: bool = False             # the driver's feed job failed: the epoch ends with what came
    chunks: collections.deque = field(default_factory=collections.deque)

    @property
    def readable(self) -> float:
        """Rows of this epoch the reader may have taken by now."""
        return self.expected if self.expected is not None else self.floor


class FeedQueue:
    """Bounded, epoch-aware buffer of one named feed."""

    def __init__(self, name: str, capacity_bytes: int):
        self.name = name
        self.capacity = capacity_bytes
        self._cond = threading.Condition()
        self._epochs: dict[int, _Epoch] = collections.defaultdict(_Epoch)
        self._current = 0            # the epoch the consumer reads
        self._buffered = 0
        self._waiting_since = time.monotonic()   # data waits untaken since then (see stalled_for)
        self.ever_taken = False
        self.ever_received = 0
        # Records announced for this worker that arrived or are still due (a cut epoch owes
        # no more than it received).
        self.announced = 0
        self._last_epoch: int | None = None   # set by end_of_data: the final epoch's number
        self._terminated = False
        self._finished: dict[int, int] = {}   # length of each epoch the reader finished

    # -- producers (connection readers, driver markers) ---------------------------------
    def put(self, chunk: Chunk, timeout: float | None = None) -> None:
        """Adds ``chunk``; blocks while the buffer is full (``timeout``: FeedError)."""
        if chunk.nbytes > self.capacity:
            raise FeedError(f"feed {self.name!r}: a chunk of {chunk.rows} rows is "
                            f"{chunk.nbytes} bytes, more than the feed buffer of {self.capacity} "
                            "bytes; raise feed_buffer_bytes or feed smaller records")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._buffered and self._buffered + chunk.nbytes > self.capacity:
                if self._terminated:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise FeedError(f"feed {self.name!r}: the node consumed nothing for "
                                    f"{timeout:.0f}s while its buffer was full")
                self._cond.wait(remaining)
            if self._terminated or chunk.epoch < self._current:
                return    # a straggler of an epoch that already ended: dropped
            epoch = self._epochs[chunk.epoch]
            if epoch.cut:
                return
            epoch.chunks.append(chunk)
            epoch.floor = max(epoch.floor, float("inf") if chunk.floor is None else chunk.floor)
            epoch.received += chunk.rows
            self.ever_received += chunk.rows
            if not self._buffered:
                self._waiting_since = time.monotonic()
            self._buffered += chunk.nbytes
            self._cond.notify_all()

    def announce_epoch(self, epoch: int, expected: int | None) -> None:
        """Epoch ``epoch`` begins; ``expected``: its length, when known before it is fed."""
        with self._cond:
            self._epochs[epoch]      # known from now on, even if no row comes
            if expected is not None:
                previous = self._epochs[epoch].expected or 0
                self.announced += expected - previous
                self._epochs[epoch].expected = expected
            self._cond.notify_all()

    def epoch_counts(self, number: int) -> tuple[int, int]:
        """``(received, taken)``: rows of epoch ``number`` that arrived and that the reader
        took; an epoch already over counts as its length."""
        with self._cond:
            if number < self._current:
                return (self._finished.get(number, 0),) * 2
            epoch = self._epochs[number]
            return epoch.received, epoch.consumed

    def end_epoch(self, number: int, length: int) -> None:
        """Epoch ``number`` has ``length`` rows for this worker (as for every other): rows that
        arrived above it are dropped. FeedError if the reader already took more (the data
        changed while it was read, see ``Feeder``)."""
        with self._cond:
            if number < self._current:
                return
            epoch = self._epochs[number]
            if epoch.consumed > length:
                raise FeedError(f"feed {self.name!r} epoch {number}: the reader already took "
                                f"{epoch.consumed} rows, more than the {length} every worker "
                                "gets")
            if epoch.received < length:
                raise FeedError(f"feed {self.name!r} epoch {number}: {epoch.received} rows "
                                f"arrived, fewer than the {length} the driver ends it with")
            self.announced += length
            epoch.expected = length
            self._cond.notify_all()

    def cut_epoch(self, number: int) -> None:
        """The feed job of epoch ``number`` failed: the epoch ends with the records received so
        far, and any that still arrive for it are dropped."""
        with self._cond:
            if number < self._current:
                return
            epoch = self._epochs[number]
            epoch.cut = True
            if epoch.expected is not None:
                self.announced -= epoch.expected - epoch.received
            epoch.expected = epoch.received
            self._cond.notify_all()

    def end_of_data(self, last_epoch: int) -> None:
        """No more data after ``last_epoch``; an epoch never announced (inference) ends with
        what it received, also one of which no row came here (all went to other nodes)."""
        with self._cond:
            self._last_epoch = last_epoch
            for number in range(self._current, last_epoch + 1):
                epoch = self._epochs[number]
                if epoch.expected is None:
                    epoch.expected = epoch.received
            self._cond.notify_all()

    def terminate(self) -> None:
        with self._cond:
            self._terminated = True
            for epoch in self._epochs.values():
                epoch.chunks.clear()
            self._buffered = 0
            self._cond.notify_all()

    @property
    def current_epoch(self) -> int:
        """The epoch the consumer reads now (earlier ones are over)."""
        with self._cond:
            return self._current

    @property
    def unread(self) -> bool:
        """Records were announced or arrived, and the consumer took none (nor terminated)."""
        with self._cond:
            return ((self.ever_received > 0 or self.announced > 0) and not self.ever_taken
                    and not self._terminated)

    def stalled_for(self) -> tuple[float, int]:
        """``(seconds, bytes)``: how long buffered data has waited with nothing taken, and how
        much waits; ``(0, 0)`` when the buffer is empty."""
        with self._cond:
            if not self._buffered or self._terminated:
                return 0.0, 0
            epoch = self._epochs.get(self._current)
            if epoch is not None and epoch.consumed >= epoch.readable and (
                    epoch.expected is None or not epoch.chunks):
                return 0.0, 0     # what waits is held for the epoch's end: the reader is not late
            return time.monotonic() - self._waiting_since, self._buffered

    # -- the consumer ---------------------------------------------------------------------
    def peek(self, timeout: float | None = None) -> Chunk | None:
        """The first chunk not yet fully taken (waits for one); None when the feed is over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._done_locked():
                    return None
                for number in sorted(self._epochs):
                    if number >= self._current and self._epochs[number].chunks:
                        return self._epochs[number].chunks[0]
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise FeedError(f"feed {self.name!r}: no data arrived for {timeout:.0f}s")
                self._cond.wait(remaining)

    @property
    def done(self) -> bool:
        with self._cond:
            return self._done_locked()

    def _done_locked(self) -> bool:
        return self._terminated or (self._last_epoch is not None
                                    and self._current > self._last_epoch)

    def take(self, max_rows: int, within_epoch: bool, timeout: float | None = None,
             fill: bool = False) -> list[tuple[Chunk, int, int]] | None:
        """Up to ``max_rows`` rows as ``(chunk, start, stop)`` slices, in arrival order.

        Returns ``[]`` at the end of an epoch when ``within_epoch`` (once per epoch), and None
        when the feed is over. Blocks until rows arrive (``timeout``: FeedError); with ``fill``,
        until ``max_rows`` arrived or the feed is over (only its last batch is short).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pieces: list[tuple[Chunk, int, int]] = []
        wanted = max_rows
        with self._cond:
            while wanted > 0:
                if self._done_locked():
                    return pieces or None
                epoch = self._epochs[self._current]
                if epoch.expected is not None and epoch.consumed >= epoch.expected:
                    if within_epoch and pieces:
                        return pieces  # the epoch's last rows; the next call ends it
                    self._finish_epoch_locked()
                    if within_epoch:
                        return []
                    continue
                if epoch.chunks and epoch.consumed < epoch.readable:
                    self._waiting_since = time.monotonic()
                    self.ever_taken = True
                    chunk = epoch.chunks[0]
                    n = int(min(wanted, chunk.rows - chunk.taken,
                                epoch.readable - epoch.consumed))
                    pieces.append((chunk, chunk.taken, chunk.taken + n))
                    chunk.taken += n
                    epoch.consumed += n
                    wanted -= n
                    if chunk.taken == chunk.rows:
                        epoch.chunks.popleft()
                        self._buffered -= chunk.nbytes
                        self._cond.notify_all()
                    continue
                if pieces and not within_epoch and not fill:
                    return pieces  # hand out what we have rather than wait for more
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise FeedError(f"feed {self.name!r}: no data arrived for {timeout:.0f}s "
                                    f"(epoch {self._current}: {epoch.received} of "
                                    f"{epoch.expected if epoch.expected is not None else '?'} "
                                    "records received)")
                self._cond.wait(remaining)
        return pieces

    def _finish_epoch_locked(self) -> None:
        """The reader is past the current epoch: rows that arrived above its length go."""
        epoch = self._epochs.pop(self._current)
        for chunk in epoch.chunks:
            self._buffered -= chunk.nbytes
        if epoch.chunks:
            self._cond.notify_all()
        self._finished[self._current] = epoch.consumed
        self._finished.pop(self._current - 8, None)    # the driver asks only about recent ones
        self._current += 1
