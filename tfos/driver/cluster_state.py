"""What the driver knows about each node, and the waits built on it (driver side).

The control service feeds this object with the nodes' registrations, heartbeats, log lines
and status changes; ``TFCluster`` waits on it (every wait has a deadline). It holds no Spark
or gRPC object, so its logic is tested directly.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from tfos.core import messages as m
from tfos.core.config import ClusterConfig
from tfos.core.errors import (
    ClusterFailed,
    NodeFailed,
    ReservationTimeout,
    ShutdownTimeout,
)
from tfos.core.topology import Role
from tfos.driver.console import NodeOutput

logger = logging.getLogger(__name__)

# node_fate: the longest a query waits, and how many may wait at once (the control service
# has 8 threads, which the heartbeats need).
MAX_FATE_WAIT = 10.0
MAX_FATE_WAITERS = 3
# A wait for the nodes (to start, to finish) longer than this says what it waits for, and
# again every NOTE_EVERY seconds.
NOTE_AFTER = 10.0
NOTE_EVERY = 30.0


@dataclass
class NodeRecord:
    role: Role
    host: str = "?"
    tf_port: int = 0
    pid: int = 0
    transport: str = ""
    state: m.NodeState | None = None
    exit_code: int | None = None
    result: str | None = None    # map_fun's return value, as JSON text
    progress: m.Progress | None = None   # the node's latest (progress display)
    last_seen: float = 0.0
    tail: collections.deque = field(default_factory=collections.deque)

    @property
    def label(self) -> str:
        return f"{self.role.label}@{self.host}"

    @property
    def finished(self) -> bool:
        return self.state in (m.NodeState.EXITED, m.NodeState.SERVING)


class ClusterState:
    """Thread-safe record of every node; ``changed`` is notified on every state change."""

    def __init__(self, config: ClusterConfig, *, driver_versions: tuple[str, str],
                 log_stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[], None] | None = None, log_dir: str | None = None):
        self.config = config
        self._driver_versions = driver_versions
        # Every line to the node's log file in log_dir; all but TF's noise to log_stream.
        self.output = NodeOutput(log_stream, log_dir, config.show_tf_noise,
                                 notes=not config.quiet)
        self._clock = clock
        self._on_failure = on_failure
        self.changed = threading.Condition()
        self.on_feed_terminated: Callable[[int, str], None] | None = None
        self.on_feed_data_rejected: Callable[[m.FeedDataRejected], None] | None = None
        # At most this many node_fate queries wait at once (each holds a service thread).
        self._fate_waits = threading.BoundedSemaphore(MAX_FATE_WAITERS)
        # Restarts (config.max_restarts): a failure with restarts left only sets `restarting`;
        # the driver stops the nodes and calls begin_restart(). Waits see no failure meanwhile.
        self.restarts_left = config.max_restarts
        self.restart_count = 0
        self.restarting = False
        self.past_failures: list[tuple[NodeFailed, ...]] = []   # one entry per restart
        self._reset_attempt()

    def _reset_attempt(self) -> None:
        config = self.config
        self.nodes = {r.node_id: NodeRecord(r, tail=collections.deque(maxlen=config.log_tail_lines))
                      for r in config.roles}
        self.registered: set[int] = set()
        self.failures: list[NodeFailed] = []
        self.services: dict[str, str] = {}
        self.feed_uris: dict[int, list[str]] = {}   # node id -> its feed endpoint's addresses
        self.stop_requested = False
        self.show_stacks = False   # the stop order asks for the TF processes' stacks first
        self.job_ended = False
        self.lost_node = False   # a node task fell silent: it cannot hear a stop order

    def begin_restart(self) -> None:
        """The failed run's nodes are all gone: forget them and expect a new run's nodes."""
        with self.changed:
            self.past_failures.append(tuple(self.failures))
            self.restart_count += 1
            self._reset_attempt()
            self.restarting = False
            self.changed.notify_all()

    def give_up_restart(self, failure: NodeFailed) -> None:
        """The restart could not happen: the cluster fails with ``failure`` after all."""
        with self.changed:
            self.restarting = False
            self.restarts_left = 0
            self.failures.insert(0, failure)
            self.stop_requested = True
            self.changed.notify_all()

    # -- messages from node tasks -------------------------------------------------------
    def register(self, msg: m.Register) -> m.RegisterReply:
        with self.changed:
            node = self.nodes.get(msg.node_id)
            if node is None:
                return m.RegisterReply(False, f"node id {msg.node_id} is not part of this cluster")
            reason = self._registration_problem(node, msg)
            if reason:
                self._fail(NodeFailed(f"{node.role.label}@{msg.host}", msg.host, reason))
                return m.RegisterReply(False, reason)
            node.host, node.tf_port, node.pid = msg.host, msg.tf_port, msg.pid
            node.transport = msg.transport
            if msg.transport != "grpc":
                self.output.note(f"{node.label}: tensors go over {msg.transport}")
            self.registered.add(msg.node_id)
            node.state, node.last_seen = m.NodeState.STARTING, self._clock()
            self.changed.notify_all()
            return m.RegisterReply(True)

    def _registration_problem(self, node: NodeRecord, msg: m.Register) -> str:
        if msg.attempt > 0 or msg.node_id in self.registered:
            return ("Spark re-ran the node task (a barrier stage retry after a task or executor "
                    "was lost); a running cluster cannot take a new node in place of a lost one")
        py, tf = self._driver_versions
        if (msg.python_version, msg.tf_version) != (py, tf):
            return (f"executor runs Python {msg.python_version} / TensorFlow {msg.tf_version} but "
                    f"the driver runs Python {py} / TensorFlow {tf}: install the same versions "
                    "on every host, or point PYSPARK_PYTHON at the same environment")
        if self.stop_requested:
            return "the cluster is already stopping"
        return ""

    def heartbeat(self, msg: m.Heartbeat) -> m.HeartbeatReply:
        with self.changed:
            node = self.nodes.get(msg.node_id)
            if node is not None and msg.node_id in self.registered:
                node.last_seen = self._clock()
                if msg.progress is not None:
                    node.progress = msg.progress
                # Only a Status message ends a node: it carries the exit code.
                if node.state != msg.state and m.NodeState.EXITED not in (node.state, msg.state):
                    node.state = msg.state
                    self.changed.notify_all()
            if not self.stop_requested:
                return m.HeartbeatReply(m.Command.CONTINUE)
            return m.HeartbeatReply(m.Command.STOP_SHOWING_STACKS if self.show_stacks
                                    else m.Command.STOP)

    def log_lines(self, msg: m.LogLines) -> m.Ack:
        node = self.nodes.get(msg.node_id)
        if node is None:
            return m.Ack(False)
        with self.changed:
            node.tail.extend(msg.lines)
            node.last_seen = self._clock()
        self.output.write(node.label, f"{node.role.job_name}-{node.role.task_index}.log",
                          msg.lines)
        return m.Ack()

    def status(self, msg: m.NodeStatus) -> m.Ack:
        with self.changed:
            node = self.nodes.get(msg.node_id)
            if node is None or msg.node_id not in self.registered:
                return m.Ack(False)
            node.last_seen = self._clock()
            if node.state == m.NodeState.EXITED:
                return m.Ack()
            node.state = msg.state
            if msg.state == m.NodeState.EXITED:
                node.exit_code = msg.exit_code
                node.result = msg.result
                node.progress = msg.progress or node.progress
                # A reason without an order to stop: the node task stopped it (a stall).
                if (msg.exit_code != 0 or msg.reason) and not msg.stopped:
                    self._fail(NodeFailed(node.label, node.host,
                                          msg.reason or describe_exit(msg.exit_code),
                                          msg.exit_code, tuple(msg.log_tail or node.tail)))
            self.changed.notify_all()
            return m.Ack()

    def service_url(self, msg: m.ServiceUrl) -> m.Ack:
        with self.changed:
            if msg.name == "feed":
                try:
                    uris = json.loads(msg.url)
                except (ValueError, RecursionError):
                    uris = None
                if msg.node_id not in self.nodes or not isinstance(uris, list) \
                        or not all(isinstance(u, str) for u in uris):
                    return m.Ack(False)
                self.feed_uris[msg.node_id] = uris
            else:
                self.services[msg.name] = msg.url
            self.changed.notify_all()
        return m.Ack()

    def feed_terminated(self, msg: m.FeedTerminated) -> m.Ack:
        callback = self.on_feed_terminated
        if callback is not None and msg.node_id in self.nodes:
            callback(msg.node_id, msg.feed)
        return m.Ack()

    def feed_data_rejected(self, msg: m.FeedDataRejected) -> m.Ack:
        callback = self.on_feed_data_rejected
        if callback is not None:
            callback(msg)
        return m.Ack()

    def node_fate(self, msg: m.NodeFateQuery) -> m.NodeFate:
        """Why node ``msg.node_id`` is gone: waits (bounded) until it has exited or the cluster
        failed. Few queries wait at once, so they never hold up the heartbeats."""
        node = self.nodes.get(msg.node_id)
        if node is None:
            return m.NodeFate()
        waiting = self._fate_waits.acquire(blocking=False)
        wait = min(max(msg.wait, 0.0), MAX_FATE_WAIT) if waiting else 0.0
        try:
            with self.changed:
                self.changed.wait_for(
                    lambda: self.failures or node.state == m.NodeState.EXITED, wait)
                own = [f for f in self.failures if f.node == node.label]
                failure = (own or self.failures or [None])[0]
        finally:
            if waiting:
                self._fate_waits.release()
        return m.NodeFate(str(failure) if failure is not None else "")

    # -- driver-side events -------------------------------------------------------------
    def fail(self, failure: NodeFailed) -> None:
        with self.changed:
            self._fail(failure)

    def _fail(self, failure: NodeFailed) -> None:
        logger.error("%s", failure)
        self.failures.append(failure)
        if not self.stop_requested and self.restarts_left > 0:
            self.restarts_left -= 1
            self.restarting = True
            logger.warning("restarting the TF cluster (%d restart(s) left after this one)",
                           self.restarts_left)
        self.stop_requested = True
        self.changed.notify_all()
        if self._on_failure is not None:
            self._on_failure()

    def end_job(self, failure: NodeFailed | None) -> None:
        """The Spark node job ended (``failure`` when it failed rather than completed)."""
        with self.changed:
            self.job_ended = True
            if failure is not None and not self.stop_requested:
                self._fail(failure)
            self.changed.notify_all()

    def request_stop(self) -> None:
        with self.changed:
            self.stop_requested = True
            self.changed.notify_all()

    def check_liveness(self) -> None:
        """Declares lost every running node whose task has been silent too long."""
        with self.changed:
            now = self._clock()
            for node_id in sorted(self.registered):
                node = self.nodes[node_id]
                silent = now - node.last_seen
                if node.state != m.NodeState.EXITED and silent > self.config.heartbeat_timeout:
                    node.state = m.NodeState.EXITED
                    self.lost_node = True
                    self._fail(NodeFailed(
                        node.label, node.host,
                        f"its task sent nothing for {silent:.0f}s (executor lost, host "
                        "unreachable, or the driver's address is not reachable from it)",
                        None, tuple(node.tail)))

    # -- waits ----------------------------------------------------------------------------
    def wait_registered(self, timeout: float) -> None:
        """Returns once every node registered; raises on failure or at the deadline. A wait
        longer than ``NOTE_AFTER`` seconds says, on the stream, which nodes it waits for."""
        start = self._clock()
        deadline = start + timeout
        next_note = start + NOTE_AFTER
        with self.changed:
            while len(self.registered) < len(self.nodes):
                if self._clock() >= next_note:
                    missing = [n.role.label for i, n in sorted(self.nodes.items())
                               if i not in self.registered]
                    self.output.note(
                        f"waiting for {len(missing)} of {len(self.nodes)} nodes to start "
                        f"({', '.join(missing)}): {self._clock() - start:.0f} s so far, at "
                        f"most {timeout:.0f} s (reservation_timeout)")
                    next_note += NOTE_EVERY
                self._raise_on_failure("while starting")
                remaining = deadline - self._clock()
                if remaining <= 0 or self.job_ended:
                    missing = [self.nodes[i].role.label for i in sorted(self.nodes)
                               if i not in self.registered]
                    why = ("the Spark node job ended before they registered" if self.job_ended
                           else f"they did not register within reservation_timeout={timeout}s")
                    raise ReservationTimeout(
                        f"{len(missing)} of {len(self.nodes)} nodes never started "
                        f"({', '.join(missing)}): {why}. Check the executor logs; that the "
                        "executors can reach the driver (spark.driver.host, or TFCluster.run("
                        "driver_host=...)); that no other job holds the executor slots; or raise "
                        "reservation_timeout")
                self.changed.wait(min(remaining, max(next_note - self._clock(), 0.05)))

    def wait_finished(self, timeout: float | None) -> None:
        """Waits until every node has exited or is only serving; raises on failure/deadline.
        A wait longer than ``NOTE_AFTER`` seconds says which nodes are still running."""
        start = self._clock()
        deadline = None if timeout is None else start + timeout
        next_note = start + NOTE_AFTER
        with self.changed:
            while self.restarting or not all(n.finished for n in self.nodes.values()):
                self._raise_on_failure("while running")
                if self._clock() >= next_note:
                    running = [n.label for n in self.nodes.values() if not n.finished]
                    self.output.note(f"waiting for {', '.join(running)} to return from map_fun "
                                     f"({self._clock() - start:.0f} s so far)")
                    next_note += NOTE_EVERY
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    running = [n.label for n in self.nodes.values() if not n.finished]
                    # Where each one is stuck goes to its output as it is stopped.
                    self.show_stacks = True
                    raise ShutdownTimeout(
                        f"nodes {', '.join(running)} were still running after timeout={timeout}s;"
                        " they are being stopped, each printing the Python stacks of its TF "
                        "process first (in its output and log). Raise shutdown(timeout=...) if "
                        "training needs longer; otherwise those stacks show where it hangs")
                until_note = max(next_note - self._clock(), 0.05)
                self.changed.wait(until_note if remaining is None else min(remaining, until_note))
            self._raise_on_failure("while running")

    def _raise_on_failure(self, when: str) -> None:
        if self.failures and not self.restarting:
            first = self.failures[0]
            raise ClusterFailed(f"the TF cluster failed {when}: {first}", tuple(self.failures))


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "its process disappeared"
    if exit_code < 0:
        import signal
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"its TF process was killed by {name}"
    return f"its TF process exited with code {exit_code}"
