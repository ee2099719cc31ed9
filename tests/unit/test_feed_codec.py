"""Feed message codec: round trips in place, and strict refusal of anything malformed."""
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfos.core import feed_codec
from tfos.core import feed_messages as fm
from tfos.core.errors import ProtocolError


def join(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


def test_round_trip_of_mnist_shaped_columns_without_copies():
    images = np.random.default_rng(0).random((100, 784), dtype=np.float32)
    labels = np.arange(100, dtype=np.int64)
    message = bytearray(join(feed_codec.encode(fm.Batch(100, offset=3),
                                               {"image": images, "label": labels})))
    typed, columns = feed_codec.decode(message)
    assert typed == fm.Batch(100, offset=3)
    np.testing.assert_array_equal(columns["image"], images)
    np.testing.assert_array_equal(columns["label"], labels)
    assert columns["image"].ctypes.data % feed_codec.ALIGN == \
        (np.frombuffer(message, np.uint8).ctypes.data % feed_codec.ALIGN)
    raw = np.frombuffer(message, np.uint8)  # the decoded columns are views of the message
    assert np.shares_memory(columns["image"], raw) and np.shares_memory(columns["label"], raw)


def test_control_messages_carry_no_columns():
    assert feed_codec.decode(join(feed_codec.encode(fm.End(7)))) == (fm.End(7), {})


def test_every_feed_message_round_trips_and_decodes_only_as_what_the_reader_expects():
    samples = [fm.FeederHello("input", 2, fm.FeedMode.INFERENCE, None),
               fm.FeederHello("q", 0, fm.FeedMode.TRAIN, 5), fm.Batch(3, 7),
               fm.Batch(3, 7, floor=120), fm.End(9), fm.DriverHello(),
               fm.EpochStart("input", 1, 40), fm.EpochStart("input", 2),
               fm.EpochQuery("input", 2), fm.EpochCount(130, 120), fm.EpochEnd("input", 2, 129),
               fm.EpochCut("input", 1), fm.EndAll({"input": 3, "other": -1}), fm.Done(),
               fm.Results(4), fm.Ok(), fm.Error("why"), fm.Lease("input", 2, 5, 1024, 512),
               fm.Grant([1, 0], [300, 212], 4096), fm.Grant(error="not fed now")]
    assert {type(s) for s in samples} == set(fm.ALL)
    for sample in samples:
        assert feed_codec.decode(join(feed_codec.encode(sample)))[0] == sample
    with pytest.raises(ProtocolError, match="driver message, got 'Batch'"):
        feed_codec.decode(join(feed_codec.encode(fm.Batch(1))), fm.FROM_DRIVER, "driver message")


@pytest.mark.parametrize("header, match", [
    ({"v": 1, "type": "Batch", "body": {"rows": 1}}, "protocol version 1 is not 2"),
    ({"v": 2, "type": "Batch", "body": {"rows": -1}}, r"Batch\.rows must be a non-negative integer"),
    ({"v": 2, "type": "Batch", "body": {"rows": 1, "floor": -3}},
     r"Batch\.floor must be a non-negative integer"),
    ({"v": 2, "type": "Batch", "body": {"rows": 1, "secret": 1}}, "no fields"),
    ({"v": 2, "type": "EndAll", "body": {"feeds": {"input": "3"}}}, r"EndAll\.feeds\['input'\] must be int"),
    ({"kind": "batch", "meta": {"rows": 1}}, "envelope"),
])
def test_feed_headers_are_typed_and_versioned(header, match):
    with pytest.raises(ProtocolError, match=match):
        feed_codec.decode(forged({**header, "columns": []}))


@settings(max_examples=100, deadline=None)
@given(arrays=st.lists(hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.uint16, np.bool_,
                           np.dtype("S5"), np.dtype("<U3")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)), max_size=4))
def test_any_supported_columns_round_trip(arrays):
    columns = {f"c{i}": a for i, a in enumerate(arrays)}
    _, decoded = feed_codec.decode(join(feed_codec.encode(fm.Batch(0), columns)))
    assert list(decoded) == list(columns)
    for name, array in columns.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data):
    try:
        feed_codec.decode(data)
    except ProtocolError:
        pass


def forged(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    prefix = struct.pack("<I", len(raw)) + raw
    return prefix + bytes(-len(prefix) % feed_codec.ALIGN) + body


@pytest.mark.parametrize("column, match", [
    ({"name": "x", "dtype": "|O", "shape": [1], "offset": 0, "nbytes": 8}, "cannot carry"),
    ({"name": "x", "dtype": "<f4", "shape": [4], "offset": 0, "nbytes": 16}, "needs 16 bytes"),
    ({"name": "x", "dtype": "<f4", "shape": [2], "offset": 0, "nbytes": 4}, "needs 8 bytes"),
    ({"name": "x", "dtype": "<f4", "shape": [-1], "offset": 0, "nbytes": 4}, "bad column"),
    ({"name": "x", "dtype": "<f4", "shape": [True], "offset": 0, "nbytes": 4}, "bad column"),
    ({"name": "x", "dtype": "nonsense", "shape": [1], "offset": 0, "nbytes": 4}, "unknown dtype"),
    ({"name": "x", "dtype": "<f4", "shape": [1], "offset": 0}, "bad column"),
])
def test_forged_columns_are_refused(column, match):
    with pytest.raises(ProtocolError, match=match):
        feed_codec.decode(forged({"v": fm.VERSION, "type": "Batch", "body": {"rows": 1},
                                  "columns": [column]}, b"\0" * 8))


def test_object_arrays_are_never_sent():
    with pytest.raises(ProtocolError, match="cannot carry"):
        feed_codec.encode(fm.Batch(1), {"x": np.array([object()])})


def test_a_header_longer_than_the_message_is_refused():
    with pytest.raises(ProtocolError, match="does not fit"):
        feed_codec.decode(struct.pack("<I", 1000) + b"{}")
