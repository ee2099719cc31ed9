"""CSV and Parquet files as columns for tf.data (TF node; used by ``tfos.node.files``).

pyarrow reads each file in record batches and every batch goes to tf.data whole, as a dict of
numpy columns. Numbers, booleans, strings and binary give one value per row; a list of numbers
gives a vector per row (all rows of a batch the same length: images, embeddings). The first
file's schema is every file's: CSV types inferred from it are imposed on the others.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from tfos.core.errors import ConfigError
from tfos.node.filesystems import opened

BATCH_ROWS = 4096


def schema(uri: str, format: str, columns: Sequence[str] | None,  # noqa: A002
           buffer_size: int):
    """The schema every file is read with: the first file's, ``columns`` only when given."""
    import pyarrow as pa
    with opened(uri, buffer_size) as stream:
        if format == "parquet":
            import pyarrow.parquet as pq
            found = pq.ParquetFile(stream).schema_arrow
        else:
            found = _csv_reader(stream, buffer_size).schema
    if columns is None:
        return found
    missing = [c for c in columns if c not in found.names]
    if missing:
        raise ConfigError(f"columns {missing} are not in {uri}, whose columns are "
                          f"{found.names}")
    return pa.schema([found.field(c) for c in columns])


def tensor_specs(tf, schema, uri: str) -> dict:
    """What each yielded batch holds: ``{column: TensorSpec((rows,) or (rows, width))}``."""
    specs = {}
    for field in schema:
        dtype, vector = _tf_type(tf, field, uri)
        specs[field.name] = tf.TensorSpec((None, None) if vector else (None,), dtype)
    return specs


def batches(uri: bytes, format: str, schema, buffer_size: int) -> Iterator[dict]:  # noqa: A002
    """The rows of file ``uri`` in batches of numpy columns (a ``from_generator`` source)."""
    name = uri.decode()
    with opened(name, buffer_size) as stream:
        if format == "parquet":
            import pyarrow.parquet as pq
            source = pq.ParquetFile(stream).iter_batches(BATCH_ROWS, columns=schema.names)
        else:
            source = _csv_reader(stream, buffer_size, schema)
        for batch in source:
            yield _columns(batch, schema, name)


def _csv_reader(stream, buffer_size: int, schema=None):
    import pyarrow.csv as csv
    convert = None
    if schema is not None:
        convert = csv.ConvertOptions(column_types=schema, include_columns=schema.names)
    return csv.open_csv(stream, read_options=csv.ReadOptions(block_size=buffer_size),
                        convert_options=convert)


def _columns(batch, schema, name: str) -> dict:
    import pyarrow.compute as pc
    out = {}
    for field in schema:
        column = batch.column(field.name)
        if column.type != field.type:
            column = column.cast(field.type)
        if column.null_count:
            raise ConfigError(f"{name}: column {field.name!r} holds {column.null_count} nulls, "
                              "which no tensor can hold: fill them before writing (Spark: "
                              "df.na.fill) or leave the column out (columns=[...])")
        if _is_list(field.type):
            lengths = pc.list_value_length(column)
            shortest, longest = pc.min(lengths).as_py(), pc.max(lengths).as_py()
            if shortest != longest:
                raise ConfigError(f"{name}: column {field.name!r} holds lists of "
                                  f"{shortest} to {longest} values in one batch; a vector "
                                  "column needs one length: pad them before writing")
            values = column.flatten().to_numpy(zero_copy_only=False)
            out[field.name] = values.reshape(len(column), longest or 0)
        else:
            out[field.name] = column.to_numpy(zero_copy_only=False)
    return out


def _tf_type(tf, field, uri: str):
    """The tf.DType of a column and whether it is a vector per row."""
    import pyarrow as pa
    vector = _is_list(field.type)
    value_type = field.type.value_type if vector else field.type
    types = pa.types
    if types.is_integer(value_type) or types.is_floating(value_type) \
            or types.is_boolean(value_type):
        return tf.as_dtype(value_type.to_pandas_dtype()), vector
    if not vector and (types.is_string(value_type) or types.is_large_string(value_type)
                       or types.is_binary(value_type) or types.is_large_binary(value_type)):
        return tf.string, False
    raise ConfigError(f"column {field.name!r} of {uri} has type {field.type}, which tfos.files "
                      "does not hand to TensorFlow: leave it out (columns=[...]) or store it "
                      "as numbers, booleans, strings, binary or a list of numbers")


def _is_list(arrow_type) -> bool:
    import pyarrow as pa
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) \
        or pa.types.is_fixed_size_list(arrow_type)

