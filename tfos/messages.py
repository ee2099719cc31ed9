"""Typed, versioned control-plane messages and their JSON wire form (driver and executor tasks).

Each message is a frozen dataclass. On the wire it is UTF-8 JSON
``{"v": PROTOCOL_VERSION, "type": "<class name>", "body": {...}}``; decoding checks the version,
the expected type and every field's type, so nothing read from the network is ever unpickled
or trusted to be well formed.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass

from tfos.errors import ProtocolError

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


@dataclass(frozen=True)
class Register:
    node_id: int
    attempt: int
    host: str
    tf_port: int
    pid: int
    python_version: str
    tf_version: str


@dataclass(frozen=True)
class RegisterReply:
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class Heartbeat:
    node_id: int
    state: NodeState


@dataclass(frozen=True)
class HeartbeatReply:
    command: Command


@dataclass(frozen=True)
class LogLines:
    node_id: int
    lines: list[str]


@dataclass(frozen=True)
class NodeStatus:
    """A node's state change; EXITED carries the exit code (negative: killed by that signal)
    and ``stopped`` when the driver had ordered the stop (not a failure of the node)."""
    node_id: int
    state: NodeState
    exit_code: typing.Optional[int] = None
    reason: str = ""
    stopped: bool = False
    log_tail: list[str] = dataclasses.field(default_factory=list)


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
class Ack:
    ok: bool = True


def encode(message) -> bytes:
    body = {f.name: _to_json(getattr(message, f.name)) for f in dataclasses.fields(message)}
    return json.dumps({"v": PROTOCOL_VERSION, "type": type(message).__name__, "body": body},
                      separators=(",", ":")).encode()


def decode(data: bytes, expected: type):
    """Parses ``data`` as a message of class ``expected``; raises ProtocolError otherwise."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, huge ints, deep nesting
        raise ProtocolError(f"message is not UTF-8 JSON: {exc}") from None
    if not isinstance(envelope, dict) or set(envelope) != {"v", "type", "body"}:
        raise ProtocolError("message envelope must be an object with keys v, type, body")
    if type(envelope["v"]) is not int or envelope["v"] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {envelope['v']!r} is not {PROTOCOL_VERSION}: "
                            "the driver and executors run different tfos versions")
    if envelope["type"] != expected.__name__:
        raise ProtocolError(f"expected a {expected.__name__} message, got {envelope['type']!r}")
    body = envelope["body"]
    if not isinstance(body, dict):
        raise ProtocolError("message body must be an object")
    hints = typing.get_type_hints(expected)
    fields = {f.name: f for f in dataclasses.fields(expected)}
    unknown = set(body) - set(fields)
    if unknown:
        raise ProtocolError(f"{expected.__name__} has no fields {sorted(unknown)}")
    values = {}
    for name, field in fields.items():
        if name not in body:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{expected.__name__} lacks field {name!r}")
            continue
        values[name] = _from_json(body[name], hints[name], f"{expected.__name__}.{name}")
    return expected(**values)


def _to_json(value):
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _from_json(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(a for a in options if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be a list")
        return [_from_json(v, item, f"{where}[]") for v in value]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ProtocolError(f"{where}={value!r} is not one of "
                                f"{[m.value for m in hint]}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int: a JSON true must not pass as an int field.
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ProtocolError(f"{where} must be {hint.__name__}, got {type(value).__name__}")
    if hint is str and not value.isascii():
        try:    # JSON's \ud800 escapes decode to lone surrogates, which no stream can write
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{where} is not valid Unicode (a lone surrogate)") from None
    return value
