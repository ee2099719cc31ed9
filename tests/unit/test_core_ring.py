"""``rdma._core``, tfos's compiled transport: it must have built, and its ring bookkeeping must
answer exactly as ``rdma/ring.py`` does, for well-behaved and for hostile peers alike."""
import collections
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdma import ring
from rdma.errors import FrameError

try:
    from rdma import _core
except ImportError as exc:   # checked by the first test, which says what to do
    _core, MISSING = None, str(exc)

needs_core = pytest.mark.skipif(_core is None, reason="rdma._core did not build")


def test_the_compiled_transport_built():
    """The extension is optional at install time, never in the suite: set
    TFOS_ALLOW_NO_CORE=1 only to run the rest on a host without a C compiler."""
    if _core is None and os.environ.get("TFOS_ALLOW_NO_CORE") != "1":
        pytest.fail(f"rdma._core is not importable ({MISSING}): install a C compiler and the "
                    "Python headers, then reinstall (pip install -e .)")


def run(session, ops, Writer, Reader):
    """Drives a writer and a reader through ``ops``; every answer and error, in order."""
    trace = []

    def call(fn, *args):
        try:
            result = fn(*args)
        except (FrameError, ValueError) as exc:
            result = (type(exc).__name__, str(exc))
        trace.append(result)
        return result

    capacity, = session
    w, r = call(Writer, capacity), call(Reader, capacity)
    if isinstance(w, tuple) or isinstance(r, tuple):
        return trace
    trace[:] = ["made"]
    pending = collections.deque()

    def pass_credit():
        due = call(r.credit_due)
        if isinstance(due, int):
            call(w.credit, due)

    for op, value in ops:
        if op == "send":
            placed = call(w.reserve, value)
            if not isinstance(placed, tuple) or isinstance(placed[0], str):
                continue
            start, end, needed = placed
            if w.tail < needed:
                call(r.request, needed)
                pass_credit()
                if w.tail < needed:
                    continue    # the writer would wait for the reader to release more
            w.commit(end)
            published = call(r.publish, value)
            if isinstance(published[0], int):
                pending.append(published[1])
        elif op == "release" and pending:
            call(r.release, pending.popleft())
            pass_credit()
        elif op == "bad_credit":
            call(w.credit, value)
        elif op == "bad_publish":
            call(r.publish, value)
        elif op == "bad_release":
            call(r.release, value)
        trace.append((w.head, w.tail, r.head, r.released, r.credited, r.need))
    return trace


OPS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.integers(0, 5000)),
    st.tuples(st.just("release"), st.just(0)),
    st.tuples(st.just("release"), st.just(0)),
    st.tuples(st.sampled_from(["bad_credit", "bad_publish", "bad_release"]),
              st.integers(-100, 10_000))), max_size=80)


@needs_core
@settings(max_examples=400, deadline=None)
@given(capacity=st.one_of(st.integers(1, 64).map(lambda n: n * 64), st.integers(-64, 300)),
       ops=OPS)
def test_the_c_ring_answers_as_the_python_ring(capacity, ops):
    expected = run((capacity,), ops, ring.RingWriter, ring.RingReader)
    assert run((capacity,), ops, _core.RingWriter, _core.RingReader) == expected


@needs_core
def test_a_long_session_wraps_many_laps_identically():
    ops = [("send", size) for size in (100, 900, 64, 0, 1000, 513) * 40]
    ops = [op for pair in zip(ops, [("release", 0)] * len(ops)) for op in pair]
    expected = run((1024,), ops, ring.RingWriter, ring.RingReader)
    assert run((1024,), ops, _core.RingWriter, _core.RingReader) == expected
    assert expected[-1][0] > 100 * 1024     # many laps round the ring
