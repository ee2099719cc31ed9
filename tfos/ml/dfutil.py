"""TFRecords <-> Spark DataFrames without a Hadoop jar (driver, and the tasks of its jobs).

TensorFlowOnSpark's ``dfutil`` names. ``saveAsTFRecords(df, output_dir)`` writes one
``part-NNNNN.tfrecord`` file per partition (``tf.train.Example`` records that
``tf.data.TFRecordDataset`` reads) through pyarrow's filesystems (local paths, ``file://``,
``s3://`` ...), each file written under a temporary name and renamed when complete, plus
``_tfos_schema.json``: the DataFrame's exact Spark schema. ``loadTFRecords(sc, input_dir)``
reads every file of ``input_dir`` through Spark's own Hadoop filesystem layer
(``binaryFiles``: ``hdfs://`` works wherever Spark reads it; names starting with ``_`` or
``.`` are skipped, as Hadoop does), checks each record's framing and CRCs, and builds the
DataFrame with the saved schema, or, for files written by others, a schema inferred from the
first ``INFER_RECORDS`` records.

Types: booleans and integers are stored as ``int64_list``, floats and doubles as
``float_list`` (float32: doubles come back rounded to float32 precision), strings (UTF-8) and
binary as ``bytes_list``, dates as int64 days since 1970-01-01, timestamps as int64
microseconds since the epoch (UTC); arrays of these as lists. A null value is a missing
feature, and a missing feature reads as null. Other types (decimal, map, struct, nested
arrays) are refused with the column named.
"""
from __future__ import annotations

import datetime
import functools
import io
import json
import os

from tfos.core import tfrecord
from tfos.core.errors import ConfigError, TFRecordError

SCHEMA_FILE = "_tfos_schema.json"
INFER_RECORDS = 100
_EPOCH = datetime.date(1970, 1, 1)
_EPOCH_TS = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_INT_TYPES = ("boolean", "byte", "short", "integer", "long", "date", "timestamp")
_KIND = {**{name: "int64" for name in _INT_TYPES}, "float": "float", "double": "float",
         "string": "bytes", "binary": "bytes"}


def isLoadedDF(df) -> bool:  # noqa: N802 - TensorFlowOnSpark's name
    """True when ``df`` is the DataFrame ``loadTFRecords`` returned (not one derived from it)."""
    return getattr(df, "_tfos_tfrecord_dir", None) is not None


def saveAsTFRecords(df, output_dir: str, mode: str = "error") -> None:  # noqa: N802
    """Writes ``df`` as TFRecord files of ``tf.train.Example`` under ``output_dir``.

    ``mode`` says what happens when ``output_dir`` already holds TFRecords written here
    (``part-*.tfrecord`` or the schema file): ``"error"`` (the default, as Spark's writers)
    refuses, ``"overwrite"`` deletes those files first (other files are left alone).
    """
    if mode not in ("error", "overwrite"):
        raise ConfigError(f"saveAsTFRecords mode={mode!r}: use 'error' or 'overwrite'")
    fields = [(f.name, _type_name(f)) for f in df.schema.fields]
    if "://" not in output_dir:   # where the driver stands, not each executor's directory
        output_dir = os.path.abspath(output_dir)
    fs, path = _open_dir(output_dir)
    earlier = _written_here(fs, path)
    if earlier and mode == "error":
        raise ConfigError(f"{output_dir} already holds {len(earlier)} TFRecord files written "
                          f"by saveAsTFRecords (e.g. {earlier[0]}): choose another directory, "
                          "or pass mode='overwrite' to replace them")
    for name in earlier:
        fs.delete_file(f"{path}/{name}")
    written = df.rdd.mapPartitionsWithIndex(
        functools.partial(_write_partition, output_dir, fields)).collect()
    with fs.open_output_stream(f"{path}/{SCHEMA_FILE}") as out:
        out.write(json.dumps({"schema": json.loads(df.schema.json()),
                              "records": sum(written)}).encode())


def loadTFRecords(sc, input_dir: str, binary_features=()):  # noqa: N802
    """A DataFrame of the ``tf.train.Example`` records of every file in ``input_dir``.

    ``binary_features`` names the bytes features that are binary rather than UTF-8 text; it
    matters only for files without a saved schema (written by another tool).
    """
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType
    spark = SparkSession.builder.getOrCreate() if not hasattr(sc, "sparkContext") else sc
    sc = spark.sparkContext
    files = sc.binaryFiles(input_dir)
    saved = _saved_schema(sc, input_dir)
    if saved is not None:
        schema = StructType.fromJson(saved["schema"])
    else:
        sample = files.flatMap(functools.partial(_records, limit=INFER_RECORDS)) \
            .take(INFER_RECORDS)
        if not sample:
            raise ConfigError(f"loadTFRecords({input_dir!r}): no TFRecord records there, and "
                              "no saved schema: check the path")
        schema = infer_schema(sample, binary_features)
    rows = files.flatMap(functools.partial(_read_file, schema.json()))
    df = spark.createDataFrame(rows, schema)
    df._tfos_tfrecord_dir = input_dir
    return df


def toTFExample(dtypes):  # noqa: N802
    """A ``mapPartitions`` function turning rows of a DataFrame with ``dtypes`` (its
    ``df.dtypes``) into serialized ``tf.train.Example`` records (bytes)."""
    fields = [(name, _dtype_name(name, dtype)) for name, dtype in dtypes]

    def to_examples(rows):
        for row in rows:
            yield _encode_row(row, fields)
    return to_examples


def fromTFExample(records, binary_features=()):  # noqa: N802
    """Rows (``pyspark.sql.Row``) of serialized ``tf.train.Example`` records (bytes, or
    TensorFlowOnSpark's ``(bytes, None)`` pairs), typed as ``infer_schema`` infers them."""
    from pyspark.sql import Row
    records = [r[0] if isinstance(r, tuple) else r for r in records]
    schema = infer_schema(records, binary_features)
    names = schema.names
    for record in records:
        yield Row(**dict(zip(names, _decode_record(bytes(record), schema, "a record"))))


def infer_schema(examples, binary_features=()):
    """The Spark schema of serialized Examples (one, or a list: every feature of any of them,
    an array when any has other than one value), columns sorted by name."""
    from pyspark.sql.types import (
        ArrayType,
        BinaryType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
    )
    if isinstance(examples, (bytes, bytearray)) or hasattr(examples, "SerializeToString"):
        examples = [examples]
    seen: dict[str, tuple[str | None, bool]] = {}
    for example in examples:
        data = example.SerializeToString() if hasattr(example, "SerializeToString") else example
        for name, (kind, values) in tfrecord.decode_example(bytes(data)).items():
            old_kind, is_list = seen.get(name, (None, False))
            seen[name] = (old_kind or kind, is_list or len(values) != 1)
    base = {"int64": LongType(), "float": DoubleType(), "bytes": StringType(), None: StringType()}
    fields = []
    for name in sorted(seen):
        kind, is_list = seen[name]
        sql_type = BinaryType() if name in binary_features else base[kind]
        fields.append(StructField(name, ArrayType(sql_type) if is_list else sql_type, True))
    return StructType(fields)


# -- what the tasks run -----------------------------------------------------------------------
def _write_partition(output_dir: str, fields, index: int, rows):
    fs, path = _filesystem(output_dir)
    final = f"{path}/part-{index:05d}.tfrecord"
    temporary = f"{path}/.part-{index:05d}.tfrecord.{os.getpid()}.tmp"
    count = 0
    with fs.open_output_stream(temporary) as out:
        for row in rows:
            out.write(tfrecord.frame(_encode_row(row, fields)))
            count += 1
    fs.move(temporary, final)
    yield count


def _records(item, limit: int | None = None):
    path, content = item
    records = tfrecord.read_records(io.BytesIO(content), path)
    for count, record in enumerate(records):
        if limit is not None and count >= limit:
            return
        yield record


def _read_file(schema_json: str, item):
    from pyspark.sql.types import StructType
    schema = StructType.fromJson(json.loads(schema_json))
    for offset, record in enumerate(_records(item)):
        yield tuple(_decode_record(record, schema, f"{item[0]}, record {offset}"))


# -- conversions ---------------------------------------------------------------------------------
def _type_name(field) -> str:
    return _dtype_name(field.name, field.dataType.simpleString())


def _dtype_name(column: str, dtype: str) -> str:
    """The Spark type name of a column tfos can store ("long", "array<double>"...)."""
    aliases = {"tinyint": "byte", "smallint": "short", "int": "integer", "bigint": "long"}
    inner = dtype[len("array<"):-1] if dtype.startswith("array<") else dtype
    inner = aliases.get(inner, inner)
    if inner not in _KIND:
        raise ConfigError(f"column {column!r} has type {dtype}, which a tf.train.Example cannot "
                          "hold: use numbers, booleans, strings, binary, dates, timestamps or "
                          "arrays of them (cast a decimal to double)")
    return f"array<{inner}>" if dtype.startswith("array<") else inner


def _encode_row(row, fields) -> bytes:
    features = {}
    for name, dtype in fields:
        value = row[name]
        if value is None:
            continue   # a missing feature: null
        is_array = dtype.startswith("array<")
        inner = dtype[len("array<"):-1] if is_array else dtype
        values = value if is_array else [value]
        features[name] = (_KIND[inner], [_to_feature(inner, v, name) for v in values])
    return tfrecord.encode_example(features)


def _to_feature(dtype: str, value, name: str):
    if value is None:
        raise ConfigError(f"column {name!r}: an array holds a null, which a tf.train.Example "
                          "cannot store")
    if dtype == "string":
        return value.encode("utf-8")
    if dtype == "binary":
        return bytes(value)
    if dtype == "date":
        return (value - _EPOCH).days
    if dtype == "timestamp":
        if value.tzinfo is None:
            value = value.astimezone()   # Spark hands out local times
        return (value - _EPOCH_TS) // datetime.timedelta(microseconds=1)
    return int(value) if _KIND[dtype] == "int64" else float(value)


def _decode_record(record: bytes, schema, where: str) -> list:
    features = tfrecord.decode_example(record)
    out = []
    for field in schema.fields:
        kind, values = features.get(field.name, (None, None))
        if values is None:
            out.append(None)
            continue
        dtype = field.dataType
        if dtype.typeName() == "array":
            out.append([_from_feature(dtype.elementType, v) for v in values])
        elif len(values) == 1:
            out.append(_from_feature(dtype, values[0]))
        elif not values:
            out.append(None)
        else:
            raise TFRecordError(f"{where}: feature {field.name!r} holds {len(values)} values "
                                f"where the schema has one {dtype.simpleString()}")
    return out


def _from_feature(dtype, value):
    name = dtype.typeName()
    if name == "string":
        return value.decode("utf-8")
    if name == "binary":
        return bytearray(value)
    if name == "date":
        return _EPOCH + datetime.timedelta(days=value)
    if name == "timestamp":
        return _EPOCH_TS + datetime.timedelta(microseconds=value)
    if name == "boolean":
        return bool(value)
    if name in ("float", "double"):
        return float(value)
    return int(value)


def _filesystem(url: str):
    from pyarrow import fs
    if "://" not in url:
        return fs.LocalFileSystem(), url
    return fs.FileSystem.from_uri(url)


def _written_here(filesystem, path: str) -> list[str]:
    """The names of the files an earlier ``saveAsTFRecords`` left in ``path``."""
    from pyarrow import fs
    infos = filesystem.get_file_info(fs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == fs.FileType.File and (
        i.base_name == SCHEMA_FILE or (i.base_name.startswith("part-")
                                       and i.base_name.endswith(".tfrecord"))))


def _open_dir(url: str):
    filesystem, path = _filesystem(url)
    filesystem.create_dir(path, recursive=True)
    return filesystem, path


def _saved_schema(sc, input_dir: str) -> dict | None:
    """The schema ``saveAsTFRecords`` wrote beside the files, read through Hadoop's
    filesystem layer like the files themselves (None when there is none)."""
    jvm = sc._jvm
    path = jvm.org.apache.hadoop.fs.Path(f"{input_dir.rstrip('/')}/{SCHEMA_FILE}")
    filesystem = path.getFileSystem(sc._jsc.hadoopConfiguration())
    if not filesystem.exists(path):
        return None
    stream = filesystem.open(path)
    try:
        return json.loads(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
    finally:
        stream.close()
