"""Feed messages on the wire: a typed JSON header plus raw column buffers (feeder, driver, node).

A message is ``[u32 header length][JSON header][padding][column 0 bytes][padding][column 1]...``
with every column starting at a 64-byte boundary, so the receiver maps each column with
``numpy.frombuffer`` in place: no copy and no pickle. The header is the versioned envelope of
one ``tfos.core.feed_messages`` dataclass (``v``, ``type``, ``body``, checked field by field by
``tfos.core.wire``) plus each column's name, dtype, shape and offset; decoding checks all of it
against the message's real size and accepts only plain numeric, boolean and fixed-width string
dtypes.
"""
from __future__ import annotations

import json
import re
import struct

import numpy as np

from tfos.core import feed_messages, wire
from tfos.core.errors import ProtocolError

ALIGN = 64
MAX_HEADER_BYTES = 1 << 16
_LEN = struct.Struct("<I")
_ALLOWED_KINDS = frozenset("biufcSU")
# The only dtype spelling taken from the wire: the form ``ndarray.dtype.str`` writes ("<f4",
# "|b1", "|S5"); numpy never parses anything else (aliases, structured or subarray dtypes).
_DTYPE_STR = re.compile(r"[<>|]([a-zA-Z])[0-9]{0,9}")
# numpy's own limit is 64 dimensions; a feed column never needs more than a few.
MAX_DIMS = 32
_ZEROS = bytes(ALIGN)


def _pad(n: int) -> int:
    return -n % ALIGN


def encode(message, columns: dict[str, np.ndarray] | None = None) -> list:
    """The parts of one feed message (to be sent as one, e.g. ``Comm.send(parts)``)."""
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
    arrays = {name: np.require(a, requirements="C") for name, a in (columns or {}).items()}
    specs, offset = [], 0
    for name, array in arrays.items():
        _check_dtype(array.dtype, name)
        specs.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                      "offset": offset, "nbytes": array.nbytes})
        offset += array.nbytes + _pad(array.nbytes)
    header = json.dumps({**wire.envelope(message, feed_messages.VERSION), "columns": specs},
                        separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"feed message header of {len(header)} bytes exceeds "
                            f"{MAX_HEADER_BYTES}: too many columns or too much metadata")
    prefix = _LEN.pack(len(header)) + header
    parts = [prefix + _ZEROS[:_pad(len(prefix))]]
    for array in arrays.values():
        if array.nbytes:
            parts.append(memoryview(array).cast("B"))
        if _pad(array.nbytes):
            parts.append(_ZEROS[:_pad(array.nbytes)])
    return parts


def decode(message, expected=feed_messages.ALL,
           what: str = "feed message") -> tuple[object, dict[str, np.ndarray]]:
    """``(message, columns)``: one of the ``expected`` message classes, and its columns as
    read-only views into the received buffer. Anything else raises ProtocolError."""
    view = memoryview(message).cast("B")
    if len(view) < _LEN.size:
        raise ProtocolError(f"feed message of {len(view)} bytes is too short")
    (header_len,) = _LEN.unpack_from(view)
    if header_len > MAX_HEADER_BYTES or _LEN.size + header_len > len(view):
        raise ProtocolError(f"feed message header length {header_len} does not fit the "
                            f"{len(view)}-byte message")
    try:
        header = json.loads(bytes(view[_LEN.size:_LEN.size + header_len]))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"feed message header is not JSON: {exc}") from None
    specs = header.pop("columns", None) if isinstance(header, dict) else None
    if not isinstance(specs, list):
        raise ProtocolError("feed message header needs columns (a list) beside v, type, body")
    typed = wire.from_envelope(header, expected, feed_messages.VERSION, what)
    start = _LEN.size + header_len
    start += _pad(start)
    body = view[start:]
    columns = {}
    for spec in specs:
        name, array = _column(spec, body)
        if name in columns:
            raise ProtocolError(f"column {name!r} appears twice in one feed message")
        columns[name] = array
    return typed, columns


def _column(spec, body: memoryview) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape", "offset", "nbytes"}:
        raise ProtocolError(f"bad column description {spec!r}")
    name, shape, offset, nbytes = spec["name"], spec["shape"], spec["offset"], spec["nbytes"]
    if (not isinstance(name, str) or not isinstance(spec["dtype"], str)
            or not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)
            or type(offset) is not int or type(nbytes) is not int or offset < 0 or nbytes < 0):
        raise ProtocolError(f"bad column description {spec!r}")
    match = _DTYPE_STR.fullmatch(spec["dtype"])
    if match is None:
        raise ProtocolError(f"column {name!r}: unknown dtype {spec['dtype'][:40]!r}")
    if match.group(1) not in _ALLOWED_KINDS:
        _refuse_dtype(spec["dtype"], name)
    try:
        dtype = np.dtype(spec["dtype"])
    except (TypeError, ValueError):
        raise ProtocolError(f"column {name!r}: unknown dtype {spec['dtype']!r}") from None
    _check_dtype(dtype, name)
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != nbytes or offset + nbytes > len(body):
        raise ProtocolError(f"column {name!r}: shape {shape} of {dtype} needs "
                            f"{count * dtype.itemsize} bytes, header says {nbytes} at {offset} "
                            f"of a {len(body)}-byte body")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(tuple(shape))
    return name, array


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if (dtype.kind not in _ALLOWED_KINDS or dtype.hasobject or dtype.fields is not None
            or dtype.itemsize == 0):
        _refuse_dtype(dtype, name)


def _refuse_dtype(dtype, name: str) -> None:
    raise ProtocolError(f"column {name!r} has dtype {dtype} which the feed cannot carry: "
                        "use numeric, bool or fixed-width string columns (of at least one "
                        "character)")
