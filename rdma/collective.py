"""Collectives over the tensor transport, numpy level: ``allreduce``, ``allgather``,
``broadcast``, ``barrier`` (Horovod's names), across ``size`` processes (any side).

A ``Group`` links its ranks in a ring: each holds one connection to the next rank and one from
the previous, over whatever ``rdma.comm`` scheme their addresses name (``shm://`` on one host,
``tcp://`` between hosts). Every operation moves data only between ring neighbours:

* ``allreduce`` of a large tensor: reduce-scatter then allgather over ``size`` chunks, each
  rank sending and receiving ``2 (size-1)/size`` of the tensor, the bandwidth-optimal ring
  (received chunks are reduced straight out of the transport's buffer, no copy on ``shm://``);
* ``allreduce`` of a small one (under ``SMALL_BYTES``), where each hop's latency is what costs:
  the whole tensors go round once (``size - 1`` hops instead of ``2 (size-1)``) and every rank
  reduces all of them itself, in rank order, so every rank gets the same bits;
* ``allgather``: ``size - 1`` steps passing each rank's part along;
* ``broadcast``: the root's tensor passed along the ring, in pieces so the ranks work in a
  pipeline;
* ``barrier``: a token twice round the ring.

``Group.join(rank, addresses, secret)`` builds the ring from a list every rank computes the
same way (``addresses[i]``: where rank ``i`` listens); ranks may start in any order within the
timeout, a rank connecting to one not yet listening tries again until it is.

Every message starts with the call's description (sequence number, operation, dtype, shape,
reduction, root). A rank that receives a message from a different call -- the ranks called
collectives in different orders or counts, or with different shapes -- raises
``CollectiveMismatch`` naming both ranks and both calls, instead of reducing the wrong bytes or
waiting forever. Sends run on a thread of the group's own, so neighbours that both send at
once never wait on each other.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import struct
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

from rdma import _shared
from rdma import comm as rdma_comm
from rdma.errors import CommError, CommTimeout, ConnectFailed

REDUCTIONS = {"sum": np.add, "min": np.minimum, "max": np.maximum}
# A broadcast moves in pieces of this many bytes, so ranks down the ring start early.
BROADCAST_PIECE = 4 << 20
# Ring messages carry at most this many bytes: a chunk goes as segments, so the next rank
# reduces one while this one writes the next (both cores busy), and each fits the transport's
# eager path (shm://: straight into the receiver's ring, no clear-to-send round trip).
SEGMENT_BYTES = 4 << 20
# A payload of this many bytes or more travels as a message of its own after its call's:
# one part, so the transport writes it from where it lies (shm://: no staging copy).
ALONE_BYTES = 64 << 10
# All-reduces of fewer bytes go once round the ring whole (latency bound), larger ones as the
# chunked ring (bandwidth bound).
SMALL_BYTES = 64 << 10
# Up to this many bytes, ranks all on one host reduce in shared memory (``rdma._shared``: each
# rank maps its slot plus, on rank 0, two result buffers of this size); larger: the ring.
SHARED_MAX = 1 << 30
_HEADER = struct.Struct("<I")
logger = logging.getLogger(__name__)


class CollectiveMismatch(CommError):
    """Ranks made different collective calls at the same point: a bug in the calling code."""


@dataclass(frozen=True)
class Call:
    """What a collective call is; every rank's must be the same at the same ``seq``."""
    seq: int
    op: str
    dtype: str
    shape: tuple
    reduce: str = ""
    root: int = -1

    def describe(self) -> str:
        extra = f", {self.reduce}" if self.reduce else \
            (f", root={self.root}" if self.root >= 0 else "")
        return f"call #{self.seq} {self.op}({self.dtype}{list(self.shape)}{extra})"


class Group:
    """``size`` processes linked in a ring; this one is ``rank``.

    ``Group.connect(rank, addresses, listener, secret)``: ``addresses[i]`` is where rank ``i``
    listens (``listener`` is this rank's own, already listening at ``addresses[rank]``).
    """

    def __init__(self, rank: int, size: int, to_next: rdma_comm.Comm | None,
                 from_prev: rdma_comm.Comm | None, timeout: float | None = None,
                 shared: bool = False):
        self.rank, self.size = rank, size
        # All ranks on one host: large all-reduces read each other's inputs in shared memory.
        self._arena = _shared.Arena(rank, size) if shared and size > 1 else None
        self._next, self._prev = to_next, from_prev
        self._timeout = timeout
        self._seq = 0
        self._results = _BufferPool()
        self._sends: queue.Queue = queue.Queue()
        self._sent: queue.Queue = queue.Queue()
        self._sender = None
        if size > 1:
            self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                            name=f"tfos-collective-{rank}")
            self._sender.start()

    @classmethod
    def connect(cls, rank: int, addresses: list[str], listener: rdma_comm.Listener | None,
                secret: bytes, timeout: float = 60.0, deadline: float | None = None) -> "Group":
        size = len(addresses)
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} outside a group of {size}")
        if size == 1:
            return cls(rank, 1, None, None)
        deadline = deadline or time.monotonic() + timeout
        # Connect onward first (it completes once the peer's listener accepts in its own
        # time), then accept the previous rank's connection.
        to_next = _connect_retrying(rank, (rank + 1) % size, addresses[(rank + 1) % size],
                                    secret, deadline)
        to_next.send([_HEADER.pack(rank)])
        try:
            from_prev = listener.accept(timeout=max(deadline - time.monotonic(), 0.01))
        except CommTimeout:
            to_next.close()
            raise CommTimeout(f"rank {rank}: rank {(rank - 1) % size} did not connect to "
                              f"{addresses[rank]} within {timeout:g} s; did it start, with the "
                              "same addresses list?") from None
        (sender,) = _HEADER.unpack(bytes(from_prev.recv(timeout=timeout)))
        if sender != (rank - 1) % size:
            raise CollectiveMismatch(f"rank {rank} expected rank {(rank - 1) % size} to "
                                     f"connect to it, got rank {sender}: the addresses lists "
                                     "differ between ranks")
        # The same on every rank: the addresses list and (set for the whole job) the variable.
        shared = (all(address.startswith("shm://") for address in addresses)
                  and os.environ.get("TFOS_COLLECTIVE_SHARED", "1") != "0")
        return cls(rank, size, to_next, from_prev, shared=shared)

    @classmethod
    def join(cls, rank: int, addresses: list[str], secret: bytes,
             timeout: float = 60.0) -> "Group":
        """Listens at ``addresses[rank]`` and links the ring: the ranks may start in any order
        within ``timeout`` seconds of each other."""
        if len(addresses) == 1:
            return cls.connect(rank, addresses, None, secret, timeout)
        deadline = time.monotonic() + timeout
        with rdma_comm.listen(addresses[rank], secret) as listener:
            return cls.connect(rank, addresses, listener, secret, timeout, deadline)

    @property
    def shared_memory(self) -> bool:
        """Whether large all-reduces run in shared memory (every rank on this host, and no rank
        has failed to map the others' memory) rather than round the ring."""
        return self._arena is not None

    # -- the operations -------------------------------------------------------------------------
    def allreduce(self, tensor, op: str = "sum") -> np.ndarray:
        """The elementwise ``op`` ("sum", "mean", "min", "max") of every rank's ``tensor``; a
        new array of the same shape and dtype (``mean`` of integers rounds down)."""
        array = np.ascontiguousarray(tensor)
        if op not in (*REDUCTIONS, "mean"):
            raise ValueError(f"op={op!r}: use one of {[*REDUCTIONS, 'mean']}")
        call = self._call("allreduce", array, reduce=op)
        reduce = REDUCTIONS["sum" if op == "mean" else op]
        flat = array.reshape(-1)
        if self.size == 1 or not flat.size:
            result = flat.copy()
        elif array.nbytes < SMALL_BYTES:
            result = reduce.reduce(self._allgather_flat(call, flat), axis=0, dtype=flat.dtype)
        else:      # the reductions divided the mean chunk by chunk
            result = (self._shared_allreduce(call, flat, reduce, op == "mean")
                      if self._arena is not None and flat.nbytes <= SHARED_MAX else None)
            if result is None:
                result = self._results.take(flat.nbytes).view(flat.dtype)
                self._ring_allreduce(call, flat, result, reduce, op == "mean")
            return result.reshape(array.shape)
        if op == "mean":
            _divide(result, self.size)
        return result.reshape(array.shape)

    def allgather(self, tensor) -> np.ndarray:
        """Every rank's ``tensor`` (all of one shape) stacked along a new first axis, by rank."""
        array = np.ascontiguousarray(tensor)
        call = self._call("allgather", array)
        return self._allgather_flat(call, array.reshape(-1)).reshape(self.size, *array.shape)

    def _allgather_flat(self, call: Call, flat: np.ndarray) -> np.ndarray:
        """``[size, n]``: every rank's ``flat`` by rank, passed ``size - 1`` hops round."""
        out = np.empty((self.size, flat.size), flat.dtype)
        out[self.rank] = flat
        for step in range(self.size - 1):
            send = (self.rank - step) % self.size
            recv = (self.rank - step - 1) % self.size
            self._exchange(call, out[send], out[recv], None)
        return out

    def broadcast(self, tensor, root: int = 0) -> np.ndarray:
        """``root``'s ``tensor`` on every rank (the others pass one of the same shape and
        dtype, whose values are ignored)."""
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} outside a group of {self.size}")
        array = np.ascontiguousarray(tensor)
        call = self._call("broadcast", array, root=root)
        out = array.reshape(-1).copy()
        if self.size == 1:
            return out.reshape(array.shape)
        last = (root - 1) % self.size    # the rank that passes nothing on
        view = out.view(np.uint8)
        for start in range(0, max(view.size, 1), BROADCAST_PIECE):
            piece = view[start:start + BROADCAST_PIECE]
            if self.rank != root:
                self._receive(call, piece, None)
            if self.rank != last:
                self._send(call, piece)
                self._wait_sent()
        return out.reshape(array.shape)

    def barrier(self) -> None:
        """Returns once every rank has called it (a token goes round the ring twice)."""
        call = self._call("barrier", np.zeros(0, np.uint8))
        if self.size == 1:
            return
        token = np.zeros(0, np.uint8)
        for _ in range(2):
            if self.rank == 0:
                self._send(call, token)
                self._wait_sent()
                self._receive(call, token, None)
            else:
                self._receive(call, token, None)
                self._send(call, token)
                self._wait_sent()

    def close(self) -> None:
        if self._arena is not None:
            self._arena.close()
        if self._sender is not None:
            self._sends.put(None)
            self._sender.join(5)
        for link in (self._next, self._prev):
            if link is not None:
                link.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the ring -------------------------------------------------------------------------------
    def _ring_allreduce(self, call: Call, flat: np.ndarray, out: np.ndarray, reduce,
                        mean: bool) -> None:
        """``out`` = the reduction of every rank's ``flat``; ``flat`` is only read (no copy of
        it is made: the first reduction of each chunk reads it straight)."""
        n = self.size
        bounds = self._chunk_bounds(flat.size)
        mine = [flat[bounds[i]:bounds[i + 1]] for i in range(n)]
        chunk = [out[bounds[i]:bounds[i + 1]] for i in range(n)]
        for step in range(n - 1):       # reduce-scatter: rank r ends with chunk r+1 complete
            send = (self.rank - step) % n
            recv = (self.rank - step - 1) % n
            self._exchange(call, mine[send] if step == 0 else chunk[send], chunk[recv], reduce,
                           own=mine[recv])
        if mean:                        # only the complete chunk: the allgather spreads it
            _divide(chunk[(self.rank + 1) % n], n)
        for step in range(n - 1):       # allgather the complete chunks
            self._exchange(call, chunk[(self.rank - step + 1) % n],
                           chunk[(self.rank - step) % n], None)

    def _chunk_bounds(self, count: int) -> np.ndarray:
        """Where each rank's chunk of ``count`` values starts (and, last, where all end): the
        same cut for the ring and for shared memory."""
        return np.linspace(0, count, self.size + 1).astype(np.int64)

    # -- in shared memory -----------------------------------------------------------------------
    def _shared_allreduce(self, call: Call, flat: np.ndarray, reduce,
                          mean: bool) -> np.ndarray | None:
        """The all-reduce in the group's shared memory (see ``rdma._shared``): a read-only view
        of the result, or None when every rank must take the ring instead."""
        arena = self._arena
        record = arena.prepare(flat.nbytes)
        bounds = self._chunk_bounds(flat.size)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        if not arena.broken:      # the parts of the input the others reduce
            slot = arena.slots[self.rank][:flat.nbytes].view(flat.dtype)
            slot[:lo], slot[hi:] = flat[:lo], flat[hi:]
        records = self._allgather_flat(call, record)          # every input is in place
        if (records[:, -1] != _shared.FINE).any():
            if self.rank == 0:
                logger.warning("collectives take the ring from now on, not shared memory: %s",
                               arena.broken or "another rank cannot use it")
            self._arena = None
            return None
        index = arena.attach(records)
        if index is not None:
            out = arena.results[index][:flat.nbytes].view(flat.dtype)
            sources = [flat if rank == self.rank else
                       arena.slots[rank][:flat.nbytes].view(flat.dtype)
                       for rank in range(self.size)]
            _shared.reduce_chunk(out[lo:hi], [source[lo:hi] for source in sources], reduce,
                                 self.size if mean else 0)
        status = np.array([_shared.BROKEN if arena.broken else _shared.FINE], np.int64)
        if (self._allgather_flat(call, status) != _shared.FINE).any():
            self._arena = None      # a rank could not map the others': the ring from now on
            return None
        if index is None:           # every result buffer is still held somewhere
            return None
        return arena.hand_out(index, flat.nbytes, flat.dtype, flat.shape)

    def _exchange(self, call: Call, outgoing: np.ndarray, incoming: np.ndarray, reduce,
                  own: np.ndarray | None = None) -> None:
        """Sends ``outgoing`` to the next rank while receiving into ``incoming`` from the
        previous one (with ``reduce``: ``incoming`` = reduce(``own``, what arrived))."""
        outgoing, incoming = outgoing.reshape(-1), incoming.reshape(-1)
        own = None if own is None else own.reshape(-1)
        step = max(1, SEGMENT_BYTES // max(incoming.itemsize, 1))
        sent = range(0, max(outgoing.size, 1), step)
        for start in sent:
            self._send(call, outgoing[start:start + step])
        for start in range(0, max(incoming.size, 1), step):
            self._receive(call, incoming[start:start + step], reduce,
                          None if own is None else own[start:start + step])
        for _ in sent:
            self._wait_sent()

    def _send(self, call: Call, data: np.ndarray) -> None:
        self._sends.put((_encode(call), data))

    def _wait_sent(self) -> None:
        error = self._sent.get()
        if error is not None:
            raise error

    def _send_loop(self) -> None:
        while True:
            item = self._sends.get()
            if item is None:
                return
            header, data = item
            try:
                if data.nbytes >= ALONE_BYTES:   # the payload alone: sent from where it lies
                    self._next.send([_HEADER.pack(len(header)), header], timeout=self._timeout)
                    self._next.send([data], timeout=self._timeout)
                else:
                    self._next.send([_HEADER.pack(len(header)), header, data],
                                    timeout=self._timeout)
                self._sent.put(None)
            except CommError as exc:
                self._sent.put(exc)

    def _receive(self, call: Call, into: np.ndarray, reduce,
                 own: np.ndarray | None = None) -> None:
        message = self._prev.recv(timeout=self._timeout)
        (length,) = _HEADER.unpack_from(message)
        theirs = _decode(bytes(message[_HEADER.size:_HEADER.size + length]))
        if theirs != call:
            raise CollectiveMismatch(
                f"rank {self.rank} is in {call.describe()} but rank {(self.rank - 1) % self.size}"
                f" sent it {theirs.describe()}: every rank must make the same collective calls "
                "in the same order with the same shapes and dtypes")
        if into.nbytes >= ALONE_BYTES:
            message, start = self._prev.recv(timeout=self._timeout), 0
        else:
            start = _HEADER.size + length
        payload = np.frombuffer(message[start:], dtype=into.dtype)
        if payload.size != into.size:
            raise CollectiveMismatch(f"rank {self.rank} expected {into.size} values in "
                                     f"{call.describe()}, got {payload.size}")
        if reduce is None:
            into[...] = payload
        else:
            reduce(into if own is None else own, payload, out=into)

    def _call(self, op: str, array: np.ndarray, reduce: str = "", root: int = -1) -> Call:
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{op}: dtype {array.dtype} is not a number type")
        self._seq += 1
        return Call(self._seq, op, str(array.dtype), tuple(array.shape), reduce, root)


class _BufferPool:
    """Memory for all-reduce results, reused once the caller has dropped the last array that
    uses it: fresh pages cost a fault each on first write (64 MiB: ~7 ms, a sixth of an
    all-reduce), and a training loop all-reduces the same sizes every step."""

    KEEP = 2      # buffers kept for reuse (a step's fused gradients, one of each size)

    def __init__(self):
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            fits = [b for b in self._free if len(b) == nbytes]
            if fits:
                self._free.remove(fits[0])
        raw = fits[0] if fits else bytearray(nbytes)
        array = np.frombuffer(raw, np.uint8)
        weakref.finalize(array, self._give_back, raw)   # when no view of it is left
        return array

    def _give_back(self, raw: bytearray) -> None:
        with self._lock:
            self._free.append(raw)
            del self._free[:-self.KEEP]


def _divide(values: np.ndarray, count: int) -> None:
    """The mean's division, in place (integers round down)."""
    if np.issubdtype(values.dtype, np.integer):
        values //= count
    else:
        values /= count


def _connect_retrying(rank: int, peer: int, address: str, secret: bytes,
                      deadline: float) -> rdma_comm.Comm:
    """Connects to ``peer``'s listener, trying again while it is not listening yet (it may
    still be starting) until ``deadline``: the ranks of a group start in any order."""
    pause = 0.01
    while True:
        left = deadline - time.monotonic()
        try:
            return rdma_comm.connect(address, secret, timeout=max(left, 0.01))
        except ConnectFailed as error:
            if left <= pause:
                raise ConnectFailed(f"rank {rank} could not reach rank {peer} at {address} "
                                    f"before the group's timeout: {error}") from None
        # Nothing to wait on across processes but the peer's listener appearing: back off.
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _encode(call: Call) -> bytes:
    return json.dumps([call.seq, call.op, call.dtype, list(call.shape), call.reduce,
                       call.root]).encode()


def _decode(data: bytes) -> Call:
    seq, op, dtype, shape, reduce, root = json.loads(data)
    return Call(seq, op, dtype, tuple(shape), reduce, root)
