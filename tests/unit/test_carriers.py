"""One suite for the compiled core's links, run over every carrier (``rdma._core``).

A test drives the near end of a link here and names a behaviour (``echo``, ``source``,
``digest``, ...) for the far end: on ``loopback`` it runs in a thread of this process, on
``shm`` and ``verbs-fake`` in a server process of this module's (spawned once per carrier,
serving one link per test). ``verbs-fake`` is the verbs carrier's own code over the test-only
libibverbs of tests/fakeverbs (built with gcc, loaded through ``TFOS_IBVERBS_LIBRARY``), its
bootstrap a TCP connection on 127.0.0.1. A carrier joins the suite with one class and one entry
in ``CARRIERS``. Every wait is bounded (``LIMIT`` seconds), every loop by a count.
"""
from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import shutil
import socket
import threading
import time
import traceback
from multiprocessing import resource_tracker

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_verbs_carrier import CFLAGS, FAKEVERBS, finish, gcc

from rdma.errors import CommClosed, CommTimeout, FrameError

core = pytest.importorskip("rdma.core")
try:
    core.require_core()
except Exception as exc:   # noqa: BLE001 - test_core_ring.py fails the suite for it
    pytest.skip(f"rdma._core did not build: {exc}", allow_module_level=True)

CTX = multiprocessing.get_context("spawn")
# Spawning starts multiprocessing's resource tracker, a process as long-lived as this one:
# started now, so the leftover-process check does not count it against a test.
resource_tracker.ensure_running()

SECRET = b"carrier-suite-secret-0123456789abcdef"
LIMIT = 20.0          # seconds: the bound on every wait in the suite
MiB = 1 << 20
# Engine options only: every carrier takes them (shm's arena is left at its default).
SMALL_RING = {"ring_bytes": 4096}


def pattern(size: int, seed: int) -> bytes:
    """Deterministic bytes whose period (a prime) no chunk or ring size divides."""
    block = np.random.default_rng(seed).integers(0, 256, min(size, 65521), dtype=np.uint8)
    return np.resize(block, size).tobytes()


def digest(data) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


# -- far-end behaviours: f(link, **kwargs) -> a picklable result ----------------------------

def echo(link, count=None):
    """Sends every message back; ``count`` messages, or until the near end closes."""
    done = 0
    while count is None or done < count:
        try:
            message = link.recv(timeout=LIMIT)
        except CommClosed:
            if count is None:
                return done
            raise
        link.send([message], timeout=LIMIT)
        done += 1
    return done


def echo_into(link, count, size):
    buffer = bytearray(size)
    for _ in range(count):
        n = link.recv_into(buffer, timeout=LIMIT)
        link.send([memoryview(buffer)[:n]], timeout=LIMIT)
    return count


def source(link, sizes, seed=0):
    """Sends pattern(size, seed + i) for each size, then waits for the near end's reply."""
    for i, size in enumerate(sizes):
        link.send([pattern(size, seed + i)], timeout=LIMIT)
    return bytes(link.recv(timeout=LIMIT))


def digests(link, count):
    return [digest(link.recv(timeout=LIMIT)) for _ in range(count)]


def drain(link, limit=100000):
    """Receives until the link closes: (messages received, the error that ended it)."""
    for n in range(limit):
        try:
            link.recv(timeout=LIMIT)
        except (CommClosed, CommTimeout, FrameError) as exc:
            return n, type(exc).__name__, str(exc)
    return limit, "", ""


def wait_then_echo(link, seconds, count):
    time.sleep(seconds)
    return echo(link, count)


def both_ways(link, sizes, seed):
    """Sends ``sizes`` from one thread while the caller's thread receives as many."""
    errors = []

    def send_all():
        try:
            for i, size in enumerate(sizes):
                link.send([pattern(size, seed + i)], timeout=LIMIT)
        except Exception as exc:  # noqa: BLE001 - reported with the result
            errors.append(repr(exc))

    sender = threading.Thread(target=send_all)
    sender.start()
    got = [digest(link.recv(timeout=LIMIT)) for _ in sizes]
    sender.join(LIMIT)
    return got, errors


BEHAVIOURS = {f.__name__: f for f in (echo, echo_into, source, digests, drain, wait_then_echo,
                                      both_ways)}


# -- carriers: how the far end is started ---------------------------------------------------

class FarEnd:
    """The far end's outcome: ``result()`` returns its behaviour's value or fails the test."""

    def __init__(self, wait):
        self._wait = wait
        self._outcome = None

    def outcome(self, timeout=LIMIT):
        if self._outcome is None:
            self._outcome = self._wait(timeout)
        return self._outcome

    def result(self, timeout=LIMIT):
        status, value = self.outcome(timeout)
        if status != "ok":
            raise AssertionError(f"the far end failed: {value}")
        return value


def run_behaviour(name, link, kwargs):
    try:
        with link:
            return "ok", BEHAVIOURS[name](link, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the test decides what the far end may raise
        return "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


class Loopback:
    name = "loopback"

    @contextlib.contextmanager
    def pair(self, behaviour, link_opts=None, **kwargs):
        near, far_link = core.loopback_pair(**(link_opts or {}))
        box = []
        thread = threading.Thread(target=lambda: box.append(run_behaviour(behaviour, far_link,
                                                                           kwargs)),
                                  daemon=True)
        thread.start()

        def wait(timeout):
            thread.join(timeout)
            return box[0] if box else ("error", "the far end did not finish in time")

        try:
            yield near, FarEnd(wait)
        finally:
            near.close()
            thread.join(LIMIT)


def serve(conn, kind, where):
    """A server process: builds one link per job (``kind`` "shm" or "verbs", reaching the
    suite's listener at ``where``) and runs its behaviour."""
    from rdma import core as server_core
    connect = server_core.shm_connect if kind == "shm" else server_core.verbs_connect
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        name, kwargs, opts = job
        try:
            link = connect(where, SECRET, timeout=LIMIT, **opts)
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"set-up: {type(exc).__name__}: {exc}"))
            continue
        conn.send(run_behaviour(name, link, kwargs))


class Shm:
    """Far ends in a server process, over a Unix socket in ``directory``."""

    name, kind = "shm", "shm"

    def __init__(self, directory):
        self.path = os.path.join(directory, "core.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.where = self.path
        self.proc = None

    def accept(self, opts):
        return core.shm_accept(self.listener, SECRET, timeout=LIMIT, **opts)

    def start_server(self):
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=serve, args=(child, self.kind, self.where), daemon=True)
        self.proc.start()
        child.close()
        return self.proc

    def _wait(self, timeout):
        if self.conn.poll(timeout):
            return self.conn.recv()
        self.stop_server()   # wedged: the next pair gets a fresh one
        return "error", "the far end did not finish in time"

    @contextlib.contextmanager
    def pair(self, behaviour, link_opts=None, **kwargs):
        if self.proc is None or not self.proc.is_alive():
            self.start_server()
        self.conn.send((behaviour, kwargs, link_opts or {}))
        near = self.accept(link_opts or {})
        far = FarEnd(self._wait)
        try:
            yield near, far
        finally:
            near.close()
            far.outcome(LIMIT)

    def stop_server(self):
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
            self.proc = None

    def close(self):
        self.stop_server()
        self.listener.close()


class VerbsFake(Shm):
    """Far ends in a server process, over verbs links through the fake libibverbs; the
    bootstrap is a TCP connection to a listener on 127.0.0.1. The fake's environment must be
    in ``os.environ`` (``fake_verbs_environment``) before the server starts."""

    name, kind = "verbs-fake", "verbs"

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.where = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.proc = None

    def accept(self, opts):
        return core.verbs_accept(self.listener, SECRET, timeout=LIMIT, **opts)


def build_fake_verbs(directory) -> dict[str, str]:
    """Builds tests/fakeverbs' libibverbs into ``directory``: the environment that loads it."""
    library = directory / "libfake_ibverbs.so"
    finish(gcc(*CFLAGS, "-shared", "-fPIC", "-o", library, FAKEVERBS / "fake_ibverbs.c",
               "-lpthread"))
    return {"TFOS_IBVERBS_LIBRARY": str(library), "TFOS_FAKE_VERBS_DIR": str(directory)}


CARRIERS = ["loopback", "shm", "verbs-fake"]


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory):
    """The shm far ends' process, started before any test's leftover-process check."""
    shm = Shm(str(tmp_path_factory.mktemp("core")))
    shm.start_server()
    yield shm
    shm.close()


@pytest.fixture(scope="module")
def verbs_server(tmp_path_factory):
    """The verbs far ends' process, with the fake libibverbs built and named in os.environ for
    this module (the server inherits it); None where gcc is missing."""
    if shutil.which("gcc") is None:
        yield None
        return
    with pytest.MonkeyPatch.context() as patch:
        for name, value in build_fake_verbs(tmp_path_factory.mktemp("fakeverbs")).items():
            patch.setenv(name, value)
        verbs = VerbsFake()
        verbs.start_server()
        yield verbs
        verbs.close()


@pytest.fixture(params=CARRIERS)
def carrier(request, shm_server, verbs_server):
    if request.param == "verbs-fake" and verbs_server is None:
        pytest.skip("gcc is not installed: the fake libibverbs is built with it")
    return {"loopback": Loopback(), "shm": shm_server, "verbs-fake": verbs_server}[request.param]


# -- the suite ----------------------------------------------------------------------------

SIZES = [0, 1, 4, 63, 64, 65, 4096, 65535, 65536, 65537, MiB + 7, 64 * MiB]


def test_messages_from_empty_to_64_mib_come_back_intact(carrier):
    with carrier.pair("echo", count=len(SIZES)) as (link, far):
        for i, size in enumerate(SIZES):
            data = pattern(size, i)
            link.send([data], timeout=LIMIT)
            assert link.recv(timeout=LIMIT) == data, f"message {i} of {size} bytes"
        stats = link.stats()
        assert far.result() == len(SIZES)
    assert stats["sent_rendezvous"] == 3 and stats["sent_eager"] == len(SIZES) - 3


def test_gather_lists_arrive_as_one_message(carrier):
    array = np.arange(300_000, dtype=np.float32)
    messages = [
        [b"head", b"", array[:10], memoryview(b"tail")],
        [b"", b""],
        [b"x" * 70_000, array, b"y"],                       # rendezvous from many parts
        [np.zeros(0, np.uint8), bytearray(b"1234"), array[::1].reshape(1000, 300)[:2]],
    ]
    with carrier.pair("echo", count=len(messages)) as (link, far):
        for parts in messages:
            expected = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
            link.send(parts, timeout=LIMIT)
            assert link.recv(timeout=LIMIT) == expected
        assert far.result() == len(messages)


def test_large_pieces_at_odd_offsets_arrive_intact(carrier):
    """Pieces of 4 MiB and more (shm copies them with streaming stores) from and to addresses
    on no 16-byte boundary, with lengths that leave a tail: every byte arrives in place."""
    big = pattern(9 * MiB + 64, 9)
    messages = [
        [b"abc", memoryview(big)[5:5 + 4 * MiB + 13], b"z"],
        [memoryview(big)[1:]],
        [b"q" * 7, memoryview(big)[11:11 + 8 * MiB + 3], memoryview(big)[:4 * MiB + 1]],
    ]
    with carrier.pair("echo", count=len(messages)) as (link, far):
        for parts in messages:
            expected = b"".join(bytes(p) for p in parts)
            link.send(parts, timeout=LIMIT)
            assert link.recv(timeout=LIMIT) == expected
        assert far.result() == len(messages)


def test_registered_memory_is_sent_without_staging(carrier):
    with carrier.pair("echo", count=3) as (link, far):
        small, large = link.alloc(1000), link.alloc(3 * MiB + 5)
        np.frombuffer(small, np.uint8)[:] = 7
        large[:] = pattern(len(large), 3)
        link.send([small], timeout=LIMIT)
        assert link.recv(timeout=LIMIT) == bytes(small)
        before = link.stats()
        link.send([large], timeout=LIMIT)
        assert link.recv(timeout=LIMIT) == bytes(large)
        link.send([b"head", large[5:], b"tail"], timeout=LIMIT)   # mixed: staged and direct
        assert link.recv(timeout=LIMIT) == b"head" + bytes(large[5:]) + b"tail"
        after = link.stats()
        assert far.result() == 3
    direct = after["direct_bytes"] - before["direct_bytes"]
    staged = after["staged_bytes"] - before["staged_bytes"]
    if carrier.name == "shm":   # a CPU copy: the caller's own memory is a source as it is
        assert (direct, staged) == (len(large) * 2 - 5 + 8, 0)
    else:                       # a device reads registered memory only: b"head", b"tail" staged
        assert (direct, staged) == (len(large) * 2 - 5, 8)


def test_a_small_message_of_several_parts_is_copied_once_on_shm(carrier):
    """An eager message (a feed chunk: header, columns, padding) goes straight from the
    caller's parts into the peer's ring on shm (write_gather), and through staging where the
    carrier reads registered memory only; the peer gets the same bytes either way."""
    parts = [b"header!", np.arange(3000, dtype=np.float32), b"", memoryview(b"pad")]
    expected = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    with carrier.pair("echo", count=2) as (link, far):
        link.send([b"warm"], timeout=LIMIT)
        assert link.recv(timeout=LIMIT) == b"warm"
        before = link.stats()
        link.send(parts, timeout=LIMIT)
        assert link.recv(timeout=LIMIT) == expected
        after = link.stats()
        assert far.result() == 2
    direct = after["direct_bytes"] - before["direct_bytes"]
    staged = after["staged_bytes"] - before["staged_bytes"]
    assert after["sent_eager"] - before["sent_eager"] == 1
    assert (direct, staged) == ((len(expected), 0) if carrier.name == "shm"
                                else (0, len(expected)))


def test_many_messages_through_a_small_ring_wait_for_credits(carrier):
    sizes = [(i * 37) % 2000 for i in range(1500)]   # the 4 KiB ring holds at most 64
    with carrier.pair("digests", link_opts=SMALL_RING, count=len(sizes)) as (link, far):
        for i, size in enumerate(sizes):
            link.send([pattern(size, i)], timeout=LIMIT)
        stats = link.stats()
        assert far.result() == [digest(pattern(size, i)) for i, size in enumerate(sizes)]
    assert stats["credits_received"] >= len(sizes) // 64
    assert stats["sent_eager"] == len(sizes)


def test_empty_messages_take_ring_room_and_credits_too(carrier):
    with carrier.pair("digests", link_opts=SMALL_RING, count=500) as (link, far):
        for _ in range(500):
            link.send([], timeout=LIMIT)
        assert far.result() == [digest(b"")] * 500
        assert link.stats()["credits_received"] > 0


@pytest.mark.parametrize("opts, limit", [({"eager_max": 1000}, 1000),
                                         ({"ring_bytes": 8192}, 4096)])
def test_eager_up_to_the_limit_rendezvous_above(carrier, opts, limit):
    with carrier.pair("echo", link_opts=opts, count=2) as (link, far):
        link.send([pattern(limit, 1)], timeout=LIMIT)
        assert link.recv(timeout=LIMIT) == pattern(limit, 1)
        assert link.stats()["sent_eager"] == 1 and link.stats()["sent_rendezvous"] == 0
        link.send([pattern(limit + 1, 2)], timeout=LIMIT)
        assert link.recv(timeout=LIMIT) == pattern(limit + 1, 2)
        assert link.stats()["sent_rendezvous"] == 1
        assert far.result() == 2


def test_both_directions_at_once_from_two_threads(carrier):
    sizes = [5, 70_000, 3 * MiB, 0, 100, 9 * MiB, 64, 200_000] * 3
    with carrier.pair("both_ways", sizes=sizes, seed=100) as (link, far):
        errors = []

        def send_all():
            try:
                for i, size in enumerate(sizes):
                    link.send([pattern(size, 500 + i)], timeout=LIMIT)
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        got = [digest(link.recv(timeout=LIMIT)) for _ in sizes]
        sender.join(LIMIT)
        assert not sender.is_alive() and not errors
        theirs, their_errors = far.result()
    assert got == [digest(pattern(size, 100 + i)) for i, size in enumerate(sizes)]
    assert theirs == [digest(pattern(size, 500 + i)) for i, size in enumerate(sizes)]
    assert not their_errors


def test_recv_into_a_buffer_too_small_raises_and_keeps_the_message(carrier):
    sizes = [3000, 5 * MiB]
    with carrier.pair("source", sizes=sizes, seed=7) as (link, far):
        for i, size in enumerate(sizes):
            small = bytearray(size - 1)
            with pytest.raises(FrameError, match=f"{size} bytes does not fit.*stays queued"):
                link.recv_into(small, timeout=LIMIT)
            big = bytearray(size + 10)
            assert link.recv_into(big, timeout=LIMIT) == size
            assert big[:size] == pattern(size, 7 + i)
        link.send([b"done"], timeout=LIMIT)
        assert far.result() == b"done"


def test_recv_into_on_both_ends(carrier):
    with carrier.pair("echo_into", count=2, size=4 * MiB) as (link, far):
        for i, size in enumerate([1234, 4 * MiB]):
            link.send([pattern(size, i)], timeout=LIMIT)
            out = np.empty(size, np.uint8)
            assert link.recv_into(out, timeout=LIMIT) == size
            assert out.tobytes() == pattern(size, i)
        assert far.result() == 2


def test_timeouts_bound_waits_and_leave_the_link_usable(carrier):
    with carrier.pair("wait_then_echo", seconds=1.0, count=2) as (link, far):
        started = time.monotonic()
        with pytest.raises(CommTimeout, match="no message within"):
            link.recv(timeout=0.2)
        assert 0.15 < time.monotonic() - started < 2
        with pytest.raises(CommTimeout):
            link.recv(timeout=0)
        big = pattern(2 * MiB, 9)
        with pytest.raises(CommTimeout, match="did not clear.*send the same message again"):
            link.send([big], timeout=0.1)     # the far end sleeps: nobody clears it to land
        with pytest.raises(ValueError, match="send that same message again"):
            link.send([b"another"], timeout=LIMIT)
        link.send([big], timeout=LIMIT)        # the retry resumes the announced message
        assert link.recv(timeout=LIMIT) == big
        link.send([b"still fine"], timeout=LIMIT)
        assert link.recv(timeout=LIMIT) == b"still fine"
        assert far.result() == 2


def test_close_is_seen_by_the_peer_after_what_was_sent(carrier):
    with carrier.pair("drain") as (link, far):
        for i in range(3):
            link.send([pattern(100 * i, i)], timeout=LIMIT)
        link.send([pattern(2 * MiB, 5)], timeout=LIMIT)
        link.close()
        link.close()                                   # idempotent
        assert link.closed
        with pytest.raises(CommClosed):
            link.send([b"x"], timeout=LIMIT)
        with pytest.raises(CommClosed):
            link.recv(timeout=LIMIT)
        count, error, text = far.result()
    assert (count, error) == (4, "CommClosed") and "closed the link" in text


def test_a_view_outlives_close(carrier):
    with carrier.pair("source", sizes=[10, 3 * MiB], seed=11) as (link, far):
        first = link.recv(timeout=LIMIT)
        assert first == pattern(10, 11)
        second = link.recv(timeout=LIMIT)
        link.send([b"ok"], timeout=LIMIT)
        assert far.result() == b"ok"
        link.close()
        assert second.readonly and second == pattern(3 * MiB, 12)   # still mapped


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=st.lists(st.lists(st.integers(0, 12_000), max_size=3), min_size=1,
                         max_size=12),
       seed=st.integers(0, 1000))
def check_sequence(link, messages, seed):
    """What comes back equals what was sent, part for part, for any sizes and splits."""
    sent = [[pattern(size, seed + 7 * i + j) for j, size in enumerate(parts)]
            for i, parts in enumerate(messages)]
    received = []
    reader = threading.Thread(target=lambda: received.extend(
        bytes(link.recv(timeout=LIMIT)) for _ in sent))
    reader.start()
    for parts in sent:
        link.send(parts, timeout=LIMIT)
    reader.join(LIMIT)
    assert received == [b"".join(parts) for parts in sent]


def test_random_message_sequences_arrive_intact(carrier):
    with carrier.pair("echo", link_opts={"ring_bytes": 8192, "eager_max": 3000}) as (link,
                                                                                    far):
        check_sequence(link)
        link.close()
        assert far.result() > 0


@settings(max_examples=15, deadline=None)
@given(ring=st.sampled_from([4096, 8192, 65536]), eager=st.integers(0, 5000),
       sizes=st.lists(st.integers(0, 20_000), min_size=1, max_size=30))
def test_any_ring_and_eager_limit_on_loopback(ring, eager, sizes):
    a, b = core.loopback_pair(ring_bytes=ring, eager_max=eager, chunk_bytes=4096)
    with a, b:
        received = []
        reader = threading.Thread(target=lambda: received.extend(
            bytes(b.recv(timeout=LIMIT)) for _ in sizes))
        reader.start()
        for i, size in enumerate(sizes):
            a.send([pattern(size, i)], timeout=LIMIT)
        reader.join(LIMIT)
    assert received == [pattern(size, i) for i, size in enumerate(sizes)]


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="ring_bytes=100: pass a multiple of 64"):
        core.loopback_pair(ring_bytes=100)
    with pytest.raises(ValueError, match="timeout=-1"):
        core.loopback_pair()[0].recv(timeout=-1)
    with pytest.raises(TypeError, match="sequence of parts"):
        core.loopback_pair()[0].send(b"not a list")
