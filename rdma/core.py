"""Links of the compiled core: one protocol engine (rdma/csrc/engine.c) over a carrier (any side).

A link carries whole messages both ways between its two ends with the methods of a ``Comm``
(``send(parts, timeout)``, ``recv(timeout)``, ``recv_into(buffer, timeout)``, ``close()``),
plus ``alloc(size)``: registered memory, sent without a staging copy::

    a, b = loopback_pair()                              # one process (tests), fault knobs
    link = shm_connect(path, secret, timeout=10)        # two processes on one host ...
    link = shm_accept(listening_socket, secret, timeout=10)   # ... the other end
    link = verbs_connect("host:port", secret, timeout=10)     # two hosts with RDMA ...
    link = verbs_accept(listening_socket, secret, timeout=10) # ... the other end

Set-up, here: the bootstrap socket (a Unix socket for shm, TCP for verbs) is connected and
authenticated (rdma.handshake, as the comm schemes do); C then sets up its carrier over it (shm:
creates this side's arena and passes it over SCM_RIGHTS; verbs: trades queue-pair numbers,
PSNs and GIDs and connects an RC queue pair) and keeps a duplicate of the socket to notice the
peer's death; the two ring descriptors (24 bytes each) are exchanged over the socket and the
link started. ``LinkComm`` makes a started link a ``Comm`` (what ``shm://`` and ``rdma://``
hand out).

A message larger than ``eager_max`` goes by rendezvous: its ``send`` returns once the receiving
side has taken it, which needs that side inside a call on the link (``recv``, or a ``send``);
ends that both send large messages before receiving must send from a thread of their own (as
rdma.collective does).
"""
from __future__ import annotations

import socket
import time

from rdma import framing
from rdma._io import Channel, Deadline
from rdma.comm import Comm
from rdma.errors import CommClosed, CommTimeout, ConnectFailed, TransportUnavailable
from rdma.handshake import check_secret, connector_handshake, listener_handshake

try:
    from rdma import _core
except ImportError as error:   # a host without a C compiler: said when a link is asked for
    _core, _MISSING = None, str(error)

__all__ = ["LinkComm", "built", "loopback_pair", "require_core", "seconds_left", "shm_accept",
           "shm_connect", "shm_link", "verbs_accept", "verbs_connect", "verbs_link"]


def built() -> bool:
    """Whether the compiled core is importable here."""
    return _core is not None


def require_core():
    """The compiled module, or TransportUnavailable saying how to build it."""
    if _core is None:
        raise TransportUnavailable(f"the compiled core rdma._core is not built ({_MISSING}): "
                                   "install a C compiler and the Python headers, then "
                                   "reinstall tfos (pip install -e .)")
    return _core


def loopback_pair(**opts):
    """Two started links wired to each other in this process (options: ring_bytes, eager_max,
    chunk_bytes)."""
    return require_core().loopback_pair(**opts)


def seconds_left(deadline: Deadline) -> float | None:
    """What is left of ``deadline`` in seconds (None: no deadline)."""
    return None if deadline.at is None else max(0.0, deadline.at - time.monotonic())


def _start(link, sock: socket.socket, deadline: Deadline):
    """Trades ring descriptors with the peer over ``sock`` and starts ``link`` (closed on
    failure)."""
    try:
        chan = Channel(sock, link.peer)
        chan.send([link.ring_descriptor()], deadline, "sending the ring descriptor to")
        link.start(chan.recv_exact(_core.DESCRIPTOR_BYTES, deadline,
                                   "receiving the ring descriptor from"))
    except BaseException:
        link.close()
        raise
    return link


def shm_link(sock: socket.socket, timeout: float | None = 10.0, **opts):
    """A started link over ``sock``, a connected Unix stream socket already authenticated.

    Options: arena_bytes, spin_us, peer (its name in errors), ring_bytes, eager_max,
    chunk_bytes. ``sock`` stays the caller's (the link keeps its own duplicate).
    """
    deadline = Deadline(timeout)
    link = require_core().shm_link(sock.fileno(), timeout=timeout, **opts)
    return _start(link, sock, deadline)


def verbs_link(sock: socket.socket, timeout: float | None = 10.0, **opts):
    """A started link over an RDMA queue pair, set up through ``sock``, a connected stream
    socket already authenticated whose peer calls this at the same time.

    Options: device, port, gid_index, send_depth, recv_depth, spin_us, peer, ring_bytes,
    eager_max, chunk_bytes. ``sock`` stays the caller's (the link keeps its own duplicate and
    takes the socket's hang-up as the peer's end).
    """
    deadline = Deadline(timeout)
    link = require_core().verbs_link(sock.fileno(), timeout=timeout, **opts)
    return _start(link, sock, deadline)


def _dial(sock: socket.socket, target, shown: str, secret: bytes, timeout: float | None,
          make_link, opts: dict):
    secret = check_secret(secret)
    deadline = Deadline(timeout)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except TimeoutError:
            raise CommTimeout(f"connecting to {shown}: no answer within {timeout:g} s") from None
        except OSError as error:
            raise ConnectFailed(f"cannot connect to {shown}: {error} (is the other end "
                                "listening there?)") from None
        connector_handshake(Channel(sock, shown), secret, deadline)
        return make_link(sock, seconds_left(deadline), **opts)
    finally:
        sock.close()


def _answer(listener: socket.socket, secret: bytes, timeout: float | None, make_link,
            opts: dict):
    secret = check_secret(secret)
    deadline = Deadline(timeout)
    listener.settimeout(timeout)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        raise CommTimeout(f"no connection within {timeout:g} s on "
                          f"{listener.getsockname()}") from None
    try:
        listener_handshake(Channel(conn, "a connecting process"), secret, deadline)
        return make_link(conn, seconds_left(deadline), **opts)
    finally:
        conn.close()


def shm_connect(path: str, secret: bytes, timeout: float | None = 10.0, **opts):
    """Connects to ``path`` (a listening Unix socket), authenticates, and builds the link."""
    return _dial(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path, path, secret,
                 timeout, shm_link, opts)


def shm_accept(listener: socket.socket, secret: bytes, timeout: float | None = 10.0, **opts):
    """Accepts one connection on ``listener``, authenticates it, and builds the link."""
    return _answer(listener, secret, timeout, shm_link, opts)


def verbs_connect(address: str, secret: bytes, timeout: float | None = 10.0, **opts):
    """Connects to ``address`` ("host:port", a listening TCP socket), authenticates, and
    builds a verbs link."""
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    return _dial(sock, (host.strip("[]"), int(port)), address, secret, timeout, verbs_link,
                 opts)


def verbs_accept(listener: socket.socket, secret: bytes, timeout: float | None = 10.0, **opts):
    """Accepts one TCP connection on ``listener``, authenticates it, builds a verbs link."""
    return _answer(listener, secret, timeout, verbs_link, opts)


class LinkComm(Comm):
    """A ``Comm`` over a started link of the core (what ``shm://`` and ``rdma://`` return).

    The engine does the work and the waiting (without the GIL); this adds the comm's
    addresses, its ``max_message`` check on sending, and close semantics: after ``close()``
    the comm drops the link, whose memory is unmapped once no view from ``recv`` is left.
    ``_out`` is the set-up socket, kept open until close (the carrier watches its own duplicate
    for the peer's hang-up; tests play a misbehaving peer on it, as on tcp://).
    """

    def __init__(self, link, sock: socket.socket, local: str, peer: str, max_message: int):
        super().__init__(local, peer)
        self._link = link
        self._out = Channel(sock, peer)
        self._max_message = max_message

    def _live(self):
        link = self._link
        if link is None:
            raise CommClosed(f"comm {self.local_address} -> {self.peer_address} is closed")
        return link

    def send(self, parts, timeout: float | None = None) -> None:
        views, total = framing.gather(parts)
        framing.check_size(total, self._max_message, self.peer_address)
        self._live().send(views, timeout)

    def recv(self, timeout: float | None = None) -> memoryview:
        return self._live().recv(timeout)

    def recv_into(self, buffer, timeout: float | None = None) -> int:
        return self._live().recv_into(buffer, timeout)

    def stats(self) -> dict:
        """The engine's counters (eager and rendezvous messages, credits, bytes staged)."""
        return self._live().stats()

    def close(self) -> None:
        with self._close_lock:
            link, self._link = self._link, None
            self._closed = True
        if link is not None:
            link.close()     # the peer is told; a call blocked in another thread returns
            self._out.close()
