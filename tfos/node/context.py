"""The ``ctx`` handed to ``map_fun(args, ctx)`` (runs inside the TF node process).

Carries the node's identity (job name, task index, cluster spec) and helpers for
TensorFlow-native set-up. TensorFlow is imported lazily, only by the helpers that need it, so
``TF_CONFIG`` and the user's own environment settings take effect before TF loads.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from tfos.core import launch, paths
from tfos.core.errors import ConfigError
from tfos.core.runtime import hold_port, listen_host
from tfos.node.progress import ProgressReporter, keras_callback

logger = logging.getLogger(__name__)


class NodeContext:
    """What a node knows about itself and its cluster (TensorFlowOnSpark's ``TFNodeContext``).

    Attributes: ``job_name`` ("chief", "worker", "ps", "evaluator"), ``task_index``,
    ``worker_num`` (this node's id, 0..n-1, unique across jobs), ``num_workers`` (the chief
    plus the workers), ``cluster_spec`` (job name -> list of "host:port"), ``defaultFS``,
    ``working_dir``, ``host``, ``log_dir`` (the TensorBoard log directory, or None),
    ``restart`` (0 in the first run; n after the driver restarted the cluster n times).
    Built from the node task's ``tfos.core.launch.LaunchRecord``.
    """

    def __init__(self, record: launch.LaunchRecord, secret: bytes | None = None):
        self.job_name: str = record.job_name
        self.task_index: int = record.task_index
        self.worker_num: int = record.node_id
        self.executor_id: int = record.node_id
        self.num_workers: int = record.num_workers
        self.cluster_spec: dict[str, list[str]] = record.cluster_spec
        self.defaultFS: str = record.default_fs
        self.working_dir: str = record.working_dir
        self.host: str = record.host
        self.log_dir: str | None = record.log_dir
        self.restart: int = record.restart
        # How this node's tensors travel ("grpc"; "rdma" with TFCluster.run(rdma=True)).
        self.transport: str = record.transport
        self._secret = secret        # the cluster's (tfos.collective authenticates with it)
        self._bind_all = record.feed.bind_all if record.feed is not None else False
        self._primary = record.primary
        self._status_fd = record.status_fd
        self._notify_lock = threading.Lock()
        self._feed_endpoint = record.feed
        self._feed_server = None
        self._progress = None if record.status_fd is None else ProgressReporter(
            self._notify, self._feed_progress)
        # TensorFlowOnSpark's release_port=False: the TF port, held until release_port().
        self.tmp_socket: socket.socket | None = (
            hold_port(record.host, record.tf_port) if record.hold_port else None)

    @property
    def mgr(self) -> "FeedManager":
        """TensorFlowOnSpark's ``ctx.mgr``: what ``TFNode.DataFeed(ctx.mgr, ...)`` reads from."""
        return FeedManager(self)

    def release_port(self) -> None:
        """Closes ``tmp_socket`` (TFCluster.run(release_port=False)): call it before starting a
        server on this node's TF port. TensorFlow can bind the port even while it is held."""
        if self.tmp_socket is None:
            logger.warning("release_port() on %s:%d, which holds no port (TFCluster.run(..., "
                           "release_port=False) makes one)", self.job_name, self.task_index)
            return
        self.tmp_socket.close()
        self.tmp_socket = None

    def export_saved_model(self, model, export_dir: str, is_chief: bool | None = None) -> None:
        """``tfos.compat.export_saved_model`` with ``is_chief`` defaulting to this node's role:
        the chief, or worker 0 in a cluster without one, writes ``export_dir``."""
        from tfos.node.tf_compat import export_saved_model
        export_saved_model(model, export_dir, self._primary if is_chief is None else is_chief)

    def absolute_path(self, path: str) -> str:
        """``path`` qualified against the default filesystem (see ``tfos.core.paths``)."""
        return paths.absolute_path(path, self.defaultFS, self.working_dir)

    def cluster_resolver(self):
        """A ``tf.distribute.cluster_resolver.ClusterResolver`` of this node, for TF code that
        takes one rather than reading ``TF_CONFIG`` (``MultiWorkerMirroredStrategy(
        cluster_resolver=...)``, ``ParameterServerStrategy(...)``): the cluster spec, this
        node's task and TensorFlow's gRPC protocol, from the context alone."""
        import tensorflow as tf
        tasks = self.cluster_spec.get(self.job_name, [])
        own = tasks[self.task_index] if self.task_index < len(tasks) else ""
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(self.cluster_spec), master=own,
            task_type=self.job_name, task_id=self.task_index, rpc_layer="grpc")

    def start_cluster_server(self, num_gpus: int = 0, rdma: bool = False):
        """Starts this node's ``tf.distribute.Server``; returns ``(tf.train.ClusterSpec, server)``.

        For TF1-style between-graph replication and for the ps/worker nodes of
        ParameterServerStrategy. ``server.join()`` tells tfos the node now only serves, so the
        driver stops it once the nodes that run to completion (chief, workers) have finished.
        """
        if rdma:
            raise ConfigError("start_cluster_server(rdma=True): TensorFlow 2.21 has no RDMA "
                              "protocol for its own gRPC runtime; leave rdma=False")
        if self.job_name not in self.cluster_spec:
            raise ConfigError(f"start_cluster_server() on a {self.job_name!r} node: only nodes "
                              f"in the cluster spec ({sorted(self.cluster_spec)}) run a server")
        import tensorflow as tf
        spec = tf.train.ClusterSpec(self.cluster_spec)
        config = None
        if num_gpus == 0:
            config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
        server = tf.distribute.Server(spec, job_name=self.job_name, task_index=self.task_index,
                                      config=config, start=True)
        return spec, ClusterServer(server, self._notify_serving)

    def start_feed_server(self, secret: bytes) -> None:
        """Opens this node's feed endpoint (InputMode.SPARK) and announces its addresses."""
        endpoint = self._feed_endpoint
        if endpoint is None:
            return
        from rdma import peer
        from tfos.node.feed_server import FeedServer
        uris = peer.listen_uris(listen_host(endpoint.host, endpoint.bind_all),
                                endpoint.socket_path)
        self._feed_server = FeedServer(
            uris, secret, endpoint.buffer_bytes, stall_timeout=endpoint.stall_timeout,
            on_stall=lambda reason: self._notify(launch.Stalled(reason)))
        self._notify(launch.FeedOpened([peer.advertise(address, endpoint.host)
                                        for address in self._feed_server.addresses]))

    def unread_feed_error(self) -> str | None:
        """After map_fun returned: why that loses data, when a feed got records it never read."""
        unread = self._feed_server.unread_feeds() if self._feed_server else []
        if not unread:
            return None
        feeds = ", ".join(f"{name!r} ({records} records arrived)" for name, records in unread)
        return (f"map_fun returned without reading feed {feeds} that Spark fed to this node: "
                "read it with ctx.get_data_feed(qname_in=...) until should_stop(), or call "
                "feed.terminate() to stop the feeding on purpose")

    def get_data_feed(self, train_mode: bool = True, qname_in: str = "input",
                      qname_out: str = "output", input_mapping: dict | None = None,
                      timeout: float | None = None):
        """The ``DataFeed`` of feed ``qname_in`` (InputMode.SPARK; TensorFlowOnSpark's API).

        ``qname_out`` is accepted for compatibility: results go back on the connection their
        rows came from. ``timeout`` bounds each wait for data (None: wait for the driver).
        """
        if self._feed_server is None:
            raise ConfigError(f"get_data_feed() on {self.job_name}:{self.task_index}: only the "
                              "chief and workers of a cluster started with "
                              "input_mode=InputMode.SPARK receive data")
        from tfos.node.data_feed import DataFeed
        return DataFeed(self._feed_server.queue(qname_in), train_mode, input_mapping,
                        on_terminate=lambda: self._notify(launch.FeedStopped(qname_in)),
                        timeout=timeout, memory=self._feed_server.memory)

    def report_progress(self, epoch: int | None = None, step: int | None = None,
                        **metrics: float) -> None:
        """Shows this node's training ``epoch``, ``step`` and scalar ``metrics`` (loss=...) in
        the driver's progress display. Cheap (it only stores them): call it every step if you
        like; the driver gets the latest once a second. Arguments left out keep their value."""
        if self._progress is not None:
            self._progress.report(epoch, step, **metrics)

    def progress_callback(self):
        """A Keras callback for ``model.fit(..., callbacks=[ctx.progress_callback()])`` that
        shows epoch, step and the logged metrics in the driver's progress display. In a cluster
        with parameter servers it reports epochs only: Keras refuses per-step callbacks under
        ParameterServerStrategy."""
        return keras_callback(self.report_progress, batches="ps" not in self.cluster_spec)

    def close_progress(self) -> None:
        """Sends the last progress numbers (called once map_fun returned)."""
        if self._progress is not None:
            self._progress.close()

    def _feed_progress(self) -> dict:
        return self._feed_server.progress() if self._feed_server is not None else {}

    def report_result(self, value_json: str) -> None:
        """Sends map_fun's return value (JSON text) to the driver, by way of the node task."""
        self._notify(launch.Returned(value_json))

    def _notify(self, event) -> None:
        """Tells the node task (see ``tfos.core.launch``): one line, whole, one event at a time
        (a line may be longer than the pipe's atomic write)."""
        if self._status_fd is None:
            return
        data = memoryview(launch.encode_event(event))
        with self._notify_lock:
            while data:
                data = data[os.write(self._status_fd, data):]

    def _notify_serving(self) -> None:
        self._notify(launch.Serving())


class ClusterServer:
    """A ``tf.distribute.Server`` whose ``join()`` first tells the supervisor it is serving."""

    def __init__(self, server, on_join):
        self._server = server
        self._on_join = on_join

    def join(self):
        self._on_join()
        self._server.join()

    def __getattr__(self, name):
        return getattr(self._server, name)


class FeedManager:
    """``ctx.mgr``: TensorFlowOnSpark's handle on a node's feeds (its ``TFManager``)."""

    def __init__(self, ctx: NodeContext):
        self._ctx = ctx

    def data_feed(self, train_mode: bool = True, qname_in: str = "input",
                  qname_out: str = "output", input_mapping: dict | None = None):
        return self._ctx.get_data_feed(train_mode, qname_in, qname_out, input_mapping)

