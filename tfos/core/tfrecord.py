"""TFRecord files and ``tf.train.Example`` messages without TensorFlow (pure core).

A TFRecord file is a sequence of records, each ``[u64 length][u32 masked CRC32C of the
length][data][u32 masked CRC32C of the data]`` (little-endian), the format
``tf.data.TFRecordDataset`` reads. ``read_records`` checks every length and CRC and names the
file and byte offset of the first bad one. ``Example`` messages are encoded and parsed with
protobuf, from a private copy of TensorFlow's ``example.proto`` and ``feature.proto``
descriptors (the wire format is what matters), so Spark's Python workers need no TensorFlow.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tfos.core.errors import TFRecordError

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


def masked_crc(data) -> int:
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record as it is written in a TFRecord file."""
    length = _U64.pack(len(record))
    return b"".join((length, _U32.pack(masked_crc(length)), record,
                     _U32.pack(masked_crc(record))))


def read_records(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """The records of the TFRecord file ``stream`` (``name`` for errors), each checked."""
    offset = 0
    while True:
        head = stream.read(12)
        if not head:
            return
        if len(head) < 12:
            raise TFRecordError(f"{name}: truncated record header at byte {offset}")
        length_bytes, (length_crc,) = head[:8], _U32.unpack(head[8:])
        if masked_crc(length_bytes) != length_crc:
            raise TFRecordError(f"{name}: corrupt record length at byte {offset} (CRC "
                                "mismatch): not a TFRecord file, or damaged")
        (length,) = _U64.unpack(length_bytes)
        body = stream.read(length + 4)
        if len(body) < length + 4:
            raise TFRecordError(f"{name}: record at byte {offset} is truncated ({length} bytes "
                                f"announced, {max(0, len(body) - 4)} present)")
        data, (data_crc,) = body[:length], _U32.unpack(body[length:])
        if masked_crc(data) != data_crc:
            raise TFRecordError(f"{name}: corrupt record data at byte {offset} (CRC mismatch)")
        yield data
        offset += 12 + length + 4


def read_record_chunks(stream: BinaryIO, name: str,
                       chunk_bytes: int = 1 << 20) -> Iterator[list[bytes]]:
    """The records of ``stream`` in lists, one list per read of about ``chunk_bytes``.

    For streams where each read is a round trip (object stores, HDFS) and readers that take
    records in batches: a few large reads instead of two per record. Checks every length and
    CRC and names the file and byte offset as ``read_records`` does.
    """
    tail, offset = b"", 0   # the bytes of an incomplete record, and where it starts
    while True:
        more = stream.read(max(chunk_bytes, _announced(tail) - len(tail)))
        data = tail + more if tail else more
        records, used = _complete_records(data, name, offset)
        if records:
            yield records
        tail, offset = data[used:], offset + used
        if not more:
            if tail:
                _raise_truncated(tail, name, offset)
            return


def _complete_records(data: bytes, name: str, offset: int) -> tuple[list[bytes], int]:
    """The complete records at the start of ``data`` (which starts at byte ``offset`` of the
    file) and how many bytes they take."""
    records, pos, end = [], 0, len(data)
    while end - pos >= 12:
        (length,) = _U64.unpack_from(data, pos)
        if masked_crc(data[pos:pos + 8]) != _U32.unpack_from(data, pos + 8)[0]:
            raise TFRecordError(f"{name}: corrupt record length at byte {offset + pos} (CRC "
                                "mismatch): not a TFRecord file, or damaged")
        stop = pos + 12 + length + 4
        if stop > end:
            break
        record = data[pos + 12:stop - 4]
        if masked_crc(record) != _U32.unpack_from(data, stop - 4)[0]:
            raise TFRecordError(f"{name}: corrupt record data at byte {offset + pos} (CRC "
                                "mismatch)")
        records.append(record)
        pos = stop
    return records, pos


def _announced(tail: bytes) -> int:
    """Bytes the record starting ``tail`` takes in all (0 while its header is incomplete)."""
    return 12 + _U64.unpack_from(tail)[0] + 4 if len(tail) >= 12 else 0


def _raise_truncated(tail: bytes, name: str, offset: int) -> None:
    if len(tail) < 12:
        raise TFRecordError(f"{name}: truncated record header at byte {offset}")
    length = _U64.unpack_from(tail)[0]
    raise TFRecordError(f"{name}: record at byte {offset} is truncated ({length} bytes "
                        f"announced, {max(0, len(tail) - 16)} present)")


def _example_classes():
    """``Example`` and ``Feature`` message classes built from TensorFlow's protos' shape."""
    proto = descriptor_pb2.FileDescriptorProto(name="tfos_example.proto", package="tfos_tf",
                                               syntax="proto3")
    f = descriptor_pb2.FieldDescriptorProto

    def message(name, *fields, nested=(), oneofs=()):
        msg = proto.message_type.add(name=name)
        for spec in fields:
            msg.field.add(**spec)
        for sub in nested:
            msg.nested_type.add().CopyFrom(sub)
        for oneof in oneofs:
            msg.oneof_decl.add(name=oneof)
        return msg

    repeated = f.LABEL_REPEATED
    message("BytesList", dict(name="value", number=1, label=repeated, type=f.TYPE_BYTES))
    message("FloatList", dict(name="value", number=1, label=repeated, type=f.TYPE_FLOAT))
    message("Int64List", dict(name="value", number=1, label=repeated, type=f.TYPE_INT64))
    optional = f.LABEL_OPTIONAL
    message("Feature",
            *(dict(name=n, number=i, label=optional, type=f.TYPE_MESSAGE,
                   type_name=f".tfos_tf.{t}", oneof_index=0)
              for i, (n, t) in enumerate((("bytes_list", "BytesList"),
                                          ("float_list", "FloatList"),
                                          ("int64_list", "Int64List")), start=1)),
            oneofs=("kind",))
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=optional, type=f.TYPE_STRING)
    entry.field.add(name="value", number=2, label=optional, type=f.TYPE_MESSAGE,
                    type_name=".tfos_tf.Feature")
    entry.options.map_entry = True
    message("Features", dict(name="feature", number=1, label=repeated, type=f.TYPE_MESSAGE,
                             type_name=".tfos_tf.Features.FeatureEntry"), nested=(entry,))
    message("Example", dict(name="features", number=1, label=optional, type=f.TYPE_MESSAGE,
                            type_name=".tfos_tf.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("tfos_tf.Example")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("tfos_tf.Feature")))


Example, Feature = _example_classes()


def encode_example(features: dict[str, tuple[str, list]]) -> bytes:
    """A serialized Example of ``{name: (kind, values)}``, kind "bytes", "float" or "int64"
    (None: a feature without values)."""
    example = Example()
    target = example.features.feature
    for name, (kind, values) in features.items():
        feature = target[name]   # present, if empty
        if kind is not None:
            getattr(feature, f"{kind}_list").value.extend(values)
    return example.SerializeToString()


def decode_example(data: bytes) -> dict[str, tuple[str | None, list]]:
    """``{name: (kind, values)}`` of a serialized Example; kind None for an empty feature."""
    example = Example()
    example.ParseFromString(data)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        out[name] = (kind[:-len("_list")] if kind else None, values)
    return out
