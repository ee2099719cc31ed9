"""``tcp://host:port``: messages as DATA frames on one TCP connection (both ends).

A message is one ``sendmsg`` of the 16-byte header and the caller's parts (scatter/gather, no
concatenation). The receiver reads into one reusable, page-aligned buffer (rdma._io), reading
ahead for small messages and exactly for large ones; ``recv_into`` reads a large payload
straight into the caller's buffer. TCP's own flow control is the backpressure: a sender
blocks once the receiver's socket buffers are full.

The listener binds the given host only (port 0 picks a free port, reported in ``address``).
Connections use TCP_NODELAY (a message is flushed at once) and keepalive probes, so a peer
host that vanishes is noticed within about half a minute even by a receiver that only waits.
``close()`` half-closes and drains until the peer's end-of-stream (at most ``linger``
seconds): closing with unread data would make the kernel reset the connection and drop what
was still queued for the peer.
"""
from __future__ import annotations

import contextlib
import fcntl
import select
import socket
import struct
import termios
import time
from dataclasses import dataclass

from rdma import framing
from rdma._io import Channel, Deadline, FrameReader
from rdma._listener import SocketListener
from rdma.comm import Backend, Comm, CommOptions, Listener
from rdma.errors import CommClosed, CommError, CommTimeout, ConnectFailed, FrameError
from rdma.handshake import connector_handshake, listener_handshake

_KEEPALIVE = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))


@dataclass(frozen=True)
class TcpOptions(CommOptions):
    # SO_SNDBUF/SO_RCVBUF in bytes; None keeps the kernel's autotuning (usually faster, and
    # an explicit value is capped by net.core.wmem_max / rmem_max).
    socket_buffer: int | None = None
    # Seconds close() waits for the peer's end-of-stream before closing anyway.
    linger: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.socket_buffer is not None and (
                not isinstance(self.socket_buffer, int) or self.socket_buffer < 4096):
            raise ValueError(f"socket_buffer={self.socket_buffer!r}: pass bytes >= 4096, or "
                             "None for the kernel's autotuning")
        if not (isinstance(self.linger, (int, float)) and self.linger >= 0):
            raise ValueError(f"linger={self.linger!r}: pass seconds >= 0")


def format_address(sockaddr) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """``("::1", 80)`` for ``"[::1]:80"``; ValueError with the expected form otherwise."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"tcp address {address!r}: write tcp://host:port (port 0 for any free "
                         "port, [addr]:port for IPv6)")
    return host, int(port)


class TcpComm(Comm):
    def __init__(self, sock: socket.socket, options: TcpOptions, peer: str):
        super().__init__(format_address(sock.getsockname()), peer)
        self._chan = Channel(sock, self.peer_address)
        self._out = self._chan        # where the peer reads our frames (tests write raw bytes)
        self._reader = FrameReader(self._chan, options.max_message)
        self._options = options

    def _check_open(self) -> None:
        if self._closed:
            raise CommClosed(f"comm {self.local_address} -> {self.peer_address} is closed")
        self._chan.check()

    def send(self, parts, timeout: float | None = None) -> None:
        views, total = framing.gather(parts)
        framing.check_size(total, self._options.max_message, self.peer_address)
        deadline = Deadline(timeout)
        with self._send_lock:
            self._check_open()
            self._chan.send([framing.pack_data(total), *views], deadline, "sending to")

    def recv(self, timeout: float | None = None) -> memoryview:
        deadline = Deadline(timeout)
        with self._recv_lock:
            self._check_open()
            header = self._peek(deadline)
            return self._reader.take_payload(header.length, deadline, "receiving from")

    def recv_into(self, buffer, timeout: float | None = None) -> int:
        target = memoryview(buffer).cast("B")
        deadline = Deadline(timeout)
        with self._recv_lock:
            self._check_open()
            header = self._peek(deadline)
            if header.length > len(target):
                raise FrameError(f"message of {header.length} bytes from {self.peer_address} "
                                 f"does not fit the buffer of {len(target)} bytes; it stays "
                                 "queued for recv()")
            self._reader.take_payload_into(target, header.length, deadline, "receiving from")
            return header.length

    def _peek(self, deadline: Deadline) -> framing.Header:
        try:
            header = self._reader.peek_header(deadline, "receiving from")
            if header.kind is not framing.Kind.DATA:
                raise FrameError(f"{header.kind.name} frame on a tcp:// stream")
            return header
        except FrameError as error:
            self._chan.broken = f"{self.peer_address} sent a malformed frame: {error}"
            raise FrameError(f"from {self.peer_address}: {error}") from None

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        sock = self._chan.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            if self._recv_lock.acquire(blocking=False):
                try:
                    self._linger(self._options.linger)
                finally:
                    self._recv_lock.release()
            else:
                sock.shutdown(socket.SHUT_RD)   # wakes a receive blocked in another thread
        except OSError:
            pass
        with self._send_lock, self._recv_lock:
            self._chan.close()

    def _linger(self, seconds: float) -> None:
        """Discards unread data until the kernel has handed over all we sent (or the peer
        closed, or ``seconds`` passed): closing with unread data makes the kernel answer with
        a reset, which throws away whatever we still had queued for the peer."""
        scratch = memoryview(bytearray(64 << 10))
        until, pause = time.monotonic() + seconds, 0.001
        poller = select.poll()
        poller.register(self._chan.sock, select.POLLIN)
        try:
            while True:
                with contextlib.suppress(CommTimeout):
                    while True:
                        self._chan.recv_into(scratch, Deadline(0), "closing")
                left = until - time.monotonic()
                # After shutdown(SHUT_WR) our FIN takes one sequence number of its own.
                if 0 <= _unsent(self._chan.sock) <= 1 or left <= 0:
                    return
                # No event says "send queue empty": wake on incoming data or a short pause.
                poller.poll(int(min(pause, left) * 1000) + 1)
                pause = min(2 * pause, 0.05)
        except CommClosed:
            pass


def _unsent(sock: socket.socket) -> int:
    """Bytes we sent that the peer's kernel has not acknowledged yet (-1 if unknown)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return -1


def _configure(sock: socket.socket, options: TcpOptions) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if options.socket_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, options.socket_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, options.socket_buffer)


class TcpBackend(Backend):
    def listen(self, address: str, secret: bytes, **opts) -> Listener:
        options = TcpOptions.parse("tcp", opts)
        host, port = split_address(address)
        family, kind, proto, _, sockaddr = _resolve(host, port, passive=True)
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if options.socket_buffer:   # inherited by accepted sockets, before the SYN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, options.socket_buffer)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError as error:
            sock.close()
            raise CommError(f"cannot listen at tcp://{address}: {error} (port taken, or "
                            "the host is not an address of this machine?)") from None

        def establish(conn: socket.socket, peer: str, deadline: Deadline) -> Comm:
            _configure(conn, options)
            listener_handshake(Channel(conn, peer), secret, deadline)
            return TcpComm(conn, options, peer)

        return SocketListener(sock, format_address(sock.getsockname()), options, establish,
                              lambda conn, raw_peer: format_address(raw_peer))

    def connect(self, address: str, secret: bytes, timeout: float, **opts) -> Comm:
        options = TcpOptions.parse("tcp", opts)
        host, port = split_address(address)
        deadline = Deadline(timeout)
        family, kind, proto, _, sockaddr = _resolve(host, port, passive=False)
        sock = socket.socket(family, kind, proto)
        try:
            _configure(sock, options)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            channel = Channel(sock, f"tcp://{address}")
            connector_handshake(channel, secret, deadline)
            return TcpComm(sock, options, channel.peer)
        except socket.timeout:
            sock.close()
            raise CommTimeout(f"connecting to tcp://{address}: no answer within {timeout:g} s "
                              "(host down, or a firewall drops the packets?)") from None
        except OSError as error:
            sock.close()
            raise ConnectFailed(f"cannot connect to tcp://{address}: {error} (is the listener "
                                "running, and is this its address and port?)") from None
        except BaseException:
            sock.close()
            raise


def _resolve(host: str, port: int, passive: bool):
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_PASSIVE if passive else 0)[0]
    except socket.gaierror as error:
        raise ConnectFailed(f"cannot resolve host {host!r} of tcp://{host}:{port}: "
                            f"{error}") from None


backend = TcpBackend()
