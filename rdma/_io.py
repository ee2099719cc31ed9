"""Deadline-bounded socket I/O shared by the tcp and shm comms (both ends).

Sockets stay in blocking mode: an operation without a deadline is one system call. With a
deadline it is tried with ``MSG_DONTWAIT`` first and only polls when it would block, so the
fast path never pays for ``poll``. End of stream, a reset or a broken pipe become
``CommClosed``; a deadline that passes becomes ``CommTimeout`` with the caller's advice.
"""
from __future__ import annotations

import mmap
import select
import socket
import time

from rdma import framing
from rdma.errors import CommClosed, CommTimeout

# Plain ints: combining the socket module's IntFlag members costs a Python-level call.
_SEND_FLAGS = int(getattr(socket, "MSG_NOSIGNAL", 0))
_DONTWAIT = int(socket.MSG_DONTWAIT)
_IOV_MAX = 1024
_POLL_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL
_POLL_MAX_MS = 2**31 - 1     # poll() takes a C int; longer waits wake up and wait again


class Deadline:
    """When a bounded wait ends; ``Deadline(None)`` never does."""

    __slots__ = ("timeout", "at")

    def __init__(self, timeout: float | None):
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout={timeout!r}: pass seconds >= 0, or None to wait "
                             "until the peer answers or goes away")
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + timeout

    def poll_ms(self) -> int:
        """Milliseconds left for poll(): -1 without a deadline, 0 once passed."""
        if self.at is None:
            return -1
        return min(max(0, int((self.at - time.monotonic()) * 1000 + 0.999)), _POLL_MAX_MS)


class Channel:
    """A connected stream socket with deadline-bounded I/O and an address for messages.

    ``broken`` is set once the stream is unusable (the peer closed or reset it, a deadline cut a
    message in half, a malformed frame): every later operation raises CommClosed with that
    reason.
    """

    def __init__(self, sock: socket.socket, peer: str):
        sock.setblocking(True)
        self.sock = sock
        self.peer = peer
        self.broken: str | None = None

    def check(self) -> None:
        if self.broken:
            raise CommClosed(self.broken)

    def wait(self, events: int, deadline: Deadline, what: str) -> None:
        poller = select.poll()
        poller.register(self.sock, events | _POLL_ERR)
        while not poller.poll(deadline.poll_ms()):
            if deadline.at is not None and time.monotonic() >= deadline.at:
                raise CommTimeout(f"{what} {self.peer}: nothing happened within "
                                  f"{deadline.timeout:g} s")

    def recv_into(self, view, deadline: Deadline, what: str) -> int:
        """Reads at least one byte into ``view``; CommClosed at end of stream."""
        flags = 0 if deadline.at is None else _DONTWAIT
        while True:
            try:
                count = self.sock.recv_into(view, 0, flags)
            except BlockingIOError:
                self.wait(select.POLLIN, deadline, what)
                continue
            except OSError as error:
                raise self._lost(f"{what} {self.peer}: connection lost ({error}); the peer "
                                 "closed it or its process ended") from None
            if count == 0:
                raise self._lost(f"{what} {self.peer}: the peer closed the connection (it "
                                 "finished, called close(), or its process ended)")
            return count

    def _lost(self, reason: str) -> CommClosed:
        # The peer only half-closes while closing: nothing sent after this would be read.
        self.broken = reason
        return CommClosed(reason)

    def recv_exact(self, size: int, deadline: Deadline, what: str) -> bytes:
        data = bytearray(size)
        view, got = memoryview(data), 0
        while got < size:
            got += self.recv_into(view[got:], deadline, what)
        return bytes(data)

    def send(self, buffers: list, deadline: Deadline, what: str) -> None:
        """Sends every byte of ``buffers`` (byte-format buffers, gathered: no concatenation).

        The usual case is one ``sendmsg``; the loop only runs when the socket takes part.
        """
        self.check()
        flags = _SEND_FLAGS if deadline.at is None else _SEND_FLAGS | _DONTWAIT
        total = sum(map(len, buffers))
        done = self._sendmsg(buffers[:_IOV_MAX], flags, what)
        if done == total:
            return
        pending, skip = [memoryview(b) for b in buffers], done
        while True:
            while skip:
                if skip >= len(pending[0]):
                    skip -= len(pending.pop(0))
                else:
                    pending[0], skip = pending[0][skip:], 0
            if not pending:
                return
            try:
                self.wait(select.POLLOUT, deadline, what)
            except CommTimeout as timeout:
                if done:
                    self.broken = (f"{what} {self.peer} was cut by its deadline halfway "
                                   "through a message: the connection is unusable")
                raise CommTimeout(f"{timeout}: the receiver is not taking data "
                                  "(backpressure: it is slow, stuck or gone)") from None
            skip = self._sendmsg(pending[:_IOV_MAX], flags, what)
            done += skip

    def _sendmsg(self, buffers: list, flags: int, what: str) -> int:
        try:
            return self.sock.sendmsg(buffers, (), flags)
        except BlockingIOError:
            return 0
        except OSError as error:
            raise self._lost(f"{what} {self.peer}: connection lost ({error}); the peer "
                             "closed it or its process ended") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class FrameReader:
    """Buffered reader of framed records from a Channel, into one reusable buffer.

    Reads ahead (up to ``READAHEAD`` bytes past what it needs) so that many small records cost
    one system call, but reads a large payload exactly, so the next message is never copied to
    make room. The buffer is page-aligned anonymous memory; a payload that has to be moved is
    placed on a 64-byte boundary. It grows up to ``max_message`` plus one header and never
    shrinks. A timeout leaves the reader consistent: the next call resumes.
    """

    READAHEAD = 64 << 10
    _HOME = 64 - framing.HEADER_SIZE   # a header here puts its payload on a 64-byte boundary

    def __init__(self, channel: Channel, max_message: int, initial: int = 256 << 10):
        self._chan = channel
        self._max = max_message
        self._start = self._end = self._HOME
        self._set_buffer(mmap.mmap(-1, initial))

    def _set_buffer(self, buffer: mmap.mmap) -> None:
        # A message view handed out earlier keeps the old buffer alive until it is dropped.
        self._mm = buffer
        self._rw = memoryview(buffer)
        self._ro = self._rw.toreadonly()

    def peek_header(self, deadline: Deadline, what: str) -> framing.Header:
        if self._end - self._start < framing.HEADER_SIZE:
            self._fill(framing.HEADER_SIZE, deadline, what)
        return framing.unpack_header(self._mm, self._start, self._max)

    def skip_header(self) -> None:
        self._start += framing.HEADER_SIZE
        self._rewind_if_empty()

    def take_payload(self, length: int, deadline: Deadline, what: str) -> memoryview:
        """The payload after the peeked header, read-only, valid until the next call."""
        total = framing.HEADER_SIZE + length
        if self._end - self._start < total:
            self._fill(total, deadline, what)
        begin = self._start + framing.HEADER_SIZE
        self._start += total
        view = self._ro[begin:begin + length]
        self._rewind_if_empty()
        return view

    def take_payload_into(self, target: memoryview, length: int, deadline: Deadline,
                          what: str) -> None:
        """Copies the peeked message's payload into ``target``; the rest comes straight from
        the socket. A deadline in the middle breaks the channel."""
        begin = self._start + framing.HEADER_SIZE
        buffered = min(length, self._end - begin)
        target[:buffered] = self._rw[begin:begin + buffered]
        self._start = begin + buffered
        self._rewind_if_empty()
        got = buffered
        try:
            while got < length:
                got += self._chan.recv_into(target[got:length], deadline, what)
        except CommTimeout:
            self._chan.broken = (f"{what} {self._chan.peer} was cut by its deadline halfway "
                                 "through a message: the connection is unusable")
            raise

    def _rewind_if_empty(self) -> None:
        if self._start == self._end:
            self._start = self._end = self._HOME

    def _fill(self, size: int, deadline: Deadline, what: str) -> None:
        if self._start + size > len(self._mm):
            self._make_room(size)
        needed_end = self._start + size
        while self._end < needed_end:
            short = needed_end - self._end
            limit = needed_end if short > self.READAHEAD else min(
                len(self._mm), needed_end + self.READAHEAD)
            self._end += self._chan.recv_into(self._rw[self._end:limit], deadline, what)

    def _make_room(self, size: int) -> None:
        pending = self._end - self._start
        if self._HOME + size <= len(self._mm):
            self._mm.move(self._HOME, self._start, pending)
        else:
            grown = max(2 * len(self._mm), self._HOME + size + self.READAHEAD)
            grown = min(grown, self._HOME + framing.HEADER_SIZE + self._max + self.READAHEAD)
            grown = -(-grown // mmap.PAGESIZE) * mmap.PAGESIZE
            old = self._rw
            self._set_buffer(mmap.mmap(-1, grown))
            self._rw[self._HOME:self._HOME + pending] = old[self._start:self._end]
        self._start, self._end = self._HOME, self._HOME + pending
