"""The TF node's feed endpoint: accepts feeders and the driver, fills the named feeds (TF node).

Started by ``tfos.node.main`` before ``map_fun`` in InputMode.SPARK, on the addresses the node
task reserved for it (``tcp://host:port`` for feeders on other hosts, ``shm://...`` for feeders
on this one). Every connection is authenticated by the comm layer with the cluster's secret.

A connection opens with a hello saying who speaks, then carries the typed messages of
``tfos.core.feed_messages`` (feeders: batches of columns and an end; the driver: epoch markers
and the end of the data), each handled through a dispatch table by its type.

A message the node cannot take (malformed, larger than the buffer, rows unlike the feed's
earlier rows) is answered with ``Error``, which the feeder raises, so the Spark task fails
with the node's reason.
"""
from __future__ import annotations

import logging
import sys
import threading
import traceback
from typing import Callable

from tfos.core import feed_codec
from tfos.core import feed_messages as fm
from tfos.core import messages as m
from tfos.core.config import feed_sizes
from tfos.core.errors import FeedError, ProtocolError
from tfos.node.chunk_memory import ChunkMemory
from tfos.node.feed_queue import Chunk, FeedQueue

logger = logging.getLogger(__name__)


def print_main_stack(headline: str) -> None:
    """Prints ``headline`` and where the main thread is now to stderr (the node's log)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    stack = "".join(traceback.format_stack(frame)) if frame is not None else "  (not running)\n"
    sys.stderr.write(f"{headline}\nmain thread (map_fun), most recent call last:\n{stack}")
    sys.stderr.flush()


class FeedServer:
    def __init__(self, uris: list[str], secret: bytes, buffer_bytes: int,
                 put_timeout: float | None = None, stall_timeout: float | None = None,
                 on_stall: Callable[[str], None] | None = None):
        from rdma import comm, peer
        self._comm = comm
        self._secret = secret
        self._buffer_bytes = buffer_bytes
        self._put_timeout = put_timeout
        self._queues: dict[str, FeedQueue] = {}
        # (feed, epoch) -> partition -> rows of it taken in so far: a Spark retry of a feed
        # task sends its partition again from the start, and only the rows not yet taken go
        # in (each record exactly once). Epochs the node has read past are forgotten.
        self._taken: dict[tuple[str, int], dict[int, int]] = {}
        self._shapes: dict[str, dict[str, tuple]] = {}   # feed -> per-row shape of each column
        self._ended: dict[str, int] | None = None        # set by the driver's end_all
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Where the chunks the queues keep are copied: as much as the queues hold, and a quarter
        # more for the chunks on their way in and those map_fun still reads from (also the
        # blocks DataFeed.dataset joins from them).
        self.memory = ChunkMemory(buffer_bytes + buffer_bytes // 4)
        sizes = feed_sizes(buffer_bytes)
        # Each same-host feeder's ring counts against the node's feed memory: see feed_sizes.
        self._listeners = [peer.listen(uri, secret, receive_bytes=sizes.shm_ring_bytes,
                                       max_message=sizes.max_message)
                           for uri in uris]
        self.addresses = [listener.address for listener in self._listeners]
        for listener in self._listeners:
            threading.Thread(target=peer.serve_each,
                             args=(listener, self._serve, self._closed, "tfos-feed-conn",
                                   logger),
                             daemon=True, name="tfos-feed-accept").start()
        if stall_timeout is not None and on_stall is not None:
            threading.Thread(target=self._watch_stalls, args=(stall_timeout, on_stall),
                             daemon=True, name="tfos-feed-stall").start()

    def queue(self, name: str) -> FeedQueue:
        with self._lock:
            if name not in self._queues:
                q = self._queues[name] = FeedQueue(name, self._buffer_bytes)
                if self._ended is not None:   # opened after the driver ended every feed
                    q.end_of_data(self._ended.get(name, -1))
            return self._queues[name]

    def end_all(self, last_epochs: dict[str, int]) -> None:
        """The driver fed its last data: each named feed ends after its last epoch, and any
        other feed (never fed, or opened later) ends at once."""
        with self._lock:
            self._ended = dict(last_epochs)
            for q in self._queues.values():
                q.end_of_data(self._ended.get(q.name, -1))
        self.memory.release()   # no more data comes: what is buffered frees with its chunks

    def progress(self) -> dict[str, m.FeedProgress]:
        """Each feed's records received so far and the epoch its reader is in."""
        with self._lock:
            queues = list(self._queues.values())
        return {q.name: m.FeedProgress(q.ever_received, q.current_epoch) for q in queues}

    def unread_feeds(self) -> list[tuple[str, int]]:
        """``(feed, records)`` of each feed that received records none of which were read."""
        with self._lock:
            return [(q.name, q.ever_received) for q in self._queues.values() if q.unread]

    def close(self) -> None:
        self._closed.set()
        for listener in self._listeners:
            listener.close()
        with self._lock:
            for q in self._queues.values():
                q.terminate()
        self.memory.release()

    # -- stall detection ------------------------------------------------------------------------
    def _watch_stalls(self, timeout: float, on_stall: Callable[[str], None]) -> None:
        """Reports the first feed whose data waits untaken for ``timeout`` seconds, with the
        stack of the main thread (where map_fun runs) printed for the error report."""
        while not self._closed.wait(min(1.0, timeout / 4)):
            with self._lock:
                queues = list(self._queues.values())
            for q in queues:
                waited, nbytes = q.stalled_for()
                if waited >= timeout:
                    reason = (f"stalled: it took nothing from feed {q.name!r} for {waited:.0f}s "
                              f"while {nbytes} bytes waited (feed_stall_timeout={timeout:g}s); "
                              "its map_fun is stuck where the stack above shows")
                    print_main_stack(f"tfos: {reason}")
                    on_stall(reason)
                    return

    # -- connections --------------------------------------------------------------------------
    def _serve(self, conn) -> None:
        with conn:
            try:
                hello, _ = self._recv(conn, fm.ALL, "feed message")
                if isinstance(hello, fm.DriverHello):
                    self._serve_driver(conn)
                elif isinstance(hello, fm.FeederHello):
                    self._serve_feeder(conn, hello)
                else:
                    raise ProtocolError(f"a feed connection must start with hello (FeederHello "
                                        f"or DriverHello), not {type(hello).__name__}")
            except self._comm.CommClosed:
                pass
            except (ProtocolError, FeedError) as exc:
                logger.error("feed connection from %s failed: %s", conn.peer_address, exc)
                self._send_error(conn, str(exc))
            except self._comm.CommError as exc:   # a malformed frame, a timeout
                logger.error("feed connection from %s broke: %s", conn.peer_address, exc)

    @staticmethod
    def _recv(conn, expected, what: str):
        return feed_codec.decode(conn.recv(), expected, what)

    # -- the driver's markers -------------------------------------------------------------------
    def _serve_driver(self, conn) -> None:
        handlers = {fm.EpochStart: self._on_epoch_start, fm.EpochQuery: self._on_epoch_query,
                    fm.EpochEnd: self._on_epoch_end, fm.EpochCut: self._on_epoch_cut,
                    fm.EndAll: self._on_end_all}
        while True:
            marker, _ = self._recv(conn, fm.FROM_DRIVER, "driver message")
            conn.send(feed_codec.encode(handlers[type(marker)](marker) or fm.Ok()))

    def _on_epoch_start(self, marker: fm.EpochStart) -> None:
        self.queue(marker.feed).announce_epoch(marker.epoch, marker.per_worker)

    def _on_epoch_query(self, marker: fm.EpochQuery) -> fm.EpochCount:
        return fm.EpochCount(*self.queue(marker.feed).epoch_counts(marker.epoch))

    def _on_epoch_end(self, marker: fm.EpochEnd) -> None:
        self.queue(marker.feed).end_epoch(marker.epoch, marker.per_worker)

    def _on_epoch_cut(self, marker: fm.EpochCut) -> None:
        self.queue(marker.feed).cut_epoch(marker.epoch)

    def _on_end_all(self, marker: fm.EndAll) -> None:
        self.end_all(marker.feeds)

    # -- feeders --------------------------------------------------------------------------------
    def _serve_feeder(self, conn, hello: fm.FeederHello) -> None:
        queue = self.queue(hello.feed)
        inference = hello.mode == fm.FeedMode.INFERENCE
        partition = None if inference else hello.partition
        reply_lock = threading.Lock()

        def reply(columns):
            with reply_lock:
                rows = len(next(iter(columns.values())))
                conn.send(feed_codec.encode(fm.Results(rows), columns))

        while True:
            message, columns = self._recv(conn, fm.FROM_FEEDER, "feeder message")
            if isinstance(message, fm.End):
                break
            chunk = self._chunk(queue, hello, partition, message, columns,
                                reply if inference else None)
            if chunk is not None:
                queue.put(chunk, self._put_timeout)
        if not inference:
            conn.send(feed_codec.encode(fm.Done()))
        else:
            # Keep the connection open until every result went back; the feeder closes it.
            try:
                conn.recv()
            except self._comm.CommClosed:
                pass

    def _chunk(self, queue: FeedQueue, hello: fm.FeederHello, partition: int | None,
               batch: fm.Batch, columns: dict, reply) -> Chunk | None:
        """The rows of ``batch`` this node has not taken yet, as a chunk it owns (None: all of
        them were taken before, by an earlier attempt of the same Spark task)."""
        rows = batch.rows
        if not columns or any(c.ndim == 0 or len(c) != rows for c in columns.values()):
            raise ProtocolError(f"a batch of {rows} rows has columns of other lengths")
        self._check_shapes(hello.feed, columns, partition, batch.offset)
        if partition is not None:
            skip = self._already_taken(queue, hello.epoch, partition, batch.offset, rows)
            if skip == rows:
                return None
            columns = {name: array[skip:] for name, array in columns.items()}
            rows -= skip
        # The message's memory is reused by the next recv: the queue keeps a copy.
        owned = {name: self.memory.copy(array) for name, array in columns.items()}
        return Chunk(owned, rows, hello.epoch, sum(a.nbytes for a in owned.values()), reply,
                     floor=batch.floor)

    def _check_shapes(self, feed: str, columns: dict, partition: int | None, offset) -> None:
        """Every row of a feed has the same columns and per-row shapes (a chunk is uniform, so
        its first row is the one that differs)."""
        shapes = {name: array.shape[1:] for name, array in columns.items()}
        with self._lock:
            first = self._shapes.setdefault(feed, shapes)
        if shapes != first:
            where = (f"partition {partition}, row {offset}" if partition is not None
                     else "a fed row")
            odd = next((n for n in shapes if first.get(n) != shapes[n]), None)
            what = (f"column {odd!r} has shape {shapes[odd]} per row" if odd is not None
                    else f"columns {sorted(shapes)}")
            raise FeedError(f"feed {feed!r}, {where}: {what}, but the feed's earlier rows have "
                            f"{first}; every row must have the same columns and shapes")

    def _already_taken(self, queue: FeedQueue, epoch: int, partition: int, offset: int,
                       rows: int) -> int:
        """How many of the rows ``[offset, offset + rows)`` of a partition are in already."""
        with self._lock:
            partitions = self._taken.get((queue.name, epoch))
            if partitions is None:
                current = queue.current_epoch
                for key in [k for k in self._taken if k[0] == queue.name and k[1] < current]:
                    del self._taken[key]
                partitions = self._taken[(queue.name, epoch)] = {}
            taken = partitions.get(partition, 0)
            partitions[partition] = max(taken, offset + rows)
        return min(rows, max(0, taken - offset))

    def _send_error(self, conn, message: str) -> None:
        try:
            conn.send(feed_codec.encode(fm.Error(message)))
        except self._comm.CommError:
            pass
