"""Feeding Spark data into a running cluster: ``train`` and ``inference`` (driver side).

What to feed is decided here; the Spark jobs that do the feeding are run by
``tfos.driver.feed_jobs`` and their tasks are ``tfos.executor.feed_task``'s.

``train(data, num_epochs)``: for each epoch, announces it to each worker's feed endpoint and
runs one Spark job whose tasks read their partition once and stream it into the workers
(``tfos.executor.feed_task``), asking this driver's ledger of the epoch which workers take
each chunk (``tfos.core.feed_plan``: the workers stay level as the data flows, with no counting
pass). When the job is done, every worker is told the epoch's length, the smallest count any
received. The data never passes through the driver; only the small markers and grants do.
When the nodes stop consuming (``terminate()``, a failure, the end of ``map_fun``) the feed job
is cancelled at once.

``inference(data)``: a lazy RDD (or DataFrame) whose tasks each feed one partition to one
worker and yield the results in row order.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from rdma import comm as rdma_comm
from rdma import peer
from tfos.core import feed_codec, topology
from tfos.core import feed_messages as fm
from tfos.core import messages as m
from tfos.core.config import ClusterConfig
from tfos.core.errors import ClusterFailed, ConfigError, FeedJobFailed
from tfos.core.feed_plan import EpochLedger
from tfos.driver import spark_errors
from tfos.driver.cluster_state import ClusterState
from tfos.driver.feed_jobs import is_dataframe
from tfos.driver.lease_server import LeaseServer
from tfos.executor.feed_task import FeedSpec, NodeEndpoint

# A fed epoch that took at least this many seconds is reported on the driver's stream.
NOTE_EPOCHS_OVER = 1.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochFed:
    """One epoch ``train()`` fed: ``per_worker`` records to every worker, ``dropped`` left out
    to keep them equal (at most ``tfos.core.feed_plan.BALANCE_ROWS`` per worker: fewer than
    there are workers)."""
    feed: str
    epoch: int
    per_worker: int
    dropped: int
    seconds: float


class Feeder:
    """The driver's side of the data plane for one cluster.

    Built from what it uses: the cluster's ``config`` and ``state`` (where the nodes' feed
    endpoints and failures are), its ``secret``, the address of its control service (where feed
    tasks report bad data) and ``jobs``, which runs the feed jobs (``SparkFeedJobs``).
    """

    def __init__(self, config: ClusterConfig, state: ClusterState, secret: bytes,
                 driver_address: str, jobs):
        self.config = config
        self.state = state
        self.jobs = jobs
        self._secret = secret
        self._driver_address = driver_address
        self._epochs: dict[str, int] = {}      # next epoch number per feed
        self._markers: dict[int, rdma_comm.Comm] = {}  # node id -> driver connection to its feed
        self._lock = threading.Lock()
        # One marker exchange (send, then its reply) at a time per driver: train() may be
        # called from several threads (a streaming query's foreachBatch and the notebook).
        self._marker_lock = threading.Lock()
        # (feed, epoch) -> the ledger of the epoch being fed: which worker takes which rows.
        self._ledgers: dict[tuple[str, int], EpochLedger] = {}
        # (feed, epoch) -> the first bad-data report of that epoch's feed job.
        self._rejected: dict[tuple[str, int], m.FeedDataRejected] = {}
        self.terminated = threading.Event()
        self._fed_any = False   # an epoch was announced to every worker: they were fed
        # terminate() ends the feeding at once; so does a failure (TFCluster stops the nodes
        # and calls cancel). A node that returned normally may have read all it was owed while
        # others still read theirs: its feeders find it gone, and then the feed stops
        # (_run_job). A feed task that finds bad data stops its job at once.
        state.on_feed_terminated = lambda node_id, feed: self.cancel()
        state.on_feed_data_rejected = self._data_rejected
        self._leases: LeaseServer | None = None    # started by the first train()

    # -- endpoints ----------------------------------------------------------------------------
    def workers(self) -> list[int]:
        """Node ids that receive data: the chief and the workers, in role order."""
        return [r.node_id for r in self.config.roles if topology.is_trainer(r)]

    def endpoints(self, timeout: float) -> tuple[NodeEndpoint, ...]:
        state = self.state
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
            return tuple(NodeEndpoint(state.nodes[i].label, tuple(state.feed_uris[i]), i)
                         for i in ids)

    def _marker_conn(self, node_id: int, endpoint: NodeEndpoint) -> rdma_comm.Comm:
        conn = self._markers.get(node_id)
        if conn is None:
            # Over the network even on the node's host: a shared-memory ring would cost the
            # node megabytes for a few markers.
            conn = peer.connect(endpoint.uris, self._secret, timeout=30, same_host=False)
            conn.send(feed_codec.encode(fm.DriverHello()))
            self._markers[node_id] = conn
        return conn

    def _mark(self, node_id: int, endpoint: NodeEndpoint, marker) -> bool:
        """Sends one marker; False when the node is gone because the nodes stopped consuming."""
        return self._exchange(node_id, endpoint, marker) is not None

    def _exchange(self, node_id: int, endpoint: NodeEndpoint, marker):
        """Sends one marker and returns the node's answer; None when the node is gone because
        the nodes stopped consuming."""
        what = type(marker).__name__
        try:
            with self._marker_lock:
                conn = self._marker_conn(node_id, endpoint)
                conn.send(feed_codec.encode(marker))
                reply, _ = feed_codec.decode(conn.recv(timeout=60), fm.TO_DRIVER, "node answer")
        except rdma_comm.CommError as exc:
            if self._stopped_consuming():
                return None
            raise FeedJobFailed(f"cannot send the {what} marker to node {endpoint.label}: "
                                f"{exc}") from None
        if isinstance(reply, fm.Error):
            raise FeedJobFailed(f"node {endpoint.label} refused the {what} marker: "
                                f"{reply.message}")
        return reply

    # -- train --------------------------------------------------------------------------------
    def train(self, data, num_epochs: int, feed_timeout: float, qname: str) -> list[EpochFed]:
        """Feeds ``num_epochs`` epochs of ``data``; returns what each fed epoch gave every
        worker (fewer epochs when the nodes stopped consuming first)."""
        if not isinstance(num_epochs, int) or num_epochs < 1:
            raise ConfigError(f"num_epochs={num_epochs!r}: pass the number of epochs to feed, 1 "
                              "or more (TensorFlowOnSpark read 0 as 10; tfos feeds exactly what "
                              "is asked)")
        endpoints = self.endpoints(feed_timeout)
        arrow = is_dataframe(data)
        ids = self.workers()
        if self._leases is None and len(ids) > 1:
            host = self._driver_address.rsplit(":", 1)[0].strip("[]")
            self._leases = LeaseServer(host, self._secret, self._lease,
                                       bind_all=self.config.bind_all_interfaces)
        fed: list[EpochFed] = []
        for _ in range(num_epochs):
            self._raise_if_failed()
            if self.terminated.is_set() or self.state.stop_requested:
                logger.info("feed %r: the nodes stopped consuming; not feeding more epochs",
                            qname)
                break
            with self._lock:
                epoch = self._epochs.get(qname, 0)
                self._epochs[qname] = epoch + 1
            try:
                outcome = self._feed_epoch(data, qname, epoch, ids, endpoints, feed_timeout,
                                           arrow)
            except KeyboardInterrupt:
                # Ctrl-C (the feed job is cancelled by then): each worker's epoch ends with what
                # it received, so the nodes wait for nothing and the next train() goes on.
                logger.warning("interrupted: feed %r epoch %d ends with what each worker "
                               "received; the TF cluster keeps running", qname, epoch)
                self._cut(qname, epoch, ids, endpoints)
                raise
            if outcome is None:
                break
            fed.append(outcome)
            if outcome.per_worker == 0:
                raise ConfigError(
                    f"train() got {outcome.dropped} rows for {len(ids)} workers: every worker "
                    "must get the same number of rows, so nothing was fed. Check the data (a "
                    "filter that removed everything?); in a streaming foreachBatch, skip empty "
                    "micro-batches (if batch_df.isEmpty(): return)")
        self._raise_if_failed()
        return fed

    def _feed_epoch(self, data, qname: str, epoch: int, ids: list[int], endpoints,
                    feed_timeout: float, arrow: bool) -> EpochFed | None:
        """Announces, feeds and ends one epoch; None when the nodes stopped consuming first."""
        marked = [self._mark(node_id, endpoint, fm.EpochStart(qname, epoch))
                  for node_id, endpoint in zip(ids, endpoints)]
        if not all(marked):
            if not self._fed_any:
                gone = [self.state.nodes[i].label for i in ids if self._exited(i)]
                raise FeedJobFailed(
                    f"node {', '.join(gone) or '?'} returned from map_fun before train() "
                    "fed it any data, so its share would be lost: in InputMode.SPARK, "
                    "map_fun must read its feed (ctx.get_data_feed(...)) until should_stop()")
            logger.info("feed %r: a fed node returned from map_fun; not feeding epoch %d",
                        qname, epoch)
            return None
        spec = self._spec(qname, epoch, endpoints, feed_timeout, arrow, training=True)
        self._fed_any = True
        started = time.monotonic()
        with self._lock:
            self._ledgers[(qname, epoch)] = EpochLedger(len(ids))
        try:
            self._run_job(data, spec, f"feed {qname!r} epoch {epoch}")
        except FeedJobFailed:
            self._cut(qname, epoch, ids, endpoints)
            raise
        finally:
            with self._lock:
                self._ledgers.pop((qname, epoch), None)
        if self.terminated.is_set() or self.state.stop_requested:
            self._cut(qname, epoch, ids, endpoints)   # whoever still reads gets what came
            return None
        outcome = self._end_epoch(qname, epoch, ids, endpoints, time.monotonic() - started)
        if outcome is not None:
            self._report(outcome, len(ids))
        return outcome

    def _end_epoch(self, qname: str, epoch: int, ids: list[int], endpoints,
                   seconds: float) -> EpochFed | None:
        """Every worker keeps the smallest count any received (the rows above it are dropped);
        None when the nodes stopped consuming meanwhile."""
        counts = []
        for node_id, endpoint in zip(ids, endpoints):
            count = self._exchange(node_id, endpoint, fm.EpochQuery(qname, epoch))
            if count is None:
                return None
            counts.append(count)
        per_worker = min(c.received for c in counts)
        over = [(endpoint.label, c.taken) for endpoint, c in zip(endpoints, counts)
                if c.taken > per_worker]
        if over:
            label, taken = over[0]
            self._cut(qname, epoch, ids, endpoints)
            raise FeedJobFailed(
                f"feed {qname!r} epoch {epoch}: node {label} already read {taken} records, but "
                f"another worker received only {per_worker}: a retried feed task sent fewer "
                "rows than its first attempt, so the data changed between reads. Feed "
                "deterministic data (cache it, or fix the seed of any sampling)")
        for node_id, endpoint in zip(ids, endpoints):
            if not self._mark(node_id, endpoint, fm.EpochEnd(qname, epoch, per_worker)):
                return None
        dropped = sum(c.received for c in counts) - per_worker * len(ids)
        return EpochFed(qname, epoch, per_worker, dropped, seconds)

    def _report(self, fed: EpochFed, workers: int) -> None:
        """The log always, the driver's stream when the epoch took long: what every worker got
        and what was left out to keep them equal."""
        logger.info("feed %r epoch %d: %d records per worker, %d left out", fed.feed,
                    fed.epoch, fed.per_worker, fed.dropped)
        if fed.seconds >= NOTE_EPOCHS_OVER:   # long work says how far it has come
            left_out = f", {fed.dropped:,} left out to keep them equal" if fed.dropped else ""
            self.state.output.note(
                f"fed {fed.feed!r} epoch {fed.epoch}: {fed.per_worker:,} records to each of "
                f"{workers} workers{left_out} in {fed.seconds:.1f} s "
                f"({fed.per_worker * workers / fed.seconds:,.0f} records/s)")

    def _lease(self, msg: fm.Lease) -> fm.Grant:
        """A feed task's question: which workers take its next rows."""
        with self._lock:
            ledger = self._ledgers.get((msg.feed, msg.epoch))
        if ledger is None:
            return fm.Grant(error=f"feed {msg.feed!r} epoch {msg.epoch} is not being fed now "
                                  "(it ended, failed or was cancelled)")
        try:
            grant = ledger.grant(msg.partition, msg.offset, msg.rows)
        except ConfigError as exc:
            return fm.Grant(error=str(exc))
        return fm.Grant([w for w, _ in grant.pieces], [n for _, n in grant.pieces],
                        grant.floor)

    def _cut(self, qname: str, epoch: int, ids: list[int], endpoints) -> None:
        """After a failed feed job: each worker's epoch ends with what it received, so the
        nodes are not left waiting for records that will never come."""
        for node_id, endpoint in zip(ids, endpoints):
            try:
                self._mark(node_id, endpoint, fm.EpochCut(qname, epoch))
            except (FeedJobFailed, ClusterFailed) as exc:
                logger.info("could not cut epoch %d of feed %r on %s: %s", epoch, qname,
                            endpoint.label, exc)

    def _spec(self, qname: str, epoch: int, endpoints, feed_timeout: float, arrow: bool,
              training: bool) -> FeedSpec:
        return FeedSpec(qname, epoch, endpoints, self._secret, training, timeout=feed_timeout,
                        arrow=arrow, buffer_bytes=self.config.feed_buffer_bytes,
                        driver_address=self._driver_address,
                        lease_address=self._leases.address if self._leases else None)

    def _raise_if_failed(self) -> None:
        failures = self.state.failures
        if failures:
            raise ClusterFailed(f"the TF cluster failed: {failures[0]}", tuple(failures))

    def _run_job(self, data, spec: FeedSpec, what: str) -> None:
        error = self.jobs.run(data, spec, what, self.terminated)
        with self._lock:
            rejected = self._rejected.pop((spec.feed, spec.epoch), None)
        if error is not None and not (self.terminated.is_set() or self.state.stop_requested):
            # Bad data is the data's fault, not a sign of nodes going away: no need to wait
            # and see whether they stopped consuming.
            if rejected is not None:
                raise FeedJobFailed(f"{what} failed: FeedDataError: {rejected.message}")
            if not self._stopped_consuming():
                raise FeedJobFailed(f"{what} failed: {spark_errors.summarize(error)}")
        self._raise_if_failed()

    def _data_rejected(self, report: m.FeedDataRejected) -> None:
        """A feed task found rows it cannot feed: its job is stopped at once."""
        logger.error("feed %r epoch %d: partition %d cannot be fed: %s", report.feed,
                     report.epoch, report.partition, report.message)
        with self._lock:
            self._rejected.setdefault((report.feed, report.epoch), report)
        self.jobs.cancel()

    def _stopped_consuming(self) -> bool:
        """After the feed broke (a feeder or a marker found its node gone): True when the nodes
        stopped consuming, and feeding ends quietly; raises when a node failed.

        A node that died makes its connections fail before its exit reaches the driver, and
        nodes often end at nearly the same moment (one returns, another fails): the exits get
        a grace to arrive, so the error names the failed node, not the symptom.
        """
        state, config = self.state, self.config
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
                        self.jobs.job_group)
        self.jobs.cancel()

    def _exited(self, node_id: int) -> bool:
        return self.state.nodes[node_id].state == m.NodeState.EXITED

    def _a_worker_exited(self) -> bool:
        return any(self._exited(i) for i in self.workers())

    def end_of_data(self) -> None:
        """Tells every worker that each feed is over: those it received after their last
        epoch, any other at once (a map_fun still waiting for data returns)."""
        endpoints = self.endpoints(30)
        last_epochs = {qname: next_epoch - 1 for qname, next_epoch in self._epochs.items()}
        for node_id, endpoint in zip(self.workers(), endpoints):
            try:
                self._mark(node_id, endpoint, fm.EndAll(last_epochs))
            except (FeedJobFailed, ClusterFailed) as exc:  # an exited node cannot be told
                logger.info("could not send end of data to %s: %s", endpoint.label, exc)

    def close(self) -> None:
        for conn in self._markers.values():
            conn.close()
        self._markers.clear()
        if self._leases is not None:
            self._leases.close()
            self._leases = None

    # -- inference -----------------------------------------------------------------------------
    def inference(self, data, feed_timeout: float, qname: str, output_schema=None):
        endpoints = self.endpoints(feed_timeout)
        with self._lock:
            self._epochs.setdefault(qname, 1)   # one unannounced epoch, closed by end_of_data
        if is_dataframe(data) and output_schema is None:
            raise ConfigError("inference on a DataFrame needs output_schema (the result "
                              "columns, e.g. 'prediction float'): they are added next to "
                              "the input columns")
        spec = self._spec(qname, 0, endpoints, feed_timeout, is_dataframe(data), training=False)
        return self.jobs.inference(data, spec, output_schema)
