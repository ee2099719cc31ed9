"""Frame headers of the tensor transport (pure: no sockets; used by both ends of every comm).

Everything a comm reads from a socket starts with one 16-byte header, little-endian::

    0   4s  magic    b"TFOS"
    4   B   version  1
    5   B   kind     what the record is (``Kind``)
    6   H   flags    reserved: 0 in version 1 (anything else is refused, so that a later
                     version can use them without being misread)
    8   Q   length   meaning depends on the kind (below)

Kinds: ``DATA`` (tcp://) is followed by ``length`` payload bytes on the stream. The others are
the control records of shm://, whose payload travels in a shared-memory ring: ``RING`` says
``length`` bytes were written to the receiver's ring, ``CREDIT`` carries the receiver's
released-bytes counter, ``NEED`` the counter value a blocked writer waits for, ``SETUP`` the
capacity of the ring whose file descriptor rides along.

``unpack_header`` validates every field; ``FrameDecoder`` is the reference decoder of a DATA
stream (the socket readers apply the same ``unpack_header``). Nothing here ever unpickles.
"""
from __future__ import annotations

import enum
import struct
from typing import Iterable, NamedTuple

from rdma.errors import FrameError

MAGIC = b"TFOS"
VERSION = 1
HEADER = struct.Struct("<4sBBHQ")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_MESSAGE = 256 << 20
# Hard ceiling of any length field that names a size (a ring capacity, a max_message).
SIZE_LIMIT = 1 << 40


class Kind(enum.IntEnum):
    DATA = 1
    RING = 2
    CREDIT = 3
    NEED = 4
    SETUP = 5


# Kinds whose length is a message size, bounded by the receiver's max_message.
_SIZED = frozenset({Kind.DATA, Kind.RING})
_KINDS = {k.value: k for k in Kind}


class Header(NamedTuple):
    kind: Kind
    length: int


def pack_header(kind: Kind, length: int) -> bytes:
    if not 0 <= length < 1 << 64:
        raise ValueError(f"frame length {length} does not fit 64 bits")
    return HEADER.pack(MAGIC, VERSION, kind, 0, length)


def pack_ring(length: int, _pack=HEADER.pack) -> bytes:
    """``pack_header(Kind.RING, length)`` for the hot path (length already validated)."""
    return _pack(MAGIC, VERSION, 2, 0, length)


def pack_data(length: int, _pack=HEADER.pack) -> bytes:
    """``pack_header(Kind.DATA, length)`` for the hot path (length already validated)."""
    return _pack(MAGIC, VERSION, 1, 0, length)


def unpack_header(buffer, offset: int = 0, max_message: int = DEFAULT_MAX_MESSAGE) -> Header:
    """The header at ``buffer[offset:]``; FrameError for anything but a valid one."""
    if len(buffer) - offset < HEADER_SIZE:
        raise FrameError(f"truncated frame header: {max(len(buffer) - offset, 0)} of "
                         f"{HEADER_SIZE} bytes")
    magic, version, raw_kind, flags, length = HEADER.unpack_from(buffer, offset)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {bytes(magic)!r} (expected {MAGIC!r}): the peer is "
                         "not a tfos comm, or the stream lost its place")
    if version != VERSION:
        raise FrameError(f"frame version {version}, this side speaks {VERSION}: run the same "
                         "tfos version on both ends")
    kind = _KINDS.get(raw_kind)
    if kind is None or flags:
        raise FrameError(f"unknown frame kind {raw_kind} or flags {flags:#x} in a version "
                         f"{VERSION} frame")
    if kind in _SIZED and length > max_message:
        raise FrameError(f"incoming message of {length} bytes exceeds max_message={max_message}: "
                         "raise max_message on the receiving side or send smaller messages")
    if kind is Kind.SETUP and not 0 < length <= SIZE_LIMIT:
        raise FrameError(f"ring capacity {length} in a SETUP frame is out of range")
    return Header(kind, length)


def gather(parts: Iterable) -> tuple[list[memoryview], int]:
    """Byte views of the parts of one message and their total size (no copy).

    Each part must support the buffer protocol and be C-contiguous (numpy arrays, bytes,
    bytearray, memoryview, mmap); empty parts are dropped.
    """
    if isinstance(parts, (bytes, bytearray, memoryview)):
        raise TypeError("send() takes a sequence of parts: wrap a single buffer as [buffer]")
    views, total = [], 0
    for index, part in enumerate(parts):
        if type(part) is bytes:     # the common header part: no checks needed
            if part:
                views.append(memoryview(part))
                total += len(part)
            continue
        try:
            view = memoryview(part)
        except TypeError:
            raise TypeError(f"message part {index} is a {type(part).__name__}, not a bytes-like "
                            "object") from None
        if not view.c_contiguous:
            raise ValueError(f"message part {index} is not C-contiguous: pass "
                             "numpy.ascontiguousarray(part)")
        if view.nbytes:
            views.append(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
            total += view.nbytes
    return views, total


def check_size(total: int, max_message: int, address: str) -> None:
    if total > max_message:
        raise FrameError(f"message of {total} bytes to {address} exceeds max_message="
                         f"{max_message}: split it, or raise max_message on both sides")


class FrameDecoder:
    """Splits a byte stream of DATA frames into messages, whatever the chunking (reference).

    ``feed(chunk)`` returns the messages completed by ``chunk``; after a FrameError the
    decoder is unusable (the stream has lost its place).
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        self._max = max_message
        self._buffer = bytearray()
        self._broken: FrameError | None = None

    def feed(self, chunk) -> list[bytes]:
        if self._broken:
            raise self._broken
        self._buffer += chunk
        messages, offset = [], 0
        try:
            while len(self._buffer) - offset >= HEADER_SIZE:
                header = unpack_header(self._buffer, offset, self._max)
                if header.kind is not Kind.DATA:
                    raise FrameError(f"{header.kind.name} frame in a DATA stream")
                end = offset + HEADER_SIZE + header.length
                if end > len(self._buffer):
                    break
                messages.append(bytes(self._buffer[offset + HEADER_SIZE:end]))
                offset = end
        except FrameError as error:
            self._broken = error
            raise
        del self._buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)


def encode(parts: Iterable) -> bytes:
    """One DATA frame as bytes (tests and tools; the comms send header and parts gathered)."""
    views, total = gather(parts)
    return pack_header(Kind.DATA, total) + b"".join(views)
