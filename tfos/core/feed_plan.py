"""Which rows of which partition go to which worker, epoch by epoch (pure core; driver).

Synchronous training hangs at an epoch's end when one worker runs out of data before the
others, so every worker must get exactly the same number of records in an epoch. The plan:

1. count the rows of every partition (one cheap Spark job; cache the data to avoid computing
   it twice);
2. order the partitions by a permutation seeded with the epoch (so the assignment changes
   between epochs), and lay their rows end to end: N rows in all;
3. cut that sequence into ``num_workers`` contiguous slices of ``N // num_workers`` rows each.
   The last ``N % num_workers`` rows of the sequence (fewer than one per worker) are not fed
   in that epoch; which rows those are changes with the permutation.

A partition's rows therefore go to one worker, or to a few consecutive ones when it spans a
slice boundary; empty partitions get no range at all.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tfos.core.errors import ConfigError


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of one partition, fed to ``worker``."""

    partition: int
    worker: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    per_worker: int                      # records every worker receives in this epoch
    dropped: int                         # records not fed in this epoch (< num_workers)
    ranges: tuple[RowRange, ...]         # ordered by partition, then start

    def for_partition(self, partition: int) -> tuple[RowRange, ...]:
        return tuple(r for r in self.ranges if r.partition == partition)


def plan_epoch(counts: list[int], num_workers: int, epoch: int = 0,
               seed: int | None = 0) -> EpochPlan:
    """Splits the rows counted in ``counts`` (one entry per partition) among the workers.

    ``seed=None`` keeps the partitions in their natural order every epoch.
    """
    if num_workers < 1:
        raise ConfigError(f"num_workers={num_workers}: feeding needs at least one worker")
    if any(c < 0 for c in counts):
        raise ConfigError(f"partition row counts must be >= 0, got {counts}")
    order = list(range(len(counts)))
    if seed is not None:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    total = sum(counts)
    per_worker = total // num_workers
    fed = per_worker * num_workers
    ranges = []
    position = 0  # index of a partition's first row in the laid-out sequence
    for partition in order:
        start, end = position, min(position + counts[partition], fed)
        while start < end:
            worker = start // per_worker
            stop = min(end, (worker + 1) * per_worker)
            ranges.append(RowRange(partition, worker, start - position, stop - position))
            start = stop
        position += counts[partition]
    ranges.sort(key=lambda r: (r.partition, r.start))
    return EpochPlan(epoch, per_worker, total - fed, tuple(ranges))
