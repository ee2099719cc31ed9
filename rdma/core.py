"""Links of the compiled core: one protocol engine (rdma/csrc/engine.c) over a carrier (any side).

A link carries whole messages both ways between its two ends with the methods of a ``Comm``
(``send(parts, timeout)``, ``recv(timeout)``, ``recv_into(buffer, timeout)``, ``close()``),
plus ``alloc(size)``: registered memory, sent without a staging copy::

    a, b = loopback_pair()                              # one process (tests), fault knobs
    link = shm_connect(path, secret, timeout=10)        # two processes on one host ...
    link = shm_accept(listening_socket, secret, timeout=10)   # ... the other end

Set-up of an shm link, here: the Unix socket is connected and authenticated (rdma.handshake, as
``shm://`` does); C then creates this side's arena, passes it over SCM_RIGHTS and keeps a
duplicate of the socket to notice the peer's death; the two ring descriptors (24 bytes each)
are exchanged over the socket and the link started.

A message larger than ``eager_max`` goes by rendezvous: its ``send`` returns once the receiving
side has taken it, which needs that side inside a call on the link (``recv``, or a ``send``);
ends that both send large messages before receiving must send from a thread of their own (as
rdma.collective does).
"""
from __future__ import annotations

import socket
import time

from rdma._io import Channel, Deadline
from rdma.errors import CommTimeout, ConnectFailed, TransportUnavailable
from rdma.handshake import check_secret, connector_handshake, listener_handshake

try:
    from rdma import _core
except ImportError as error:   # a host without a C compiler: said when a link is asked for
    _core, _MISSING = None, str(error)

__all__ = ["loopback_pair", "require_core", "shm_accept", "shm_connect", "shm_link"]


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


def _left(deadline: Deadline) -> float | None:
    return None if deadline.at is None else max(0.0, deadline.at - time.monotonic())


def shm_link(sock: socket.socket, timeout: float | None = 10.0, **opts):
    """A started link over ``sock``, a connected Unix stream socket already authenticated.

    Options: arena_bytes, spin_us, ring_bytes, eager_max, chunk_bytes. ``sock`` stays the
    caller's (the link keeps its own duplicate).
    """
    core = require_core()
    deadline = Deadline(timeout)
    link = core.shm_link(sock.fileno(), timeout=timeout, **opts)
    try:
        chan = Channel(sock, link.peer)
        chan.send([link.ring_descriptor()], deadline, "sending the ring descriptor to")
        link.start(chan.recv_exact(core.DESCRIPTOR_BYTES, deadline,
                                   "receiving the ring descriptor from"))
    except BaseException:
        link.close()
        raise
    return link


def shm_connect(path: str, secret: bytes, timeout: float | None = 10.0, **opts):
    """Connects to ``path`` (a listening Unix socket), authenticates, and builds the link."""
    secret = check_secret(secret)
    deadline = Deadline(timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except TimeoutError:
            raise CommTimeout(f"connecting to {path}: no answer within {timeout:g} s") from None
        except OSError as error:
            raise ConnectFailed(f"cannot connect to {path}: {error} (is the other end "
                                "listening there?)") from None
        connector_handshake(Channel(sock, path), secret, deadline)
        return shm_link(sock, _left(deadline), **opts)
    finally:
        sock.close()


def shm_accept(listener: socket.socket, secret: bytes, timeout: float | None = 10.0, **opts):
    """Accepts one connection on ``listener``, authenticates it, and builds the link."""
    secret = check_secret(secret)
    deadline = Deadline(timeout)
    listener.settimeout(timeout)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        raise CommTimeout(f"no connection within {timeout:g} s on "
                          f"{listener.getsockname()}") from None
    try:
        listener_handshake(Channel(conn, "a local process"), secret, deadline)
        return shm_link(conn, _left(deadline), **opts)
    finally:
        conn.close()
