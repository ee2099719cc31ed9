"""The one frozen, validated configuration of a cluster (pure core; built by the driver).

``TFCluster.run`` builds a :class:`ClusterConfig` from its arguments; every value is checked
here, once, and a bad one raises :class:`~tfos.core.errors.ConfigError` quoting it with the fix.
The object is plain data (picklable) so node tasks receive it inside the Spark closure.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tfos.core import topology
from tfos.core.errors import ConfigError

DEFAULT_FEED_BUFFER_BYTES = 256 << 20


@dataclass(frozen=True)
class FeedSizes:
    """Every size of the data plane, derived from one node's ``feed_buffer_bytes``."""

    buffer_bytes: int      # bytes a node queues per feed before its feeders block
    max_message: int       # largest message on a feed connection
    shm_ring_bytes: int    # the ring a node receives into from each same-host feeder
    chunk_bytes: int       # target size of one message a feeder sends (its eager limit)
    lease_bytes: int       # target size of the rows a feeder asks the driver to place at once
    train_reply_bytes: int       # the ring a training feeder receives the node's answer into
    inference_reply_bytes: int   # ... and an inference feeder the results


def feed_sizes(buffer_bytes: int) -> FeedSizes:
    """The data plane's sizes for a node buffering ``buffer_bytes`` per feed.

    Messages carry up to 1 MiB, and no more than a quarter of the buffer, so several are in
    flight; a feeder asks the driver where rows go (``tfos.core.feed_plan``) for up to 4 MiB of
    them at once and sends them in messages of that size. A connection takes any chunk the
    buffer could take, plus its header, so an oversized record meets the node's clear refusal
    rather than the transport's size limit. Each same-host feeder's shared-memory ring is 4 MiB
    (four messages in flight keep both ends busy) and its sender's staging area twice a message:
    the memory of a new connection is fresh pages, which cost more than the copy itself (26 MB
    through a new connection: 28 ms of the feeder's CPU with a 16 MiB ring, 3.2 MB messages and
    16 MiB of staging; 6 ms with 4 MiB, 0.8 MB and 2 MiB; 1.5-3 ms through either once warm).
    A node's feed memory is thus at most the buffer plus one ring per concurrent same-host feed
    task (a message larger than its ring still goes through, inline on the ring's socket).
    """
    return FeedSizes(
        buffer_bytes=buffer_bytes,
        max_message=max(256 << 20, buffer_bytes + (1 << 20)),
        shm_ring_bytes=4 << 20,
        chunk_bytes=max(1, min(1 << 20, buffer_bytes // 4)),
        lease_bytes=max(1, min(4 << 20, buffer_bytes // 4)),
        train_reply_bytes=64 << 10,
        inference_reply_bytes=16 << 20)


class InputMode(enum.IntEnum):
    """Where a node's data comes from (TensorFlowOnSpark's names and values)."""

    TENSORFLOW = 0  # the TF code reads its own files
    SPARK = 1       # Spark partitions are streamed into the nodes


@dataclass(frozen=True)
class ClusterConfig:
    num_executors: int
    num_ps: int = 0
    master_node: str | None = None
    eval_node: bool = False
    input_mode: InputMode = InputMode.TENSORFLOW
    tensorboard: bool = False
    log_dir: str | None = None
    # Seconds the driver waits for every node to register after the node job is submitted.
    reservation_timeout: float = 120.0
    # Seconds the driver waits for enough executor slots to appear (executors still starting).
    slot_wait_timeout: float = 60.0
    heartbeat_interval: float = 1.0
    # A node task silent for this long is declared lost.
    heartbeat_timeout: float = 20.0
    # Seconds between SIGTERM and SIGKILL when a node's process group is stopped.
    kill_grace: float = 3.0
    # Sets TF_USE_LEGACY_KERAS=1 in nodes: Keras 3 `fit` fails under the multi-worker strategies.
    legacy_keras: bool = True
    # Extra environment variables for the TF node processes.
    env: tuple[tuple[str, str], ...] = ()
    # Address the driver's control service advertises to executors; None: detect.
    driver_host: str | None = None
    # Listen on every interface (0.0.0.0 or ::) instead of only the advertised addresses (the
    # driver host, each executor's host): for hosts behind 1:1 NAT, whose advertised address
    # is not on any interface (a cloud VM's public IP). Control and feed ports still demand
    # the cluster's secret; TensorBoard (no authentication) is then reachable on every one.
    bind_all_interfaces: bool = False
    # Bytes of fed data each TF node buffers per feed before feeders block (InputMode.SPARK).
    feed_buffer_bytes: int = DEFAULT_FEED_BUFFER_BYTES
    # Exchange tensors over RDMA (--rdma): needs an RDMA device; never falls back to TCP.
    rdma: bool = False
    # Lines of each node's output kept for error reports.
    log_tail_lines: int = 40
    # Directory on the driver for each node's complete output (<job>-<index>.log); None: a new
    # directory under the temporary directory (tfos.driver.console.default_log_dir).
    node_log_dir: str | None = None
    # Show TensorFlow's start-up noise (tfos.driver.console.TF_NOISE) on the driver's stream
    # too; the node log files always hold every line.
    show_tf_noise: bool = False
    # No live progress display and none of tfos's own notes ("tfos: waiting for ...") on the
    # driver's stream; the nodes' lines still show (log_stream=None hides those).
    quiet: bool = False
    # GPUs each node needs from those Spark's resource scheduling gives its task (None: all it
    # was given, and CUDA_VISIBLE_DEVICES untouched when Spark schedules no GPUs).
    num_gpus: int | None = None
    # Roles kept off GPUs (CUDA_VISIBLE_DEVICES empty): parameter servers only hold variables.
    cpu_roles: tuple[str, ...] = ("ps",)
    # TFParallel: every node is a single-node TF instance of its own (no TF_CONFIG, no
    # rendezvous between them), e.g. for batch inference over files.
    independent: bool = False
    # Gang-schedule the nodes as one Spark barrier stage (all start together, or none).
    # Independent nodes may run without (more of them than slots run in waves).
    barrier: bool = True
    # TensorFlowOnSpark's release_port: False gives each TF process its reserved TF port as a
    # bound socket, ctx.tmp_socket, until map_fun calls ctx.release_port().
    release_port: bool = True
    # Times a failed cluster is started again (all nodes) before the failure is raised; the
    # nodes resume from their own checkpoints (ctx.restart tells them which run they are).
    max_restarts: int = 0
    # A fed node whose buffer holds data it has not touched for this long has stalled: it is
    # stopped and the cluster fails, naming it, with the stack of its map_fun.
    feed_stall_timeout: float = 300.0
    roles: tuple[topology.Role, ...] = field(init=False)

    def __post_init__(self):
        for name in ("num_executors", "num_ps", "log_tail_lines", "feed_buffer_bytes",
                     "max_restarts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}={value!r}: pass a non-negative int")
        if self.num_executors < 1:
            raise ConfigError(f"num_executors={self.num_executors}: a cluster needs at least "
                              "one node (one per executor)")
        try:
            mode = InputMode(self.input_mode)
        except ValueError:
            raise ConfigError(f"input_mode={self.input_mode!r}: use tfos.InputMode.TENSORFLOW "
                              "or tfos.InputMode.SPARK") from None
        object.__setattr__(self, "input_mode", mode)
        for name in ("bind_all_interfaces", "release_port", "independent", "barrier"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r}: pass True or False")
        for name in ("reservation_timeout", "slot_wait_timeout", "heartbeat_interval",
                     "heartbeat_timeout", "kill_grace", "feed_stall_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name}={value!r}: pass a positive number of seconds")
        if self.num_gpus is not None and (not isinstance(self.num_gpus, int)
                                          or isinstance(self.num_gpus, bool) or self.num_gpus < 0):
            raise ConfigError(f"num_gpus={self.num_gpus!r}: pass a non-negative int, or None "
                              "for every GPU Spark gives the node's task")
        object.__setattr__(self, "cpu_roles", tuple(self.cpu_roles))
        unknown = set(self.cpu_roles) - {topology.PS, topology.WORKER, topology.EVALUATOR,
                                         *topology.MASTER_NODES}
        if unknown:
            raise ConfigError(f"cpu_roles={self.cpu_roles!r}: {sorted(unknown)} are no roles; "
                              "use ps, chief, master, worker or evaluator")
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ConfigError(f"heartbeat_timeout={self.heartbeat_timeout} must exceed twice "
                              f"heartbeat_interval={self.heartbeat_interval}")
        if self.max_restarts and mode == InputMode.SPARK:
            raise ConfigError(f"max_restarts={self.max_restarts} with InputMode.SPARK: a restarted "
                              "cluster cannot resume a feed mid-epoch. Restart from the driver "
                              "instead (a new TFCluster.run, then train() the remaining epochs), "
                              "or use InputMode.TENSORFLOW")
        if not self.barrier and not self.independent:
            raise ConfigError("barrier=False: the nodes of a TF cluster must start together; only "
                              "independent instances (tfos.TFParallel) may run without a barrier")
        if self.independent and mode == InputMode.SPARK:
            raise ConfigError("independent TF instances (tfos.TFParallel) read their own data: "
                              "use InputMode.TENSORFLOW, or a TFCluster to feed Spark data")
        if self.num_ps >= self.num_executors:
            raise ConfigError(f"num_ps={self.num_ps} must be less than num_executors="
                              f"{self.num_executors}: every cluster needs a node that trains")
        object.__setattr__(self, "roles", topology.plan_roles(
            self.num_executors, self.num_ps, self.master_node, self.eval_node))
        object.__setattr__(self, "env", tuple((str(k), str(v)) for k, v in dict(self.env).items()))

    @property
    def num_nodes(self) -> int:
        return len(self.roles)
