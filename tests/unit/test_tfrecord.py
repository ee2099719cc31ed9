"""TFRecord framing and tf.train.Example without TensorFlow, checked against TensorFlow's own."""
import io

import pytest

from tfos import TFRecordError
from tfos.core import tfrecord

EXAMPLE = {"text": ("bytes", ["héllo".encode()]), "ids": ("int64", [2, 3, -4]),
           "score": ("float", [-1.5]), "empty": (None, [])}


def test_our_records_are_tensorflows_and_back(tmp_path):
    import tensorflow as tf
    ours = tmp_path / "ours.tfrecord"
    data = tfrecord.encode_example(EXAMPLE)
    ours.write_bytes(b"".join(tfrecord.frame(data) for _ in range(3)))
    read = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(ours))]
    assert read == [data] * 3
    parsed = tf.train.Example.FromString(read[0]).features.feature
    assert list(parsed["ids"].int64_list.value) == [2, 3, -4]
    assert parsed["text"].bytes_list.value[0].decode() == "héllo"
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        writer.write(tf.train.Example.FromString(data).SerializeToString())
    with open(theirs, "rb") as f:
        (record,) = tfrecord.read_records(f, str(theirs))
    assert tfrecord.decode_example(record) == EXAMPLE


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-2], r"part-7: record at byte \d+ is truncated"),
    (lambda b: b[:len(b) // 2 + 3] + bytes([b[len(b) // 2 + 3] ^ 1]) + b[len(b) // 2 + 4:],
     r"part-7: corrupt record (data|length) at byte \d+"),
    (lambda b: b + b"\x01\x02", r"part-7: truncated record header at byte \d+"),
    (lambda b: b"PK\x03\x04 not a tfrecord file", r"part-7: corrupt record length at byte 0"),
])
def test_a_damaged_file_names_the_file_and_the_offset(damage, match):
    good = b"".join(tfrecord.frame(tfrecord.encode_example(EXAMPLE)) for _ in range(2))
    with pytest.raises(TFRecordError, match=match):
        list(tfrecord.read_records(io.BytesIO(damage(good)), "part-7"))


def test_the_second_record_of_a_file_is_found_at_its_offset():
    first = tfrecord.frame(b"a" * 10)
    second = bytearray(tfrecord.frame(b"b" * 10))
    second[14] ^= 0xFF   # inside its data
    with pytest.raises(TFRecordError, match=f"corrupt record data at byte {len(first)}"):
        list(tfrecord.read_records(io.BytesIO(first + bytes(second)), "f"))
