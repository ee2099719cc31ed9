"""Spark rows and Arrow record batches turned into feed columns (pure core; run by the feed tasks).

An RDD's rows may be tuples, lists, dicts, ``pyspark.sql.Row``s, numpy arrays or scalars; all
rows of a partition must have the same structure. Each field becomes one numpy column (row
axis first). A DataFrame arrives as Arrow record batches (``mapInArrow``): primitive columns
map to numpy without copying, list columns of equal length become 2-D arrays (a view of the
list's values), and Spark ML vector columns (``VectorUDT``, dense or sparse rows) become 2-D
float64 arrays of ``(rows, size)``, built with whole-column numpy operations (no work per
row). Anything that cannot become a plain numeric/bool/string column (ragged rows, ``None``,
nested objects, vectors of different sizes) raises a FeedDataError naming the partition, the
row and the column.
"""
from __future__ import annotations

import collections

import numpy as np

from tfos.core.errors import FeedDataError
from tfos.core.pickled_rows import PickledArray, holds_pickled, materialize, pickled_column


def row_fields(row) -> list[str]:
    """Column names for rows shaped like ``row``: dict keys, Row fields, or positions."""
    if isinstance(row, dict):
        return [str(k) for k in row]
    fields = getattr(row, "__fields__", None)
    if fields is not None:
        return list(fields)
    if isinstance(row, (tuple, list)):
        return [str(i) for i in range(len(row))]
    return ["0"]


# Columns a fed row may have: each column's name, dtype and shape travel in a message header
# of at most 64 KiB (tfos.core.feed_codec.MAX_HEADER_BYTES).
MAX_COLUMNS = 512


def rows_to_columns(rows: list, partition: int, first_row: int = 0) -> dict[str, np.ndarray]:
    """Columns of ``rows`` (rows ``first_row``... of ``partition``, for error messages)."""
    if not rows:
        return {}
    names = row_fields(rows[0])
    if len(names) > MAX_COLUMNS:
        raise FeedDataError(
            f"partition {partition}, row {first_row}: a row of {len(names)} fields is "
            f"{len(names)} columns (each element of a tuple or list row is a column of its own), "
            f"more than the {MAX_COLUMNS} a feed carries. For a vector per row, make it one "
            "field: a numpy array, or the list inside a tuple, (values,)")
    getters = _getters(rows[0], names)
    transposed = _transposed(rows, len(names))
    columns = {}
    for index, (name, get) in enumerate(zip(names, getters)):
        try:
            values = transposed[index] if transposed else [get(row) for row in rows]
        except (KeyError, IndexError, TypeError):
            bad = _first_bad_structure(rows, names, getters)
            raise FeedDataError(f"partition {partition}, row {first_row + bad}: expected the "
                                f"fields {names} of the partition's first row, got "
                                f"{_short(rows[bad])}") from None
        columns[name] = _column(values, name, partition, first_row)
    return columns


def _transposed(rows: list, width: int) -> list | None:
    """The columns of rows that are all tuples or lists (``Row``s too) of ``width`` fields,
    transposed in C (``zip``); None for any other rows, which take the per-field getters."""
    if not all(issubclass(kind, (tuple, list)) for kind in set(map(type, rows))):
        return None
    if set(map(len, rows)) != {width}:
        return None
    return list(zip(*rows))


def _getters(row, names):
    if isinstance(row, dict):
        keys = list(row)
        return [lambda r, k=k: r[k] for k in keys]
    if isinstance(row, (tuple, list)) or getattr(row, "__fields__", None) is not None:
        width = len(names)

        def getter(i):
            def get(r):
                if r is None or len(r) != width:
                    raise TypeError
                return r[i]
            return get
        return [getter(i) for i in range(width)]
    return [lambda r: r]


def _first_bad_structure(rows, names, getters) -> int:
    for index, row in enumerate(rows):
        try:
            for get in getters:
                get(row)
        except (KeyError, IndexError, TypeError):
            return index
    return 0


def _column(values, name: str, partition: int, first_row: int) -> np.ndarray:
    # Rows read from pickled batches hold their arrays as PickledArray records
    # (tfos.core.pickled_rows): joined in one copy when alike, else arrays again.
    array = pickled_column(values) if set(map(type, values)) == {PickledArray} else None
    if array is None:
        array = _as_array(values)
        if (array is None or array.dtype.hasobject) and any(map(holds_pickled, values)):
            values = [materialize(v) for v in values]
            array = _as_array(values)
    if array is None or array.dtype.hasobject:     # a None, or values unlike the others
        for index, value in enumerate(values):
            if value is None:
                raise FeedDataError(f"partition {partition}, row {first_row + index}, column "
                                    f"{name!r}: value is None; drop or fill missing values "
                                    "first")
        index, typical = _first_odd_shape(values)
        raise FeedDataError(
            f"partition {partition}, row {first_row + index}, column {name!r}: value "
            f"{_short(values[index])} does not match the shape/type of the column's other "
            f"values, like {_short(values[typical])}; every row must have the same shape in "
            "each column")
    if array.dtype.kind not in "biufcSU":
        raise FeedDataError(f"partition {partition}, column {name!r}: dtype {array.dtype} "
                            "cannot be fed; use numbers, booleans or strings")
    return array


def _as_array(values) -> np.ndarray | None:
    try:
        return np.asarray(values)
    except ValueError:
        return None


def _first_odd_shape(values: list) -> tuple[int, int]:
    """``(odd, typical)``: the first value whose shape/type differs from most values', and
    one of those (the odd one may be the first)."""
    keys = [np.shape(v) if _regular(v) else None for v in values]
    common = collections.Counter(keys).most_common(1)[0][0]
    odd = next((i for i, key in enumerate(keys) if key != common), 0)
    return odd, keys.index(common)


def _regular(value) -> bool:
    try:
        return not np.asarray(value).dtype.hasobject
    except ValueError:
        return False


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def arrow_to_columns(batch, partition: int, first_row: int = 0) -> dict[str, np.ndarray]:
    """Columns of a ``pyarrow.RecordBatch``: no copy for primitive columns and for list columns
    of equal length; Spark ML vectors as ``(rows, size)`` float64 arrays."""
    import pyarrow as pa
    columns = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if column.null_count:
            row = first_row + next(i for i, valid in enumerate(column.is_valid().to_pylist())
                                   if not valid)
            raise FeedDataError(f"partition {partition}, row {row}, column {name!r}: value is "
                                "null; drop or fill missing values first")
        if pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            values = _flat_values(column.flatten(), name, partition)
            columns[name] = values.reshape(len(column), width)
        elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            columns[name] = _list_column(column, name, partition, first_row)
        elif _is_vector(column.type):
            columns[name] = _vector_column(column, name, partition, first_row)
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            columns[name] = np.asarray(column.to_pylist(), dtype=str)
        else:
            columns[name] = _flat_values(column, name, partition)
    return columns


def _list_column(column, name: str, partition: int, first_row: int) -> np.ndarray:
    offsets = column.offsets.to_numpy()
    lengths = np.diff(offsets)
    if len(lengths) and (lengths != lengths[0]).any():
        bad = int(np.argmax(lengths != lengths[0]))
        raise FeedDataError(f"partition {partition}, row {first_row + bad}, column {name!r}: "
                            f"array of length {int(lengths[bad])} where the column's first row "
                            f"has {int(lengths[0])}; every row must have the same length")
    values = _flat_values(column.flatten(), name, partition)
    width = int(lengths[0]) if len(lengths) else 0
    return values.reshape(len(column), width)


# How Spark (3.x, 4.x) hands a pyspark.ml.linalg.VectorUDT column to mapInArrow: its SQL
# struct, one row per vector. Dense rows: type 1, size and indices null, values all the
# vector's values. Sparse rows: type 0, size, and indices/values of the non-zero entries.
_VECTOR_FIELDS = ("type", "size", "indices", "values")
_DENSE, _SPARSE = 1, 0


def _is_vector(arrow_type) -> bool:
    import pyarrow as pa
    if not pa.types.is_struct(arrow_type) or arrow_type.num_fields != len(_VECTOR_FIELDS):
        return False
    fields = [arrow_type.field(i) for i in range(arrow_type.num_fields)]
    return ([f.name for f in fields] == list(_VECTOR_FIELDS)
            and pa.types.is_integer(fields[0].type) and pa.types.is_integer(fields[1].type)
            and pa.types.is_list(fields[2].type) and pa.types.is_list(fields[3].type))


def _vector_column(column, name: str, partition: int, first_row: int) -> np.ndarray:
    """A VectorUDT column as a ``(rows, size)`` array: a view of the ``values`` when all rows
    are dense, else zeros filled by one scatter of every row's entries."""
    import pyarrow.compute as pc
    kinds = column.field("type").to_numpy(zero_copy_only=False)
    values = column.field("values")
    lengths = np.diff(values.offsets.to_numpy())
    flat = _flat_values(values.flatten(), name, partition)
    dense = kinds == _DENSE
    odd = ~dense & (kinds != _SPARSE)
    if odd.any():
        bad = int(np.argmax(odd))
        raise FeedDataError(f"{_at(partition, first_row + bad, name)}: vector type "
                            f"{int(kinds[bad])} is neither sparse (0) nor dense (1); feed a "
                            "pyspark.ml.linalg.VectorUDT column or an array column")
    sizes = np.where(dense, lengths,
                     pc.fill_null(column.field("size"), 0).to_numpy(zero_copy_only=False))
    size = _common_size(sizes, name, partition, first_row)
    if dense.all():
        return flat.reshape(len(column), size)
    where = (name, partition, first_row)
    indices = _sparse_indices(column.field("indices"), dense, lengths, size, where)
    return _scatter(flat, dense, lengths, indices, size)


def _scatter(flat, dense, lengths, indices, size) -> np.ndarray:
    """Dense rows copied whole, then every sparse entry set by one assignment at its flat
    position (row * size + index: a 1-D fancy index is several times faster than a 2-D one)."""
    out = np.zeros((len(dense), size), dtype=flat.dtype)
    if dense.any():
        dense_values = np.repeat(dense, lengths)
        out[dense] = flat[dense_values].reshape(int(dense.sum()), size)
        sparse_values = flat[~dense_values]
    else:
        sparse_values = flat
    sparse = ~dense
    starts = np.repeat(np.flatnonzero(sparse) * size, lengths[sparse])
    out.reshape(-1)[starts + indices] = sparse_values
    return out


def _at(partition: int, row: int, name: str) -> str:
    return f"partition {partition}, row {row}, column {name!r}"


def _common_size(sizes: np.ndarray, name: str, partition: int, first_row: int) -> int:
    if not len(sizes):
        return 0
    if (sizes != sizes[0]).any():
        bad = int(np.argmax(sizes != sizes[0]))
        raise FeedDataError(f"{_at(partition, first_row + bad, name)}: vector of size "
                            f"{int(sizes[bad])} where the column's first row has size "
                            f"{int(sizes[0])}; every vector of a column must have the same size "
                            "(build the column from the same inputs, e.g. one VectorAssembler)")
    return int(sizes[0])


def _sparse_indices(indices, dense, lengths, size, where) -> np.ndarray:
    """The sparse rows' indices, one per sparse value, in row order; checked against
    ``size`` (a negative index would wrap around silently in numpy)."""
    name, partition, first_row = where
    index_lengths = np.diff(indices.offsets.to_numpy())
    bad_count = ~dense & (index_lengths != lengths)
    if bad_count.any():
        bad = int(np.argmax(bad_count))
        raise FeedDataError(f"{_at(partition, first_row + bad, name)}: sparse vector with "
                            f"{int(index_lengths[bad])} indices but {int(lengths[bad])} values; "
                            "build sparse vectors with pyspark.ml.linalg.Vectors.sparse")
    flat = indices.flatten().to_numpy(zero_copy_only=False)     # skips the dense rows' nulls
    outside = (flat < 0) | (flat >= size)
    if outside.any():
        first = int(np.argmax(outside))
        row = first_row + int(np.repeat(np.flatnonzero(~dense), lengths[~dense])[first])
        raise FeedDataError(f"{_at(partition, row, name)}: sparse vector index "
                            f"{int(flat[first])} outside its size {size}; build sparse vectors "
                            "with pyspark.ml.linalg.Vectors.sparse")
    return flat


def _flat_values(array, name: str, partition: int) -> np.ndarray:
    if array.null_count:
        raise FeedDataError(f"partition {partition}, column {name!r}: an array element is null")
    try:
        values = array.to_numpy(zero_copy_only=False)
    except Exception as exc:  # pyarrow raises several types for unsupported conversions
        raise FeedDataError(f"partition {partition}, column {name!r}: Arrow type {array.type} "
                            f"cannot be fed ({exc})") from None
    if values.dtype.hasobject:
        raise FeedDataError(f"partition {partition}, column {name!r}: Arrow type {array.type} "
                            "cannot be fed; use numeric, boolean, string or list columns")
    return values
