"""Hostile traffic against every port tfos opens, on real servers started in-process on 127.0.0.1.

The ports: the driver's control service (gRPC, each request HMAC-signed) and a node's feed
endpoint (``tcp://`` and ``shm://``, each connection authenticated by the comm handshake).
Each gets garbage, truncated and oversized frames, replays, a wrong secret, no signature at
all, and well-authenticated but malformed bodies. After each: the request was refused with the
documented error, nothing was registered or fed, and the same server still serves a correct
request. Then: each server listens only on the address it was given, and no code path
unpickles what it reads from the network.
"""
from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import pathlib
import pickle
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading

import grpc
import numpy as np
import psutil
import pytest
from feed_forgery import forge, kind_of

import rdma
from rdma import framing, handshake
from rdma.errors import AuthFailed, CommClosed
from tfos import FeedError
from tfos.core import auth, feed_codec, launch
from tfos.core import feed_messages as fm
from tfos.core import messages as m
from tfos.core.messages import method_path
from tfos.core.runtime import python_version, tensorflow_version
from tfos.driver.control_service import ControlService
from tfos.executor import process, tensorboard
from tfos.node.context import NodeContext
from tfos.node.feed_server import FeedServer

HOST = "127.0.0.1"
OTHER_LOOPBACK = "127.0.0.2"   # an address of this machine the servers were not told to use
CHIEF, WORKER = 0, 1
SECRET = bytes(range(7, 39))
REPO = pathlib.Path(__file__).resolve().parents[2]


class _Boom:
    """A pickle that, if anything ever unpickled it, would create ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def register_msg(node_id: int) -> m.Register:
    return m.Register(node_id=node_id, attempt=0, host=HOST, tf_port=41000 + node_id,
                      pid=5000 + node_id, python_version=python_version(),
                      tf_version=tensorflow_version())


def listening_addresses(port: int) -> set[str]:
    """The addresses this process listens on at ``port`` (IPv4-mapped IPv6 as IPv4)."""
    return {c.laddr.ip.removeprefix("::ffff:") for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def connect_refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class LogWatch(logging.Handler):
    """Counts log records containing ``text``; ``wait(n)`` waits for the n-th (bounded)."""

    def __init__(self, text: str):
        super().__init__(logging.DEBUG)
        self.text = text
        self.count = 0
        self._cond = threading.Condition()

    def emit(self, record):
        if self.text in record.getMessage():
            with self._cond:
                self.count += 1
                self._cond.notify_all()

    def wait(self, n: int, timeout: float = 10) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)


@contextlib.contextmanager
def watch_log(logger_name: str, text: str):
    watch = LogWatch(text)
    logger = logging.getLogger(logger_name)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


# == the control service ==========================================================================

def raw_call(address: str, method: str, body: bytes, metadata=()) -> bytes:
    with grpc.insecure_channel(address) as channel:
        return channel.unary_unary(method_path(method))(body, metadata=metadata, timeout=5)


def rpc_code(address: str, method: str, body: bytes, metadata=()) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        raw_call(address, method, body, metadata)
    return info.value.code()


def _signed(secret, method, body):
    return auth.sign(secret, method_path(method), body)


def _replayed(plane, method, body):
    metadata = _signed(plane.secret, method, body)
    raw_call(plane.address, method, body, metadata)     # the original, accepted once
    return metadata


# (name, method, body, metadata factory) of requests that must all be UNAUTHENTICATED.
UNAUTHENTICATED = {
    "unsigned": lambda plane, body: (),
    "wrong-secret": lambda plane, body: _signed(auth.new_secret(), "Register", body),
    "signed-for-another-method": lambda plane, body: _signed(plane.secret, "Heartbeat", body),
    "signed-another-body": lambda plane, body: _signed(plane.secret, "Register", body + b" "),
    "stale": lambda plane, body: tuple(
        (k, v) for k, v in _stale_signature(plane.secret, body)),
    "malformed-signature": lambda plane, body: tuple(
        (k, "zz" * 32 if k == auth.SIG_KEY else v)
        for k, v in _signed(plane.secret, "Register", body)),
}


def _stale_signature(secret: bytes, body: bytes):
    ts, nonce = "1000000000000", "ab" * 16     # 2001: far outside the freshness window
    return ((auth.TS_KEY, ts), (auth.NONCE_KEY, nonce),
            (auth.SIG_KEY, auth._digest(secret, method_path("Register"), ts, nonce, body)))


def assert_nothing_registered_and_still_serving(plane) -> None:
    assert plane.state.registered == set()
    assert plane.state.nodes[CHIEF].host == "?"
    assert plane.state.failures == []
    assert plane.client.register(register_msg(CHIEF)).accepted
    assert plane.state.registered == {CHIEF}


@pytest.mark.parametrize("attack", sorted(UNAUTHENTICATED))
def test_control_refuses_requests_without_a_valid_fresh_signature(control_chief_worker, attack):
    plane = control_chief_worker
    body = m.encode(register_msg(CHIEF))
    metadata = UNAUTHENTICATED[attack](plane, body)
    assert rpc_code(plane.address, "Register", body, metadata) is grpc.StatusCode.UNAUTHENTICATED
    assert plane.service.rejected == 1
    assert_nothing_registered_and_still_serving(plane)


def test_control_refuses_a_replayed_request(control_chief_worker):
    plane = control_chief_worker
    body = m.encode(register_msg(CHIEF))
    metadata = _signed(plane.secret, "Register", body)
    assert m.decode(raw_call(plane.address, "Register", body, metadata), m.RegisterReply).accepted
    # The very same bytes again: refused before the state sees them (it would also refuse a
    # second registration, but as a cluster failure).
    assert rpc_code(plane.address, "Register", body, metadata) is grpc.StatusCode.UNAUTHENTICATED
    assert plane.state.failures == [] and plane.state.registered == {CHIEF}
    hb = m.encode(m.Heartbeat(CHIEF, m.NodeState.RUNNING))
    replay = _replayed(plane, "Heartbeat", hb)
    assert rpc_code(plane.address, "Heartbeat", hb, replay) is grpc.StatusCode.UNAUTHENTICATED
    assert plane.client.register(register_msg(WORKER)).accepted


@pytest.mark.parametrize("body", [
    b"\x80\x04\x95" + bytes(20),          # the start of a pickle
    b"{" * 10, b'{"v":1,"type":"Register","body":{"node_id":0}}',
    b'{"v":1,"type":"Register","body":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"v":1,"type":"Register","body":{"node_id":1e999}}',
], ids=["pickle", "truncated-json", "missing-fields", "deep-nesting", "huge-number"])
def test_control_refuses_signed_malformed_bodies_and_keeps_serving(control_chief_worker, body):
    plane = control_chief_worker
    code = rpc_code(plane.address, "Register", body, _signed(plane.secret, "Register", body))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert plane.state.registered == set()
    # Only a holder of the secret signs: the driver takes it for mismatched tfos versions and
    # fails the cluster (test_control_service), but keeps answering.
    assert "different tfos versions" in plane.state.failures[0].reason
    assert plane.client.heartbeat(m.Heartbeat(CHIEF, m.NodeState.RUNNING)).command \
        is m.Command.STOP


def test_control_never_unpickles_a_signed_pickle(control_chief_worker, tmp_path):
    plane = control_chief_worker
    marker = tmp_path / "unpickled"
    body = pickle.dumps(_Boom(str(marker)))
    code = rpc_code(plane.address, "Register", body, _signed(plane.secret, "Register", body))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert not marker.exists()


def test_a_signed_feed_address_that_is_not_json_is_refused_quietly(control_chief_worker):
    """Regression: ``ServiceUrl("feed", "<not JSON>")`` raised inside the handler (UNKNOWN)."""
    plane = control_chief_worker
    for url in ("not json", "[" * 100_000, '["tcp://h:1", 5]'):
        assert plane.client.service_url(m.ServiceUrl(CHIEF, "feed", url)) == m.Ack(False)
    assert plane.state.feed_uris == {}
    assert plane.state.failures == []
    assert plane.client.service_url(m.ServiceUrl(CHIEF, "feed", '["tcp://h:1"]')) == m.Ack()
    assert plane.state.feed_uris == {CHIEF: ["tcp://h:1"]}


# -- raw HTTP/2 against the control port -----------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") \
        + payload


def hpack_literal(name: str, value: str) -> bytes:
    """A header as HPACK 'literal without indexing, new name' (short strings only)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def grpc_request_frames(address: str, method: str, data: bytes) -> bytes:
    headers = b"".join(hpack_literal(k, v) for k, v in [
        (":method", "POST"), (":scheme", "http"), (":path", method_path(method)),
        (":authority", address), ("content-type", "application/grpc"), ("te", "trailers")])
    return (H2_PREFACE + h2_frame(4, 0, 0, b"")                # SETTINGS
            + h2_frame(1, 0x4, 1, headers)                     # HEADERS, END_HEADERS
            + h2_frame(0, 0x1, 1, data))                       # DATA, END_STREAM


def stream_ended_by_server(sock: socket.socket, timeout: float = 10) -> bool:
    """Reads frames until the server ends stream 1 (trailers, RST_STREAM, GOAWAY, or close)."""
    sock.settimeout(timeout)
    buffer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout) as error:
            return isinstance(error, ConnectionResetError)
        if not chunk:
            return True
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            buffer = buffer[9 + length:]
            if kind == 7 or (stream == 1 and (kind == 3 or (kind == 1 and flags & 0x1))):
                return True


@pytest.mark.parametrize("frames", [
    lambda address: os.urandom(4096),
    lambda address: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    lambda address: H2_PREFACE + h2_frame(4, 0, 0, b"")[:5],                 # truncated frame
    lambda address: H2_PREFACE + b"\x00\x40\x00\x01\x04\x00\x00\x00\x01",   # header, no body
    # A gRPC message whose 5-byte prefix announces 2 GiB, then ends after 2 bytes.
    lambda address: grpc_request_frames(address, "Register", b"\x00\x7f\xff\xff\xffxx"),
    # A message prefix announcing 100 bytes, ending after 10 (a truncated message).
    lambda address: grpc_request_frames(address, "Register", b"\x00\x00\x00\x00\x64" + bytes(10)),
], ids=["random-bytes", "http1", "truncated-frame", "frame-without-body",
        "oversized-length-prefix", "truncated-message"])
def test_control_port_survives_malformed_http2(control_chief_worker, frames):
    plane = control_chief_worker
    with socket.create_connection((HOST, plane.service.port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(frames(plane.address))
            sock.shutdown(socket.SHUT_WR)
        assert stream_ended_by_server(sock), "the server neither answered nor closed"
    assert plane.service.rejected == 0       # never reached a handler
    assert_nothing_registered_and_still_serving(plane)


def test_control_refuses_an_oversized_request(control_chief_worker):
    plane = control_chief_worker
    body = b"x" * (m.MAX_MESSAGE_BYTES + 1)
    assert rpc_code(plane.address, "Register", body, _signed(plane.secret, "Register", body)) \
        is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_nothing_registered_and_still_serving(plane)


# == the feed endpoint ===============================================================================

@pytest.fixture
def feed_dir():
    """A short private directory: a Unix socket path has at most 107 bytes."""
    path = tempfile.mkdtemp(prefix="tfos-sec-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def feed_server(feed_dir):
    """A node's feed endpoint on tcp://127.0.0.1 and a shm:// socket, with a 4 MiB buffer."""
    server = FeedServer([f"tcp://{HOST}:0", f"shm://{feed_dir}/feed.sock"], SECRET, 4 << 20)
    yield server
    server.close()


@pytest.fixture(params=["tcp", "shm"])
def feed_address(request, feed_server) -> str:
    (address,) = [a for a in feed_server.addresses if a.startswith(request.param)]
    return address


def _opts(address: str) -> dict:
    return {"capacity": 1 << 20} if address.startswith("shm://") else {}


def feed(address: str, values, secret: bytes = SECRET) -> str:
    """A correct feeder: hello, one batch of ``values``, end; returns the node's answer."""
    with rdma.connect(address, secret, timeout=5, **_opts(address)) as comm:
        comm.send(feed_codec.encode(fm.FeederHello("input", 0, fm.FeedMode.TRAIN)))
        comm.send(feed_codec.encode(fm.Batch(len(values)),
                                    {"x": np.asarray(values, dtype=np.int64)}))
        comm.send(feed_codec.encode(fm.End(len(values))))
        return kind_of(comm.recv(timeout=5))



def fed_rows(server: FeedServer, name: str = "input") -> list[int]:
    """The rows buffered in feed ``name`` (taken out), [] when none or no such feed."""
    queue = server._queues.get(name)
    if queue is None:
        return []
    try:
        pieces = queue.take(1 << 30, within_epoch=False, timeout=0.2)
    except FeedError:
        return []
    return [int(v) for chunk, start, stop in pieces for v in chunk.columns["x"][start:stop]]


def assert_feeds_nothing_and_still_serves(server: FeedServer, address: str) -> None:
    assert fed_rows(server) == []
    assert feed(address, [1, 2, 3]) == "done"
    assert fed_rows(server) == [1, 2, 3]


def raw_connect(address: str) -> socket.socket:
    scheme, rest = rdma.comm.parse_uri(address)
    if scheme == "shm":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(rest)
        return sock
    host, port = rest.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def read_until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the server says before it closes (a reset counts as closing)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def client_handshake(sock: socket.socket, secret: bytes, nonce_c: bytes) -> bytes:
    """Runs the connector's side of rdma.handshake by hand; returns the bytes it sent."""
    hello = handshake._HELLO_C.pack(handshake.MAGIC, handshake.VERSION, nonce_c)
    sock.sendall(hello)
    reply = b""
    while len(reply) < handshake._HELLO_L.size:
        reply += sock.recv(handshake._HELLO_L.size - len(reply))
    _, _, nonce_l, _ = handshake._HELLO_L.unpack(reply)
    proof = handshake._mac(secret, b"connector", nonce_l, nonce_c)
    sock.sendall(proof)
    assert sock.recv(1) == b"\x01"
    return hello + proof


JUNK = {
    "http-garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4,
    "random-bytes": bytes(range(256)) * 4,
    "truncated-handshake": handshake.MAGIC + b"\x01",
    "oversized": os.urandom(1 << 20),
    # A feed message framed for the wire but sent without authenticating first.
    "unsigned-frame": framing.encode(feed_codec.encode(fm.FeederHello("input", 0))),
}


@pytest.mark.parametrize("junk", sorted(JUNK))
def test_feed_refuses_connections_that_do_not_authenticate(feed_server, feed_address, junk):
    with watch_log("tfos.node.feed_server", "refused a connection") as refused:
        with raw_connect(feed_address) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(JUNK[junk])
                sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock) in (b"", )      # closed on us, nothing said
        assert refused.wait(1)
    assert feed_server._queues == {}
    assert_feeds_nothing_and_still_serves(feed_server, feed_address)


def test_feed_refuses_a_wrong_secret_on_both_ends(feed_server, feed_address):
    with watch_log("tfos.node.feed_server", "refused a connection") as refused:
        with pytest.raises(AuthFailed, match="different secrets"):
            feed(feed_address, [9], secret=bytes(32))
        assert refused.wait(1)
    assert feed_server._queues == {}
    assert_feeds_nothing_and_still_serves(feed_server, feed_address)


def test_feed_refuses_a_replayed_handshake(feed_server, feed_address):
    nonce_c = os.urandom(handshake.NONCE_SIZE)
    with watch_log("tfos.node.feed_server", "refused a connection") as refused:
        with raw_connect(feed_address) as sock:
            recorded = client_handshake(sock, SECRET, nonce_c)   # accepted (then abandoned)
        with raw_connect(feed_address) as sock:
            sock.sendall(recorded)                              # the same bytes again
            answer = read_until_closed(sock)
        assert answer[handshake._HELLO_L.size:] in (b"\x00", b"")   # refused
        assert refused.wait(2 if feed_address.startswith("shm") else 1)
    assert_feeds_nothing_and_still_serves(feed_server, feed_address)


def test_a_recorded_tcp_feed_session_cannot_be_replayed(feed_server):
    (address,) = [a for a in feed_server.addresses if a.startswith("tcp")]
    frames = b"".join(framing.encode(parts) for parts in (
        feed_codec.encode(fm.FeederHello("input", 0)),
        feed_codec.encode(fm.Batch(2), {"x": np.array([7, 8], np.int64)}),
        feed_codec.encode(fm.End(2))))
    with raw_connect(address) as sock:
        recorded = client_handshake(sock, SECRET, os.urandom(handshake.NONCE_SIZE)) + frames
        sock.sendall(frames)
        decoder, replies = framing.FrameDecoder(), []
        while not replies:
            replies = decoder.feed(sock.recv(4096))
    assert kind_of(replies[0]) == "done"
    assert fed_rows(feed_server) == [7, 8]
    with raw_connect(address) as sock:
        sock.sendall(recorded)
        assert read_until_closed(sock)[handshake._HELLO_L.size:] in (b"\x00", b"")
    assert fed_rows(feed_server) == []
    assert_feeds_nothing_and_still_serves(feed_server, address)


@pytest.mark.parametrize("junk", [
    framing.pack_header(framing.Kind.DATA, 1 << 40),            # oversized length prefix
    framing.pack_header(framing.Kind.DATA, 1000)[:10],          # truncated header
    framing.pack_header(framing.Kind.DATA, 1000) + bytes(10),   # truncated message
    b"NOPE" + bytes(12),                                        # garbage header
    framing.pack_header(framing.Kind.SETUP, 7),                 # a frame of the wrong kind
], ids=["oversized-length", "truncated-header", "truncated-message", "bad-magic", "wrong-kind"])
def test_feed_drops_authenticated_connections_that_break_the_framing(feed_server, feed_address,
                                                                     junk):
    with rdma.connect(feed_address, SECRET, timeout=5, **_opts(feed_address)) as comm:
        comm._out.sock.sendall(junk)
        comm._out.sock.shutdown(socket.SHUT_WR)
        with pytest.raises(CommClosed):
            comm.recv(timeout=5)
    assert feed_server._queues == {}
    assert_feeds_nothing_and_still_serves(feed_server, feed_address)


def _forged(header: dict) -> list[bytes]:
    """A feed message with a hand-written header (what encode() would never write)."""
    text = json.dumps(header).encode()
    prefix = struct.pack("<I", len(text)) + text
    return [prefix + bytes(-len(prefix) % feed_codec.ALIGN) + bytes(64)]


HELLO = feed_codec.encode(fm.FeederHello("input", 0))
DRIVER = feed_codec.encode(fm.DriverHello())
X = {"x": np.arange(3, dtype=np.int64)}
# Authenticated conversations that must end in an "error" reply naming the fault.
MALFORMED = {
    "not-a-feed-message": ([[b"\xff" * 40]], "too short|does not fit|not JSON"),
    "pickle": ([[pickle.dumps({"kind": "hello"})]], "header"),
    "batch-before-hello": ([feed_codec.encode(fm.Batch(3), X)], "start with hello"),
    "hello-without-feed": ([forge("FeederHello", {"epoch": 0})], "lacks field 'feed'"),
    "hello-epoch-not-a-number": ([forge("FeederHello", {"feed": "input", "epoch": "zero"})],
                                 r"FeederHello\.epoch must be int"),
    "hello-epoch-infinite": ([forge("FeederHello", {"feed": "input", "epoch": float("inf")})],
                             r"FeederHello\.epoch must be int"),
    "hello-epoch-negative": ([forge("FeederHello", {"feed": "input", "epoch": -1})],
                             r"FeederHello\.epoch must be a non-negative integer"),
    "rows-not-an-int": ([HELLO, forge("Batch", {"rows": True}, X)],
                        r"Batch\.rows must be int, got bool"),
    "rows-mismatch": ([HELLO, feed_codec.encode(fm.Batch(2), X)], "other lengths"),
    "no-columns": ([HELLO, feed_codec.encode(fm.Batch(0))], "other lengths"),
    "scalar-column": ([HELLO, feed_codec.encode(fm.Batch(1), {"x": np.array(5, np.int64)})],
                      "other lengths"),
    "object-column": ([HELLO, _forged({"v": fm.VERSION, "type": "Batch", "body": {"rows": 1},
                                       "columns": [{"name": "x", "dtype": "|O", "shape": [1],
                                                    "offset": 0, "nbytes": 8}]})],
                      "cannot carry"),
    "unknown-kind": ([HELLO, forge("Shutdown", {})], "feeder message, got 'Shutdown'"),
    "driver-marker-without-feed": ([DRIVER, forge("EpochStart", {"epoch": 0, "per_worker": 3})],
                                   "EpochStart lacks field 'feed'"),
    "driver-marker-bad-count": ([DRIVER, forge("EpochStart", {"feed": "input", "epoch": 0,
                                                              "per_worker": "3"})],
                                r"EpochStart\.per_worker must be int"),
    "driver-unknown-marker": ([DRIVER, forge("Reboot", {})], "driver message, got 'Reboot'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_feed_answers_authenticated_malformed_messages_with_an_error(feed_server, feed_address,
                                                                     case):
    messages, reason = MALFORMED[case]
    with rdma.connect(feed_address, SECRET, timeout=5, **_opts(feed_address)) as comm:
        for message in messages:
            comm.send(message)
        answer, _ = feed_codec.decode(comm.recv(timeout=5))
        assert isinstance(answer, fm.Error)
        assert re.search(reason, answer.message), answer.message
        with pytest.raises(CommClosed):       # and the node hung up
            comm.recv(timeout=5)
    assert fed_rows(feed_server) == []
    assert_feeds_nothing_and_still_serves(feed_server, feed_address)


def test_feed_never_unpickles_what_arrives(feed_server, feed_address, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(str(marker)))
    header = feed_codec.encode(fm.Batch(1), {"x": np.frombuffer(payload, np.uint8)})
    with rdma.connect(feed_address, SECRET, timeout=5, **_opts(feed_address)) as comm:
        comm.send([payload])
        assert kind_of(comm.recv(timeout=5)) == "error"
    with rdma.connect(feed_address, SECRET, timeout=5, **_opts(feed_address)) as comm:
        comm.send(HELLO)
        comm.send(header)                      # a pickle as a column of bytes: just bytes
        assert kind_of(comm.recv(timeout=5)) == "error"   # 1 row vs len(payload)
    assert not marker.exists()


# == what each server binds ========================================================================

def test_control_service_listens_only_on_its_host(control_chief_worker):
    plane = control_chief_worker
    assert listening_addresses(plane.service.port) == {HOST}
    assert connect_refused(OTHER_LOOPBACK, plane.service.port)


def test_control_service_binds_every_interface_only_when_asked():
    from tfos.core.config import ClusterConfig
    from tfos.driver.cluster_state import ClusterState
    config = ClusterConfig(num_executors=1)
    state = ClusterState(config, driver_versions=(python_version(), tensorflow_version()))
    with ControlService(state, SECRET, HOST, bind_all=True) as service:
        assert service.address == f"{HOST}:{service.port}"         # still what nodes are told
        assert listening_addresses(service.port) <= {"0.0.0.0", "::"}
        assert not connect_refused(OTHER_LOOPBACK, service.port)


def test_control_service_on_an_address_of_no_interface_fails_with_advice():
    from tfos.core.config import ClusterConfig
    from tfos.driver.cluster_state import ClusterState
    state = ClusterState(ClusterConfig(num_executors=1),
                         driver_versions=(python_version(), tensorflow_version()))
    with pytest.raises(OSError, match="driver_host.*bind_all_interfaces"):
        ControlService(state, SECRET, "192.0.2.1")     # TEST-NET-1: on no interface here


def test_feed_endpoint_listens_only_on_its_host_and_its_socket_is_private(feed_server):
    tcp, shm = sorted(feed_server.addresses)[::-1]
    port = int(tcp.rsplit(":", 1)[1])
    assert listening_addresses(port) == {HOST}
    assert connect_refused(OTHER_LOOPBACK, port)
    path = shm[len("shm://"):]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_a_node_binds_its_feed_to_every_interface_only_when_asked(feed_dir, launch_record):
    read_fd, write_fd = os.pipe()
    record = launch_record(working_dir=feed_dir, host=HOST, status_fd=write_fd,
                           feed=launch.FeedEndpoint(HOST, True, f"{feed_dir}/feed.sock", 1 << 20,
                                                    300.0))
    ctx = NodeContext(record)
    try:
        ctx.start_feed_server(SECRET)
        with os.fdopen(read_fd, "rb") as status:
            event = launch.decode_event(status.readline())
        assert isinstance(event, launch.FeedOpened)
        (tcp,) = [a for a in event.addresses if a.startswith("tcp://")]
        port = int(tcp.rsplit(":", 1)[1])
        assert tcp == f"tcp://{HOST}:{port}"                 # advertised: the executor's host
        assert listening_addresses(port) == {"0.0.0.0"}
        assert feed(tcp, [4]) == "done"
    finally:
        ctx._feed_server.close()
        os.close(write_fd)


class _FakeTensorBoard:
    commands: list = []

    def __init__(self, command, **kwargs):
        self.commands.append(command)
        self.popen = subprocess.Popen(["true"], stdout=subprocess.PIPE)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.popen.wait()
        self.popen.stdout.close()


@pytest.mark.parametrize("bind_all, expected", [(False, HOST), (True, "0.0.0.0")])
def test_tensorboard_is_told_to_bind_its_host(monkeypatch, tmp_path, bind_all, expected):
    _FakeTensorBoard.commands = []
    monkeypatch.setattr(process, "ChildProcess", _FakeTensorBoard)
    with tensorboard.serve(HOST, str(tmp_path), 1.0, on_ready=lambda url: None,
                           on_output=lambda line: None, bind_all=bind_all) as url:
        (command,) = _FakeTensorBoard.commands
        assert command[command.index("--host") + 1] == expected
        assert url == f"http://{HOST}:{command[command.index('--port') + 1]}/"


def test_reserved_ports_are_held_on_the_given_address_only():
    """The TF and TensorBoard ports are reserved on the node's address: a plain socket (no
    SO_REUSEADDR) can still take the port on another address, which a wildcard hold forbids."""
    with process.reserved_port(HOST) as port:
        with socket.socket() as other:
            other.bind((OTHER_LOOPBACK, port))


# == nothing from the network is unpickled ========================================================

# Calls that turn bytes into arbitrary objects. Three sites are allowed, none reads a socket of
# tfos's: the TF node reads its task's own pipe (the map_fun Spark shipped), TFEstimator.load
# reads the train_fn from a directory the user saved and explicitly loads (documented as a
# pickle), and a feed task unpickles the RDD batches its own executor's JVM streams to the
# Python worker, the same bytes PySpark's worker would otherwise unpickle for it.
_UNPICKLERS = {("pickle", "loads"), ("pickle", "load"), ("cloudpickle", "loads"),
               ("cloudpickle", "load"), ("marshal", "loads"), ("pickle", "Unpickler"),
               ("shelve", "open"), ("yaml", "load"), ("dill", "loads")}
_ALLOWED = {("tfos/node/main.py", "pickle.loads"), ("tfos/ml/pipeline.py", "pickle.loads"),
            ("tfos/core/pickled_rows.py", "pickle.loads")}


def _deserializing_calls(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            yield func.id
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            pair = (func.value.id, func.attr)
            if pair in _UNPICKLERS:
                yield f"{pair[0]}.{pair[1]}"
            if func.attr == "load" and func.value.id in ("np", "numpy") and any(
                    k.arg == "allow_pickle" for k in node.keywords):
                yield "numpy.load(allow_pickle=...)"


def test_no_library_code_unpickles_except_the_nodes_pipe_and_a_saved_estimator():
    found = {(str(p.relative_to(REPO)), call)
             for package in ("tfos", "rdma") for p in sorted((REPO / package).rglob("*.py"))
             for call in _deserializing_calls(p)}
    assert found == _ALLOWED
    # And that one reads stdin, which the node task writes (tfos.executor.node_task), not a socket.
    source = (REPO / "tfos/node/main.py").read_text()
    assert "launch.decode(sys.stdin.buffer.read())" in source
    assert "pickle.loads(payload)" in source and source.count("pickle.loads") == 1
    # And those of the feed tasks only over the batches of the rows Spark hands them: the one
    # module that unpickles them, used by one row source.
    source = (REPO / "tfos/core/pickled_rows.py").read_text()
    assert source.count("pickle.loads(") == 1 and source.count("(pickle.Unpickler)") == 1
    users = [p for package in ("tfos", "rdma") for p in (REPO / package).rglob("*.py")
             if "pickled_rows.unpickle_batch" in p.read_text()]
    assert [str(p.relative_to(REPO)) for p in users] == ["tfos/executor/feed_task.py"]
    # And this one only in TFEstimator's loader, from the metadata of the saved estimator.
    source = (REPO / "tfos/ml/pipeline.py").read_text()
    assert source.count("pickle.loads") == 1
    assert 'pickle.loads(base64.b64decode(metadata["tfos_train_fn"]))' in source
