"""Feed tasks: one Spark task per partition streams its rows into TF nodes (executor side).

Called by the feed job's closures (``tfos.feeding``) or, in tests, directly with a list.
Training: the partition's rows are cut by the epoch plan into ranges, each range goes to its
worker in chunks of columns. Inference: the whole partition goes to one worker and the results
come back on the same connection, in row order. A node on this host is reached through shared
memory (its ``shm://`` socket exists here), any other over TCP.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from tfos import feed_codec
from tfos.errors import TfosError
from tfos.feed_plan import EpochPlan
from tfos.feed_rows import FeedDataError, arrow_to_columns, rows_to_columns


class FeedFailed(TfosError):
    """A TF node refused or dropped this feed task's data."""


@dataclass(frozen=True)
class NodeEndpoint:
    label: str                 # "worker:1@host", for messages
    uris: tuple[str, ...]      # e.g. ("shm:///tmp/.../feed.sock", "tcp://10.0.0.2:41234")


@dataclass(frozen=True)
class FeedSpec:
    feed: str
    epoch: int
    workers: tuple[NodeEndpoint, ...]    # indexed by worker number in the plan
    secret: bytes
    plan: EpochPlan | None = None        # None: inference
    chunk_rows: int = 1024               # at most this many rows per message,
    chunk_bytes: int = 4 << 20           # and about this many bytes (large records: fewer rows)
    timeout: float = 600.0
    arrow: bool = False                  # rows are Arrow record batches (DataFrame input)
    buffer_bytes: int = 256 << 20        # each node's feed buffer (ClusterConfig.feed_buffer_bytes)



def choose_uri(endpoint: NodeEndpoint) -> str:
    """Shared memory when the node is on this host (its ``shm://`` address carries the node's
    ``#host-key``) and its socket exists here, else its TCP address."""
    from rdma.shm import host_key
    for uri in endpoint.uris:
        if uri.startswith("shm://"):
            path, _, key = uri[len("shm://"):].partition("#")
            if key == host_key() and os.path.exists(path):
                return f"shm://{path}"
    for uri in endpoint.uris:
        if uri.startswith("tcp://"):
            return uri
    raise FeedFailed(f"node {endpoint.label} has no feed address reachable from this host "
                     f"({', '.join(endpoint.uris)})")


class _Connection:
    """One feed task's connection to one node."""

    def __init__(self, spec: FeedSpec, worker: int, mode: str, partition: int):
        from rdma import comm
        self._comm_mod = comm
        self.endpoint = spec.workers[worker]
        uri = choose_uri(self.endpoint)
        try:
            self.comm = comm.connect(uri, secret=spec.secret, timeout=spec.timeout,
                                     max_message=feed_codec.max_message(spec.buffer_bytes),
                                     **_reply_ring(uri, mode))
        except comm.CommError as exc:
            raise FeedFailed(f"cannot reach node {self.endpoint.label} at {uri}: {exc}") from None
        self.comm.send(feed_codec.encode("hello", {"role": "feeder", "feed": spec.feed,
                                                   "epoch": spec.epoch, "mode": mode,
                                                   "partition": partition}))
        self.sent = 0
        self._buffer_bytes = spec.buffer_bytes

    def send(self, columns: dict[str, np.ndarray], rows: int, partition: int,
             first_row: int) -> None:
        nbytes = sum(c.nbytes for c in columns.values())
        if nbytes > self._buffer_bytes:
            what = f"row {first_row}" if rows == 1 else f"rows {first_row}-{first_row + rows - 1}"
            raise FeedDataError(f"partition {partition}, {what}: {nbytes} bytes, more than the "
                                f"feed buffer of node {self.endpoint.label} "
                                f"({self._buffer_bytes} bytes): raise feed_buffer_bytes "
                                "(TFCluster.run(..., feed_buffer_bytes=...)) or feed smaller "
                                "records")
        try:
            self.comm.send(feed_codec.encode("batch", {"rows": rows, "offset": first_row},
                                             columns))
        except self._comm_mod.CommError as exc:
            raise FeedFailed(self._why(f"stopped taking data ({exc})")) from None
        self.sent += rows

    def finish(self) -> None:
        """Sends the end marker and waits for the node to confirm it took everything."""
        try:
            self.comm.send(feed_codec.encode("end", {"records": self.sent}))
            kind, meta, _ = feed_codec.decode(self.comm.recv())
        except self._comm_mod.CommError as exc:
            raise FeedFailed(self._why(f"closed the feed before confirming ({exc})")) from None
        if kind == "error":
            raise FeedFailed(self._why(meta.get("message", "refused the data")))
        self.comm.close()

    def _why(self, what: str) -> str:
        return f"node {self.endpoint.label} {what}"


def _reply_ring(uri: str, mode: str) -> dict:
    """The shm ring this feeder receives into: a training feeder gets only short replies, an
    inference feeder result chunks."""
    if not uri.startswith("shm://"):
        return {}
    return {"capacity": 16 << 20 if mode == "inference" else 64 << 10}


class _ChunkSizer:
    """Rows per message: ``chunk_rows`` at most, fewer when rows are large, so that a message
    stays near ``chunk_bytes`` and within a quarter of the node's buffer (well inside the
    transport's ring and the buffer, so several are in flight)."""

    def __init__(self, spec: FeedSpec):
        self._max_rows = spec.chunk_rows
        self._max_bytes = max(1, min(spec.chunk_bytes, spec.buffer_bytes // 4))
        self.rows = 1  # the first message measures the row size

    def update(self, columns: dict[str, np.ndarray], rows: int) -> None:
        if rows:
            row_bytes = max(1, sum(c.nbytes for c in columns.values()) // rows)
            self.rows = max(1, min(self._max_rows, self._max_bytes // row_bytes))


def feed_training_partition(spec: FeedSpec, partition: int, rows: Iterable) -> int:
    """Sends this partition's planned ranges of one epoch; returns the number of rows sent."""
    ranges = sorted(spec.plan.for_partition(partition), key=lambda r: r.start)
    source = _row_source(spec, partition, rows)
    if not ranges:
        source.drain()
        return 0
    connections: dict[int, _Connection] = {}
    try:
        sent = _send_ranges(spec, partition, ranges, source, connections)
    except BaseException:
        for conn in connections.values():   # the node sees the end at once, not at GC
            conn.comm.close()
        raise
    # Read the partition to its end even past the planned rows: a Python worker that left
    # input unread cannot be reused, and starting a new one costs more than the reading.
    source.drain()
    return sent


def _send_ranges(spec: FeedSpec, partition: int, ranges, source, connections) -> int:
    position = 0
    sent = 0
    sizer = _ChunkSizer(spec)
    for row_range in ranges:
        source.skip(row_range.start - position)
        position = row_range.start
        conn = connections.get(row_range.worker)
        if conn is None:
            conn = connections[row_range.worker] = _Connection(spec, row_range.worker, "train",
                                                                  partition)
        remaining = len(row_range)
        while remaining:
            columns, n = source.take(min(remaining, sizer.rows))
            sizer.update(columns, n)
            if n == 0:
                raise FeedFailed(f"partition {partition} ended at row {position}, before the "
                                 f"{row_range.stop} rows it had when counted: feed deterministic "
                                 "data (cache it, or fix the seed of any sampling)")
            conn.send(columns, n, partition, position)
            remaining -= n
            position += n
            sent += n
    for conn in connections.values():
        conn.finish()
    return sent


class _RowSource:
    """Rows of a partition handed out as column chunks, in order."""

    def __init__(self, rows: Iterable, partition: int):
        self._rows = iter(rows)
        self._partition = partition
        self._index = 0

    def skip(self, n: int) -> None:
        for _ in itertools.islice(self._rows, n):
            pass
        self._index += n

    def drain(self) -> None:
        for _ in self._rows:
            pass

    def take(self, n: int):
        chunk = list(itertools.islice(self._rows, n))
        columns = rows_to_columns(chunk, self._partition, self._index) if chunk else {}
        self._index += len(chunk)
        return columns, len(chunk)


class _ArrowSource:
    """Rows of a partition given as Arrow record batches (``mapInArrow``)."""

    def __init__(self, batches: Iterable, partition: int):
        self._batches = iter(batches)
        self._partition = partition
        self._current = None
        self._offset = 0
        self._index = 0

    def _batch(self):
        while self._current is None or self._offset >= self._current.num_rows:
            self._current = next(self._batches, None)
            self._offset = 0
            if self._current is None:
                return None
        return self._current

    def skip(self, n: int) -> None:
        while n:
            batch = self._batch()
            if batch is None:
                return
            step = min(n, batch.num_rows - self._offset)
            self._offset += step
            self._index += step
            n -= step

    def drain(self) -> None:
        for _ in self._batches:
            pass

    def take(self, n: int):
        batch = self._batch()
        if batch is None:
            return {}, 0
        piece = batch.slice(self._offset, min(n, batch.num_rows - self._offset))
        self._offset += piece.num_rows
        columns = arrow_to_columns(piece, self._partition, self._index)
        self._index += piece.num_rows
        return columns, piece.num_rows


def _row_source(spec: FeedSpec, partition: int, rows: Iterable):
    return _ArrowSource(rows, partition) if spec.arrow else _RowSource(rows, partition)


def infer_partition(spec: FeedSpec, partition: int, rows: Iterable) -> Iterator[dict]:
    """Feeds a whole partition to one worker; yields result column chunks in row order."""
    worker = partition % len(spec.workers)
    conn = _Connection(spec, worker, "inference", partition)
    results: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_results, args=(conn, results), daemon=True,
                              name="tfos-feed-results")
    reader.start()
    source = _row_source(spec, partition, rows)
    received = 0
    sizer = _ChunkSizer(spec)
    while True:
        columns, n = source.take(sizer.rows)
        sizer.update(columns, n)
        if n == 0:
            break
        conn.send(columns, n, partition, conn.sent)
        # Hand results on as they come, so neither they nor the rows waiting for them pile up.
        while not results.empty():
            received += yield from _yield_result(results.get_nowait())
    conn.comm.send(feed_codec.encode("end", {"records": conn.sent}))
    while received < conn.sent:
        try:
            item = results.get(timeout=spec.timeout)
        except queue.Empty:
            raise FeedFailed(f"node {conn.endpoint.label} returned {received} of {conn.sent} "
                             f"results of partition {partition} within {spec.timeout:.0f}s; "
                             "its map_fun must call batch_results for every batch") from None
        received += yield from _yield_result(item)
    conn.comm.close()


def _yield_result(item):
    """Yields one result chunk (raising a node's error instead); returns its row count."""
    if isinstance(item, Exception):
        raise item
    yield item
    return len(next(iter(item.values())))


def _read_results(conn: _Connection, results: queue.Queue) -> None:
    from rdma import comm
    try:
        while True:
            kind, meta, columns = feed_codec.decode(conn.comm.recv())
            if kind == "error":
                results.put(FeedFailed(f"node {conn.endpoint.label}: {meta.get('message')}"))
                return
            if kind == "results":
                results.put({k: v.copy() for k, v in columns.items()})
    except comm.CommError as exc:
        results.put(FeedFailed(f"node {conn.endpoint.label} closed the inference feed: {exc}"))
