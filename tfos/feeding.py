"""Feeding Spark data into a running cluster: ``train`` and ``inference`` (driver side).

``train(data, num_epochs)``: counts the rows of every partition once, then for each epoch
plans the split (``tfos.feed_plan``: the same number of records for every worker), announces
the epoch to each worker's feed endpoint, and runs one Spark job whose tasks stream their
partition's ranges into the workers (``tfos.feed_task``). The data never passes through the
driver; only the small epoch markers do. When the nodes stop consuming (``terminate()``, a
failure, the end of ``map_fun``) the feed job is cancelled at once.

``inference(data)``: a lazy RDD (or DataFrame) whose tasks each feed one partition to one
worker and yield the results in row order.
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING

from tfos import feed_codec, topology
from tfos import messages as m
from tfos.errors import ClusterFailed, ConfigError, TfosError
from tfos.feed_plan import plan_epoch
from tfos.feed_task import FeedSpec, NodeEndpoint, feed_training_partition, infer_partition

if TYPE_CHECKING:
    from tfos.cluster import TFCluster

logger = logging.getLogger(__name__)


class FeedJobFailed(TfosError):
    """A Spark feed job failed for a reason other than the cluster stopping."""


class Feeder:
    """The driver's side of the data plane for one cluster."""

    def __init__(self, cluster: "TFCluster", secret: bytes):
        self.cluster = cluster
        self._secret = secret
        self._epochs: dict[str, int] = {}      # next epoch number per feed
        self._markers: dict[int, object] = {}  # node id -> driver connection to its feed
        self._lock = threading.Lock()
        # One marker exchange (send, then its reply) at a time per driver: train() may be
        # called from several threads (a streaming query's foreachBatch and the notebook).
        self._marker_lock = threading.Lock()
        self.job_group = f"{cluster.job_group}-feed"
        # Row counts of cached datasets already fed, by object identity (the object is kept
        # with them, so its id cannot be reused): a second train() on them skips the count.
        self._counts: dict[int, tuple[object, list[int]]] = {}
        self.terminated = threading.Event()
        self._fed_any = False   # an epoch was announced to every worker: they were fed
        self._job_running = threading.Event()

    # -- endpoints ----------------------------------------------------------------------------
    def workers(self) -> list[int]:
        """Node ids that receive data: the chief and the workers, in role order."""
        return [r.node_id for r in self.cluster.config.roles if topology.is_trainer(r)]

    def endpoints(self, timeout: float) -> tuple[NodeEndpoint, ...]:
        state = self.cluster.state
        ids = self.workers()
        with state.changed:
            ready = state.changed.wait_for(
                lambda: state.failures or all(i in state.feed_uris for i in ids), timeout)
            if state.failures:
                raise ClusterFailed(f"the TF cluster failed: {state.failures[0]}",
                                    tuple(state.failures))
            if not ready:
                missing = [state.nodes[i].label for i in ids if i not in state.feed_uris]
                raise FeedJobFailed(f"nodes {', '.join(missing)} did not open their feed within "
                                    f"{timeout:.0f}s; check their output above")
            return tuple(NodeEndpoint(state.nodes[i].label, tuple(state.feed_uris[i]))
                         for i in ids)

    def _marker_conn(self, node_id: int, endpoint: NodeEndpoint):
        from rdma import comm
        conn = self._markers.get(node_id)
        if conn is None:
            tcp = [u for u in endpoint.uris if u.startswith("tcp://")]
            conn = comm.connect(tcp[0], secret=self._secret, timeout=30)
            conn.send(feed_codec.encode("hello", {"role": "driver"}))
            self._markers[node_id] = conn
        return conn

    def _mark(self, node_id: int, endpoint: NodeEndpoint, kind: str, meta: dict) -> bool:
        """Sends one marker; False when the node is gone because the nodes stopped consuming."""
        from rdma import comm
        try:
            with self._marker_lock:
                conn = self._marker_conn(node_id, endpoint)
                conn.send(feed_codec.encode(kind, meta))
                reply, reply_meta, _ = feed_codec.decode(conn.recv(timeout=60))
        except comm.CommError as exc:
            if self._stopped_consuming():
                return False
            raise FeedJobFailed(f"cannot send the {kind} marker to node {endpoint.label}: "
                                f"{exc}") from None
        if reply != "ok":
            raise FeedJobFailed(f"node {endpoint.label} refused the {kind} marker: {reply_meta}")
        return True

    # -- train --------------------------------------------------------------------------------
    def train(self, data, num_epochs: int, feed_timeout: float, qname: str) -> None:
        if num_epochs < 1:
            raise ConfigError(f"num_epochs={num_epochs}: must be at least 1")
        endpoints = self.endpoints(feed_timeout)
        arrow = _is_dataframe(data)
        counts = self._partition_counts(data)
        ids = self.workers()
        if sum(counts) < len(ids):
            raise ConfigError(
                f"train() got {sum(counts)} rows in {len(counts)} partitions for {len(ids)} "
                "workers: every worker must get the same number of rows, so nothing would be "
                "fed. Check the data (a filter that removed everything?); in a streaming "
                "foreachBatch, skip empty micro-batches (if batch_df.isEmpty(): return)")
        for _ in range(num_epochs):
            self._raise_if_failed()
            if self.terminated.is_set() or self.cluster.state.stop_requested:
                logger.info("feed %r: the nodes stopped consuming; not feeding more epochs",
                            qname)
                break
            with self._lock:
                epoch = self._epochs.get(qname, 0)
                self._epochs[qname] = epoch + 1
            plan = plan_epoch(counts, len(ids), epoch)
            marked = [self._mark(node_id, endpoint, "epoch",
                                 {"feed": qname, "epoch": epoch, "per_worker": plan.per_worker})
                      for node_id, endpoint in zip(ids, endpoints)]
            if not all(marked):
                if not self._fed_any:
                    gone = [self.cluster.state.nodes[i].label for i in ids if self._exited(i)]
                    raise FeedJobFailed(
                        f"node {', '.join(gone) or '?'} returned from map_fun before train() "
                        "fed it any data, so its share would be lost: in InputMode.SPARK, "
                        "map_fun must read its feed (ctx.get_data_feed(...)) until should_stop()")
                logger.info("feed %r: a fed node returned from map_fun; not feeding epoch %d",
                            qname, epoch)
                break
            logger.info("feed %r epoch %d: %d records per worker, %d left out", qname, epoch,
                        plan.per_worker, plan.dropped)
            spec = FeedSpec(qname, epoch, endpoints, self._secret, plan, timeout=feed_timeout,
                            arrow=arrow, buffer_bytes=self.cluster.config.feed_buffer_bytes)
            self._fed_any = True
            try:
                self._run_job(data, spec, f"feed {qname!r} epoch {epoch}")
            except FeedJobFailed:
                self._cut(qname, epoch, ids, endpoints)
                raise
        self._raise_if_failed()

    def _cut(self, qname: str, epoch: int, ids: list[int], endpoints) -> None:
        """After a failed feed job: each worker's epoch ends with what it received, so the
        nodes are not left waiting for records that will never come."""
        for node_id, endpoint in zip(ids, endpoints):
            try:
                self._mark(node_id, endpoint, "cut", {"feed": qname, "epoch": epoch})
            except (FeedJobFailed, ClusterFailed) as exc:
                logger.info("could not cut epoch %d of feed %r on %s: %s", epoch, qname,
                            endpoint.label, exc)

    def _partition_counts(self, data) -> list[int]:
        known = self._counts.get(id(data))
        if known is not None and known[0] is data:
            return known[1]
        counts = partition_counts(data)
        if data.is_cached:
            self._counts[id(data)] = (data, counts)
        return counts

    def _raise_if_failed(self) -> None:
        failures = self.cluster.state.failures
        if failures:
            raise ClusterFailed(f"the TF cluster failed: {failures[0]}", tuple(failures))

    def _run_job(self, data, spec: FeedSpec, what: str) -> None:
        sc = self.cluster.sc
        error: list[BaseException] = []

        def job():
            try:
                sc.setJobGroup(self.job_group, f"tfos {what}", interruptOnCancel=True)
                if _is_dataframe(data):
                    data.mapInArrow(functools.partial(_train_arrow, spec), "rows long").collect()
                else:
                    data.mapPartitionsWithIndex(functools.partial(_train_rows, spec)).collect()
            except BaseException as exc:  # reported to the caller below
                error.append(exc)

        thread = threading.Thread(target=job, name="tfos-feed-job", daemon=True)
        self._job_running.set()
        try:
            thread.start()
            if self.terminated.is_set():   # stopped while starting: cancel what just began
                self.cluster.sc.cancelJobGroup(self.job_group)
            thread.join()
        finally:
            self._job_running.clear()
        if error and not (self.terminated.is_set() or self.cluster.state.stop_requested):
            from tfos.cluster import summarize_spark_error
            summary = summarize_spark_error(error[0])
            # Bad data is the data's fault, not a sign of nodes going away: no need to wait
            # and see whether they stopped consuming.
            if "FeedDataError: " in summary or not self._stopped_consuming():
                raise FeedJobFailed(f"{what} failed: {summary}")
        self._raise_if_failed()

    def _stopped_consuming(self) -> bool:
        """After the feed broke (a feeder or a marker found its node gone): True when the nodes
        stopped consuming, and feeding ends quietly; raises when a node failed.

        A node that died makes its connections fail before its exit reaches the driver, and
        nodes often end at nearly the same moment (one returns, another fails): the exits get
        a grace to arrive, so the error names the failed node, not the symptom.
        """
        state, config = self.cluster.state, self.cluster.config
        stopped = lambda: state.failures or self.terminated.is_set()  # noqa: E731
        with state.changed:
            state.changed.wait_for(stopped, config.kill_grace + 2 * config.heartbeat_interval)
            state.changed.wait_for(lambda: stopped() or self._a_worker_exited(),
                                   config.heartbeat_timeout)
        self._raise_if_failed()
        if self._a_worker_exited():   # it returned without reading all it was sent
            self.terminated.set()
        return self.terminated.is_set()

    def cancel(self) -> None:
        """Stops feeding for good: the running feed job is cancelled, later ones not started."""
        if not self.terminated.is_set():
            self.terminated.set()
            logger.info("the nodes stopped consuming: cancelling feed job group %s",
                        self.job_group)
        if self._job_running.is_set():
            self.cluster.sc.cancelJobGroup(self.job_group)

    def _exited(self, node_id: int) -> bool:
        return self.cluster.state.nodes[node_id].state == m.NodeState.EXITED

    def _a_worker_exited(self) -> bool:
        return any(self._exited(i) for i in self.workers())

    def end_of_data(self) -> None:
        """Tells every worker that each feed is over: those it received after their last
        epoch, any other at once (a map_fun still waiting for data returns)."""
        endpoints = self.endpoints(30)
        last_epochs = {qname: next_epoch - 1 for qname, next_epoch in self._epochs.items()}
        for node_id, endpoint in zip(self.workers(), endpoints):
            try:
                self._mark(node_id, endpoint, "end_all", {"feeds": last_epochs})
            except (FeedJobFailed, ClusterFailed) as exc:  # an exited node cannot be told
                logger.info("could not send end of data to %s: %s", endpoint.label, exc)

    def close(self) -> None:
        for conn in self._markers.values():
            conn.close()
        self._markers.clear()

    # -- inference -----------------------------------------------------------------------------
    def inference(self, data, feed_timeout: float, qname: str, output_schema=None):
        endpoints = self.endpoints(feed_timeout)
        with self._lock:
            self._epochs.setdefault(qname, 1)   # one unannounced epoch, closed by end_of_data
        spec = FeedSpec(qname, 0, endpoints, self._secret, None, timeout=feed_timeout,
                        arrow=_is_dataframe(data),
                        buffer_bytes=self.cluster.config.feed_buffer_bytes)
        if _is_dataframe(data):
            if output_schema is None:
                raise ConfigError("inference on a DataFrame needs output_schema (the result "
                                  "columns, e.g. 'prediction float'): they are added next to "
                                  "the input columns")
            from pyspark.sql.types import StructType
            out = output_schema if isinstance(output_schema, StructType) else \
                StructType.fromDDL(output_schema)
            schema = StructType(list(data.schema.fields) + list(out.fields))
            return data.mapInArrow(functools.partial(_infer_arrow, spec, schema), schema)
        return data.mapPartitionsWithIndex(functools.partial(_infer_rows, spec))


def _is_dataframe(data) -> bool:
    return hasattr(data, "mapInArrow")


def partition_counts(data) -> list[int]:
    if _is_dataframe(data):
        # Counted in the JVM: sending the columns to Python costs as much as feeding them.
        from pyspark.sql import functions as F
        counts = [0] * data.rdd.getNumPartitions()
        for row in data.groupBy(F.spark_partition_id().alias("p")).count().collect():
            counts[row["p"]] = row["count"]
        return counts
    return data.mapPartitions(lambda it: [sum(1 for _ in it)]).collect()


def _partition_id() -> int:
    from pyspark import TaskContext
    return TaskContext.get().partitionId()


def _train_rows(spec: FeedSpec, partition: int, rows):
    yield feed_training_partition(spec, partition, rows)


def _train_arrow(spec: FeedSpec, batches):
    import pyarrow as pa
    sent = feed_training_partition(spec, _partition_id(), batches)
    yield pa.record_batch({"rows": pa.array([sent], pa.int64())})


def _infer_rows(spec: FeedSpec, partition: int, rows):
    for columns in infer_partition(spec, partition, rows):
        values = list(columns.values())
        if len(values) == 1 and list(columns) == ["0"]:
            yield from (v.item() if v.ndim == 0 else v.tolist() for v in values[0])
        else:
            yield from zip(*(v.tolist() for v in values))


def _infer_arrow(spec: FeedSpec, schema, batches):
    """Feeds Arrow batches; yields the input rows with the result columns appended, as the
    results arrive (only rows still awaiting their results are held)."""
    import collections

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
            column = pa.array(values.tolist()).cast(to_arrow_type(schema[name].dataType))
            out = out.append_column(name, column)
        yield from out.to_batches()


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
