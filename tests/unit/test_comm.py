"""Conformance suite of the comm interface, run over every scheme: tcp, shm (the compiled
core's shm carrier), shmrings (shm://'s pure-Python fallback for hosts without the core,
registered under a scheme of its own) and rdma (the core's verbs carrier, through the test-only
fake libibverbs of tests/fakeverbs, built with gcc).

The test process is the listener (a TF node's side); the key cases put the other end in a
real separate process, ``python test_comm_peer.py <action> ...``, which reports on stdout as
JSON lines (not for shmrings: a peer process knows only the built-in schemes). Every wait has
a timeout and every loop a count, so a broken transport fails here instead of hanging.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_comm_peer import pattern
from test_verbs_carrier import CFLAGS, FAKEVERBS, finish, gcc

import rdma
from rdma import core, devices, framing
from rdma.errors import (
    AuthFailed,
    CommClosed,
    CommError,
    CommTimeout,
    ConnectFailed,
    FrameError,
    TransportUnavailable,
)
from rdma.shm import ShmBackend

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_comm_peer.py")
SECRET = bytes(range(100, 132))
MiB = 1 << 20
SCHEMES = {"tcp": "tcp://127.0.0.1:0", "shm": "shm://", "shmrings": "shmrings://",
           "rdma": "rdma://127.0.0.1:0"}
# A 4 MiB ring (shm, shmrings, rdma) / 1 MiB kernel socket buffers (tcp): small enough to see
# the bounds.
RING = {"max_message": 4 * MiB, "capacity": 4 * MiB}
OPTIONS = {"tcp": {"max_message": 4 * MiB, "socket_buffer": MiB}, "shm": RING,
           "shmrings": RING, "rdma": RING}
# What a producer can have in flight before it must block: the ring, or the socket buffers
# (the kernel doubles SO_SNDBUF/SO_RCVBUF and counts its own overhead in them).
IN_FLIGHT_BOUND = {"tcp": 8 * MiB, "shm": 4 * MiB, "shmrings": 4 * MiB, "rdma": 4 * MiB}
# Schemes whose comms are byte streams a peer can corrupt frame by frame; the core's links
# move whole messages into registered memory (its protocol faults: test_engine_faults.py).
STREAMS = ("tcp", "shmrings")
# Schemes over the compiled core (rdma.core.LinkComm).
CORE = ("shm", "rdma")

rdma.register_backend("shmrings", ShmBackend("shmrings", use_core=False))


def _memfd_maps() -> list[str]:
    """Our mappings of shared memory: the Python rings, or the core's arenas."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "tfos-comm-ring" in line or "tfos-core-arena" in line]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settles(check, seconds: float = 5.0) -> bool:
    """Whether ``check()`` holds within ``seconds``: a verbs link is destroyed on a thread of
    its own once closed (its carrier lingers for the peer's hang-up), so its descriptors and
    mappings go a moment after close() returns."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _dev_shm_entries() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if "tfos" in name}


# -- fixtures ------------------------------------------------------------------------------

def _unavailable(scheme: str) -> str | None:
    if scheme.startswith("shm") and not (hasattr(os, "memfd_create")
                                         and hasattr(socket, "recv_fds")):
        return "shm:// needs Linux memfd_create and SCM_RIGHTS"
    if scheme in CORE and not core.built():
        return "rdma._core did not build (test_core_ring.py fails the suite for it)"
    if scheme == "rdma" and shutil.which("gcc") is None:
        return "gcc is not installed: the fake libibverbs that stands in for a device is built with it"
    return None


@pytest.fixture(scope="module")
def fake_verbs(tmp_path_factory) -> dict[str, str]:
    """The test-only libibverbs (tests/fakeverbs), built once: the environment that makes
    rdma:// use it, in this process and in the peers it starts."""
    out = tmp_path_factory.mktemp("fakeverbs")
    library = out / "libfake_ibverbs.so"
    finish(gcc(*CFLAGS, "-shared", "-fPIC", "-o", library, FAKEVERBS / "fake_ibverbs.c",
               "-lpthread"))
    return {"TFOS_IBVERBS_LIBRARY": str(library), "TFOS_FAKE_VERBS_DIR": str(out)}


@pytest.fixture(params=sorted(SCHEMES))
def scheme(request, monkeypatch) -> str:
    """Every scheme this host has; the others are skipped with the reason."""
    if _unavailable(request.param):
        pytest.skip(_unavailable(request.param))
    if request.param == "rdma":
        for name, value in request.getfixturevalue("fake_verbs").items():
            monkeypatch.setenv(name, value)
    return request.param


@pytest.fixture
def listener(scheme):
    """A listener of the scheme with small buffers; closed (and checked clean) afterwards."""
    maps_before = len(_memfd_maps())
    with rdma.listen(SCHEMES[scheme], SECRET, handshake_timeout=5, **OPTIONS[scheme]) as lis:
        yield lis
    if scheme.startswith("shm"):
        path = rdma.comm.parse_uri(lis.address)[1]
        assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    assert _settles(lambda: len(_memfd_maps()) <= maps_before), \
        "a ring is still mapped after close"


@pytest.fixture
def local_pair(listener, scheme):
    """Two ends in this process: (connector, accepted)."""
    client = rdma.connect(listener.address, SECRET, timeout=5, **OPTIONS[scheme])
    server = listener.accept(timeout=5)
    yield client, server
    client.close()
    server.close()


class Peer:
    """The other end, in its own process."""

    def __init__(self, action: str, uri: str, opts: dict, *args, secret: bytes = SECRET):
        env = dict(os.environ, PYTHONPATH=REPO, TFOS_TEST_SECRET=secret.hex())
        self.proc = subprocess.Popen(
            [sys.executable, PEER_PROGRAM, action, uri, json.dumps(opts), *map(str, args)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def line(self, timeout: float = 20) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"peer said nothing within {timeout} s"
        text = self.proc.stdout.readline()
        assert text, f"peer ended without a report: {self.proc.stderr.read().decode()[-2000:]}"
        return json.loads(text)

    def tell(self, text: str = "go") -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()


@pytest.fixture
def peer(scheme):
    """Factory: ``peer(action, uri, *args)`` starts a peer process; all are killed after."""
    if scheme == "shmrings":
        pytest.skip("shm://'s Python fallback is registered in this process only: a peer "
                    "process would take the compiled core")
    started = []

    def start(action: str, uri: str, *args, secret: bytes = SECRET) -> Peer:
        started.append(Peer(action, uri, OPTIONS[scheme], *args, secret=secret))
        return started[-1]

    yield start
    for p in started:
        p.kill()


# -- messages --------------------------------------------------------------------------------

def test_round_trip_of_small_large_empty_and_multipart_messages(listener, peer):
    np = pytest.importorskip("numpy")
    echo = peer("echo", listener.address)
    column = np.arange(300_000, dtype=np.float32).reshape(1000, 300)
    messages = [[b"x"], [], [b""], [b"a", b"", bytearray(b"bc"), memoryview(b"def")],
                [b"h" * 100, column, np.arange(10, dtype=np.int64)], [os.urandom(3 * MiB)]]
    with listener.accept(timeout=20) as comm:
        for parts in messages:
            comm.send(parts, timeout=10)
            expected = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
            assert bytes(comm.recv(timeout=10)) == expected
        comm.send([b"bye"], timeout=10)
    assert echo.finish() == 0


def test_send_and_receive_in_two_threads_at_once(listener, peer):
    """Full duplex: one thread sends while another receives the echoes."""
    echo = peer("echo", listener.address)
    count, size = 300, 20_000
    with listener.accept(timeout=20) as comm:
        sender = threading.Thread(
            target=lambda: [comm.send([pattern(i, size)], timeout=10) for i in range(count)])
        sender.start()
        try:
            for i in range(count):
                message = comm.recv(timeout=10)
                assert struct.unpack_from("<Q", message)[0] == i and message[-1] == i % 251
        finally:
            sender.join(20)
        comm.send([b"bye"], timeout=10)
    assert echo.finish() == 0


def test_a_thousand_messages_arrive_in_order(listener, peer):
    producer = peer("stream", listener.address, 1000, 3140)
    with listener.accept(timeout=20) as comm:
        for i in range(1000):
            message = comm.recv(timeout=10)
            assert len(message) == 3140 and struct.unpack_from("<Q", message)[0] == i
            assert message[-1] == i % 251
        assert len(comm.recv(timeout=10)) == 0      # the producer's end mark
        comm.send([b"ok"], timeout=10)
    assert producer.finish() == 0


def test_100_mib_stream_through_a_4_mib_buffer_keeps_memory_bounded(listener, peer, scheme):
    me = psutil.Process()
    baseline = me.memory_info().rss
    producer = peer("stream", listener.address, 100, MiB)
    peak = baseline
    buffer = bytearray(MiB)
    with listener.accept(timeout=20) as comm:
        for i in range(100):
            if i % 2:
                assert comm.recv_into(buffer, timeout=10) == MiB
                assert struct.unpack_from("<Q", buffer)[0] == i
            else:
                assert struct.unpack_from("<Q", comm.recv(timeout=10))[0] == i
            peak = max(peak, me.memory_info().rss)
        assert len(comm.recv(timeout=10)) == 0
        comm.send([b"ok"], timeout=10)
    assert producer.finish() == 0
    assert peak - baseline < 24 * MiB, f"RSS grew by {(peak - baseline) / MiB:.1f} MiB"


def test_several_producers_feed_one_consumer_at_once(listener, peer):
    """Feed tasks of several partitions push into the same node concurrently."""
    producers = [peer("stream", listener.address, 200, 3140 * 10) for _ in range(3)]
    comms = [listener.accept(timeout=20) for _ in producers]
    counts, errors = [0] * len(comms), []

    def drain(index: int, comm) -> None:
        try:
            for i in range(200):
                message = comm.recv(timeout=10)
                assert struct.unpack_from("<Q", message)[0] == i and message[-1] == i % 251
                counts[index] += 1
            assert len(comm.recv(timeout=10)) == 0
            comm.send([b"ok"], timeout=10)
        except Exception as error:  # reported below, with the others
            errors.append(error)

    readers = [threading.Thread(target=drain, args=(i, c)) for i, c in enumerate(comms)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    for comm in comms:
        comm.close()
    assert not errors and counts == [200] * 3
    assert [p.finish() for p in producers] == [0] * 3


def test_data_sent_before_close_arrives_while_the_peer_keeps_talking(request, scheme,
                                                                      local_pair):
    """Closing with unread data must not make the kernel reset the connection (and drop
    what the closer still had queued), even while the peer keeps sending."""
    if scheme == "rdma":
        request.applymarker(pytest.mark.xfail(strict=False, reason=(
            "known, in the engine and the verbs carrier (not the comm): a receiver that is "
            "itself writing to a peer that closes can still see the peer's hang-up before the "
            "peer's last message is complete, and then reports the link closed; the closing "
            "side now keeps its regions and queue pair until its writes are acknowledged and "
            "the peer lets go (nic.h quiesce), which made it rarer: 4 runs in 38 on a host at "
            "load 15-20, through the fake libibverbs")))
    client, server = local_pair
    payload = os.urandom(3 * MiB)
    stop = threading.Event()
    chatter_errors = []

    def chatter():
        try:
            for _ in range(10_000):
                if stop.is_set():
                    return
                server.send([b"progress report nobody reads"], timeout=1)
        except (CommClosed, CommTimeout):
            pass
        except CommError as exc:   # e.g. a write into a region the closing peer just freed
            chatter_errors.append(exc)

    talker = threading.Thread(target=chatter)
    talker.start()
    try:
        client.send([payload], timeout=10)    # most of it still in flight
        received = []
        reader = threading.Thread(
            target=lambda: received.append(bytes(server.recv(timeout=10))))
        reader.start()
        client.close()
        reader.join(15)
    finally:
        stop.set()
        talker.join(10)
    assert received == [payload]
    assert not chatter_errors     # the peer's close is reported as closed, nothing else


def test_a_slow_consumer_blocks_the_producer_within_the_bound(listener, peer, scheme):
    producer = peer("flood", listener.address, MiB)
    with listener.accept(timeout=20) as comm:
        report = producer.line()      # the producer hit CommTimeout; we read nothing so far
        assert report["error"] == "CommTimeout", report
        sent = report["sent"]
        assert 1 <= sent and sent * MiB <= IN_FLIGHT_BOUND[scheme], report
        for i in range(sent):
            assert struct.unpack_from("<Q", comm.recv(timeout=10))[0] == i
        producer.tell("exit")
        with pytest.raises(CommClosed):
            comm.recv(timeout=10)
    assert producer.finish() == 0


def test_a_killed_producer_is_comm_closed_within_seconds(listener, peer, scheme):
    maps_before = len(_memfd_maps())
    producer = peer("hang", listener.address, 3)
    with listener.accept(timeout=20) as comm:
        assert producer.line() == {"sent": 3}
        for i in range(3):
            assert struct.unpack_from("<Q", comm.recv(timeout=10))[0] == i
        os.kill(producer.proc.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(CommClosed, match=comm.peer_address.replace(".", r"\.")):
            comm.recv(timeout=10)
        assert time.monotonic() - started < 5
        with pytest.raises(CommClosed):
            comm.send([b"anyone?"], timeout=5)
    producer.finish()
    assert _settles(lambda: len(_memfd_maps()) <= maps_before) and not _dev_shm_entries()


def test_a_killed_consumer_is_comm_closed_for_a_blocked_producer(scheme, peer):
    """The other direction: the peer listens and dies while we are blocked on a full buffer."""
    maps_before = len(_memfd_maps())
    consumer = peer("listen_then_hang", SCHEMES[scheme])
    address = consumer.line()["address"]
    with rdma.connect(address, SECRET, timeout=10, **OPTIONS[scheme]) as comm:
        assert consumer.line() == {"accepted": True}
        killer = threading.Timer(0.5, os.kill, (consumer.proc.pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        try:
            with pytest.raises(CommClosed):
                for _ in range(64):
                    comm.send([bytes(MiB)], timeout=10)
        finally:
            killer.join()
        assert time.monotonic() - started < 8
    consumer.finish()
    assert _settles(lambda: len(_memfd_maps()) <= maps_before) and not _dev_shm_entries()


# -- authentication --------------------------------------------------------------------------

def test_a_wrong_secret_is_refused_on_both_ends_and_the_listener_serves_the_next(listener,
                                                                                 peer):
    intruder = peer("auth", listener.address, secret=bytes(32))
    with pytest.raises(AuthFailed, match="different secret"):
        listener.accept(timeout=20)
    assert intruder.line() == {"error": "AuthFailed"}
    assert intruder.finish() == 0
    friend = peer("auth", listener.address)
    with listener.accept(timeout=20) as comm:
        assert bytes(comm.recv(timeout=10)) == b"hello"
    assert friend.line() == {"ok": True}
    assert friend.finish() == 0


def _raw_connect(address: str) -> socket.socket:
    scheme, rest = rdma.comm.parse_uri(address)
    if scheme.startswith("shm"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(rest)
        return sock
    host, port = rest.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4, b"TFOSAUTH\x01",
                                  os.urandom(MiB), b""],
                         ids=["garbage", "truncated", "oversized", "silent"])
def test_a_bad_handshake_is_refused_and_the_listener_keeps_serving(scheme, junk):
    with rdma.listen(SCHEMES[scheme], SECRET, handshake_timeout=0.5) as listener:
        raw = _raw_connect(listener.address)
        started = time.monotonic()
        with contextlib.suppress(OSError):
            raw.sendall(junk)
            if junk.startswith(b"TFOSAUTH"):
                raw.shutdown(socket.SHUT_WR)      # truncated: the rest never comes
        with pytest.raises(AuthFailed):
            listener.accept(timeout=10)
        assert time.monotonic() - started < 5
        raw.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert raw.recv(100) in (b"", )      # refused: closed on us, nothing said
        raw.close()
        with rdma.connect(listener.address, SECRET, timeout=5) as good:
            with listener.accept(timeout=5) as comm:
                good.send([b"still serving"], timeout=5)
                assert bytes(comm.recv(timeout=5)) == b"still serving"


def test_a_connector_with_the_wrong_secret_gets_auth_failed(listener):
    with pytest.raises(AuthFailed, match="different secrets"):
        rdma.connect(listener.address, b"w" * 32, timeout=5)
    with pytest.raises(AuthFailed):
        listener.accept(timeout=5)


# -- broken frames, limits, timeouts -----------------------------------------------------------

@pytest.mark.parametrize("junk", [b"NOPE" + bytes(12), framing.pack_header(framing.Kind.SETUP, 9),
                                  struct.pack("<4sBBHQ", b"TFOS", 1, 1, 0, 1 << 40)],
                         ids=["bad-magic", "wrong-kind", "oversized-length"])
def test_malformed_frames_raise_frame_error_and_break_the_comm(scheme, local_pair, junk):
    if scheme not in STREAMS:
        pytest.skip(f"{scheme}:// carries no frames on its socket (the core's protocol faults "
                    "are tested in test_engine_faults.py)")
    client, server = local_pair
    client._out.sock.sendall(junk)
    with pytest.raises(FrameError):
        server.recv(timeout=5)
    with pytest.raises(CommClosed, match="broke|malformed"):
        server.recv(timeout=5)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=64), max_size=4), valid_first=st.booleans())
def test_arbitrary_bytes_from_a_peer_raise_only_frame_error_or_comm_closed(
        listener, scheme, chunks, valid_first):
    with rdma.connect(listener.address, SECRET, timeout=5, **OPTIONS[scheme]) as client:
        with listener.accept(timeout=5) as server:
            if valid_first:
                client.send([b"a valid message first"], timeout=5)
            for chunk in chunks:
                client._out.sock.sendall(chunk)
            client._out.sock.shutdown(socket.SHUT_WR)
            for _ in range(len(chunks) + 2):     # bounded: at most one message per chunk
                try:
                    server.recv(timeout=5)
                except (FrameError, CommClosed):
                    break
            else:
                pytest.fail("a peer's arbitrary bytes did not end in FrameError or CommClosed")


def test_a_truncated_frame_then_close_is_comm_closed_not_a_hang(local_pair, scheme):
    client, server = local_pair
    kind = framing.Kind.DATA if scheme == "tcp" else framing.Kind.RING    # shm: ignored bytes
    client._out.sock.sendall(framing.pack_header(kind, 1000)[:10])
    client._out.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(CommClosed):
        server.recv(timeout=5)


def test_messages_over_the_limits_are_refused_before_sending(local_pair, scheme):
    client, server = local_pair
    with pytest.raises(FrameError, match=f"{4 * MiB + 1} bytes .* exceeds max_message"):
        client.send([bytes(4 * MiB + 1)], timeout=5)
    client.send([b"fine"], timeout=5)
    assert bytes(server.recv(timeout=5)) == b"fine"


def _larger_messages(scheme: str, opts: dict) -> tuple:
    """A listener and a connected pair of ``scheme`` with ``opts`` on both sides."""
    listener = rdma.listen(SCHEMES[scheme], SECRET, **opts)
    client = rdma.connect(listener.address, SECRET, timeout=5, **opts)
    return listener, client, listener.accept(timeout=5)


def _send_in_order(client, server, sent: list[bytes]) -> list[bytes]:
    """What ``server`` receives while ``client`` sends ``sent`` from a thread of its own;
    the fourth message through recv_into."""
    sender = threading.Thread(target=lambda: [client.send([m], timeout=10) for m in sent])
    sender.start()
    got = [bytes(server.recv(timeout=10)) for _ in range(3)]
    target = bytearray(4 * MiB)
    size = server.recv_into(target, timeout=10)
    got += [bytes(target[:size]), bytes(server.recv(timeout=10))]
    sender.join(10)
    return got


def test_shm_messages_larger_than_the_ring_go_inline_in_order():
    """The Python fallback: a ring sized for the common case still carries a rare message
    larger than itself, inline on its socket."""
    listener, client, server = _larger_messages("shmrings", {"capacity": MiB,
                                                             "max_message": 8 * MiB})
    with listener, client, server:
        assert client.capacities[0] == MiB
        big = pattern(7, 3 * MiB + 5)
        sent = [b"before", big, b"between", big[:MiB + 1], b"after"]
        assert _send_in_order(client, server, sent) == sent
        # The ring still works after the inline messages, in both directions.
        server.send([b"reply"], timeout=5)
        assert bytes(client.recv(timeout=5)) == b"reply"


@pytest.mark.parametrize("scheme", CORE, indirect=True)
def test_messages_over_eager_max_wait_for_the_receiver_and_keep_their_order(scheme):
    """The core: messages above eager_max (and above half the receiver's ring) go by
    rendezvous, in order with the eager ones; one sent while nobody receives times out
    saying what to do, and sending it again resumes it."""
    listener, client, server = _larger_messages(scheme, {"capacity": MiB, "eager_max": 4096,
                                                         "max_message": 8 * MiB})
    with listener, client, server:
        big = pattern(7, 3 * MiB + 5)
        with pytest.raises(CommTimeout, match="did not clear.*send the same message again"):
            client.send([big], timeout=0.2)
        box = []
        reader = threading.Thread(target=lambda: box.append(bytes(server.recv(timeout=10))))
        reader.start()
        client.send([big], timeout=10)     # the same message again: resumes where it stopped
        reader.join(10)
        assert box == [big]
        sent = [b"before", big, b"x" * 4096, big[:MiB // 2 + 1], b"after"]
        assert _send_in_order(client, server, sent) == sent
        assert client.stats()["sent_rendezvous"] == 3 and client.stats()["sent_eager"] == 3
        server.send([b"reply"], timeout=5)
        assert bytes(client.recv(timeout=5)) == b"reply"


def test_recv_into_fits_or_leaves_the_message_queued(local_pair):
    client, server = local_pair
    client.send([b"0123456789"], timeout=5)
    with pytest.raises(FrameError, match="10 bytes .* buffer of 4 bytes"):
        server.recv_into(bytearray(4), timeout=5)
    target = bytearray(16)
    assert server.recv_into(target, timeout=5) == 10 and target[:10] == b"0123456789"
    client.send([b"again"], timeout=5)
    with pytest.raises(FrameError):
        server.recv_into(bytearray(1), timeout=5)
    assert bytes(server.recv(timeout=5)) == b"again"


def test_every_wait_has_a_timeout(local_pair, listener):
    client, server = local_pair
    for wait in (lambda: server.recv(timeout=0.2), lambda: client.recv(timeout=0.2),
                 lambda: server.recv_into(bytearray(8), timeout=0.2),
                 lambda: listener.accept(timeout=0.2)):
        started = time.monotonic()
        with pytest.raises(CommTimeout):
            wait()
        assert time.monotonic() - started < 2
    client.send([b"after the timeouts"], timeout=5)
    assert bytes(server.recv(timeout=5)) == b"after the timeouts"


def test_close_is_idempotent_and_later_calls_raise_comm_closed(local_pair, listener):
    client, server = local_pair
    client.send([b"last"], timeout=5)
    client.close()
    client.close()
    assert client.closed
    assert bytes(server.recv(timeout=5)) == b"last"     # sent before close: still delivered
    with pytest.raises(CommClosed):
        server.recv(timeout=5)
    for call in (lambda: client.send([b"x"]), lambda: client.recv(timeout=1)):
        with pytest.raises(CommClosed):
            call()
    server.close()
    server.close()
    listener.close()
    listener.close()
    with pytest.raises(CommClosed):
        listener.accept(timeout=1)


def test_close_wakes_a_receive_blocked_in_another_thread(local_pair):
    client, server = local_pair
    errors = []

    def receive():
        try:
            server.recv()
        except CommClosed as error:
            errors.append(error)

    waiter = threading.Thread(target=receive)
    waiter.start()
    time.sleep(0.2)     # let it block (the outcome does not depend on it)
    server.close()
    waiter.join(5)
    assert not waiter.is_alive() and len(errors) == 1


def test_a_view_held_past_close_stays_readable_and_nothing_is_left(scheme):
    maps_before, fds_before = len(_memfd_maps()), _open_fds()
    with rdma.listen(SCHEMES[scheme], SECRET, **OPTIONS[scheme]) as listener:
        client = rdma.connect(listener.address, SECRET, timeout=5, **OPTIONS[scheme])
        with listener.accept(timeout=5) as server:
            client.send([b"kept"], timeout=5)
            view = server.recv(timeout=5)
        client.close()
    assert bytes(view) == b"kept" and view.readonly
    del view
    assert _settles(lambda: len(_memfd_maps()) == maps_before) and not _dev_shm_entries()
    assert _settles(lambda: _open_fds() <= fds_before)
    if scheme.startswith("shm"):
        assert not os.path.exists(rdma.comm.parse_uri(listener.address)[1])


def test_many_connections_leave_no_descriptor_or_mapping_behind(listener, scheme):
    fds_before, maps_before = _open_fds(), len(_memfd_maps())
    for i in range(30):
        with rdma.connect(listener.address, SECRET, timeout=5, **OPTIONS[scheme]) as client:
            with listener.accept(timeout=5) as server:
                client.send([b"ping %d" % i], timeout=5)
                assert bytes(server.recv(timeout=5)) == b"ping %d" % i
    assert _settles(lambda: _open_fds() <= fds_before)
    assert _settles(lambda: len(_memfd_maps()) <= maps_before)


# -- addresses, registry, rdma:// ---------------------------------------------------------

def test_addresses_name_both_ends(local_pair, listener, scheme):
    client, server = local_pair
    assert client.peer_address == listener.address == server.local_address
    assert client.local_address.startswith(scheme + "://")
    if scheme in ("tcp", "rdma"):
        assert not listener.address.endswith(":0")
        assert server.peer_address == client.local_address


def test_connecting_to_nothing_fails_fast_with_the_address(scheme, tmp_path):
    address = {"tcp": "tcp://127.0.0.1:1", "rdma": "rdma://127.0.0.1:1"}.get(
        scheme, f"{scheme}://{tmp_path}/none.sock")
    with pytest.raises(ConnectFailed, match=address.split("://")[1]):
        rdma.connect(address, SECRET, timeout=5)


def test_shm_listener_replaces_a_stale_socket_file_but_not_a_live_one(tmp_path):
    path = str(tmp_path / "node.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()          # a listener that was SIGKILLed leaves its socket file behind
    with rdma.listen(f"shm://{path}", SECRET) as listener:
        assert listener.address == f"shm://{path}"
        with pytest.raises(rdma.CommError, match="another listener"):
            rdma.listen(f"shm://{path}", SECRET)
    assert not os.path.exists(path)


def test_rdma_scheme_names_what_is_missing_and_never_falls_back(monkeypatch):
    monkeypatch.delenv("TFOS_IBVERBS_LIBRARY", raising=False)
    missing = devices.missing_rdma()
    if missing is None:
        pytest.skip("this host has an RDMA device")
    for call in (lambda: rdma.listen("rdma://127.0.0.1:0", SECRET),
                 lambda: rdma.connect("rdma://127.0.0.1:1", SECRET, timeout=1)):
        with pytest.raises(TransportUnavailable, match="never falls back") as error:
            call()
        assert missing in str(error.value)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the fake libibverbs")
def test_rdma_asks_the_library_named_by_tfos_ibverbs_library_for_devices(fake_verbs,
                                                                          monkeypatch):
    """With another libibverbs named (the fake here), that library's device list decides, not
    sysfs; a device whose port is down is refused by the carrier's set-up, naming the port."""
    monkeypatch.setenv("TFOS_IBVERBS_LIBRARY", "/nonexistent/libibverbs.so.1")
    with pytest.raises(TransportUnavailable, match="not a usable libibverbs.*never falls back"):
        rdma.listen("rdma://127.0.0.1:0", SECRET)
    for name, value in fake_verbs.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TFOS_FAKE_VERBS_DEVICES", "0")
    with pytest.raises(TransportUnavailable, match="no RDMA device: .*lists none"):
        rdma.connect("rdma://127.0.0.1:1", SECRET, timeout=1)
    monkeypatch.delenv("TFOS_FAKE_VERBS_DEVICES")
    monkeypatch.setenv("TFOS_FAKE_VERBS_PORT_STATE", "down")
    with rdma.listen("rdma://127.0.0.1:0", SECRET) as listener:
        with pytest.raises(CommError, match=r"no ACTIVE port \(fake_mlx0 port 1: DOWN\)"):
            rdma.connect(listener.address, SECRET, timeout=5)
        with pytest.raises(AuthFailed, match="during its set-up.*no ACTIVE port"):
            listener.accept(timeout=5)


def test_bad_uris_options_and_secrets_are_caller_errors():
    with pytest.raises(ValueError, match="no scheme"):
        rdma.listen("127.0.0.1:0", SECRET)
    with pytest.raises(ValueError, match="unknown comm scheme 'udp'"):
        rdma.connect("udp://h:1", SECRET)
    with pytest.raises(TypeError, match="tcp:// takes no option capacity"):
        rdma.listen("tcp://127.0.0.1:0", SECRET, capacity=MiB)
    with pytest.raises(ValueError, match="capacity=10"):
        rdma.listen("shm://", SECRET, capacity=10)
    with pytest.raises(ValueError, match="eager_max=-1"):
        rdma.listen("shm://", SECRET, eager_max=-1)
    with pytest.raises(ValueError, match="ib_port=300"):
        rdma.listen("rdma://127.0.0.1:0", SECRET, ib_port=300)
    with pytest.raises(ValueError, match="at least 16"):
        rdma.listen("tcp://127.0.0.1:0", b"short")
    with pytest.raises(ValueError, match="absolute"):
        rdma.listen("shm://relative.sock", SECRET)


def test_a_custom_backend_is_used_for_its_scheme():
    class Loop(rdma.Backend):
        def listen(self, address, secret, **opts):
            return rdma.listen("tcp://127.0.0.1:0", secret)

        def connect(self, address, secret, timeout, **opts):
            return rdma.connect(f"tcp://{address}", secret, timeout)

    rdma.register_backend("looptest", Loop())
    with rdma.listen("looptest://x", SECRET) as listener:
        with rdma.connect("looptest://" + listener.address[6:], SECRET, timeout=5) as client:
            with listener.accept(timeout=5) as server:
                client.send([b"via looptest"], timeout=5)
                assert bytes(server.recv(timeout=5)) == b"via looptest"
