"""Which rows go to which worker, decided while an epoch's data flows (pure core; driver).

Synchronous training hangs at an epoch's end when one worker runs out of data before the
others, so every worker must get exactly the same number of records in an epoch. The data is
read once (no counting pass: an uncached source is computed once, a source that is not
deterministic cannot disagree with its own count), so the split is made as rows arrive:

* A feed task holding its next chunk of ``n`` rows asks the driver's ``EpochLedger`` for a
  *grant*. A chunk goes whole to the least-fed worker when that keeps every worker within
  ``BALANCE_ROWS`` rows of the others; otherwise the least-fed workers are raised to one level
  (water poured into columns of different heights) and the chunk is cut into those pieces.
  After every grant no worker has more than ``BALANCE_ROWS`` rows above another.
* Each grant carries the ledger's *floor*: the fewest rows any worker has been granted. Every
  worker ends the epoch with at least that many, so a node may hand that many rows of the
  epoch to its reader at once; it holds back only the rows above it (at most ``BALANCE_ROWS``
  plus pieces still in flight) until the epoch's end.
* When the epoch's feed job has finished, the driver asks every worker how many rows it
  received and tells them all the smallest count: each ends its epoch there. Fewer than
  ``BALANCE_ROWS`` rows per worker (one) are left out of the epoch (reported), and no row
  reaches two workers.

Grants are remembered by ``(partition, offset)``: Spark's retry of a feed task asks again for
the chunks it sends again and gets the same workers, whose feed endpoints drop the rows they
already took, so every record is taken in exactly once.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from tfos.core.errors import ConfigError

# No worker is ever granted more than this many rows above another: an epoch leaves out fewer
# than this many rows per worker (as a split counted in advance would: total % workers). A
# chunk is thus cut among the workers, a piece each, unless one is behind by the chunk's size.
BALANCE_ROWS = 1


@dataclass(frozen=True)
class Grant:
    """Where the rows ``[offset, offset + sum of pieces)`` of a partition go: ``pieces`` are
    ``(worker, rows)`` in row order; every worker ends the epoch with at least ``floor`` rows."""
    pieces: tuple[tuple[int, int], ...]
    floor: int


class EpochLedger:
    """The rows granted to each of ``workers`` workers in one epoch of one feed."""

    def __init__(self, workers: int, balance: int = BALANCE_ROWS):
        if workers < 1:
            raise ConfigError(f"workers={workers}: feeding needs at least one worker")
        self.granted = [0] * workers
        self._balance = max(1, balance)
        self._grants: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}
        self._lock = threading.Lock()

    def grant(self, partition: int, offset: int, rows: int) -> Grant:
        """Assigns rows ``[offset, offset + rows)`` of ``partition`` (again the same workers
        for rows granted before: a retried task)."""
        if rows < 1 or offset < 0 or partition < 0:
            raise ConfigError(f"a grant needs rows >= 1, offset and partition >= 0; got "
                              f"rows={rows}, offset={offset}, partition={partition}")
        with self._lock:
            known = self._grants.get((partition, offset))
            if known is not None:          # a retry: the same workers, counted once
                pieces = _truncate(known, rows)
                covered = sum(n for _, n in pieces)
                if covered < rows:         # the retry's chunk is longer than the first one's
                    pieces += self._grant_new(partition, offset + covered, rows - covered)
            else:
                pieces = self._grant_new(partition, offset, rows)
            return Grant(pieces, min(self.granted))

    def _grant_new(self, partition: int, offset: int, rows: int) -> tuple[tuple[int, int], ...]:
        pieces = _level(self.granted, rows, self._balance)
        for worker, n in pieces:
            self.granted[worker] += n
        self._grants[(partition, offset)] = pieces
        return pieces

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.granted)


def _level(granted: list[int], rows: int, balance: int) -> tuple[tuple[int, int], ...]:
    """Pieces of ``rows``, in worker order: all of them to the least-granted worker when that
    keeps every worker within ``balance`` rows of the others; else the least-granted workers
    raised to one level (water-filling), each then within one row of that level."""
    order = sorted(range(len(granted)), key=lambda w: (granted[w], w))
    low = order[0]
    if len(order) == 1 or granted[low] + rows <= granted[order[1]] + balance:
        return ((low, rows),)
    # The k least-granted workers reach the level; the (k+1)-th is already at or above it.
    prefix, k = 0, 0
    for k in range(1, len(order) + 1):
        prefix += granted[order[k - 1]]
        if k == len(order) or (prefix + rows) / k <= granted[order[k]]:
            break
    base, extra = divmod(prefix + rows, k)
    pieces = []
    for i, worker in enumerate(order[:k]):
        n = base + (1 if i < extra else 0) - granted[worker]
        if n > 0:
            pieces.append((worker, n))
    return tuple(sorted(pieces))


def _truncate(pieces, rows: int) -> tuple[tuple[int, int], ...]:
    out, left = [], rows
    for worker, n in pieces:
        if left <= 0:
            break
        out.append((worker, min(n, left)))
        left -= n
    return tuple(out)
