"""Accepting side shared by the socket schemes (runs in the listening process, e.g. a TF node).

A background thread accepts connections and authenticates each in its own short-lived thread
(at most ``MAX_HANDSHAKES`` at once, each bounded by ``handshake_timeout``), so a slow or
hostile peer never delays the others and a feeder's ``connect`` completes even while the
application is busy. Finished handshakes, failed ones included, wait in a queue bounded by
``backlog`` for ``accept()``: a failed one is raised there as AuthFailed (whatever went
wrong: secret, garbage, a peer that vanished, a set-up error), a good one is returned.
When the queue is full no more connections are taken from the kernel (backpressure).
"""
from __future__ import annotations

import collections
import logging
import select
import socket
import threading
import time
from typing import Callable

from rdma._io import Deadline
from rdma.comm import Comm, CommOptions, Listener
from rdma.errors import AuthFailed, CommClosed, CommError, CommTimeout

logger = logging.getLogger(__name__)

MAX_HANDSHAKES = 8

# (accepted socket, peer description, deadline) -> an authenticated Comm; raises CommError.
Establish = Callable[[socket.socket, str, Deadline], Comm]


class _Ready:
    """Bounded queue of accept() results, woken by close()."""

    def __init__(self, limit: int):
        self._limit = limit
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or len(self._items) < self._limit)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, deadline: Deadline, address: str):
        with self._cond:
            ready = self._cond.wait_for(lambda: self._closed or self._items,
                                        None if deadline.at is None
                                        else max(0.0, deadline.at - time.monotonic()))
            if self._closed:
                raise CommClosed(f"listener {address} is closed")
            if not ready:
                raise CommTimeout(f"no connection to {address} within {deadline.timeout:g} s: "
                                  "did the peers start, and do they have this address?")
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> list:
        with self._cond:
            self._closed = True
            items, self._items = list(self._items), collections.deque()
            self._cond.notify_all()
            return items


class SocketListener(Listener):
    """A listening socket whose connections are authenticated by ``establish``."""

    def __init__(self, sock: socket.socket, address: str, options: CommOptions,
                 establish: Establish, describe_peer: Callable[[socket.socket, object], str],
                 cleanup: Callable[[], None] | None = None):
        self._sock = sock
        self._address = address
        self._options = options
        self._establish = establish
        self._describe_peer = describe_peer
        self._cleanup = cleanup
        self._ready = _Ready(options.backlog)
        self._slots = threading.Condition()
        self._handshaking = 0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._close_lock = threading.Lock()
        self._closed = False
        sock.setblocking(False)
        self._thread = threading.Thread(target=self._serve, name=f"comm-accept {address}",
                                        daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return self._address

    def accept(self, timeout: float | None = None) -> Comm:
        item = self._ready.get(Deadline(timeout), self._address)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake_w.send(b"x")
        with self._slots:
            self._slots.notify_all()
        self._thread.join(timeout=5)
        for item in self._ready.close():
            if isinstance(item, Comm):
                item.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()
        if self._cleanup:
            self._cleanup()
        logger.debug("comm: listener %s closed", self._address)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            poller.poll()
            if self._stop.is_set():
                return
            try:
                conn, raw_peer = self._sock.accept()
            except BlockingIOError:
                continue
            except OSError as error:
                # Out of file descriptors and the like: back off instead of spinning.
                logger.warning("comm: accept at %s failed: %s", self._address, error)
                self._stop.wait(0.5)
                continue
            if not self._take_slot():
                conn.close()
                return
            threading.Thread(target=self._handshake, args=(conn, raw_peer), daemon=True,
                             name=f"comm-handshake {self._address}").start()

    def _take_slot(self) -> bool:
        # Each handshake ends within handshake_timeout, or once accept() makes room.
        with self._slots:
            self._slots.wait_for(lambda: self._stop.is_set()
                                 or self._handshaking < MAX_HANDSHAKES)
            if self._stop.is_set():
                return False
            self._handshaking += 1
            return True

    def _handshake(self, conn: socket.socket, raw_peer) -> None:
        try:
            peer = self._describe_peer(conn, raw_peer)
            deadline = Deadline(self._options.handshake_timeout)
            try:
                result = self._establish(conn, peer, deadline)
                logger.info("comm: accepted %s at %s", peer, self._address)
            except (CommError, OSError) as error:
                # One connection failed: never CommClosed/CommTimeout, which accept() keeps
                # for the listener itself.
                if not isinstance(error, AuthFailed):
                    error = AuthFailed(f"connection from {peer} to {self._address} failed "
                                       f"during its set-up: {error}")
                logger.warning("comm: refused a connection to %s: %s", self._address, error)
                conn.close()
                result = error
            except Exception as error:  # a bug must not kill the listener silently
                logger.exception("comm: setting up a connection to %s failed", self._address)
                conn.close()
                result = CommError(f"setting up a connection from {peer} to {self._address} "
                                   f"failed: {error!r}")
            if not self._ready.put(result) and isinstance(result, Comm):
                result.close()
        finally:
            with self._slots:
                self._handshaking -= 1
                self._slots.notify_all()
