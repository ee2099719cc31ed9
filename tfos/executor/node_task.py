"""The node task: one barrier task per TF node, supervising that node (executor side).

Called by the node stage's Spark closure (``node_partition``) or, in tests, directly with a
``Barrier`` of their own. Phases:

1. reserve the TF port on the executor's address and hold it until the node ends;
2. ``allGather`` every node's endpoint, derive this node's role, cluster spec and TF_CONFIG;
3. register with the driver's control service (which checks versions and retries);
4. start the TF process (``python -m tfos.node.main``) with a clean environment and TF_CONFIG,
   and its launch record, secret and map_fun on its stdin (``tfos.core.launch``), and
   TensorBoard beside it on the primary node when asked;
5. supervise: forward output lines, heartbeat (the reply may order a stop), relay the status
   events of the TF process (serving, its feed's addresses, a terminated feed, a stall);
6. report the exit code with the tail of the output, then stop the process group.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from tfos.core import devices, launch, topology
from tfos.core import messages as m
from tfos.core.config import ClusterConfig, InputMode
from tfos.core.errors import ConfigError, DriverUnreachable, ProtocolError
from tfos.core.runtime import python_version, tensorflow_version
from tfos.executor import process
from tfos.executor.control_client import ControlClient
from tfos.executor.transport import Transport, choose_transport

logger = logging.getLogger(__name__)

# Variables of the Spark Python worker that must not leak into the TF process.
_DROPPED_ENV_PREFIXES = ("PYSPARK_", "SPARK_AUTH_SOCKET", "PYTHON_WORKER_FACTORY")
_DROPPED_ENV = {"TF_CONFIG", "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED", "PYTHONSTARTUP"}
_LOG_BATCH_LINES = 256
# Output lines are cut to this many characters, and a batch of them stays under a quarter of
# the control plane's message limit, so neither a batch nor the exit report's tail is refused.
MAX_LINE_CHARS = 8192
_LOG_BATCH_CHARS = m.MAX_MESSAGE_BYTES // 4
# How long the verdict waits for the status pipe to end once the TF process has exited.
STATUS_DRAIN_SECS = 5.0


@dataclass(frozen=True)
class NodeStageSpec:
    """Everything a node task needs, shipped in the Spark closure (plain, picklable data)."""

    config: ClusterConfig
    driver_address: str
    secret: bytes
    payload: bytes  # pickled (map_fun, tf_args); only the TF process unpickles it
    default_fs: str
    restart: int = 0  # how many times the cluster was restarted before this run


class Barrier(Protocol):
    node_id: int
    attempt: int
    host: str
    gpus: list[str] | None   # the task's GPU addresses from Spark (None: it schedules none)

    def all_gather(self, message: str) -> list[str]: ...


class SparkBarrier:
    """The ``Barrier`` of a real Spark barrier task."""

    def __init__(self):
        from pyspark import BarrierTaskContext
        self._ctx = BarrierTaskContext.get()
        self.node_id = self._ctx.partitionId()
        self.attempt = self._ctx.attemptNumber()
        self.host = self._ctx.getTaskInfos()[self.node_id].address.rsplit(":", 1)[0]
        self.gpus = _gpu_addresses(self._ctx)

    def all_gather(self, message: str) -> list[str]:
        return self._ctx.allGather(message)


class SparkTask:
    """The ``Barrier`` of a plain Spark task (independent nodes without a barrier stage): no
    peers to gather, and the executor's own name for its host."""

    def __init__(self):
        from pyspark import TaskContext
        ctx = TaskContext.get()
        self.node_id = ctx.partitionId()
        self.attempt = ctx.attemptNumber()
        self.host = os.environ.get("SPARK_LOCAL_IP") or socket.gethostname()
        self.gpus = _gpu_addresses(ctx)

    def all_gather(self, message: str) -> list[str]:
        return [message]


def _gpu_addresses(task_context) -> list[str] | None:
    """The GPUs Spark's resource scheduling gave this task (None: it schedules none)."""
    gpu = task_context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else None


def node_partition(spec: NodeStageSpec, _rows):
    """The node stage's ``mapPartitions`` function: runs one node, yields its exit code."""
    with _sigint_ignored():
        yield run_node(spec, SparkBarrier() if spec.config.barrier else SparkTask())


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C at the driver's terminal reaches every process of a local Spark application (one
    process group), and PySpark's workers turn it into KeyboardInterrupt: the node task ignores
    it while it runs its node. The driver decides what an interrupt stops (tfos.driver
    .interrupts); the TF process runs in a session of its own and never sees it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_node(spec: NodeStageSpec, barrier: Barrier) -> int:
    """Runs this task's node to the end; returns the TF process's exit code (-1: not started)."""
    with ControlClient(spec.driver_address, spec.secret) as client, \
            process.reserved_port(barrier.host) as tf_port:
        role = spec.config.roles[barrier.node_id]
        cluster_spec = {}
        if not spec.config.independent:   # a TF cluster: every node's endpoint, by node id
            gathered = barrier.all_gather(json.dumps([barrier.node_id,
                                                      f"{barrier.host}:{tf_port}"]))
            endpoints = [endpoint for _, endpoint in sorted(json.loads(g) for g in gathered)]
            cluster_spec = topology.cluster_spec(spec.config.roles, endpoints)
        tensors = choose_transport(spec.config.rdma, barrier.host)
        reply = client.register(m.Register(
            node_id=barrier.node_id, attempt=barrier.attempt, host=barrier.host, tf_port=tf_port,
            pid=os.getpid(), python_version=python_version(), tf_version=tensorflow_version(),
            transport=tensors.description))
        if not reply.accepted:
            logger.error("driver refused node %s: %s", role.label, reply.reason)
            return -1
        try:
            if tensors.problem:
                raise ConfigError(tensors.problem)
            gpus = devices.node_gpus(role, barrier.gpus, spec.config.num_gpus,
                                     spec.config.cpu_roles)
        except ConfigError as exc:   # the node cannot start: the cluster fails, saying why
            client.status(m.NodeStatus(role.node_id, m.NodeState.EXITED, exit_code=1,
                                       reason=str(exc)))
            return -1
        supervisor = NodeSupervisor(spec, client, role, barrier.host, cluster_spec,
                                    tf_port=tf_port, gpus=gpus, transport=tensors)
        return supervisor.run()


class NodeSupervisor:
    """Starts the TF process of one node and watches it until it ends."""

    def __init__(self, spec: NodeStageSpec, client: ControlClient, role: topology.Role,
                 host: str, cluster_spec: dict[str, list[str]], tf_port: int = 0,
                 gpus: list[str] | None = None,
                 transport: Transport = Transport("grpc", "grpc")):
        self.spec = spec
        self.transport = transport
        self.tf_port = tf_port
        self.gpus = gpus
        self.config = spec.config
        self.client = client
        self.role = role
        self.host = host
        self.cluster_spec = cluster_spec
        self.tail: collections.deque[str] = collections.deque(maxlen=self.config.log_tail_lines)
        self.state = m.NodeState.STARTING
        self.stop_ordered = threading.Event()
        self.finished = threading.Event()
        self._lines: queue.Queue[str | threading.Event | None] = queue.Queue(maxsize=10_000)
        self.dropped_lines = 0
        self.failure_reason = ""   # set when the supervisor stops a stalled TF process
        self.result: str | None = None   # map_fun's return value, as JSON text
        self.progress: m.Progress | None = None   # the TF process's latest, for the driver

    def run(self) -> int:
        forwarder = self._thread(self._forward_output)
        try:
            return self._run_processes()
        finally:
            self._lines.put(None)
            forwarder.join(self.config.heartbeat_timeout)

    def _run_processes(self) -> int:
        read_status, write_status = os.pipe()
        with tempfile.TemporaryDirectory(prefix="tfos-node-") as scratch:
            log_dir = self._log_dir(scratch)
            record = self.launch_record(write_status, log_dir, scratch)
            try:
                child = process.ChildProcess(
                    [sys.executable, "-m", "tfos.node.main"],
                    env=self.environment(record), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_status,),
                    kill_grace=self.config.kill_grace)
            finally:
                os.close(write_status)
            with child, self._tensorboard(log_dir):
                return self._supervise(child, read_status, record)

    def _supervise(self, child: process.ChildProcess, read_status: int,
                   record: launch.LaunchRecord) -> int:
        pump = self._thread(self._pump_output, child.popen.stdout)
        status = self._thread(self._read_status, read_status, child)
        heartbeat = self._thread(self._heartbeat, child)
        try:
            child.popen.stdin.write(launch.encode(record, self.spec.secret, self.spec.payload))
            child.popen.stdin.close()
        except BrokenPipeError:
            pass  # the process died at start; its exit code and output tell why
        self.state = m.NodeState.RUNNING
        self._report(m.NodeStatus(self.role.node_id, m.NodeState.RUNNING))
        exit_code = child.popen.wait()
        pump.join()           # the output is read to its end,
        self._flush_output()  # and has reached the driver before the verdict does.
        # The status pipe ends with the process (bounded: a child of its own may hold it).
        status.join(STATUS_DRAIN_SECS)
        self.state = m.NodeState.EXITED
        stopped = self.stop_ordered.is_set() and not self.failure_reason
        reason = "stopped by the driver" if stopped else self.failure_reason
        self._report_exit(m.NodeStatus(self.role.node_id, m.NodeState.EXITED, exit_code,
                                       reason, stopped, list(self.tail), self.result,
                                       self.progress))
        if self._runs_tensorboard:
            # Keep TensorBoard up until the driver shuts the cluster down (or is lost).
            self.stop_ordered.wait()
        self.finished.set()
        heartbeat.join()
        return exit_code

    @staticmethod
    def _thread(target, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=f"tfos-{target.__name__}",
                                  daemon=True)
        thread.start()
        return thread

    def launch_record(self, status_fd: int, log_dir: str | None,
                      scratch: str) -> launch.LaunchRecord:
        """What the TF process is told about itself (see ``tfos.core.launch``)."""
        return launch.LaunchRecord(
            node_id=self.role.node_id, job_name=self.role.job_name,
            task_index=self.role.task_index, num_workers=topology.num_trainers(self.config.roles),
            cluster_spec=self.cluster_spec, host=self.host, default_fs=self.spec.default_fs,
            working_dir=os.getcwd(), log_dir=log_dir, restart=self.spec.restart,
            primary=self._is_primary,
            tf_port=self.tf_port, hold_port=not self.config.release_port, gpus=self.gpus,
            parent_pid=os.getpid(), status_fd=status_fd, feed=self._feed_endpoint(scratch),
            transport=self.transport.name)

    def environment(self, record: launch.LaunchRecord) -> dict[str, str]:
        """The TF process's environment: this worker's, less Spark's own variables, plus what
        TensorFlow reads at import (TF_CONFIG, the devices) and the user's ``env``."""
        env = {k: v for k, v in os.environ.items()
               if k not in _DROPPED_ENV and not k.startswith(_DROPPED_ENV_PREFIXES)}
        # The Spark worker's sys.path holds pyspark, py4j and --py-files: the node needs them.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["PYTHONUNBUFFERED"] = "1"
        if not self.config.independent:   # a single-node instance has no cluster to join
            env["TF_CONFIG"] = topology.tf_config(self.cluster_spec, self.role)
        if record.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in record.gpus)
        if self.config.legacy_keras:
            env["TF_USE_LEGACY_KERAS"] = "1"
        env.update(self.transport.nccl_env)   # only with rdma: NCCL over the RDMA port
        env.update(self.config.env)
        return env

    def _feed_endpoint(self, scratch: str) -> launch.FeedEndpoint | None:
        """Where the TF process opens its feed endpoint (InputMode.SPARK, trainers only)."""
        if self.config.input_mode != InputMode.SPARK or not topology.is_trainer(self.role):
            return None
        return launch.FeedEndpoint(
            host=self.host, bind_all=self.config.bind_all_interfaces,
            socket_path=os.path.join(scratch, "feed.sock"),
            buffer_bytes=self.config.feed_buffer_bytes,
            stall_timeout=self.config.feed_stall_timeout)

    def _log_dir(self, scratch: str) -> str | None:
        if self.config.log_dir:
            return self.config.log_dir
        if self._runs_tensorboard:
            return os.path.join(scratch, "tensorboard")
        return None

    @property
    def _is_primary(self) -> bool:
        return topology.primary_node(self.config.roles) == self.role

    @property
    def _runs_tensorboard(self) -> bool:
        return self.config.tensorboard and self._is_primary

    def _tensorboard(self, log_dir: str | None):
        from tfos.executor import tensorboard
        if not self._runs_tensorboard:
            return tensorboard.nothing()
        return tensorboard.serve(self.host, log_dir, self.config.kill_grace,
                                 on_ready=self._announce_tensorboard, on_output=self._output,
                                 bind_all=self.config.bind_all_interfaces)

    def _announce_tensorboard(self, url: str) -> None:
        self._call(self.client.service_url, m.ServiceUrl(self.role.node_id, "tensorboard", url))

    # -- threads --------------------------------------------------------------------------
    def _output(self, line: str) -> None:
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f" [... {len(line) - MAX_LINE_CHARS} more characters]"
        self.tail.append(line)
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            # The driver is not keeping up (or unreachable): drop the line rather than stall
            # the TF process on a full pipe; the tail still holds it for error reports.
            self.dropped_lines += 1

    def _pump_output(self, stream) -> None:
        for raw in stream:
            self._output(raw.decode("utf-8", "replace").rstrip("\n"))

    def _forward_output(self) -> None:
        """Sends output lines to the driver in bounded batches until the None sentinel."""
        batch: list[str] = []
        size = 0
        while True:
            item = self._lines.get()
            if isinstance(item, str):
                batch.append(item)
                size += len(item)
            full = len(batch) >= _LOG_BATCH_LINES or size >= _LOG_BATCH_CHARS
            if batch and (full or not isinstance(item, str) or self._lines.empty()):
                self._call(self.client.logs, m.LogLines(self.role.node_id, batch))
                for _ in batch:
                    self._lines.task_done()
                batch, size = [], 0
            if isinstance(item, threading.Event):
                item.set()   # a flush marker: every line before it has been sent
            if not isinstance(item, str):
                self._lines.task_done()
            if item is None:
                return

    def _flush_output(self) -> None:
        """Waits until every line queued so far has reached the driver (bounded)."""
        flushed = threading.Event()
        self._lines.put(flushed)
        flushed.wait(self.config.heartbeat_timeout)

    def _read_status(self, fd: int, child: process.ChildProcess | None = None) -> None:
        """Relays what the TF process announces on its status pipe, one event per line."""
        handlers = {
            launch.Serving: lambda event: self._serving(),
            launch.FeedOpened: lambda event: self._call(self.client.service_url, m.ServiceUrl(
                self.role.node_id, "feed", json.dumps(event.addresses))),
            launch.FeedStopped: lambda event: self._call(self.client.feed_terminated,
                                                         m.FeedTerminated(self.role.node_id,
                                                                          event.feed)),
            launch.Stalled: lambda event: self._stalled(event.reason, child),
            launch.Returned: lambda event: setattr(self, "result", event.value),
            m.Progress: lambda event: setattr(self, "progress", event),
        }
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                try:
                    event = launch.decode_event(line)
                except ProtocolError as exc:   # our own child: another tfos version?
                    logger.error("node %s: unreadable status event: %s", self.role.label, exc)
                    continue
                handlers[type(event)](event)

    def _serving(self) -> None:
        self.state = m.NodeState.SERVING
        self._report(m.NodeStatus(self.role.node_id, m.NodeState.SERVING))

    def _stalled(self, reason: str, child: process.ChildProcess | None) -> None:
        if child is None:
            return
        logger.error("node %s %s", self.role.label, reason)
        self.failure_reason = reason
        threading.Thread(target=child.stop, name="tfos-stop", daemon=True).start()

    def _heartbeat(self, child: process.ChildProcess) -> None:
        # Silence counts from the last reply, not from the first failed call: a call to an
        # unreachable host fails only at its own deadline (the control client's 10 s).
        last_reply = time.monotonic()
        while not self.finished.wait(self.config.heartbeat_interval):
            try:
                reply = self.client.heartbeat(m.Heartbeat(self.role.node_id, self.state,
                                                          self.progress))
                last_reply = time.monotonic()
            except DriverUnreachable as exc:
                if time.monotonic() - last_reply < self.config.heartbeat_timeout:
                    continue
                logger.error("stopping node %s: %s", self.role.label, exc)
                reply = m.HeartbeatReply(m.Command.STOP)
            if reply.command == m.Command.CONTINUE or self.stop_ordered.is_set():
                continue
            self.stop_ordered.set()
            threading.Thread(target=child.stop, name="tfos-stop", daemon=True,
                             args=(reply.command == m.Command.STOP_SHOWING_STACKS,)).start()

    def _report(self, status: m.NodeStatus) -> None:
        self._call(self.client.status, status)

    def _report_exit(self, status: m.NodeStatus) -> None:
        """Delivers the exit verdict, retrying while the driver may still be reachable."""
        deadline = time.monotonic() + self.config.heartbeat_timeout
        retry = threading.Event()
        while True:
            try:
                self.client.status(status)
                return
            except DriverUnreachable as exc:
                if time.monotonic() >= deadline:
                    logger.error("node %s could not report its exit code %s to the driver: %s",
                                 self.role.label, status.exit_code, exc)
                    return
            retry.wait(self.config.heartbeat_interval)

    def _call(self, fn, message) -> None:
        try:
            fn(message)
        except DriverUnreachable as exc:
            logger.warning("node %s could not report to the driver: %s", self.role.label, exc)
