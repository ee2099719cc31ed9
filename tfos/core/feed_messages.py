"""The feed conversation: typed, versioned messages to and from a TF node's feed endpoint.

Two kinds of peers connect to a node's feed endpoint (``tfos.node.feed_server``); each opens
with a hello that says who it is, and every message is one of the frozen dataclasses below,
sent by ``tfos.core.feed_codec`` as a strict JSON header (``tfos.core.wire``) followed by the
raw buffers of its columns:

- a feeder (a Spark feed task, ``tfos.executor.feed_task``): ``FeederHello``, then ``Batch``
  messages with columns, then ``End``. The node answers ``Done`` once it took everything
  (training), or streams ``Results`` with the columns of each batch's results, in order
  (inference).
- the driver (``tfos.driver.feeder``): ``DriverHello``, then ``EpochStart`` before each
  epoch; after its feed job, ``EpochQuery`` (the node answers ``EpochCount``) and ``EpochEnd``
  with the length every worker keeps; ``EpochCut`` when an epoch's feed job failed (the epoch
  ends with what arrived), and ``EndAll`` at the end; the node answers each with ``Ok``.

Whatever the node cannot take is answered with ``Error``, and the node hangs up.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

VERSION = 2


class FeedMode(str, enum.Enum):
    TRAIN = "train"
    INFERENCE = "inference"


def _check_counts(message, names: tuple[str, ...]) -> None:
    """Counts and numbers on the wire are non-negative integers (the types are checked by the
    codec; this is the range)."""
    for name in names:
        value = getattr(message, name)
        if value is not None and value < 0:
            raise ValueError(f"{type(message).__name__}.{name} must be a non-negative "
                             f"integer, got {value!r}")


class _Counted:
    _counts: tuple[str, ...] = ()

    def __post_init__(self):
        _check_counts(self, self._counts)


# -- from a feeder ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FeederHello(_Counted):
    feed: str
    epoch: int
    mode: FeedMode = FeedMode.TRAIN
    # Training: the partition fed, so a Spark retry of the task resends only rows not taken.
    partition: int | None = None
    _counts = ("epoch", "partition")


@dataclass(frozen=True)
class Batch(_Counted):
    """``rows`` rows as columns; ``offset``: the first row's index in its partition; ``floor``:
    rows of this epoch every worker is sure to get (training; None: no limit)."""
    rows: int
    offset: int = 0
    floor: int | None = None
    _counts = ("rows", "offset", "floor")


@dataclass(frozen=True)
class End(_Counted):
    records: int
    _counts = ("records",)


# -- between a feed task and the driver's lease endpoint (tfos.driver.lease_server) ------------
@dataclass(frozen=True)
class Lease(_Counted):
    """A feed task of ``train()`` holds rows ``[offset, offset + rows)`` of ``partition`` for
    epoch ``epoch`` of ``feed``: which workers take them? (``tfos.core.feed_plan``)"""
    feed: str
    epoch: int
    partition: int
    offset: int
    rows: int
    _counts = ("epoch", "partition", "offset", "rows")


@dataclass(frozen=True)
class Grant(_Counted):
    """The answer to ``Lease``: ``rows[i]`` rows, in order, to worker ``workers[i]`` (numbered
    as in the feed spec); every worker gets at least ``floor`` rows of the epoch. ``error``:
    why there is no grant (the epoch is not being fed)."""
    workers: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    floor: int = 0
    error: str = ""
    _counts = ("floor",)


# -- from the driver ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DriverHello:
    pass


@dataclass(frozen=True)
class EpochStart(_Counted):
    """Epoch ``epoch`` of ``feed`` begins; it brings this worker ``per_worker`` records when
    that is known before (None: told by ``EpochEnd`` once the epoch was fed)."""
    feed: str
    epoch: int
    per_worker: int | None = None
    _counts = ("epoch", "per_worker")


@dataclass(frozen=True)
class EpochQuery(_Counted):
    """How many rows of epoch ``epoch`` arrived, and how many did the reader take?"""
    feed: str
    epoch: int
    _counts = ("epoch",)


@dataclass(frozen=True)
class EpochEnd(_Counted):
    """Epoch ``epoch`` of ``feed`` has ``per_worker`` records for every worker: the node drops
    any that arrived above it."""
    feed: str
    epoch: int
    per_worker: int
    _counts = ("epoch", "per_worker")


@dataclass(frozen=True)
class EpochCut(_Counted):
    """The feed job of this epoch failed: it ends with the records that arrived."""
    feed: str
    epoch: int
    _counts = ("epoch",)


@dataclass(frozen=True)
class EndAll:
    """No more data: each named feed ends after the epoch given, every other feed at once."""
    feeds: dict[str, int]

    def __post_init__(self):
        bad = {name: last for name, last in self.feeds.items() if last < -1}
        if bad:
            raise ValueError(f"EndAll.feeds must hold last epochs of -1 or more, got {bad!r:.80}")


# -- from the node ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Done:
    """A training feeder's records were all taken in."""


@dataclass(frozen=True)
class Results(_Counted):
    """The results of the next ``rows`` rows of an inference feeder, as columns."""
    rows: int
    _counts = ("rows",)


@dataclass(frozen=True)
class EpochCount(_Counted):
    """The answer to ``EpochQuery``."""
    received: int
    taken: int
    _counts = ("received", "taken")


@dataclass(frozen=True)
class Ok:
    """A driver's marker was applied."""


@dataclass(frozen=True)
class Error:
    """Why the node refused what it was sent; it hangs up after this."""
    message: str


HELLOS = (FeederHello, DriverHello)
FROM_FEEDER = (Batch, End)
FROM_DRIVER = (EpochStart, EpochQuery, EpochEnd, EpochCut, EndAll)
TO_FEEDER = (Done, Results, Error)
TO_DRIVER = (Ok, EpochCount, Error)
ALL = HELLOS + FROM_FEEDER + FROM_DRIVER + (Done, Results, EpochCount, Ok, Error, Lease, Grant)
