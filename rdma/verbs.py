"""``rdma://host:port``: messages over RDMA verbs between hosts with a fabric (both ends).

Set-up: the connector opens a TCP connection to ``host:port`` (the listener's bootstrap port),
configured and authenticated as tcp:// does (rdma.handshake); over it the compiled core's verbs
carrier (rdma.core; rdma/csrc/verbs_carrier.c, libibverbs loaded at run time) connects one RC
queue pair per comm (queue-pair numbers, PSNs, GIDs or LIDs traded), and the two protocol
engines trade the descriptors of the rings they receive into. From then on every message is
RDMA WRITEs with immediate into the receiver's registered ring (eager, up to ``eager_max``) or,
once it cleared the message, into its landing region (rendezvous, larger ones; see rdma.shm
for what that asks of the receiver). The TCP connection stays open: its hang-up is how each
side learns that the other is gone (keepalive probes for a host that vanished).

On a host that cannot do RDMA, ``listen`` and ``connect`` raise TransportUnavailable naming
what is missing, root cause first (``rdma.check``: device, active port, verbs device files,
libibverbs, the locked-memory limit, the compiled core). It never falls back to TCP: a job that
asked for RDMA and silently got TCP would report numbers that are not what was asked for.
With ``TFOS_IBVERBS_LIBRARY`` set (another libibverbs, such as the tests' fake) the devices
are the ones that library lists (``ibv_get_device_list``), not sysfs's.
"""
from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass

from rdma import check, core, tcp
from rdma._io import Channel, Deadline
from rdma._listener import SocketListener
from rdma.comm import Backend, Comm, CommOptions, Listener
from rdma.errors import CommError, CommTimeout, ConnectFailed, TransportUnavailable
from rdma.handshake import connector_handshake, listener_handshake

LIBRARY_ENV = "TFOS_IBVERBS_LIBRARY"
MIN_CAPACITY = 64 << 10
MAX_CAPACITY = 4 << 30          # the engine's largest ring
MAX_EAGER = 64 << 20            # the engine's largest eager_max


@dataclass(frozen=True)
class RdmaOptions(CommOptions):
    # Bytes of the ring this side receives into: registered (locked) memory, as is the
    # staging area (twice eager_max, at least 1 MiB) and the landing region of the largest
    # message received by rendezvous.
    capacity: int = 16 << 20
    # Messages up to this size (and half the receiver's ring) go without waiting for the
    # receiver; larger ones by rendezvous.
    eager_max: int = 1 << 20
    # The RDMA device (e.g. "mlx5_0") and its 1-based port; None and 0: the first active one.
    device: str | None = None
    ib_port: int = 0
    # The GID table entry (RoCE); -1: RoCE v2 with an IPv4 address first.
    gid_index: int = -1

    def __post_init__(self):
        super().__post_init__()
        for name, low, high in (("capacity", MIN_CAPACITY, MAX_CAPACITY),
                                ("eager_max", 0, MAX_EAGER), ("ib_port", 0, 255),
                                ("gid_index", -1, 255)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name}={value!r}: pass an integer from {low} to {high}")
        if self.capacity % 64:
            raise ValueError(f"capacity={self.capacity}: pass a multiple of 64 bytes")
        if self.device is not None and not (isinstance(self.device, str) and self.device):
            raise ValueError(f"device={self.device!r}: pass a device name such as mlx5_0, or "
                             "None for the first with an active port")

    def link_options(self, peer: str) -> dict:
        """The core verbs link's options for a comm with these options."""
        return {"device": self.device, "port": self.ib_port, "gid_index": self.gid_index,
                "ring_bytes": self.capacity, "eager_max": self.eager_max, "peer": peer}


class RdmaComm(core.LinkComm):
    """An rdma:// comm: a link of the compiled core over its verbs carrier. A message's writes
    may still be in flight when ``send`` returns; once the comm is closed and dropped, the
    link waits (up to 1 s) for every write it posted to complete before its queue pair is
    torn down and the bootstrap socket hung up (rdma/csrc/module.c), so what was sent before
    ``close()`` lands before the peer sees the end."""


def missing() -> str | None:
    """Why rdma:// cannot run on this host (every problem, root cause first), or None."""
    library = os.environ.get(LIBRARY_ENV)
    problems = [_library_problem(library)] if library else check.check().problems
    problems = [p for p in problems if p]
    if not problems and not (core.built() and hasattr(core.require_core(), "verbs_link")):
        problems = ["tfos's compiled transport rdma._core is not built with the verbs carrier: "
                    "reinstall tfos with a C compiler present"]
    return "; ".join(problems) or None


def _library_problem(path: str) -> str:
    """What ``path``, a libibverbs named by TFOS_IBVERBS_LIBRARY, lacks ("" when it lists a
    device)."""
    try:
        lib = ctypes.CDLL(path, use_errno=True)
        lib.ibv_get_device_list.restype = ctypes.POINTER(ctypes.c_void_p)
        lib.ibv_get_device_list.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.ibv_free_device_list.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    except (OSError, AttributeError) as error:
        return f"{LIBRARY_ENV}={path} is not a usable libibverbs ({error})"
    count = ctypes.c_int(0)
    devices = lib.ibv_get_device_list(ctypes.byref(count))
    if not devices:
        return (f"no RDMA device: {path} ({LIBRARY_ENV}) lists none "
                f"({os.strerror(ctypes.get_errno())})")
    lib.ibv_free_device_list(devices)
    return "" if count.value > 0 else f"no RDMA device: {path} ({LIBRARY_ENV}) lists none"


def _require_rdma() -> None:
    why = missing()
    if why:
        raise TransportUnavailable(
            f"rdma:// on host {socket.gethostname()}: {why}. Use tcp:// (or shm:// on one "
            "host) explicitly; tfos never falls back from rdma:// on its own")


def _address(sockaddr) -> str:
    return "rdma://" + tcp.format_address(sockaddr).removeprefix("tcp://")


def _bootstrap(sock: socket.socket) -> None:
    # tcp://'s settings: no delay for the set-up's small records, keepalive so that a peer
    # host that vanished hangs the link up within about half a minute.
    tcp._configure(sock, tcp.TcpOptions())


class RdmaBackend(Backend):
    def listen(self, address: str, secret: bytes, **opts) -> Listener:
        options = RdmaOptions.parse("rdma", opts)
        _require_rdma()
        host, port = tcp.split_address(address)
        family, kind, proto, _, sockaddr = tcp._resolve(host, port, passive=True)
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError as error:
            sock.close()
            raise CommError(f"cannot listen at rdma://{address}: {error} (port taken, or "
                            "the host is not an address of this machine?)") from None
        uri = _address(sock.getsockname())

        def establish(conn: socket.socket, peer: str, deadline: Deadline) -> Comm:
            _bootstrap(conn)
            listener_handshake(Channel(conn, peer), secret, deadline)
            link = core.verbs_link(conn, core.seconds_left(deadline),
                                   **options.link_options(peer))
            return RdmaComm(link, conn, uri, peer, options.max_message)

        return SocketListener(sock, uri, options, establish,
                              lambda conn, raw_peer: _address(raw_peer))

    def connect(self, address: str, secret: bytes, timeout: float, **opts) -> Comm:
        options = RdmaOptions.parse("rdma", opts)
        _require_rdma()
        host, port = tcp.split_address(address)
        uri = f"rdma://{address}"
        deadline = Deadline(timeout)
        family, kind, proto, _, sockaddr = tcp._resolve(host, port, passive=False)
        sock = socket.socket(family, kind, proto)
        try:
            _bootstrap(sock)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except socket.timeout:
            sock.close()
            raise CommTimeout(f"connecting to {uri}: no answer within {timeout:g} s (host "
                              "down, or a firewall drops the packets?)") from None
        except OSError as error:
            sock.close()
            raise ConnectFailed(f"cannot connect to {uri}: {error} (is the listener running, "
                                "and is this its address and port?)") from None
        try:
            connector_handshake(Channel(sock, uri), secret, deadline)
            link = core.verbs_link(sock, core.seconds_left(deadline),
                                   **options.link_options(uri))
            return RdmaComm(link, sock, _address(sock.getsockname()), uri, options.max_message)
        except BaseException:
            sock.close()
            raise


backend = RdmaBackend()
