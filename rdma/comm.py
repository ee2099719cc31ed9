"""The comm interface of the tensor transport, and the registry of its schemes (any side).

A feeder (Spark task) ``connect``s to a TF node that ``listen``s; both then hold a ``Comm``
that carries whole messages both ways::

    with listen("shm://", secret) as listener:            # TF node
        comm = listener.accept(timeout=30)
        batch = comm.recv()                                 # memoryview, zero-copy on shm://

    with connect(address, secret, timeout=10) as comm:      # feeder
        comm.send([header, column0, column1])               # one message, gathered

Schemes: ``tcp://host:port`` (rdma.tcp), ``shm://<unix-socket-path>`` on one host
(rdma.shm), ``rdma://`` (rdma.verbs: refused, with the reason, on a host without an RDMA
device; never a silent fallback to TCP). Backends are imported when their scheme is first
used; ``register_backend`` adds one. Every connection is authenticated with the cluster's
secret (rdma.handshake) before any frame is read, and nothing read is ever unpickled.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Sequence

from rdma import framing
from rdma.errors import (AuthFailed, CommClosed, CommError, CommTimeout, ConnectFailed,
                         FrameError, TransportUnavailable)
from rdma.handshake import check_secret

__all__ = ["Comm", "Listener", "Backend", "CommOptions", "listen", "connect",
           "register_backend", "preload", "parse_uri", "CommError", "CommClosed", "CommTimeout",
           "AuthFailed", "FrameError", "ConnectFailed", "TransportUnavailable"]

logger = logging.getLogger(__name__)


class Comm(abc.ABC):
    """One authenticated, bidirectional connection that carries whole messages.

    * ``send(parts, timeout=None)`` sends ONE message made of the bytes-like ``parts``
      (gathered, not concatenated). It blocks while the receiver is behind (backpressure);
      past ``timeout`` seconds it raises CommTimeout.
    * ``recv(timeout=None)`` returns the next message as a read-only memoryview, valid until
      the next ``recv``/``recv_into``/``close`` (on shm:// it points into the shared ring).
    * ``recv_into(buffer, timeout=None)`` copies the next message into ``buffer`` and returns
      its size; a message larger than ``buffer`` raises FrameError and stays queued.
    * ``close()`` is idempotent; afterwards every operation raises CommClosed.

    ``timeout=None`` waits until data moves or the peer goes away (its death is noticed at
    once on one host, within the keepalive time over TCP). A timeout that cuts a message in
    half leaves the comm unusable (CommClosed afterwards); one that moved nothing does not.
    One thread may send while another receives; two concurrent senders (or receivers) are
    serialized.
    """

    def __init__(self, local_address: str, peer_address: str):
        self._local_address = local_address
        self._peer_address = peer_address
        # The serialization promised above: one sender, one receiver, one closer at a time.
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False

    @property
    def local_address(self) -> str:
        return self._local_address

    @property
    def peer_address(self) -> str:
        return self._peer_address

    @abc.abstractmethod
    def send(self, parts: Sequence, timeout: float | None = None) -> None:
        """Sends one message made of ``parts``."""

    @abc.abstractmethod
    def recv(self, timeout: float | None = None) -> memoryview:
        """The next message, read-only, valid until the next receive or close."""

    @abc.abstractmethod
    def recv_into(self, buffer, timeout: float | None = None) -> int:
        """Copies the next message into ``buffer``; returns its size in bytes."""

    @abc.abstractmethod
    def close(self) -> None:
        """Closes the connection (idempotent); the peer's next receive raises CommClosed."""

    @property
    def closed(self) -> bool:
        """True once close() was called or the connection was found broken."""
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"<{type(self).__name__} {self.local_address} -> {self.peer_address} "
                f"{state}>")


class Listener(abc.ABC):
    """Accepts authenticated connections at ``address`` (with the real port or path)."""

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """The URI peers connect to."""

    @abc.abstractmethod
    def accept(self, timeout: float | None = None) -> Comm:
        """The next authenticated connection.

        CommTimeout when none arrives in ``timeout`` seconds; AuthFailed for a connection
        that failed its handshake or set-up (the listener keeps serving: call accept again);
        CommClosed only once the listener itself is closed.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stops accepting, closes connections not yet accepted, removes files (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Backend(abc.ABC):
    """A scheme's implementation; ``address`` is the URI without ``scheme://``."""

    @abc.abstractmethod
    def listen(self, address: str, secret: bytes, **opts) -> Listener:
        ...

    @abc.abstractmethod
    def connect(self, address: str, secret: bytes, timeout: float, **opts) -> Comm:
        ...


@dataclass(frozen=True)
class CommOptions:
    """Options every scheme takes; backends extend it with their own."""

    # Largest message accepted; a bigger one is refused before any memory is allocated.
    max_message: int = framing.DEFAULT_MAX_MESSAGE
    # Seconds a new connection may take to authenticate (and set up shared memory).
    handshake_timeout: float = 10.0
    # Listener: authenticated connections waiting for accept(); beyond it, new ones wait in
    # the kernel's queue (and time out in their handshake if accept() is never called).
    backlog: int = 64

    def __post_init__(self):
        _check_int(self, "max_message", 1, framing.SIZE_LIMIT)
        _check_int(self, "backlog", 1, 1 << 16)
        if not (isinstance(self.handshake_timeout, (int, float)) and self.handshake_timeout > 0):
            raise ValueError(f"handshake_timeout={self.handshake_timeout!r}: pass seconds > 0")

    @classmethod
    def parse(cls, scheme: str, opts: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(opts) - names)
        if unknown:
            raise TypeError(f"{scheme}:// takes no option {', '.join(unknown)}; its options "
                            f"are {', '.join(sorted(names))}")
        return cls(**opts)


def _check_int(options, name: str, low: int, high: int) -> None:
    value = getattr(options, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r}: pass an integer between {low} and {high}")


class _Registry:
    """Scheme -> backend; built-in schemes are module names, imported on first use."""

    _BUILTIN = {"tcp": "rdma.tcp", "shm": "rdma.shm", "rdma": "rdma.verbs"}

    def __init__(self):
        self._entries: dict[str, Backend | str] = dict(self._BUILTIN)
        self._lock = threading.Lock()

    def register(self, scheme: str, backend: Backend | str) -> None:
        if not scheme.isidentifier():
            raise ValueError(f"scheme {scheme!r}: use letters, digits and underscores")
        with self._lock:
            self._entries[scheme] = backend

    def get(self, scheme: str) -> Backend:
        with self._lock:
            entry = self._entries.get(scheme)
        if entry is None:
            raise ValueError(f"unknown comm scheme {scheme!r}: use one of "
                             f"{', '.join(sorted(self._entries))}")
        if isinstance(entry, str):
            # A backend that cannot work here (rdma:// without a device) raises
            # TransportUnavailable from its import; nothing is cached then.
            backend = importlib.import_module(entry).backend
            with self._lock:
                self._entries[scheme] = backend
            return backend
        return entry


# The one module-level registry, as in dask's comm: schemes are process-wide by nature.
_registry = _Registry()


def register_backend(scheme: str, backend: Backend | str) -> None:
    """Makes ``scheme://`` URIs use ``backend`` (an instance, or a module name whose
    ``backend`` attribute is one, imported on first use)."""
    _registry.register(scheme, backend)


def preload(*schemes: str) -> list[str]:
    """Imports the backends of ``schemes`` now, so that a process about to connect does not
    pay for it on its first connection; returns the schemes that cannot work here (``rdma``
    without a device, say), which are left to fail with their reason when used."""
    unavailable = []
    for scheme in schemes:
        try:
            _registry.get(scheme)
        except TransportUnavailable:
            unavailable.append(scheme)
    return unavailable


def parse_uri(uri: str) -> tuple[str, str]:
    """``("tcp", "host:port")`` for ``"tcp://host:port"``."""
    scheme, sep, rest = uri.partition("://") if isinstance(uri, str) else ("", "", "")
    if not sep or not scheme:
        raise ValueError(f"comm address {uri!r} has no scheme: write tcp://host:port, "
                         "shm:///path/to/socket or rdma://host:port")
    return scheme, rest


def listen(uri: str, secret: bytes, **opts) -> Listener:
    """Listens at ``uri``; ``tcp://host:0`` picks a free port (see ``Listener.address``)."""
    scheme, address = parse_uri(uri)
    listener = _registry.get(scheme).listen(address, check_secret(secret), **opts)
    logger.info("comm: listening at %s", listener.address)
    return listener


def connect(uri: str, secret: bytes, timeout: float = 10.0, **opts) -> Comm:
    """Connects to ``uri`` and authenticates, all within ``timeout`` seconds."""
    scheme, address = parse_uri(uri)
    if timeout is None or not timeout > 0:
        raise ValueError(f"connect timeout={timeout!r}: pass seconds > 0")
    comm = _registry.get(scheme).connect(address, check_secret(secret), timeout, **opts)
    logger.info("comm: connected %s -> %s over %s://", comm.local_address, comm.peer_address,
                scheme)
    return comm
