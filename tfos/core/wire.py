"""Frozen dataclasses as strict, versioned JSON: the one codec of every tfos conversation.

Used by the control plane (``messages``), the feed conversation (``feed_messages``) and the node
task's launch record and status events (``launch``). A message is the JSON object
``{"v": <version>, "type": "<class name>", "body": {...}}``; decoding checks the version, that
the type is one the reader expects, and every field's type (nested dataclasses, lists, string
keyed dicts, enums, optionals), so nothing read from another process is unpickled or trusted to
be well formed. A malformed message raises :class:`~tfos.core.errors.ProtocolError`.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing

from tfos.core.errors import ProtocolError


def to_body(message) -> dict:
    """``message``'s fields as JSON-ready values."""
    return {f.name: _to_json(getattr(message, f.name)) for f in dataclasses.fields(message)}


def envelope(message, version: int) -> dict:
    return {"v": version, "type": type(message).__name__, "body": to_body(message)}


def encode(message, version: int) -> bytes:
    return json.dumps(envelope(message, version), separators=(",", ":")).encode()


def decode(data, expected, version: int, max_bytes: int | None = None, what: str = "message"):
    """Parses ``data`` (bytes) as one of the message classes ``expected`` (a class or a tuple of
    them); raises ProtocolError otherwise."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"{what} of {len(data)} bytes exceeds {max_bytes}")
    try:
        parsed = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, huge ints, deep nesting
        raise ProtocolError(f"{what} is not UTF-8 JSON: {exc}") from None
    return from_envelope(parsed, expected, version, what)


def from_envelope(parsed, expected, version: int, what: str = "message"):
    """The message held by the already parsed JSON object ``parsed`` (see ``decode``)."""
    if not isinstance(parsed, dict) or set(parsed) != {"v", "type", "body"}:
        raise ProtocolError(f"{what} envelope must be an object with keys v, type, body")
    if type(parsed["v"]) is not int or parsed["v"] != version:
        raise ProtocolError(f"{what} protocol version {parsed['v']!r} is not {version}: the "
                            "two ends run different tfos versions; install the same one "
                            "everywhere")
    options = expected if isinstance(expected, tuple) else (expected,)
    cls = next((c for c in options if c.__name__ == parsed["type"]), None)
    if cls is None:
        names = " or ".join(c.__name__ for c in options)
        raise ProtocolError(f"expected a {names} {what}, got {parsed['type']!r:.80}")
    return from_body(parsed["body"], cls)


def from_body(body, cls):
    """An instance of dataclass ``cls`` from its JSON ``body``, every field checked."""
    if not isinstance(body, dict):
        raise ProtocolError(f"{cls.__name__} body must be an object, got {type(body).__name__}")
    fields, hints = _fields(cls)
    unknown = set(body) - set(fields)
    if unknown:
        raise ProtocolError(f"{cls.__name__} has no fields {sorted(unknown)!r:.200}")
    values = {}
    for name, field in fields.items():
        if name not in body:
            if field.default is dataclasses.MISSING and \
                    field.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.__name__} lacks field {name!r}")
            continue
        values[name] = _from_json(body[name], hints[name], f"{cls.__name__}.{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:   # a class's own validation (__post_init__)
        raise ProtocolError(f"bad {cls.__name__}: {exc}") from None


@functools.lru_cache(maxsize=None)
def _fields(cls) -> tuple[dict, dict]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}, typing.get_type_hints(cls)


def _to_json(value):
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return to_body(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(a for a in options if a is not type(None))
        origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be a list")
        item = typing.get_args(hint)[0]
        items = [_from_json(v, item, f"{where}[]") for v in value]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be an object")
        _key, item = typing.get_args(hint)
        return {_text(k, f"{where} keys"): _from_json(v, item, f"{where}[{k!r:.40}]")
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_body(value, hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ProtocolError(f"{where}={value!r:.80} is not one of "
                                f"{[m.value for m in hint]}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int: a JSON true must not pass as an int field.
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ProtocolError(f"{where} must be {hint.__name__}, got {type(value).__name__}")
    if hint is str:
        _text(value, where)
    return value


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{where} must be str, got {type(value).__name__}")
    if not value.isascii():
        try:    # JSON's \ud800 escapes decode to lone surrogates, which no stream can write
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{where} is not valid Unicode (a lone surrogate)") from None
    return value
