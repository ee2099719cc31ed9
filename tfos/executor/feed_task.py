"""Feed tasks: one Spark task per partition streams its rows into TF nodes (executor side).

The feed jobs of ``tfos.driver.feed_jobs`` run the thin closures at the end of this module
(``train_rows``, ``train_arrow``, ``infer_rows``, ``infer_arrow``); tests call the functions
they wrap directly with a list. Training: the partition is read once, in chunks of columns;
the driver's ledger says which worker takes each chunk (or which pieces of it, to keep the
workers level: ``tfos.core.feed_plan``). Inference: the whole partition goes to one worker and
the results come back on the same connection, in row order. ``rdma.peer`` picks the transport:
shared memory for a node on this host, TCP otherwise.

A row that cannot be fed (``FeedDataError``) is reported to the driver's control service
before the task fails, so ``train()`` knows the data is at fault without reading Spark's error
text, and stops the feed job at once.
"""
from __future__ import annotations

import collections
import gc
import itertools
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from rdma import comm as rdma_comm
from rdma import peer
from tfos.core import feed_codec, pickled_rows
from tfos.core import feed_messages as fm
from tfos.core import messages as m
from tfos.core.config import DEFAULT_FEED_BUFFER_BYTES, feed_sizes
from tfos.core.errors import DriverUnreachable, FeedDataError, FeedFailed
from tfos.core.feed_rows import arrow_to_columns, rows_to_columns

logger = logging.getLogger(__name__)
_HEADER_SLACK = 64 << 10   # a message's header beyond its columns' bytes


@dataclass(frozen=True)
class NodeEndpoint:
    label: str                 # "worker:1@host", for messages
    uris: tuple[str, ...]      # as rdma.peer.advertise wrote them (shm:// and tcp://)
    node_id: int | None = None   # for asking the driver why the node is gone


@dataclass(frozen=True)
class FeedSpec:
    feed: str
    epoch: int
    workers: tuple[NodeEndpoint, ...]    # indexed by worker number in the plan
    secret: bytes
    training: bool = False               # False: inference
    chunk_rows: int = 1024               # at most this many rows per message
    timeout: float = 600.0
    arrow: bool = False                  # rows are Arrow record batches (DataFrame input)
    buffer_bytes: int = DEFAULT_FEED_BUFFER_BYTES   # each node's (ClusterConfig.feed_buffer_bytes)
    # The driver's control service, told about rows that cannot be fed (None: nobody).
    driver_address: str | None = None
    # The driver's lease endpoint (tfos.driver.lease_server): which workers take each chunk.
    lease_address: str | None = None
    # RDD rows come as PySpark's pickled batches, one bytes object each (feed_jobs.run).
    pickled: bool = False

    @property
    def sizes(self):
        return feed_sizes(self.buffer_bytes)


class _Connection:
    """One feed task's connection to one node."""

    def __init__(self, spec: FeedSpec, worker: int, mode: fm.FeedMode, partition: int):
        self.endpoint = spec.workers[worker]
        self._spec = spec
        self._mode = mode
        sizes = spec.sizes
        try:
            uri = peer.choose(self.endpoint.uris)
        except rdma_comm.CommError:
            raise FeedFailed(f"node {self.endpoint.label} has no feed address reachable from "
                             f"this host ({', '.join(self.endpoint.uris)})") from None
        # A training feeder receives only short answers, an inference feeder result chunks.
        reply_bytes = (sizes.inference_reply_bytes if mode == fm.FeedMode.INFERENCE
                       else sizes.train_reply_bytes)
        try:
            self.comm = rdma_comm.connect(
                uri, secret=spec.secret, timeout=spec.timeout, max_message=sizes.max_message,
                **peer.buffer_options(uri, reply_bytes, sizes.chunk_bytes + _HEADER_SLACK))
        except rdma_comm.CommError as exc:
            raise self.lost(f"cannot reach node {self.endpoint.label} at {uri}: {exc}") from None
        self.comm.send(feed_codec.encode(fm.FeederHello(
            spec.feed, spec.epoch, mode, None if mode == fm.FeedMode.INFERENCE else partition)))
        self.sent = 0
        self._buffer_bytes = spec.buffer_bytes
        self._message_bytes = sizes.chunk_bytes

    def send(self, columns: dict[str, np.ndarray], rows: int, partition: int,
             first_row: int, floor: int | None = None) -> None:
        """Sends ``rows`` rows, in messages of about ``chunk_bytes`` each."""
        nbytes = sum(c.nbytes for c in columns.values())
        step = max(1, self._message_bytes * rows // max(nbytes, 1))
        if step >= rows:
            return self._send(columns, rows, partition, first_row, floor, nbytes)
        for start in range(0, rows, step):
            n = min(step, rows - start)
            piece = {name: array[start:start + n] for name, array in columns.items()}
            self._send(piece, n, partition, first_row + start, floor,
                       sum(c.nbytes for c in piece.values()))

    def _send(self, columns: dict[str, np.ndarray], rows: int, partition: int, first_row: int,
              floor: int | None, nbytes: int) -> None:
        if nbytes > self._buffer_bytes:
            what = f"row {first_row}" if rows == 1 else f"rows {first_row}-{first_row + rows - 1}"
            raise FeedDataError(f"partition {partition}, {what}: {nbytes} bytes, more than the "
                                f"feed buffer of node {self.endpoint.label} "
                                f"({self._buffer_bytes} bytes): raise feed_buffer_bytes "
                                "(TFCluster.run(..., feed_buffer_bytes=...)) or feed smaller "
                                "records")
        try:
            self.comm.send(feed_codec.encode(fm.Batch(rows, first_row, floor), columns))
        except rdma_comm.CommError as exc:
            raise self.lost(self._why(f"stopped taking data ({exc})")) from None
        self.sent += rows

    def finish(self) -> None:
        """Sends the end marker and waits for the node to confirm it took everything."""
        try:
            self.comm.send(feed_codec.encode(fm.End(self.sent)))
            answer, _ = feed_codec.decode(self.comm.recv(), fm.TO_FEEDER, "node answer")
        except rdma_comm.CommError as exc:
            raise FeedFailed(self._why(f"closed the feed before confirming ({exc})")) from None
        if isinstance(answer, fm.Error):
            raise FeedFailed(self._why(answer.message or "refused the data"))
        self.comm.close()

    def _why(self, what: str) -> str:
        return f"node {self.endpoint.label} {what}"

    def lost(self, symptom: str) -> FeedFailed:
        """The error for a connection to the node that broke. In inference, which fails in the
        user's own Spark action, the driver is asked why the node is gone, so the error
        carries the node's own failure first, not this connection's symptom."""
        if self._mode == fm.FeedMode.INFERENCE:
            failure = node_fate(self._spec, self.endpoint)
            if failure:
                return FeedFailed(f"{failure}\n(the feed task then found: {symptom})")
        return FeedFailed(symptom)


class _ChunkSizer:
    """Rows read (and placed by one lease) at a time: ``chunk_rows`` at most, fewer when rows
    are large, so that they stay near the data plane's ``lease_bytes``
    (``tfos.core.config.feed_sizes``); ``_Connection.send`` cuts them into messages."""

    def __init__(self, spec: FeedSpec):
        self._max_rows = spec.chunk_rows
        self._max_bytes = spec.sizes.lease_bytes
        self.rows = 1  # the first message measures the row size

    def update(self, columns: dict[str, np.ndarray], rows: int) -> None:
        if rows:
            row_bytes = max(1, sum(c.nbytes for c in columns.values()) // rows)
            self.rows = max(1, min(self._max_rows, self._max_bytes // row_bytes))


def feed_training_partition(spec: FeedSpec, partition: int, rows: Iterable) -> int:
    """Sends this partition's rows for one epoch where the driver's ledger says; returns the
    number of rows sent (all of them: the partition is read once, to its end)."""
    source = _row_source(spec, partition, rows)
    connections: dict[int, _Connection] = {}
    leases = _Leases(spec, partition)
    try:
        sent = _send_chunks(spec, partition, source, connections, leases)
    except BaseException:
        for conn in connections.values():   # the node sees the end at once, not at GC
            conn.comm.close()
        raise
    finally:
        leases.close()
    return sent


def _send_chunks(spec: FeedSpec, partition: int, source, connections, leases) -> int:
    position = 0
    sizer = _ChunkSizer(spec)
    while True:
        raw, n = source.take_raw(sizer.rows)
        if n == 0:
            break
        pending = leases.request(position, n)     # asked while the rows become columns
        columns = source.columns(raw)
        sizer.update(columns, n)
        pieces, floor = pending()
        start = 0
        for worker, count in pieces:
            conn = connections.get(worker)
            if conn is None:
                conn = connections[worker] = _Connection(spec, worker, fm.FeedMode.TRAIN,
                                                         partition)
            piece = columns if count == n else {name: array[start:start + count]
                                                for name, array in columns.items()}
            conn.send(piece, count, partition, position + start, floor)
            start += count
        position += n
    for conn in connections.values():
        conn.finish()
    return position


class _Leases:
    """Where a feed task's chunks go: the driver's ledger of the epoch decides, asked over a
    connection of the task's own to the driver's lease endpoint (``tfos.driver.lease_server``);
    with a single worker everything goes to it without asking."""

    def __init__(self, spec: FeedSpec, partition: int):
        self._spec = spec
        self._partition = partition
        self._conn = None
        self._timeout = min(spec.timeout, 60.0)    # a question, not a transfer

    def request(self, offset: int, rows: int):
        """Asks where rows ``[offset, offset + rows)`` go, without waiting for the answer;
        calling the result waits and gives ``((worker, rows), ...)`` and the floor."""
        spec = self._spec
        if len(spec.workers) == 1:
            return lambda: (((0, rows),), None)
        where = f"partition {self._partition}, rows {offset}-{offset + rows - 1}"
        try:
            if self._conn is None:
                if spec.lease_address is None:
                    raise FeedFailed(f"{where}: feeding {len(spec.workers)} workers needs the "
                                     "driver's lease endpoint, and the feed spec names none")
                self._conn = rdma_comm.connect(spec.lease_address, spec.secret,
                                               timeout=self._timeout)
            self._conn.send(feed_codec.encode(fm.Lease(spec.feed, spec.epoch, self._partition,
                                                       offset, rows)))
        except rdma_comm.CommError as exc:
            raise FeedFailed(f"{where}: could not ask the driver at {spec.lease_address} which "
                             f"workers take them: {exc}") from None
        return lambda: self._answer(where, rows)

    def _answer(self, where: str, rows: int):
        spec = self._spec
        try:
            grant, _ = feed_codec.decode(self._conn.recv(timeout=self._timeout), (fm.Grant,),
                                         "grant")
        except rdma_comm.CommError as exc:
            raise FeedFailed(f"{where}: the driver did not say which workers take them: "
                             f"{exc}") from None
        if grant.error:
            raise FeedFailed(f"{where}: the driver gave no workers for them: {grant.error}")
        pieces = tuple(zip(grant.workers, grant.rows))
        if (sum(grant.rows) != rows or len(grant.workers) != len(grant.rows)
                or not all(0 <= w < len(spec.workers) and n > 0 for w, n in pieces)):
            raise FeedFailed(f"{where}: the driver's grant {pieces} does not cover them: the "
                             "driver and this executor run different tfos versions")
        return pieces, grant.floor

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class _RowSource:
    """Rows of a partition handed out as column chunks, in order."""

    def __init__(self, rows: Iterable, partition: int):
        self._rows = iter(rows)
        self._partition = partition
        self._index = 0

    def take(self, n: int):
        raw, count = self.take_raw(n)
        return self.columns(raw), count

    def take_raw(self, n: int):
        """The next ``n`` rows (fewer at the end), not yet columns, and their count."""
        chunk = list(itertools.islice(self._rows, n))
        return chunk, len(chunk)

    def columns(self, chunk) -> dict:
        columns = rows_to_columns(chunk, self._partition, self._index) if chunk else {}
        self._index += len(chunk)
        return columns


class _PickledRowSource(_RowSource):
    """Rows of a partition given as PySpark's pickled batches of rows (``pickled_batches``):
    unpickled here with their numpy arrays kept as bytes until a column joins them
    (``tfos.core.pickled_rows``). If the partition's first row holds arrays deeper than its
    fields, every row is unpickled as PySpark would."""

    def __init__(self, frames: Iterable, partition: int):
        super().__init__(self._rows(frames), partition)

    @staticmethod
    def _rows(frames: Iterable):
        keep = True
        for frame in frames:
            rows = pickled_rows.unpickle_batch(frame, keep)
            if keep and rows and not pickled_rows.shallow(rows[0]):
                keep = False
                rows = [pickled_rows.materialize(row) for row in rows]
            yield from rows


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

    def take(self, n: int):
        raw, count = self.take_raw(n)
        return self.columns(raw), count

    def take_raw(self, n: int):
        """The next ``n`` rows (fewer at the end of a batch), as an Arrow slice, and their
        count."""
        batch = self._batch()
        if batch is None:
            return None, 0
        piece = batch.slice(self._offset, min(n, batch.num_rows - self._offset))
        self._offset += piece.num_rows
        return piece, piece.num_rows

    def columns(self, piece) -> dict:
        if piece is None:
            return {}
        columns = arrow_to_columns(piece, self._partition, self._index)
        self._index += piece.num_rows
        return columns


def _row_source(spec: FeedSpec, partition: int, rows: Iterable):
    if spec.arrow:
        return _ArrowSource(rows, partition)
    return _PickledRowSource(rows, partition) if spec.pickled else _RowSource(rows, partition)


def infer_partition(spec: FeedSpec, partition: int, rows: Iterable) -> Iterator[dict]:
    """Feeds a whole partition to one worker; yields result column chunks in row order."""
    _freeze_heap()
    worker = partition % len(spec.workers)
    conn = _Connection(spec, worker, fm.FeedMode.INFERENCE, partition)
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
    conn.comm.send(feed_codec.encode(fm.End(conn.sent)))
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
    try:
        while True:
            answer, columns = feed_codec.decode(conn.comm.recv(), fm.TO_FEEDER, "node answer")
            if isinstance(answer, fm.Error):
                results.put(FeedFailed(f"node {conn.endpoint.label}: {answer.message}"))
                return
            if isinstance(answer, fm.Results):
                results.put({k: v.copy() for k, v in columns.items()})
    except rdma_comm.CommError as exc:
        results.put(conn.lost(f"node {conn.endpoint.label} closed the inference feed: {exc}"))


# -- what the feed jobs run (tfos.driver.feed_jobs) ---------------------------------------------
def report_data_error(spec: FeedSpec, partition: int, error: FeedDataError) -> None:
    """Tells the driver that this partition holds data that cannot be fed (best effort: the
    task fails with the error anyway)."""
    _ask_driver(spec, "feed_data_rejected",
                m.FeedDataRejected(spec.feed, spec.epoch, partition, str(error)))


def node_fate(spec: FeedSpec, endpoint: NodeEndpoint, wait: float = 8.0) -> str:
    """Why the driver says the node at ``endpoint`` is gone ("" when it does not know)."""
    if endpoint.node_id is None:
        return ""
    fate = _ask_driver(spec, "node_fate", m.NodeFateQuery(endpoint.node_id, wait),
                       timeout=wait + 5)
    return fate.failure if fate is not None else ""


def _ask_driver(spec: FeedSpec, method: str, message, timeout: float = 10.0):
    """One call of the driver's control service (None: no driver named, or unreachable; the
    feed task goes on to fail with its own error)."""
    if spec.driver_address is None:
        return None
    from tfos.executor.control_client import ControlClient
    try:
        with ControlClient(spec.driver_address, spec.secret, timeout=timeout) as client:
            return getattr(client, method)(message)
    except DriverUnreachable as exc:
        logger.warning("could not reach the driver (%s): %s", type(message).__name__, exc)
        return None


def _train(spec: FeedSpec, partition: int, rows: Iterable) -> int:
    _freeze_heap()
    try:
        return feed_training_partition(spec, partition, rows)
    except FeedDataError as exc:
        report_data_error(spec, partition, exc)
        raise


_heap_frozen = False


def _freeze_heap() -> None:
    """Puts the objects this Python worker holds now (its imported modules, mostly) out of the
    cyclic garbage collector's sight (``gc.freeze``), once per process.

    A reused PySpark worker runs a full ``gc.collect()`` after every task (``pyspark.daemon``),
    which walks every object alive: with numpy, pyarrow, PySpark and the transports imported,
    10-20 ms per task, about a sixth of a feeding worker's CPU on a one-epoch feed. Frozen
    objects are still freed by reference counting; only cycles among them would be kept, and
    at the start of a task the heap holds what the previous collection left alive.
    """
    global _heap_frozen
    if not _heap_frozen:    # (gc.get_freeze_count() walks the frozen objects: milliseconds)
        gc.freeze()
        _heap_frozen = True


def _partition_id() -> int:
    from pyspark import TaskContext
    return TaskContext.get().partitionId()


def train_rows(spec: FeedSpec, partition: int, rows):
    """``mapPartitionsWithIndex`` of an RDD's training feed: yields the rows sent."""
    yield _train(spec, partition, rows)


def train_arrow(spec: FeedSpec, batches):
    """``mapInArrow`` of a DataFrame's training feed: one batch with the rows sent."""
    import pyarrow as pa
    sent = _train(spec, _partition_id(), batches)
    yield pa.record_batch({"rows": pa.array([sent], pa.int64())})


def _ready_worker() -> int:
    """Imports what feed tasks use besides this module (the transports; Arrow, for DataFrames)
    and freezes the heap; returns this worker's process id."""
    import os

    import pyarrow  # noqa: F401
    rdma_comm.preload("shm", "tcp")
    _freeze_heap()
    return os.getpid()


def warm_up(_partition: int, _rows):
    """A task readying an executor's Python worker for feed tasks (``SparkFeedJobs.warm_up``)
    and yielding the worker's process id. Spark reuses the worker for the next task, which
    then starts feeding at once instead of spending the first train() on imports."""
    yield _ready_worker()


def warm_up_arrow(batches):
    """``mapInArrow`` of the warm-up for DataFrame feeds (``SparkFeedJobs.warm_up``): readies
    the Python worker Spark keeps for a DataFrame's functions as ``warm_up`` does an RDD's,
    and yields its process id."""
    import pyarrow as pa
    for _ in batches:
        pass
    yield pa.record_batch({"pid": pa.array([_ready_worker()], pa.int64())})


def infer_rows(spec: FeedSpec, partition: int, rows):
    """``mapPartitionsWithIndex`` of an RDD's inference: the results, one per row, in order."""
    for columns in infer_partition(spec, partition, rows):
        values = list(columns.values())
        if len(values) == 1 and list(columns) == ["0"]:
            yield from values[0].tolist()      # one conversion a chunk: scalars or lists
        else:
            yield from zip(*(v.tolist() for v in values))


def infer_arrow(spec: FeedSpec, schema, batches):
    """``mapInArrow`` of a DataFrame's inference: the input rows with the result columns of
    ``schema`` appended, as the results arrive (only rows awaiting results are held)."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_type
    waiting: collections.deque = collections.deque()   # input batches sent, not yet answered

    def remember(stream):
        for batch in stream:
            waiting.append(batch)
            yield batch

    for chunk in infer_partition(spec, _partition_id(), remember(batches)):
        out = pa.Table.from_batches(_take_rows(waiting, len(next(iter(chunk.values())))))
        for name, values in zip(schema.names[out.num_columns:], chunk.values()):
            out = out.append_column(name, _arrow_column(values,
                                                        to_arrow_type(schema[name].dataType)))
        yield from out.to_batches()


def _arrow_column(values: np.ndarray, arrow_type):
    """A result column as Arrow from its numpy buffer (no Python object per row): a value per
    row, or a vector per row as a list column; anything else through Python lists."""
    import pyarrow as pa
    if values.ndim == 1:
        column = pa.array(values)
    elif values.ndim == 2 and values.dtype.kind in "biuf":
        rows, width = values.shape
        offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
        column = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))
    else:
        column = pa.array(values.tolist())
    return column.cast(arrow_type)


def _take_rows(waiting, rows: int) -> list:
    """The first ``rows`` rows of the queued Arrow batches, removed from the queue."""
    taken = []
    while rows:
        batch = waiting[0]
        if batch.num_rows <= rows:
            taken.append(waiting.popleft())
            rows -= batch.num_rows
        else:
            taken.append(batch.slice(0, rows))
            waiting[0] = batch.slice(rows)
            rows = 0
    return taken
