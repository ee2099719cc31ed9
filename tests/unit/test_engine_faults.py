"""The compiled core under faults: every one ends in a bounded time with an error that names the
link and says what happened, never a hang and never a silently accepted message.

Loopback links inject the faults (a lost credit or message, a corrupted key, an immediate out
of sequence, a killed peer); the peer of an shm link and of a verbs link (through the fake
libibverbs) dies for real (SIGKILL of a spawned process in the middle of 64 MiB sends, or while
we wait to receive).
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest
from test_carriers import LIMIT, Shm, VerbsFake, build_fake_verbs, pattern

from rdma.errors import CommClosed, CommError, CommTimeout, FrameError

core = pytest.importorskip("rdma.core")
try:
    core.require_core()
except Exception as exc:   # noqa: BLE001 - test_core_ring.py fails the suite for it
    pytest.skip(f"rdma._core did not build: {exc}", allow_module_level=True)

MiB = 1 << 20


def receive_all(link, box, limit=10000):
    """Receives until an error; the messages and the error go into ``box``."""
    try:
        for _ in range(limit):
            box.append(bytes(link.recv(timeout=LIMIT)))
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        box.append(exc)


def in_thread(target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_a_lost_credit_times_the_sender_out_with_the_reason():
    near, far = core.loopback_pair(ring_bytes=4096)
    with near, far:
        far.drop_immediates("credit", 1_000_000)
        got = []
        reader = in_thread(receive_all, far, got)
        started = time.monotonic()
        with pytest.raises(CommTimeout, match="loopback link to loopback end b: no room in the "
                                              "peer's ring.*not returning credits"):
            for i in range(200):      # the 4 KiB ring holds 64 of them
                near.send([pattern(10, i)], timeout=0.3)
        assert time.monotonic() - started < 5
        assert 0 < len(got) <= 64 and near.stats()["needs_sent"] >= 1
    reader.join(LIMIT)


def test_a_lost_message_is_an_out_of_sequence_error_not_a_gap():
    near, far = core.loopback_pair()
    with near, far:
        near.drop_immediates("eager", 1)
        near.send([b"lost"], timeout=LIMIT)
        near.send([b"next"], timeout=LIMIT)
        with pytest.raises(FrameError, match=r"loopback link to loopback end a: out-of-sequence "
                                             r"message .*expected #0"):
            far.recv(timeout=LIMIT)
        with pytest.raises(FrameError, match="out-of-sequence"):
            far.recv(timeout=LIMIT)          # the link stays broken, with the same reason


def test_an_immediate_out_of_sequence_is_a_frame_error_naming_the_link():
    near, far = core.loopback_pair()
    with near, far:
        near.reorder_immediates(1)
        near.send([b"first"], timeout=LIMIT)
        near.send([b"second"], timeout=LIMIT)
        with pytest.raises(FrameError, match="loopback link to loopback end a: out-of-sequence "
                                             "message.*reconnect"):
            far.recv(timeout=LIMIT)


def test_a_lost_payload_notice_is_caught_at_the_next_message():
    near, far = core.loopback_pair()
    with near, far:
        got = []
        reader = in_thread(receive_all, far, got)
        near.drop_immediates("data", 1)
        near.send([pattern(MiB, 1)], timeout=LIMIT)   # landed, but its DATA never arrives
        near.send([b"next"], timeout=LIMIT)
        reader.join(LIMIT)
        assert isinstance(got[-1], FrameError) and not got[:-1]
        assert "loopback link to loopback end a: message #1 arrived before the payload of #0" \
            in str(got[-1])


def test_a_lost_clear_to_send_times_the_sender_out():
    near, far = core.loopback_pair()
    with near, far:
        got = []
        far.drop_immediates("cts", 1)
        reader = in_thread(receive_all, far, got)
        with pytest.raises(CommTimeout, match="loopback link to loopback end b: the peer did "
                                              "not clear a 1048576-byte message"):
            near.send([pattern(MiB, 1)], timeout=0.3)
    reader.join(LIMIT)


@pytest.mark.parametrize("size", [100, 2 * MiB])
def test_a_bad_key_breaks_the_link_with_an_error_naming_it(size):
    near, far = core.loopback_pair()
    with near, far:
        got = []
        reader = in_thread(receive_all, far, got)
        near.corrupt_keys(1)
        with pytest.raises(FrameError, match="loopback link to loopback end b: writing .* "
                                             "failed: .*did not register"):
            near.send([pattern(size, 1)], timeout=LIMIT)
        with pytest.raises(FrameError, match="did not register"):
            near.send([b"after"], timeout=LIMIT)
    reader.join(LIMIT)
    assert not [m for m in got if isinstance(m, bytes)]


def test_a_killed_loopback_peer_ends_blocked_calls_at_once():
    near, far = core.loopback_pair()
    with near, far:
        errors = []

        def blocked_send():
            try:
                near.send([pattern(4 * MiB, 1)], timeout=LIMIT)   # waits for a CTS
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        sender = in_thread(blocked_send)
        got = []
        reader = in_thread(receive_all, near, got)
        time.sleep(0.2)
        started = time.monotonic()
        far.kill()
        sender.join(LIMIT)
        reader.join(LIMIT)
        assert time.monotonic() - started < 1
        assert isinstance(errors[0], CommClosed) and "was killed" in str(errors[0])
        assert isinstance(got[-1], CommClosed)


def test_calls_after_close_raise_comm_closed_in_every_thread():
    near, far = core.loopback_pair()
    got = []
    reader = in_thread(receive_all, near, got)
    time.sleep(0.1)
    near.close()
    reader.join(LIMIT)
    assert not reader.is_alive() and isinstance(got[-1], CommClosed)
    with pytest.raises(CommClosed, match="is closed"):
        near.recv(timeout=0)
    far.close()


# -- shm and verbs: a peer that really dies ----------------------------------------------------

@pytest.fixture(scope="module")
def fake_verbs(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the fake libibverbs is built with it")
    return build_fake_verbs(tmp_path_factory.mktemp("fakeverbs"))


@pytest.fixture(params=["shm", "verbs-fake"])
def served(request, tmp_path, monkeypatch):
    """A carrier whose far ends run in a server process of test_carriers'."""
    if request.param == "shm":
        server = Shm(str(tmp_path))
    else:
        for name, value in request.getfixturevalue("fake_verbs").items():
            monkeypatch.setenv(name, value)    # before the server process starts
        server = VerbsFake()
    yield server
    server.close()


def test_a_peer_killed_mid_transfer_is_comm_closed_within_a_bound(served):
    proc = served.start_server()
    try:
        served.conn.send(("drain", {}, {}))
        link = served.accept({})
        with link:
            message = pattern(64 * MiB, 3)
            two_sent, errors = threading.Event(), []

            def send_loop():
                try:
                    for n in range(1000):
                        link.send([message], timeout=LIMIT)
                        if n == 1:
                            two_sent.set()
                except Exception as exc:  # noqa: BLE001
                    errors.append((time.monotonic(), exc))

            sender = in_thread(send_loop)
            assert two_sent.wait(LIMIT), errors
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            sender.join(LIMIT)
            assert not sender.is_alive()
            at, error = errors[0]
            # A verbs write in flight to the dead queue pair may fail first, with the device's
            # retry-exceeded error (a CommError naming it), before the hang-up is seen.
            assert (isinstance(error, CommClosed) and "died" in str(error)) or (
                served.kind == "verbs" and "IBV_WC_RETRY_EXC_ERR" in str(error)), error
            assert at - killed < 2.0
            with pytest.raises(CommClosed if served.kind == "shm" else CommError):
                link.recv(timeout=LIMIT)      # verbs: whichever of the two ended the link
    finally:
        proc.join(5)


def test_a_peer_killed_while_we_wait_to_receive(served):
    proc = served.start_server()
    try:
        served.conn.send(("wait_then_echo", {"seconds": 60, "count": 1}, {}))
        link = served.accept({})
        with link:
            got = []
            reader = in_thread(receive_all, link, got)
            time.sleep(0.2)            # the reader is asleep by now (futex, or poll)
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            reader.join(LIMIT)
            assert isinstance(got[-1], CommClosed) and "died" in str(got[-1])
            assert time.monotonic() - killed < 1.0   # shm: 50 ms slices; slack for a busy host
    finally:
        proc.join(5)


def test_shm_link_refuses_a_peer_that_is_not_a_core(tmp_path):
    import socket
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        right.sendall(b"definitely not an arena hello....")
        with pytest.raises(CommError, match="did not send a tfos core arena"):
            core.shm_link(left, timeout=2)
    with pytest.raises(CommTimeout, match="timed out"):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:
            core.shm_link(a, timeout=0.3)

