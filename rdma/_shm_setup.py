"""Setting up a shm:// connection: its listener's socket path, and, for shm://'s pure-Python
fallback (rdma.shm.RingComm, on a host without the compiled core, whose shm carrier sets up
arenas of its own), rings as sealed memfds passed over SCM_RIGHTS (both ends).

After the handshake, on the Unix socket the connector dialled:

    connector -> listener   SETUP(capacity_c) + [memfd of the connector's ring, control socket]
    listener  -> connector  SETUP(capacity_l) + [memfd of the listener's ring]

Each side creates the ring it *receives* into, seals its size, maps it read-only, and passes
the descriptor; the peer checks size and seals before mapping it writable. The control socket
is one end of a socket pair the connector made: the listener writes its RING records there,
while the connector writes its own on the dialled socket. Also here: the listener's socket
path (a private temporary directory for ``shm://``) and the removal of stale socket files.
"""
from __future__ import annotations

import array
import fcntl
import mmap
import os
import select
import socket
import stat
import struct
import tempfile

from rdma import framing
from rdma._io import Channel, Deadline
from rdma.errors import CommClosed, CommError, FrameError, TransportUnavailable

_SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")
_MAX_UNIX_PATH = 107

def new_ring(capacity: int) -> tuple[int, mmap.mmap]:
    """A sealed memfd of ``capacity`` bytes and our read-only mapping of it."""
    fd = os.memfd_create("tfos-comm-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, capacity)
        seals = 0
        for name in _SEALS:
            seals |= getattr(fcntl, name)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        return fd, mmap.mmap(fd, capacity, access=mmap.ACCESS_READ)
    except BaseException:
        os.close(fd)
        raise


def map_peer_ring(fd: int, capacity: int, peer: str) -> mmap.mmap:
    """Our writable mapping of the ring ``peer`` passed (its descriptor is closed)."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != capacity:
            raise FrameError(f"{peer} passed a ring of {info.st_size} bytes announced as "
                             f"{capacity}")
        if not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
            raise FrameError(f"{peer} passed a ring that may shrink under us (not sealed)")
        return mmap.mmap(fd, capacity)
    except OSError as error:
        raise FrameError(f"{peer} passed a ring we cannot map: {error}") from None
    finally:
        os.close(fd)


def send_setup(chan: Channel, capacity: int, fds: list[int], deadline: Deadline) -> None:
    chan.wait(select.POLLOUT, deadline, "setting up shared memory with")
    record = framing.pack_header(framing.Kind.SETUP, capacity)
    try:
        sent = chan.sock.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             array.array("i", fds))],
                                 socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except OSError as error:
        raise CommClosed(f"setting up shared memory with {chan.peer}: {error}") from None
    if sent != len(record):
        raise CommClosed(f"setting up shared memory with {chan.peer}: short write")


def recv_setup(chan: Channel, count: int, deadline: Deadline) -> tuple[int, list[int]]:
    """The peer's ring capacity and the ``count`` descriptors that came with it."""
    what = "setting up shared memory with"
    while True:
        chan.wait(select.POLLIN, deadline, what)
        try:
            data, fds, flags, _ = socket.recv_fds(
                chan.sock, framing.HEADER_SIZE, count,
                socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            break
        except BlockingIOError:
            continue
        except OSError as error:
            raise CommClosed(f"{what} {chan.peer}: {error}") from None
    try:
        if not data:
            raise CommClosed(f"{what} {chan.peer}: the peer closed the connection")
        if len(data) < framing.HEADER_SIZE:
            data += chan.recv_exact(framing.HEADER_SIZE - len(data), deadline, what)
        header = framing.unpack_header(data)
        if header.kind is not framing.Kind.SETUP or len(fds) != count or (
                flags & socket.MSG_CTRUNC):
            raise FrameError(f"{chan.peer} sent a {header.kind.name} record with {len(fds)} "
                             f"descriptors where SETUP with {count} was expected")
        return header.length, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def peer_pid(sock: socket.socket) -> str:
    try:
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
        return f"shm://pid:{pid}"
    except OSError:
        return "shm://pid:unknown"


def require_platform() -> None:
    if not (hasattr(os, "memfd_create") and hasattr(socket, "recv_fds")
            and hasattr(fcntl, "F_ADD_SEALS")):
        raise TransportUnavailable("shm:// needs Linux (memfd_create, file seals and "
                                   "SCM_RIGHTS); use tcp:// on this platform")


def socket_path(address: str) -> tuple[str, str | None]:
    """The socket path to bind, and the private directory made for it (or None)."""
    if not address:
        directory = tempfile.mkdtemp(prefix="tfos-shm-")
        return os.path.join(directory, "comm.sock"), directory
    if not os.path.isabs(address):
        raise ValueError(f"shm://{address}: give an absolute socket path (shm:///dir/name) or "
                         "none at all (shm://) for a private temporary one")
    if len(os.fsencode(address)) > _MAX_UNIX_PATH:
        raise ValueError(f"shm://{address}: a Unix socket path has at most {_MAX_UNIX_PATH} "
                         "bytes; choose a shorter one")
    return address, None


def remove_stale(path: str) -> None:
    """Unlinks a socket file no process listens on any more (left by a killed listener)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise CommError(f"cannot listen at shm://{path}: a file that is not a socket is there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise CommError(f"cannot listen at shm://{path}: another listener is serving it")




def connector_setup(chan: Channel, capacity: int, deadline: Deadline):
    """``(rx_socket, tx_ring, rx_ring)`` for the connecting side; ``chan`` becomes its tx."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        rx_fd, rx_ring = new_ring(capacity)
        try:
            send_setup(chan, capacity, [rx_fd, theirs.fileno()], deadline)
        finally:
            os.close(rx_fd)
            theirs.close()
        peer_capacity, (ring_fd,) = recv_setup(chan, 1, deadline)
        return mine, map_peer_ring(ring_fd, peer_capacity, chan.peer), rx_ring
    except BaseException:
        mine.close()
        raise


def listener_setup(chan: Channel, capacity: int, deadline: Deadline):
    """``(tx_socket, tx_ring, rx_ring)`` for the accepting side; ``chan`` becomes its rx."""
    peer_capacity, (ring_fd, sock_fd) = recv_setup(chan, 2, deadline)
    try:
        tx_sock = socket.socket(fileno=sock_fd)
    except OSError:
        os.close(sock_fd)
        os.close(ring_fd)
        raise
    try:
        if tx_sock.family != socket.AF_UNIX or tx_sock.type != socket.SOCK_STREAM:
            os.close(ring_fd)
            raise FrameError(f"{chan.peer} passed a control socket that is not a Unix stream "
                             "socket")
        tx_ring = map_peer_ring(ring_fd, peer_capacity, chan.peer)
        rx_fd, rx_ring = new_ring(capacity)
        try:
            send_setup(chan, capacity, [rx_fd], deadline)
        finally:
            os.close(rx_fd)
        return tx_sock, tx_ring, rx_ring
    except BaseException:
        tx_sock.close()
        raise
