"""Property tests of every parser that reads bytes from the network (pure or over socketpairs).

What each parser must do with anything a peer can send: return a well-formed result or raise
its one documented error, never another exception, never hang, never allocate more than the
input justifies. Already covered elsewhere and not repeated here: arbitrary bytes into
``unpack_header``/``FrameDecoder`` (test_framing), into a live comm (test_comm), into
``messages.decode`` field by field (test_messages) and into ``feed_codec.decode`` (test_feed_codec).
This file adds the structure-aware cases: forged and mutated feed headers, mutated control
messages, request-signature metadata, the comm handshake and shared-memory set-up records, the
socket reader against the reference decoder, a hostile ring writer, and whole feed
conversations against a live FeedServer.
"""
from __future__ import annotations

import array
import contextlib
import fcntl
import io
import json
import mmap
import os
import socket
import struct
import threading
import tracemalloc
from datetime import timedelta

import numpy as np
import pytest
from feed_forgery import forge, kind_of
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rdma
from rdma import _shm_setup as shm_setup
from rdma import framing, handshake
from rdma._io import Channel, Deadline, FrameReader
from rdma.errors import AuthFailed, CommClosed, CommError, CommTimeout, FrameError
from rdma.ring import ALIGN, RingReader
from tfos.core import auth, feed_codec
from tfos.core import feed_messages as fm
from tfos.core import messages as m
from tfos.core.errors import AuthenticationError, ProtocolError
from tfos.node.feed_server import FeedServer

SECRET = bytes(range(50, 82))


def bounded(examples: int) -> settings:
    # A generous bound per example: these parsers take microseconds, so a hang or a blow-up
    # shows as seconds even on a loaded machine.
    return settings(max_examples=examples, deadline=timedelta(seconds=5),
                    suppress_health_check=[HealthCheck.too_slow])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10)


# == feed_codec.decode ===========================================================================

def feed_message(header, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    prefix = struct.pack("<I", len(text)) + text
    return prefix + bytes(-len(prefix) % feed_codec.ALIGN) + body


def decodes_or_protocol_error(message: bytes) -> dict | None:
    """The contract of feed_codec.decode, checked on what it returns (its columns)."""
    try:
        typed, columns = feed_codec.decode(message)
    except ProtocolError:
        return None
    assert isinstance(typed, fm.ALL) and isinstance(columns, dict)
    raw = np.frombuffer(message, np.uint8) if len(message) else None
    for name, column in columns.items():
        assert isinstance(name, str)
        assert column.dtype.kind in "biufcSU" and not column.dtype.hasobject
        assert column.dtype.itemsize > 0 and column.ndim <= feed_codec.MAX_DIMS
        assert not column.flags.writeable          # a view of the message, read-only
        if column.nbytes:
            assert raw is not None and np.shares_memory(column, raw)   # in place, no copy
    return columns


DTYPE_STRINGS = ["<f4", "<f8", "|b1", "|i1", "<i8", ">i4", "<u2", "|S5", "<U3", "<c16",
                 "|S0", "<U0", "|O", "|V8", "<M8[ns]", "<m8", "a5", "O", "float64", "i4,i4",
                 "(2,)i4", "T", "<f3", "<i0", "|S99999999999", "<U999999999", "", "<", "|b",
                 "<f4 ", "\u0664f4", "<f\u0664"]

column_specs = st.fixed_dictionaries(
    {"name": st.text(max_size=6) | st.integers(), "dtype": st.sampled_from(DTYPE_STRINGS)
     | st.text(max_size=8), "shape": st.lists(st.integers(-2, 300) | st.booleans(), max_size=4)
     | st.lists(st.just(0), min_size=30, max_size=80) | json_values,
     "offset": st.integers(-8, 600) | st.just(1 << 62), "nbytes": st.integers(-8, 600)
     | st.just(1 << 62) | json_values},
    optional={"extra": json_values})


@bounded(400)
@given(kind=st.sampled_from([c.__name__ for c in fm.ALL]) | st.text(max_size=6) | json_values,
       meta=st.dictionaries(st.sampled_from(["rows", "offset", "feed", "epoch"]) |
                            st.text(max_size=6), json_values, max_size=3) | json_values,
       columns=st.lists(column_specs, max_size=4) | json_values,
       body=st.binary(max_size=700))
@example(kind="Batch", meta={"rows": 3}, columns=[{"name": "x", "dtype": "|S0", "shape": [3],
                                                   "offset": 0, "nbytes": 0}], body=b"")
@example(kind="Batch", meta={"rows": 0}, columns=[{"name": "x", "dtype": "<f4",
                                                   "shape": [0] * 100, "offset": 0,
                                                   "nbytes": 0}], body=b"")
@example(kind="Batch", meta={"rows": 1}, columns=[{"name": "x", "dtype": "<f4", "shape": [1],
                                                   "offset": 0, "nbytes": 4}] * 2,
         body=bytes(64))
def test_forged_feed_headers_decode_or_raise_protocol_error(kind, meta, columns, body):
    """Regressions (the @examples): a zero-width string dtype and a column of 100 dimensions
    raised numpy's ValueError; two columns of one name silently kept the second."""
    header = {"v": fm.VERSION, "type": kind, "body": meta, "columns": columns}
    decoded = decodes_or_protocol_error(feed_message(header, body))
    if decoded is not None:
        assert len(decoded) == len(columns)      # every column described is there, once


valid_columns = st.dictionaries(
    st.text(max_size=4),
    hnp.arrays(dtype=st.sampled_from([np.float32, np.int64, np.uint8, np.bool_,
                                      np.dtype("S3"), np.dtype("<U2")]),
               shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    max_size=3)
mutations = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "length"]),
                               st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=4)


def mutate(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for op, where, junk in edits:
        at = where % (len(data) + 1)
        if op == "flip" and data:
            data[at % len(data)] ^= junk[0] or 0xFF
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = junk
        elif op == "length" and len(data) >= 4:
            data[:4] = struct.pack("<I", where * 97 % (1 << 32))
    return bytes(data)


@bounded(300)
@given(columns=valid_columns, rows=st.integers(0, 1 << 20), edits=mutations)
def test_mutated_feed_messages_decode_or_raise_protocol_error_within_bounded_memory(
        columns, rows, edits):
    message = mutate(b"".join(bytes(p) for p in feed_codec.encode(fm.Batch(rows), columns)),
                     edits)
    tracemalloc.start()
    try:
        decodes_or_protocol_error(message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The header is at most 64 KiB of JSON; columns are views. Nothing scales with what a
    # header claims (shapes, nbytes, a length prefix of 4 GiB).
    assert peak < 64 * len(message) + (1 << 20), f"decode allocated {peak} bytes"


# == messages.decode =============================================================================

CONTROL_SAMPLES = [
    m.Register(node_id=3, attempt=0, host="10.1.2.3", tf_port=40123, pid=4242,
               python_version="3.11", tf_version="2.21.0"),
    m.Heartbeat(node_id=1, state=m.NodeState.SERVING),
    m.LogLines(node_id=0, lines=["plain", "ünï \u2603"]),
    m.NodeStatus(node_id=2, state=m.NodeState.EXITED, exit_code=-9, reason="killed",
                 log_tail=["Traceback", "ValueError: x"]),
    m.ServiceUrl(node_id=0, name="feed", url='["tcp://h:1"]'),
    m.FeedTerminated(node_id=0, feed="input"),
]


def strict_utf8_write(message) -> None:
    """What the driver does with a decoded message's text: it must be writable as UTF-8."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    stream.write(repr(message))
    for value in vars(message).values():
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str):
                stream.write(text)
    stream.flush()


@bounded(300)
@given(message=st.sampled_from(CONTROL_SAMPLES), edits=mutations)
def test_mutated_control_messages_decode_or_raise_protocol_error(message, edits):
    """Byte-level mutations of valid wire messages (test_messages mutates whole fields); what
    decodes is text the driver can write (a JSON \\ud800 escape used to decode to a lone
    surrogate, which a strict UTF-8 log stream then failed to write)."""
    data = mutate(m.encode(message), edits)
    try:
        result = m.decode(data, type(message))
    except ProtocolError:
        return
    assert type(result) is type(message)
    assert m.decode(m.encode(result), type(message)) == result
    strict_utf8_write(result)


@bounded(150)
@given(text=st.lists(st.characters(codec="utf-8") | st.sampled_from(
    ["\\ud800", "\\udfff", "\\u0000", '\\"', "\\\\"]), max_size=20).map("".join))
def test_control_strings_with_any_json_escapes_decode_to_writable_text(text):
    data = b'{"v":1,"type":"LogLines","body":{"node_id":0,"lines":["' + text.replace(
        '"', "'").encode() + b'"]}}'
    try:
        result = m.decode(data, m.LogLines)
    except ProtocolError:
        return
    strict_utf8_write(result)


# == auth.Verifier.verify ========================================================================

METHOD = "/tfos.Control/Register"
BODY = b'{"v":1,"type":"Register","body":{}}'
meta_keys = st.sampled_from([auth.TS_KEY, auth.NONCE_KEY, auth.SIG_KEY, "user-agent", "tfos"])
meta_values = (st.text(max_size=80) | st.binary(max_size=40) | st.integers() | st.none()
               | st.text(alphabet="0123456789abcdef", min_size=0, max_size=70))


@bounded(300)
@given(metadata=st.lists(st.tuples(meta_keys, meta_values), max_size=6),
       body=st.binary(max_size=40))
def test_arbitrary_signature_metadata_is_refused_with_authentication_error(metadata, body):
    with pytest.raises(AuthenticationError):
        auth.Verifier(SECRET).verify(METHOD, body, metadata)


@bounded(300)
@given(ts=st.text(max_size=30) | st.integers(0, 10**30).map(str),
       nonce=st.text(max_size=40) | st.binary(min_size=16, max_size=16).map(bytes.hex),
       data=st.data())
def test_correctly_signed_metadata_of_any_form_verifies_only_in_sign_s_form(ts, nonce, data):
    """Even a valid MAC over odd values (non-ASCII, 30-digit timestamps, surrogates) gives
    AuthenticationError, never another exception; only sign()'s form can pass."""
    try:
        sig = auth._digest(SECRET, METHOD, ts, nonce, BODY)
    except UnicodeEncodeError:
        sig = data.draw(meta_values)
    metadata = ((auth.TS_KEY, ts), (auth.NONCE_KEY, nonce), (auth.SIG_KEY, sig))
    verifier = auth.Verifier(SECRET, clock=lambda: int(ts) / 1000 if ts.isascii()
                             and ts.isdigit() else 0.0)
    try:
        verifier.verify(METHOD, BODY, metadata)
    except AuthenticationError:
        return
    assert ts.isascii() and ts.isdigit() and len(ts) < 20
    assert len(nonce) == 32 and all(c in "0123456789abcdef" for c in nonce)


# == the comm handshake and shm set-up ============================================================

def channel_pair():
    ours, theirs = socket.socketpair()
    return Channel(ours, "fuzz-peer"), theirs


def feed_peer(sock: socket.socket, data: bytes) -> None:
    """The peer says ``data`` and stops talking (so the parser never waits out a deadline)."""
    sock.setblocking(True)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


hello_c = st.builds(lambda magic, version, nonce: handshake._HELLO_C.pack(magic, version, nonce),
                    st.sampled_from([handshake.MAGIC, b"TFOSAUTX", bytes(8)]),
                    st.sampled_from([handshake.VERSION, 0, 2, 255]),
                    st.binary(min_size=32, max_size=32))


@bounded(150)
@given(data=st.binary(max_size=200) | st.tuples(hello_c, st.binary(max_size=64)).map(
    lambda t: t[0] + t[1]))
def test_the_listener_handshake_raises_only_auth_failed(data):
    chan, peer = channel_pair()
    with peer:
        feed_peer(peer, data)
        try:
            with pytest.raises(AuthFailed):
                handshake.listener_handshake(chan, SECRET, Deadline(5))
        finally:
            chan.close()


hello_l = st.builds(lambda magic, version, nonce, mac:
                    handshake._HELLO_L.pack(magic, version, nonce, mac),
                    st.sampled_from([handshake.MAGIC, b"XXXXXXXX"]),
                    st.sampled_from([handshake.VERSION, 2]),
                    st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))


@bounded(150)
@given(data=st.binary(max_size=200) | st.tuples(hello_l, st.binary(max_size=8)).map(
    lambda t: t[0] + t[1]))
def test_the_connector_handshake_raises_only_auth_failed(data):
    chan, peer = channel_pair()
    with peer:
        feed_peer(peer, data)
        try:
            with pytest.raises(AuthFailed):
                handshake.connector_handshake(chan, SECRET, Deadline(5))
        finally:
            chan.close()


def make_fd(kind: str, capacity: int) -> int:
    """A descriptor of ``kind`` for a SETUP record (the peer decides what it passes)."""
    if kind in ("sealed-memfd", "unsealed-memfd", "memfd-wrong-size"):
        fd = os.memfd_create("tfos-fuzz", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, capacity if kind != "memfd-wrong-size" else capacity + 4096)
        if kind != "unsealed-memfd":
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        return fd
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    if kind == "file":
        return os.open("/proc/self/stat", os.O_RDONLY)
    if kind == "unix-stream":
        a, b = socket.socketpair()
        b.close()
        return a.detach()
    if kind == "udp":
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()
    raise AssertionError(kind)


def open_files() -> dict[int, tuple[int, int]]:
    """fd -> (device, inode) of what it refers to, for every open descriptor."""
    files = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            info = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        files[int(name)] = (info.st_dev, info.st_ino)
    return files


FD_KINDS = ["sealed-memfd", "unsealed-memfd", "memfd-wrong-size", "pipe", "file",
            "unix-stream", "udp"]
RING = ALIGN * 1024


@bounded(80)
@given(kinds=st.lists(st.sampled_from(FD_KINDS), max_size=3),
       announced=st.sampled_from([RING, 4096, 0, 1 << 40, (1 << 40) + 1]),
       header_kind=st.sampled_from([framing.Kind.SETUP, framing.Kind.DATA]),
       tail=st.binary(max_size=20))
@example(kinds=["sealed-memfd", "unix-stream"], announced=RING, header_kind=framing.Kind.SETUP,
         tail=b"")
def test_shm_setup_records_are_accepted_only_as_specified_and_leak_nothing(
        kinds, announced, header_kind, tail):
    """The listener's side of shm:// set-up fed any record with any descriptors: it succeeds
    only for a sealed ring of the announced size plus a Unix stream socket, raises only what
    the listener turns into AuthFailed (CommError, OSError), and closes every descriptor the
    peer passed."""
    chan, peer = channel_pair()
    fds = [make_fd(kind, RING) for kind in kinds]
    passed = {open_files()[fd] for fd in fds}
    try:
        record = struct.pack("<4sBBHQ", framing.MAGIC, framing.VERSION, header_kind, 0,
                             announced) + tail
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        peer.sendmsg([record], rights)
        peer.shutdown(socket.SHUT_WR)
    finally:
        for fd in fds:
            os.close(fd)
    valid = (kinds == ["sealed-memfd", "unix-stream"] and announced == RING
             and header_kind == framing.Kind.SETUP)
    try:
        tx_sock, tx_ring, rx_ring = shm_setup.listener_setup(chan, 64 << 10, Deadline(5))
    except (CommError, OSError):
        assert not valid
    else:
        assert valid
        tx_sock.close()
        tx_ring.close()
        rx_ring.close()
    finally:
        chan.close()
        peer.close()
    leaked = passed & set(open_files().values())
    assert not leaked, "a descriptor passed by the peer was not closed"


# == the socket reader against the reference decoder =============================================

class ChunkedChannel:
    """A Channel whose peer delivers ``stream`` in the given chunk sizes, then closes."""

    def __init__(self, stream: bytes, cuts: list[int]):
        self.peer, self.broken = "fuzz-peer", None
        self._chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)]) if b > a]

    def recv_into(self, view, deadline, what) -> int:
        if not self._chunks:
            raise CommClosed(f"{what} {self.peer}: closed")
        chunk = self._chunks[0]
        n = min(len(view), len(chunk))
        view[:n] = chunk[:n]
        self._chunks[0] = chunk[n:]
        if not self._chunks[0]:
            self._chunks.pop(0)
        return n


def read_all(reader: FrameReader, limit: int) -> list[bytes]:
    messages = []
    for _ in range(limit):
        header = reader.peek_header(Deadline(None), "reading")
        if header.kind is not framing.Kind.DATA:
            raise FrameError(f"{header.kind.name} frame in a DATA stream")
        messages.append(bytes(reader.take_payload(header.length, Deadline(None), "reading")))
    return messages


@bounded(200)
@given(messages=st.lists(st.binary(max_size=3000), max_size=6), garbage=st.binary(max_size=40),
       data=st.data())
def test_the_socket_reader_agrees_with_the_reference_decoder(messages, garbage, data):
    """FrameReader (what tcp:// and shm:// really use: read-ahead, buffer moves and growth)
    yields exactly FrameDecoder's messages, then FrameError or CommClosed, whatever the
    chunking; with a small first buffer and max_message so the growth paths run."""
    max_message = 4096
    frames = [framing.encode([x]) for x in messages] + [garbage]
    stream = b"".join(frames)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream))), max_size=12))))
    decoder, expected, refused = framing.FrameDecoder(max_message), [], False
    try:
        for frame in frames:
            expected += decoder.feed(frame)
    except FrameError:
        refused = True
    reader = FrameReader(ChunkedChannel(stream, cuts), max_message, initial=mmap.PAGESIZE)
    got = []
    with pytest.raises((FrameError, CommClosed)) as info:
        for _ in range(len(messages) + len(garbage) + 2):
            got.extend(read_all(reader, 1))
    assert got == expected
    assert info.type is (FrameError if refused else CommClosed)


# == the shm ring against a hostile writer ========================================================

@bounded(200)
@given(ops=st.lists(st.tuples(st.sampled_from(["RING", "NEED", "release"]),
                              st.integers(0, 1 << 13) | st.just(1 << 62)), max_size=40))
def test_a_hostile_ring_writer_meets_frame_error_never_an_overlap(ops):
    """Any sequence of RING sizes and NEED counters (unsigned on the wire): the reader either
    places the message where it cannot overlap the one it still holds, or raises FrameError."""
    capacity = 4096
    reader = RingReader(capacity)
    held = None
    for op, value in ops:
        try:
            if op == "RING":
                released, head = reader.released, reader.head
                start, end = reader.publish(value)
                # No byte of [start, end) is one the reader still holds.
                assert held is None or end - capacity <= released or released >= head
                if held is not None:
                    reader.release(held)
                held = end
            elif op == "NEED":
                reader.request(value)
            elif held is not None:
                reader.release(held)
                held = None
            reader.credit_due()
        except FrameError:
            return


# == whole conversations with a live feed endpoint ================================================

@pytest.fixture(scope="module")
def live_feed_server():
    server = FeedServer(["tcp://127.0.0.1:0"], SECRET, 1 << 20)
    yield server
    server.close()


def _join(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


def _hello(**body) -> list[bytes]:
    return [_join(forge("FeederHello", {"feed": "input", "epoch": 0, **body}))]


feed_meta = st.fixed_dictionaries({}, optional={
    "feeds": st.dictionaries(st.sampled_from(["input", "other"]), st.integers(-2, 3))
    | json_values, "offset": st.integers(-1, 4) | json_values,
    "partition": st.integers(-1, 3) | st.none(), "message": st.text(max_size=5),
    "feed": st.sampled_from(["input", "other"]) | json_values,
    "epoch": st.integers(-2, 3) | json_values, "rows": st.integers(-1, 4) | json_values,
    "per_worker": st.integers(-1, 4) | json_values, "last_epoch": st.integers(-1, 3),
    "mode": st.sampled_from(["train", "inference"]), "records": st.integers(0, 4)})
feed_messages = st.one_of(
    st.builds(lambda kind, body, columns: [_join(forge(kind, body, columns))],
              st.sampled_from([c.__name__ for c in fm.ALL] + ["?"]), feed_meta,
              st.dictionaries(st.sampled_from(["x", "y"]),
                              hnp.arrays(np.int64, hnp.array_shapes(min_dims=0, max_dims=2,
                                                                    max_side=4)), max_size=2)),
    st.binary(max_size=80).map(lambda b: [b]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(conversation=st.lists(feed_messages, min_size=1, max_size=5))
@example(conversation=[_hello(epoch="zero")])
@example(conversation=[_hello(epoch=float("inf"))])
@example(conversation=[_hello(), [_join(forge("Batch", {"rows": "two"}, {"x": np.arange(2)}))]])
@example(conversation=[_hello(), [_join(forge("Batch", {"rows": 1}, {"x": np.array(7)}))]])
def test_any_authenticated_conversation_gets_answers_never_a_crash(live_feed_server,
                                                                     conversation):
    """Whatever an authenticated peer sends, the node answers (ok, done, error) or hangs up;
    no connection thread dies of an exception. Regressions (the @examples): a hello whose
    epoch was "zero" or infinite and a batch whose rows was "two" killed the thread with
    ValueError/OverflowError, so the feeder got no reason; a 0-d column gave "len() of
    unsized object"."""
    crashes = []
    previous = threading.excepthook
    threading.excepthook = lambda args: crashes.append(args.exc_value)
    try:
        (address,) = live_feed_server.addresses
        with rdma.connect(address, SECRET, timeout=5) as comm:
            # The node may refuse and hang up before everything is sent.
            with contextlib.suppress(CommClosed, OSError):
                for message in conversation:
                    comm.send(message, timeout=5)
                comm._out.sock.shutdown(socket.SHUT_WR)  # and no more: the node sees the end
            replies = []
            for _ in range(len(conversation) + 2):
                try:
                    replies.append(kind_of(comm.recv(timeout=5)))
                except CommClosed:
                    break
                except CommTimeout:
                    pytest.fail("the feed endpoint neither answered nor closed")
        for thread in threading.enumerate():    # its threads report a crash before they end
            if thread.name == "tfos-feed-conn":
                thread.join(5)
        assert set(replies) <= {"ok", "done", "error", "results"}
        assert "error" not in replies[:-1]            # an error reply is the last word
    finally:
        threading.excepthook = previous
    assert crashes == []
