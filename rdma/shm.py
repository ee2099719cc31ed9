"""``shm://<unix-socket-path>``: messages through shared memory on one host (both ends).

Set-up, over a Unix stream socket at the listener's path (``shm://`` alone makes a private
temporary one): the handshake of rdma.handshake, then the compiled core's shm carrier
(rdma.core; rdma/csrc/shm_carrier.c) takes the socket: each side creates a sealed memfd arena,
its registered memory, and passes it to the peer over SCM_RIGHTS; the two protocol engines
(rdma/csrc/engine.c) trade the descriptors of the rings they receive into (``capacity`` bytes,
each side its own) and the link runs. The socket then only tells each side when the other is
gone: a killed peer is noticed within 50 ms, a closed one at once.

Per message the engine picks one of two ways. Eager (up to ``eager_max``, and at most half the
receiver's ring): the parts are gathered into the sender's staging area and copied into the
receiver's ring; ``send`` returns once they are there (backpressure: a full ring blocks it,
bounded by ``send(timeout=...)``), and ``recv()`` returns a read-only view into the ring,
released at the next receive. Rendezvous (larger): the sender announces the message and waits
until the receiver clears it to land in its landing region (registered, grown on demand,
reused), which needs the receiver inside a call on the comm (``recv``, ``recv_into``, or a
``send``): two ends that both send a large message and only then receive must send from a
thread of their own (rdma.collective does). A rendezvous send that timed out before it was
cleared may be retried with the same message (it resumes); the feed's messages (at most
``chunk_bytes``, 1 MiB, against rings of 4 MiB and an eager limit just above it) all go eager.

Why memfd and not multiprocessing.shared_memory: a memfd has no name. Nothing appears in
/dev/shm, so nothing is left behind when a process is SIGKILLed (the memory goes with the
last mapping), no other local process can open it (only the authenticated peer received the
descriptor), and there is no resource_tracker to unlink segments behind our back. The owner
seals its size, so the peer can rely on the mapping staying valid. The arena is sparse: only
pages written cost memory.

Without the compiled core (a host without a C compiler or Python headers) ``RingComm`` serves
instead, in Python: one ring per direction set up by rdma._shm_setup, a 16-byte record on a
control socket per message, credits from rdma.ring, and a message larger than the ring
inline on the socket. Both ends of a connection run one installation, so they agree; a core
end meeting a Python one fails its set-up with CommError.
"""
from __future__ import annotations

import mmap
import os
import shutil
import socket
from dataclasses import dataclass

from rdma import _shm_setup as setup
from rdma import core, framing
from rdma._io import Channel, Deadline, FrameReader
from rdma._listener import SocketListener
from rdma.comm import Backend, Comm, CommOptions, Listener
from rdma.errors import CommClosed, CommError, CommTimeout, ConnectFailed, FrameError
from rdma.handshake import connector_handshake, listener_handshake
from rdma.ring import RingReader, RingWriter

MIN_CAPACITY = 64 << 10
MAX_CAPACITY = 4 << 30          # the engine's largest ring
MAX_EAGER = 64 << 20            # the engine's largest eager_max
_CONTROL_BUFFER = 64 << 10
_CONTROL_SNDBUF = 4 << 20
_ARENA_SLACK = 4 << 20          # the arena's header, alignment, the engine's control records
_MAX_ARENA = 1 << 44            # the carrier's largest


@dataclass(frozen=True)
class ShmOptions(CommOptions):
    # Bytes of the ring this side receives into (rounded up to whole pages): how much the peer
    # can have in flight toward us. Each side chooses its own.
    capacity: int = 64 << 20
    # Messages up to this size (and half the receiver's ring) are copied into the receiver's
    # ring without waiting for it; larger ones wait until the receiver takes them (see above).
    # The sender's staging area is twice this. Ignored without the compiled core.
    eager_max: int = 8 << 20

    def __post_init__(self):
        super().__post_init__()
        if (isinstance(self.capacity, bool) or not isinstance(self.capacity, int)
                or not MIN_CAPACITY <= self.capacity <= MAX_CAPACITY):
            raise ValueError(f"capacity={self.capacity!r}: pass the ring size in bytes, at "
                             f"least {MIN_CAPACITY} and at most {MAX_CAPACITY}")
        if (isinstance(self.eager_max, bool) or not isinstance(self.eager_max, int)
                or not 0 <= self.eager_max <= MAX_EAGER):
            raise ValueError(f"eager_max={self.eager_max!r}: pass bytes from 0 to {MAX_EAGER}")

    @property
    def ring_bytes(self) -> int:
        return -(-self.capacity // mmap.PAGESIZE) * mmap.PAGESIZE

    def link_options(self, peer: str) -> dict:
        """The core shm link's options for a comm with these options."""
        return {"ring_bytes": self.ring_bytes, "eager_max": self.eager_max,
                "arena_bytes": self.arena_bytes, "peer": peer}

    @property
    def arena_bytes(self) -> int:
        """This side's arena: our ring, our staging area (twice eager_max, at least four of
        the engine's 256 KiB chunks) and room for the landing region of the largest message
        the peer may send by rendezvous (grown in steps of up to 1.5x, the old one freed
        first: twice max_message covers it). Sparse: address space, not memory."""
        staging = max(1 << 20, 2 * self.eager_max)
        total = self.ring_bytes + staging + 2 * self.max_message + _ARENA_SLACK
        return min(-(-total // (2 << 20)) * (2 << 20), _MAX_ARENA)


class ShmComm(core.LinkComm):
    """An shm:// comm: a link of the compiled core over its shm carrier."""


class RingComm(Comm):
    """The pure-Python shm:// comm, for a host without the compiled core (see above)."""

    def __init__(self, local: str, peer: str, tx_sock: socket.socket, rx_sock: socket.socket,
                 tx_ring: mmap.mmap, rx_ring: mmap.mmap, options: ShmOptions):
        super().__init__(local, peer)
        self._options = options
        try:    # room for thousands of 16-byte records, each a small kernel buffer
            tx_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _CONTROL_SNDBUF)
        except OSError:
            pass
        self._tx = Channel(tx_sock, peer)     # we send RING/NEED, read CREDIT
        self._rx = Channel(rx_sock, peer)     # we read RING/NEED, send CREDIT
        self._out = self._tx                  # where the peer reads our frames (tests)
        self._credits = FrameReader(self._tx, options.max_message, _CONTROL_BUFFER)
        self._records = FrameReader(self._rx, options.max_message, _CONTROL_BUFFER)
        self._writer = RingWriter(len(tx_ring))
        self._reader = RingReader(len(rx_ring))
        self._tx_ring, self._rx_ring = tx_ring, rx_ring
        self._tx_view = memoryview(tx_ring)
        self._rx_view = memoryview(rx_ring)   # read-only: the ring is mapped ACCESS_READ
        self._current: int | None = None      # end of the message recv() handed out
        # Published, not yet delivered: (start, size, end) in the ring, or a spilled message.
        self._pending: tuple[int, int, int] | memoryview | None = None

    @property
    def capacities(self) -> tuple[int, int]:
        """Bytes of the (peer's ring we write, our ring we read)."""
        return self._writer.capacity, self._reader.capacity

    def _check_open(self, channel: Channel) -> None:
        if self._closed:
            raise CommClosed(f"comm {self.local_address} -> {self.peer_address} is closed")
        channel.check()

    def _broken_by(self, error: FrameError) -> FrameError:
        reason = f"{self.peer_address} broke the shm:// protocol: {error}"
        self._tx.broken = self._rx.broken = reason
        return FrameError(reason)

    # -- sending: write into the peer's ring, then announce -------------------------------

    def send(self, parts, timeout: float | None = None) -> None:
        views, total = framing.gather(parts)
        framing.check_size(total, self._options.max_message, self.peer_address)
        deadline = Deadline(timeout)
        with self._send_lock:
            if self._closed or self._tx.broken:
                self._check_open(self._tx)
            if total > self._writer.capacity:
                self._tx.send([framing.pack_data(total), *views], deadline, "sending to")
                return
            start, end, needed = self._writer.reserve(total)
            if self._writer.tail < needed:
                self._wait_for_room(needed, deadline)
            offset = start % self._writer.capacity
            ring = self._tx_view
            for view in views:
                ring[offset:offset + len(view)] = view
                offset += len(view)
            self._tx.send([framing.pack_ring(total)], deadline, "sending to")
            self._writer.commit(end)

    def _wait_for_room(self, needed: int, deadline: Deadline) -> None:
        self._take_credits(Deadline(0))
        if self._writer.tail >= needed:
            return
        self._tx.send([framing.pack_header(framing.Kind.NEED, needed)], deadline, "sending to")
        try:
            while self._writer.tail < needed:
                self._take_credits(deadline, at_most_one=True)
        except CommTimeout:
            raise CommTimeout(f"sending to {self.peer_address}: its ring had no room for "
                              f"{deadline.timeout:g} s (backpressure: the receiver is slow, "
                              "stuck or gone)") from None

    def _take_credits(self, deadline: Deadline, at_most_one: bool = False) -> None:
        try:
            while True:
                header = self._credits.peek_header(deadline, "waiting for ring room from")
                if header.kind is not framing.Kind.CREDIT:
                    raise FrameError(f"{header.kind.name} record where a CREDIT was expected")
                self._credits.skip_header()
                self._writer.credit(header.length)
                if at_most_one:
                    return
        except CommTimeout:
            if at_most_one:
                raise
        except FrameError as error:
            raise self._broken_by(error) from None

    # -- receiving: views into our own ring -----------------------------------------------

    def recv(self, timeout: float | None = None) -> memoryview:
        deadline = Deadline(timeout)
        with self._recv_lock:
            self._check_open(self._rx)
            self._release_current(deadline)
            message = self._next_message(deadline)
            self._pending = None
            if isinstance(message, memoryview):
                return message
            start, size, self._current = message
            offset = start % self._reader.capacity
            return self._rx_view[offset:offset + size]

    def recv_into(self, buffer, timeout: float | None = None) -> int:
        target = memoryview(buffer).cast("B")
        deadline = Deadline(timeout)
        with self._recv_lock:
            self._check_open(self._rx)
            self._release_current(deadline)
            message = self._next_message(deadline)
            size = len(message) if isinstance(message, memoryview) else message[1]
            if size > len(target):
                raise FrameError(f"message of {size} bytes from {self.peer_address} does not "
                                 f"fit the buffer of {len(target)} bytes; it stays queued for "
                                 "recv()")
            if isinstance(message, memoryview):
                target[:size] = message
                self._pending = None
                return size
            start, size, end = message
            offset = start % self._reader.capacity
            target[:size] = self._rx_view[offset:offset + size]
            self._pending, self._current = None, end
            self._release_current(deadline)
            return size

    def _next_message(self, deadline: Deadline) -> tuple[int, int, int] | memoryview:
        if self._pending is not None:
            return self._pending
        try:
            while True:
                header = self._records.peek_header(deadline, "receiving from")
                if header.kind is framing.Kind.DATA:
                    if header.length <= self._reader.capacity:
                        raise FrameError(f"inline message of {header.length} bytes would have "
                                         f"fit the ring of {self._reader.capacity} bytes")
                    self._pending = self._records.take_payload(header.length, deadline,
                                                               "receiving from")
                    return self._pending
                self._records.skip_header()
                if header.kind is framing.Kind.RING:
                    start, end = self._reader.publish(header.length)
                    self._pending = (start, header.length, end)
                    return self._pending
                if header.kind is not framing.Kind.NEED:
                    raise FrameError(f"{header.kind.name} record on the ring's control socket")
                self._reader.request(header.length)
                self._send_credit(deadline)
        except FrameError as error:
            raise self._broken_by(error) from None

    def _release_current(self, deadline: Deadline) -> None:
        if self._current is not None:
            self._reader.release(self._current)
            self._current = None
            self._send_credit(deadline)

    def _send_credit(self, deadline: Deadline) -> None:
        due = self._reader.credit_due()
        if due is not None:
            self._rx.send([framing.pack_header(framing.Kind.CREDIT, due)], deadline,
                          "crediting")

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for channel in (self._tx, self._rx):
            try:    # wakes an operation blocked in another thread; the peer sees the end
                channel.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._send_lock, self._recv_lock:
            self._tx.close()
            self._rx.close()
            self._tx_view.release()
            self._rx_view.release()
            for ring in (self._tx_ring, self._rx_ring):
                try:
                    ring.close()
                except BufferError:
                    # The caller still holds a view from recv(): the mapping stays valid and
                    # is unmapped when that view is dropped (we keep no reference to it).
                    pass
            self._tx_ring = self._rx_ring = None


class ShmBackend(Backend):
    """``shm://``; ``use_core=False`` (tests) serves RingComm even where the core is built,
    under its own ``scheme`` so its addresses lead back to it."""

    def __init__(self, scheme: str = "shm", use_core: bool | None = None):
        self._scheme = scheme
        self._use_core = use_core

    def _core(self) -> bool:
        return core.built() if self._use_core is None else self._use_core

    def listen(self, address: str, secret: bytes, **opts) -> Listener:
        options = ShmOptions.parse(self._scheme, opts)
        setup.require_platform()
        path, directory = setup.socket_path(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            setup.remove_stale(path)
            sock.bind(path)
            os.chmod(path, 0o600)
            inode = os.stat(path).st_ino
            sock.listen(128)
        except BaseException as error:
            sock.close()
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
            if isinstance(error, OSError):
                raise CommError(f"cannot listen at shm://{path}: {error}") from None
            raise
        uri = f"{self._scheme}://{path}"
        use_core = self._core()

        def establish(conn: socket.socket, peer: str, deadline: Deadline) -> Comm:
            chan = Channel(conn, peer)
            listener_handshake(chan, secret, deadline)
            if use_core:
                link = core.shm_link(conn, core.seconds_left(deadline),
                                     **options.link_options(peer))
                return ShmComm(link, conn, uri, peer, options.max_message)
            tx_sock, tx_ring, rx_ring = setup.listener_setup(chan, options.ring_bytes, deadline)
            return RingComm(uri, peer, tx_sock, conn, tx_ring, rx_ring, options)

        def cleanup() -> None:
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
            if directory:
                shutil.rmtree(directory, ignore_errors=True)

        return SocketListener(sock, uri, options, establish,
                              lambda conn, raw_peer: setup.peer_pid(conn), cleanup)

    def connect(self, address: str, secret: bytes, timeout: float, **opts) -> Comm:
        options = ShmOptions.parse(self._scheme, opts)
        setup.require_platform()
        if not address:
            raise ValueError(f"{self._scheme}:// without a path can only listen; connect to "
                             "the listener's address (listener.address)")
        uri = f"{self._scheme}://{address}"
        deadline = Deadline(timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except socket.timeout:
            sock.close()
            raise CommTimeout(f"connecting to {uri}: no answer within {timeout:g} s (is the "
                              "listener's accept queue full?)") from None
        except OSError as error:
            sock.close()
            raise ConnectFailed(f"cannot connect to {uri}: {error} (is the listener running "
                                "on this host, and is this its address?)") from None
        local = f"{self._scheme}://pid:{os.getpid()}"
        try:
            chan = Channel(sock, uri)
            connector_handshake(chan, secret, deadline)
            if self._core():
                link = core.shm_link(sock, core.seconds_left(deadline),
                                     **options.link_options(uri))
                return ShmComm(link, sock, local, uri, options.max_message)
            rx_sock, tx_ring, rx_ring = setup.connector_setup(chan, options.ring_bytes,
                                                              deadline)
            return RingComm(local, uri, sock, rx_sock, tx_ring, rx_ring, options)
        except BaseException:
            sock.close()
            raise


backend = ShmBackend()
