"""How to reach a peer: the one place that picks a scheme and sizes its receive buffers (any side).

A server that must be reachable from its own host and from others listens at
``listen_uris(host, socket_path)`` -- a ``tcp://`` port on its address and an ``shm://`` socket
-- and tells its peers the addresses ``advertise`` makes of its listeners: the ``shm://`` one
tagged with the key of the host it serves (boot id and network namespace), a ``tcp://`` one
bound to every interface rewritten to the advertised host. A client hands the advertised list
to ``connect``, which picks the scheme with ``choose``: shared memory when the peer is on this
host, TCP otherwise (later ``rdma://`` between hosts with a fabric).

``receive_bytes`` is how much a side wants to receive in flight: schemes with receiver-owned
buffers (``shm://``'s ring) size them from it; TCP leaves it to the kernel.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Sequence

from rdma import comm
from rdma.errors import ConnectFailed
from rdma.tcp import format_address

logger = logging.getLogger(__name__)

SHM, TCP = "shm", "tcp"
# Schemes that carry a connection between two hosts, best first.
NETWORK_SCHEMES = (TCP,)


def host_key() -> str:
    """Who can reach a ``shm://`` socket of this process: the same kernel (boot id) in the same
    network namespace. A path alone is not enough: test hosts made of network namespaces share
    one filesystem, and a real second host may share a network home directory."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return socket.gethostname()
    return f"{boot}.{netns}"


def format_tcp(host: str, port: int) -> str:
    """``tcp://host:port`` (``tcp://[addr]:port`` for IPv6)."""
    return format_address((host, port))


def listen_uris(bind_host: str, socket_path: str | None = None) -> list[str]:
    """Where a server listens: a free TCP port on ``bind_host`` for peers on other hosts, and
    the Unix socket ``socket_path`` for peers on this one (omitted when None)."""
    uris = [format_tcp(bind_host, 0)]
    if socket_path is not None:
        uris.append(f"shm://{socket_path}")
    return uris


def advertise(listener_address: str, host: str) -> str:
    """The address peers are given for a listener at ``listener_address`` serving ``host``."""
    scheme, rest = comm.parse_uri(listener_address)
    if scheme == SHM:
        return f"{listener_address}#{host_key()}"
    if scheme == TCP:
        bound, port = rest.rsplit(":", 1)
        if bound.strip("[]") != host:   # bound to every interface: name the host's address
            return format_tcp(host, int(port))
    return listener_address


def choose(addresses: Sequence[str], same_host: bool = True) -> str:
    """The address of ``addresses`` (as ``advertise`` wrote them) to connect to from here.

    Shared memory when the peer is on this host (its ``shm://`` address carries this host's key
    and the socket exists here) and ``same_host`` allows it; else the first network scheme.
    Raises ConnectFailed when none is reachable from this host.
    """
    by_scheme: dict[str, str] = {}
    for address in addresses:
        scheme, _ = comm.parse_uri(address)
        by_scheme.setdefault(scheme, address)
    shm = by_scheme.get(SHM)
    if same_host and shm is not None:
        path, _, key = comm.parse_uri(shm)[1].partition("#")
        if key == host_key() and os.path.exists(path):
            return f"shm://{path}"
    for scheme in NETWORK_SCHEMES:
        if scheme in by_scheme:
            return by_scheme[scheme]
    raise ConnectFailed(f"no address reachable from this host among {', '.join(addresses)}")


def buffer_options(uri: str, receive_bytes: int | None, send_bytes: int | None = None) -> dict:
    """The options that give a comm at ``uri`` a receive buffer of ``receive_bytes`` and, with
    ``send_bytes``, make messages up to that size go without waiting for the receiver
    (``shm://``: its eager limit, whose staging area of twice that is memory of each new
    connection)."""
    if comm.parse_uri(uri)[0] != SHM:
        return {}
    options = {} if receive_bytes is None else {"capacity": receive_bytes}
    if send_bytes is not None:
        options["eager_max"] = send_bytes
    return options


def connect(addresses: Sequence[str], secret: bytes, timeout: float, *,
            receive_bytes: int | None = None, same_host: bool = True, **opts) -> comm.Comm:
    """Connects to the peer advertised at ``addresses`` over the scheme ``choose`` picks."""
    uri = choose(addresses, same_host)
    return comm.connect(uri, secret, timeout, **buffer_options(uri, receive_bytes), **opts)


def serve_each(listener: comm.Listener, serve: Callable[[comm.Comm], None],
               stopped: threading.Event, what: str, log: logging.Logger = logger) -> None:
    """Accepts connections until ``stopped`` is set or the listener closes, each served by
    ``serve(conn)`` on a daemon thread of its own (named ``what``); a connection that fails its
    handshake is logged (to the server's ``log``) and the next one accepted."""
    while not stopped.is_set():
        try:
            conn = listener.accept()
        except comm.CommError as exc:
            if stopped.is_set():
                continue
            log.warning("%s at %s refused a connection: %s", what, listener.address, exc)
            if isinstance(exc, comm.CommClosed):
                return
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True, name=what).start()


def listen(uri: str, secret: bytes, *, receive_bytes: int | None = None,
           **opts) -> comm.Listener:
    """Listens at ``uri``, each accepted comm receiving into ``receive_bytes`` where the scheme
    has its own buffers."""
    return comm.listen(uri, secret, **buffer_options(uri, receive_bytes), **opts)
