"""The ``ctx`` handed to ``map_fun(args, ctx)`` (runs inside the TF node process).

Carries the node's identity (job name, task index, cluster spec) and helpers for
TensorFlow-native set-up. TensorFlow is imported lazily, only by the helpers that need it, so
``TF_CONFIG`` and the user's own environment settings take effect before TF loads.
"""
from __future__ import annotations

import json
import os

from tfos import fs
from tfos.errors import ConfigError

NODE_INFO_ENV = "TFOS_NODE_INFO"
STATUS_FD_ENV = "TFOS_STATUS_FD"


class NodeContext:
    """What a node knows about itself and its cluster (TensorFlowOnSpark's ``TFNodeContext``).

    Attributes: ``job_name`` ("chief", "worker", "ps", "evaluator"), ``task_index``,
    ``worker_num`` (this node's id, 0..n-1, unique across jobs), ``num_workers`` (the chief
    plus the workers), ``cluster_spec`` (job name -> list of "host:port"), ``defaultFS``,
    ``working_dir``, ``host``, ``log_dir`` (the TensorBoard log directory, or None).
    """

    def __init__(self, info: dict, status_fd: int | None = None):
        self.job_name: str = info["job_name"]
        self.task_index: int = info["task_index"]
        self.worker_num: int = info["node_id"]
        self.executor_id: int = info["node_id"]
        self.num_workers: int = info["num_workers"]
        self.cluster_spec: dict[str, list[str]] = info["cluster_spec"]
        self.defaultFS: str = info["default_fs"]
        self.working_dir: str = info["working_dir"]
        self.host: str = info["host"]
        self.log_dir: str | None = info.get("log_dir")
        # 0 in the first run; n after the driver restarted the cluster n times (max_restarts).
        self.restart: int = info.get("restart", 0)
        self._status_fd = status_fd
        self._feed_info = info.get("feed")
        self._feed_server = None

    @classmethod
    def from_environment(cls) -> "NodeContext":
        status_fd = os.environ.pop(STATUS_FD_ENV, None)
        return cls(json.loads(os.environ.pop(NODE_INFO_ENV)),
                   int(status_fd) if status_fd else None)

    def absolute_path(self, path: str) -> str:
        """``path`` qualified against the default filesystem (see ``tfos.fs.absolute_path``)."""
        return fs.absolute_path(path, self.defaultFS, self.working_dir)

    def cluster_resolver(self):
        """TensorFlow's resolver for this node, read from ``TF_CONFIG``."""
        import tensorflow as tf
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()

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
        if not self._feed_info:
            return
        from tfos.feed_server import FeedServer
        from tfos.process import listen_host
        info = self._feed_info
        bind = listen_host(info["host"], info.get("bind_all", False))
        self._feed_server = FeedServer([f"tcp://{bind}:0", f"shm://{info['shm_path']}"],
                                       secret, info["buffer_bytes"],
                                       stall_timeout=info.get("stall_timeout"),
                                       on_stall=lambda reason: self._notify(f"stall {reason}"))
        from rdma.shm import host_key
        from rdma.tcp import format_address
        addresses = []
        for address in self._feed_server.addresses:
            if address.startswith("shm://"):
                # Says which host it serves, for feeders to tell (tfos.feed_task).
                address = f"{address}#{host_key()}"
            elif bind != info["host"]:
                # Bound to every interface: feeders are given the executor's address.
                address = format_address((info["host"], int(address.rsplit(":", 1)[1])))
            addresses.append(address)
        self._notify("feed " + json.dumps(addresses))

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
        from tfos.data_feed import DataFeed
        return DataFeed(self._feed_server.queue(qname_in), train_mode, input_mapping,
                        on_terminate=lambda: self._notify(f"terminate {qname_in}"),
                        timeout=timeout)

    def _notify(self, line: str) -> None:
        if self._status_fd is not None:
            os.write(self._status_fd, line.encode() + b"\n")

    def _notify_serving(self) -> None:
        self._notify("serving")


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
