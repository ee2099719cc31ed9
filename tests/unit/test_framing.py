"""Frame headers and shared-memory ring bookkeeping (pure: no sockets, milliseconds)."""
import collections
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdma import framing
from rdma.errors import FrameError
from rdma.framing import FrameDecoder, Kind, pack_header, unpack_header
from rdma.ring import ALIGN, RingReader, RingWriter, placement


@given(st.sampled_from(list(Kind)), st.integers(0, framing.DEFAULT_MAX_MESSAGE))
def test_header_round_trip(kind, length):
    if kind is Kind.SETUP and length == 0:
        length = 1
    assert unpack_header(pack_header(kind, length)) == (kind, length)


@given(st.binary(max_size=64), st.integers(0, 70))
def test_any_bytes_decode_to_a_header_or_frame_error(data, offset):
    try:
        header = unpack_header(data, offset)
    except FrameError:
        return
    assert isinstance(header.kind, Kind) and header.length <= framing.DEFAULT_MAX_MESSAGE


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_decoder_round_trip_whatever_the_chunking(messages, data):
    stream = b"".join(framing.encode([m]) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder, decoded = FrameDecoder(), []
    for begin, end in zip([0] + cuts, cuts + [len(stream)]):
        decoded += decoder.feed(stream[begin:end])
    assert decoded == messages and decoder.pending == 0


@given(st.lists(st.binary(max_size=200), max_size=6))
def test_decoder_raises_only_frame_error_on_arbitrary_input(chunks):
    decoder = FrameDecoder(max_message=1 << 16)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except FrameError:
        with pytest.raises(FrameError):   # and stays broken: the stream lost its place
            decoder.feed(b"")


def test_header_fields_are_validated_with_reasons():
    good = pack_header(Kind.DATA, 10)
    with pytest.raises(FrameError, match="magic"):
        unpack_header(b"XXXX" + good[4:])
    with pytest.raises(FrameError, match="version 9"):
        unpack_header(good[:4] + b"\x09" + good[5:])
    with pytest.raises(FrameError, match="kind 77"):
        unpack_header(good[:5] + b"\x4d" + good[6:])
    with pytest.raises(FrameError, match="flags 0x1"):
        unpack_header(good[:6] + b"\x01\x00" + good[8:])
    with pytest.raises(FrameError, match="truncated"):
        unpack_header(good[:15])
    with pytest.raises(FrameError, match="exceeds max_message=100"):
        unpack_header(pack_header(Kind.DATA, 101), max_message=100)
    # Counters are not sizes: a CREDIT may exceed max_message.
    assert unpack_header(pack_header(Kind.CREDIT, 1 << 50), max_message=100).length == 1 << 50


def test_header_layout_is_fixed():
    assert framing.HEADER_SIZE == 16
    assert pack_header(Kind.RING, 5) == struct.pack("<4sBBHQ", b"TFOS", 1, 2, 0, 5)


def test_gather_takes_buffers_without_copying_and_refuses_others():
    np = pytest.importorskip("numpy")
    column = np.arange(6, dtype=np.float32).reshape(2, 3)
    views, total = framing.gather([b"ab", b"", column, bytearray(b"c")])
    assert total == 2 + column.nbytes + 1 and len(views) == 3
    assert views[1].obj is not None and bytes(views[1]) == column.tobytes()
    with pytest.raises(ValueError, match="part 0 is not C-contiguous"):
        framing.gather([column[:, ::2]])
    with pytest.raises(TypeError, match="part 1 is a str"):
        framing.gather([b"", "text"])
    with pytest.raises(TypeError, match="sequence of parts"):
        framing.gather(b"bare bytes")


# -- ring bookkeeping ------------------------------------------------------------------------

def test_placement_aligns_and_wraps():
    assert placement(0, 10, 256) == (0, 64)
    assert placement(64, 192, 256) == (64, 256)
    assert placement(192, 100, 256) == (256, 256 + 128)     # does not fit: next lap
    assert placement(256, 0, 256) == (256, 256)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_ring_writer_and_reader_agree_never_overlap_and_never_stall(data):
    """Random interleavings of writer, reader and credit delivery over one ring."""
    capacity = data.draw(st.sampled_from([256, 1024, 4096]))
    sizes = data.draw(st.lists(st.integers(0, capacity), min_size=1, max_size=30))
    writer, reader = RingWriter(capacity), RingReader(capacity)
    to_reader, to_writer = collections.deque(), collections.deque()
    live = {}            # message index -> (physical start, size): written, not yet released
    starts = {}          # message index -> logical start the writer chose
    held, delivered, waiting, written = None, [], False, 0

    def write() -> bool:
        nonlocal written, waiting
        if written == len(sizes):
            return False
        size = sizes[written]
        start, end, needed = writer.reserve(size)
        if writer.tail < needed:
            if not waiting:
                to_reader.append(("NEED", needed))
                waiting = True
                return True
            return False
        offset = start % capacity
        assert offset + size <= capacity
        for other_start, other_size in live.values():
            assert offset + size <= other_start or other_start + other_size <= offset or not (
                size and other_size), "writer overwrote a message the reader has not released"
        live[written], starts[written] = (offset, size), start
        to_reader.append(("RING", size))
        writer.commit(end)
        written, waiting = written + 1, False
        return True

    def read() -> bool:
        nonlocal held
        progressed = False
        if held is not None:
            reader.release(held[1])
            del live[held[0]]
            held, progressed = None, True
            credit = reader.credit_due()
            if credit is not None:
                to_writer.append(credit)
        if to_reader:
            kind, value = to_reader.popleft()
            if kind == "RING":
                start, end = reader.publish(value)
                index = len(delivered)
                assert start == starts[index]
                held = (index, end)
                delivered.append(index)
            else:
                reader.request(value)
                credit = reader.credit_due()
                if credit is not None:
                    to_writer.append(credit)
            progressed = True
        return progressed

    def credit() -> bool:
        if to_writer:
            writer.credit(to_writer.popleft())
            return True
        return False

    actions = {"write": write, "read": read, "credit": credit}
    for _ in range(data.draw(st.integers(0, 200))):
        actions[data.draw(st.sampled_from(sorted(actions)))]()
    for _ in range(10 * len(sizes) + 10):     # then fairly, until done: it must not stall
        if not any([write(), read(), credit()]):
            break
    assert delivered == list(range(len(sizes)))


def test_ring_reader_catches_a_writer_that_overruns():
    reader = RingReader(256)
    reader.publish(200)
    with pytest.raises(FrameError, match="overran the ring"):
        reader.publish(200)      # nothing was released or credited
    with pytest.raises(FrameError, match="257 bytes in a ring of 256"):
        RingReader(256).publish(257)
    with pytest.raises(FrameError, match="beyond what it wrote"):
        RingReader(256).request(64)


def test_ring_writer_refuses_bad_credits_and_oversized_messages():
    writer = RingWriter(256)
    with pytest.raises(FrameError, match="larger than the ring of 256 bytes"):
        writer.reserve(257)
    with pytest.raises(FrameError, match="credit 64 outside"):
        writer.credit(64)
    with pytest.raises(ValueError, match="multiple of 64"):
        RingWriter(100)


def test_ring_reader_credits_a_quarter_at_a_time_or_when_asked():
    reader = RingReader(1024)
    for _ in range(4):
        reader.release(reader.publish(64)[1])
    assert reader.credit_due() == 4 * ALIGN          # 256 = capacity / 4
    reader.release(reader.publish(64)[1])
    assert reader.credit_due() is None
    reader.request(320)
    assert reader.credit_due() == 320
