"""The control plane: typed, versioned messages between node tasks and the driver (both sides).

Each message is a frozen dataclass, sent as strict versioned JSON (``tfos.core.wire``): decoding
checks the version, the expected type and every field's type, so nothing read from the network
is ever unpickled or trusted to be well formed. ``METHODS`` describes the driver's gRPC service
for both its server (``tfos.driver.control_service``) and the node task's client
(``tfos.executor.control_client``).
"""
from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass

from tfos.core import wire

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20


class NodeState(str, enum.Enum):
    STARTING = "starting"   # registered, TF process being launched
    RUNNING = "running"     # TF process running map_fun
    SERVING = "serving"     # map_fun is blocked in server.join(): stopped when the others finish
    EXITED = "exited"       # TF process ended


class Command(str, enum.Enum):
    CONTINUE = "continue"
    STOP = "stop"
    STOP_SHOWING_STACKS = "stop-showing-stacks"   # stop, the TF process printing its stacks first


@dataclass(frozen=True)
class Register:
    node_id: int
    attempt: int
    host: str
    tf_port: int
    pid: int
    python_version: str
    tf_version: str
    transport: str = "grpc"    # how its tensors travel (tfos.executor.transport), described


@dataclass(frozen=True)
class RegisterReply:
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class FeedProgress:
    """One feed of a node: records it received (every epoch) and the epoch its map_fun reads."""
    records: int
    epoch: int


@dataclass(frozen=True)
class Progress:
    """How far a node has come: its feeds, and the training epoch, step and metrics its code
    reported (``ctx.report_progress``, ``ctx.progress_callback()``). Sent by the TF process to
    its task (a status event) and on to the driver with the heartbeats."""
    feeds: dict[str, FeedProgress] = dataclasses.field(default_factory=dict)
    epoch: int | None = None
    step: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    node_id: int
    state: NodeState
    progress: Progress | None = None


@dataclass(frozen=True)
class HeartbeatReply:
    command: Command


@dataclass(frozen=True)
class LogLines:
    node_id: int
    lines: list[str]


@dataclass(frozen=True)
class NodeStatus:
    """A node's state change; EXITED carries the exit code (negative: killed by that signal),
    ``stopped`` when the driver had ordered the stop (not a failure of the node), and
    ``result``, map_fun's return value as JSON text, when it returned one, and its last
    ``progress``."""
    node_id: int
    state: NodeState
    exit_code: typing.Optional[int] = None
    reason: str = ""
    stopped: bool = False
    log_tail: list[str] = dataclasses.field(default_factory=list)
    result: typing.Optional[str] = None
    progress: typing.Optional[Progress] = None


@dataclass(frozen=True)
class ServiceUrl:
    """A helper service a node started for the user (e.g. TensorBoard)."""
    node_id: int
    name: str
    url: str


@dataclass(frozen=True)
class FeedTerminated:
    """The node's map_fun called ``DataFeed.terminate()``: stop feeding it."""
    node_id: int
    feed: str


@dataclass(frozen=True)
class FeedDataRejected:
    """A feed task of ``train()`` found rows it cannot feed (sent by the task before it fails,
    so the driver knows the data is at fault, and stops the feed job at once)."""
    feed: str
    epoch: int
    partition: int
    message: str


@dataclass(frozen=True)
class NodeFateQuery:
    """A feed task lost its connection to node ``node_id``: why? The driver answers once it
    knows the node's fate, or after ``wait`` seconds."""
    node_id: int
    wait: float


@dataclass(frozen=True)
class NodeFate:
    """Why the node is gone (its failure, its own error first), or "" when not known."""
    failure: str = ""


@dataclass(frozen=True)
class Ack:
    ok: bool = True


def encode(message) -> bytes:
    return wire.encode(message, PROTOCOL_VERSION)


def decode(data: bytes, expected: type):
    """Parses ``data`` as a message of class ``expected``; raises ProtocolError otherwise."""
    return wire.decode(data, expected, PROTOCOL_VERSION, MAX_MESSAGE_BYTES)


# The control service: its name, and method name -> (request type, reply type, name of the
# driver's handler). The node task's client and the driver's server both read it from here.
SERVICE = "tfos.Control"
METHODS = {
    "Register": (Register, RegisterReply, "register"),
    "Heartbeat": (Heartbeat, HeartbeatReply, "heartbeat"),
    "Logs": (LogLines, Ack, "log_lines"),
    "Status": (NodeStatus, Ack, "status"),
    "ServiceUrl": (ServiceUrl, Ack, "service_url"),
    "FeedTerminated": (FeedTerminated, Ack, "feed_terminated"),
    "FeedDataRejected": (FeedDataRejected, Ack, "feed_data_rejected"),
    "NodeFate": (NodeFateQuery, NodeFate, "node_fate"),
}


def method_path(name: str) -> str:
    return f"/{SERVICE}/{name}"
