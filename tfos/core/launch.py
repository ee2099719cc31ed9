"""The contract between a node task and the TF process it starts (executor task <-> TF node).

The node task (``tfos.executor.node_task``) starts ``python -m tfos.node.main`` with the
environment TensorFlow reads (``TF_CONFIG``, ``CUDA_VISIBLE_DEVICES``, the user's variables)
and writes one launch message on its stdin::

    [u32 record length][LaunchRecord as versioned JSON][u32 secret length][secret][payload]

The record says what the node is, where it opens its feed, which devices and transport it
uses, and how it talks back to its task; the secret (never put in the environment, where
other processes of the user could read it) authenticates its feed endpoint; the payload is
``(map_fun, tf_args)`` as the Spark driver pickled them, which only this process unpickles:
it came from the driver inside Spark's closure and from the task over a private pipe, never
from the network.

The TF process reports back on its status pipe (``status_fd``), one versioned JSON event per
line: ``Serving``, ``FeedOpened``, ``FeedStopped``, ``Stalled``, ``Returned``, and
``tfos.core.messages.Progress`` (at most one a second), which the task passes on to the
driver with its heartbeats.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from tfos.core import wire
from tfos.core.errors import ProtocolError
from tfos.core.messages import Progress

VERSION = 1
# How TensorFlow's own tensors move between the nodes. Only TensorFlow's gRPC runtime today;
# the compiled RDMA transport joins here.
TRANSPORTS = ("grpc", "rdma")
_LEN = struct.Struct("<I")
MAX_EVENT_BYTES = 1 << 16
MAX_RESULT_BYTES = MAX_EVENT_BYTES - 1024   # map_fun's return value, as JSON (Returned)


@dataclass(frozen=True)
class FeedEndpoint:
    """Where a fed node (InputMode.SPARK: the chief and the workers) opens its feed endpoint."""

    host: str              # the executor's address, advertised to feeders
    bind_all: bool         # listen on every interface (ClusterConfig.bind_all_interfaces)
    socket_path: str       # the shm:// socket, in the node task's private directory
    buffer_bytes: int      # ClusterConfig.feed_buffer_bytes
    stall_timeout: float   # ClusterConfig.feed_stall_timeout


@dataclass(frozen=True)
class LaunchRecord:
    # What the node is (TensorFlowOnSpark's ctx fields).
    node_id: int
    job_name: str
    task_index: int
    num_workers: int
    cluster_spec: dict[str, list[str]]
    host: str
    default_fs: str
    working_dir: str
    log_dir: str | None = None
    restart: int = 0                 # how many times the driver restarted the cluster before
    # The node that writes the model and the summaries: the chief, else worker 0
    # (tfos.core.topology.primary_node).
    primary: bool = False
    # The TF port the node task reserved for this node; with hold_port (TFCluster.run's
    # release_port=False) the TF process holds it too, as ctx.tmp_socket, until
    # ctx.release_port().
    tf_port: int = 0
    hold_port: bool = False
    # How it talks to its task: the task's pid (the parent-death guard checks it) and the
    # write end of the status pipe (None: no task listens, e.g. in tests).
    parent_pid: int | None = None
    status_fd: int | None = None
    # Its feed (None: not fed), its devices, its transport.
    feed: FeedEndpoint | None = None
    # GPU addresses this node may use (tfos.core.devices), set as CUDA_VISIBLE_DEVICES; an
    # empty list hides every GPU; None leaves the variable unset (every device of the host).
    gpus: list[str] | None = None
    transport: str = "grpc"

    def __post_init__(self):
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport={self.transport!r}: use one of {TRANSPORTS}")
        if self.gpus is not None and any(not g or "," in g for g in self.gpus):
            raise ValueError(f"gpus={self.gpus!r}: device addresses are names without commas")


def encode(record: LaunchRecord, secret: bytes, payload: bytes) -> bytes:
    """The launch message the node task writes on the TF process's stdin."""
    body = wire.encode(record, VERSION)
    return b"".join((_LEN.pack(len(body)), body, _LEN.pack(len(secret)), secret, payload))


def decode(data: bytes) -> tuple[LaunchRecord, bytes, bytes]:
    """``(record, secret, payload)`` from a launch message; ProtocolError when malformed."""
    view = memoryview(data)
    body, rest = _field(view, "launch record")
    secret, payload = _field(rest, "secret")
    return wire.decode(body, LaunchRecord, VERSION, what="launch record"), bytes(secret), \
        bytes(payload)


def _field(view: memoryview, what: str) -> tuple[memoryview, memoryview]:
    if len(view) < _LEN.size:
        raise ProtocolError(f"the launch message ends before its {what}: the node task died "
                            "while starting this process, or another tfos version started it")
    (size,) = _LEN.unpack_from(view)
    end = _LEN.size + size
    if end > len(view):
        raise ProtocolError(f"the launch message's {what} of {size} bytes does not fit the "
                            f"{len(view)} bytes received")
    return view[_LEN.size:end], view[end:]


# -- status events: TF process -> node task, one JSON line each ----------------------------------
@dataclass(frozen=True)
class Serving:
    """map_fun is blocked in ``server.join()``: the node only serves (a parameter server)."""


@dataclass(frozen=True)
class FeedOpened:
    """The node's feed endpoint listens; feeders reach it at ``addresses``."""
    addresses: list[str]


@dataclass(frozen=True)
class FeedStopped:
    """map_fun called ``DataFeed.terminate()`` on feed ``feed``: stop feeding it."""
    feed: str


@dataclass(frozen=True)
class Stalled:
    """Fed data waited untaken too long (feed_stall_timeout): the task stops the node."""
    reason: str


@dataclass(frozen=True)
class Returned:
    """map_fun returned ``value`` (JSON text; see ``tfos.node.main.result_json``)."""
    value: str


EVENTS = (Serving, FeedOpened, FeedStopped, Stalled, Returned, Progress)


def encode_event(event) -> bytes:
    """One status line (JSON escapes every newline inside it)."""
    return wire.encode(event, VERSION) + b"\n"


def decode_event(line: bytes):
    return wire.decode(line.rstrip(b"\n"), EVENTS, VERSION, MAX_EVENT_BYTES, what="status event")
