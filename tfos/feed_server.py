"""The TF node's feed endpoint: accepts feeders and the driver, fills the named feeds (TF node).

Started by ``tfos.node_main`` before ``map_fun`` in InputMode.SPARK, on the addresses the node
task reserved for it (``tcp://host:port`` for feeders on other hosts, ``shm://...`` for feeders
on this one). Every connection is authenticated by the comm layer with the cluster's secret.

A connection opens with a ``hello`` message saying who speaks:

- a feeder (a Spark feed task): ``hello {role: feeder, feed, epoch, mode}``, then ``batch``
  messages of columns, then ``end``. In inference mode the results of each batch's rows go back
  on the same connection as ``results`` messages, in order.
- the driver: ``hello {role: driver}``, then ``epoch {feed, epoch, per_worker}`` before each
  epoch, ``cut {feed, epoch}`` when an epoch's feed job failed (the epoch ends with what
  arrived), and ``end_of_data {feed, last_epoch}`` or ``end_all {feeds: {feed: last_epoch}}``
  at the end (``end_all`` also ends feeds it does not name: shutdown without any train()).

A batch the node cannot take (malformed, larger than the buffer) is answered with an ``error``
message that the feeder raises, so the Spark task fails with the node's reason.
"""
from __future__ import annotations

import logging
import sys
import threading
import traceback
from typing import Callable

from tfos import feed_codec
from tfos.errors import ProtocolError
from tfos.feed_queue import Chunk, FeedError, FeedQueue

logger = logging.getLogger(__name__)


def print_main_stack(headline: str) -> None:
    """Prints ``headline`` and where the main thread is now to stderr (the node's log)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    stack = "".join(traceback.format_stack(frame)) if frame is not None else "  (not running)\n"
    sys.stderr.write(f"{headline}\nmain thread (map_fun), most recent call last:\n{stack}")
    sys.stderr.flush()


def shm_ring_bytes(buffer_bytes: int) -> int:
    """The shared-memory ring of each same-host feeder connection: a quarter of the feed
    buffer, within [16 MiB, 64 MiB]. The node's feed memory is thus at most
    ``feed_buffer_bytes`` (queued chunks) plus one ring per concurrent same-host feeder (one
    per feed task slot); a message larger than the ring still goes through, inline on the
    ring's socket."""
    return min(64 << 20, max(16 << 20, buffer_bytes // 4))


class FeedServer:
    def __init__(self, uris: list[str], secret: bytes, buffer_bytes: int,
                 put_timeout: float | None = None, stall_timeout: float | None = None,
                 on_stall: Callable[[str], None] | None = None):
        from rdma import comm
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
        limit = feed_codec.max_message(buffer_bytes)
        self._listeners = [
            comm.listen(uri, secret=secret, max_message=limit,
                        **({"capacity": shm_ring_bytes(buffer_bytes)}
                           if uri.startswith("shm://") else {}))
            for uri in uris]
        self.addresses = [listener.address for listener in self._listeners]
        for listener in self._listeners:
            threading.Thread(target=self._accept, args=(listener,), daemon=True,
                             name="tfos-feed-accept").start()
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
    def _accept(self, listener) -> None:
        while not self._closed.is_set():
            try:
                conn = listener.accept()
            except self._comm.CommError as exc:
                if not self._closed.is_set():
                    logger.warning("feed endpoint %s refused a connection: %s",
                                   listener.address, exc)
                    if isinstance(exc, self._comm.CommClosed):
                        return
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="tfos-feed-conn").start()

    def _serve(self, conn) -> None:
        with conn:
            try:
                kind, meta, _ = feed_codec.decode(conn.recv())
                if kind != "hello":
                    raise ProtocolError(f"a feed connection must start with hello, not {kind!r}")
                if meta.get("role") == "driver":
                    self._serve_driver(conn)
                else:
                    self._serve_feeder(conn, meta)
            except self._comm.CommClosed:
                pass
            except (ProtocolError, FeedError) as exc:
                logger.error("feed connection from %s failed: %s", conn.peer_address, exc)
                self._send_error(conn, str(exc))
            except self._comm.CommError as exc:   # a malformed frame, a timeout
                logger.error("feed connection from %s broke: %s", conn.peer_address, exc)

    def _serve_driver(self, conn) -> None:
        while True:
            kind, meta, _ = feed_codec.decode(conn.recv())
            if kind == "epoch":
                self.queue(_text(meta, "feed")).announce_epoch(_count(meta, "epoch"),
                                                               _count(meta, "per_worker"))
            elif kind == "cut":
                self.queue(_text(meta, "feed")).cut_epoch(_count(meta, "epoch"))
            elif kind == "end_of_data":
                self.queue(_text(meta, "feed")).end_of_data(_count(meta, "last_epoch"))
            elif kind == "end_all":
                feeds = meta.get("feeds")
                if not isinstance(feeds, dict):
                    raise ProtocolError(f"end_all needs 'feeds' as an object, got {feeds!r:.80}")
                self.end_all({_text({"feed": name}, "feed"): _count(feeds, name)
                              for name in feeds})
            else:
                raise ProtocolError(f"unknown driver message {kind!r}")
            conn.send(feed_codec.encode("ok"))

    def _serve_feeder(self, conn, hello: dict) -> None:
        feed = _text(hello, "feed")
        queue = self.queue(feed)
        epoch = _count(hello, "epoch")
        inference = hello.get("mode") == "inference"
        partition = None if inference or "partition" not in hello else _count(hello, "partition")
        reply_lock = threading.Lock()

        def reply(columns):
            with reply_lock:
                conn.send(feed_codec.encode("results", {"rows": len(next(iter(columns.values())))},
                                            columns))

        while True:
            kind, meta, columns = feed_codec.decode(conn.recv())
            if kind == "end":
                break
            if kind != "batch":
                raise ProtocolError(f"unknown feeder message {kind!r}")
            rows = _count(meta, "rows")
            if not columns or any(c.ndim == 0 or len(c) != rows for c in columns.values()):
                raise ProtocolError(f"a batch of {rows} rows has columns of other lengths")
            self._check_shapes(feed, columns, partition, meta.get("offset"))
            if partition is not None:
                skip = self._already_taken(queue, epoch, partition, _count(meta, "offset"),
                                           rows)
                if skip == rows:
                    continue
                columns = {name: array[skip:] for name, array in columns.items()}
                rows -= skip
            # The message's memory is reused by the next recv: the queue keeps a copy.
            owned = {name: array.copy() for name, array in columns.items()}
            chunk = Chunk(owned, rows, epoch, sum(a.nbytes for a in owned.values()),
                          reply if inference else None)
            queue.put(chunk, self._put_timeout)
        if not inference:
            conn.send(feed_codec.encode("done"))
        else:
            # Keep the connection open until every result went back; the feeder closes it.
            try:
                conn.recv()
            except self._comm.CommClosed:
                pass

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
            conn.send(feed_codec.encode("error", {"message": message}))
        except self._comm.CommError:
            pass


def _text(meta: dict, key: str) -> str:
    value = meta.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"feed message needs {key!r} as a string, got {value!r:.80}")
    return value


def _count(meta: dict, key: str) -> int:
    value = meta.get(key)
    if type(value) is not int or value < 0:
        raise ProtocolError(f"feed message needs {key!r} as a non-negative integer, got "
                            f"{value!r:.80}")
    return value
