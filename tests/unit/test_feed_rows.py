"""Rows and Arrow batches to feed columns, and errors that name partition, row and column."""
import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import Row

from tfos import FeedDataError
from tfos.core.feed_rows import arrow_to_columns, rows_to_columns


def test_tuple_rows_of_vector_and_label():
    rows = [(np.full(3, i, np.float32), i) for i in range(4)]
    columns = rows_to_columns(rows, partition=0)
    assert list(columns) == ["0", "1"]
    assert columns["0"].shape == (4, 3) and columns["0"].dtype == np.float32
    np.testing.assert_array_equal(columns["1"], [0, 1, 2, 3])


def test_dict_and_spark_row_rows_keep_their_names():
    assert list(rows_to_columns([{"x": 1.0, "y": 2}], 0)) == ["x", "y"]
    columns = rows_to_columns([Row(image=[1.0, 2.0], label=1), Row(image=[3.0, 4.0], label=0)], 0)
    assert list(columns) == ["image", "label"]
    np.testing.assert_array_equal(columns["image"], [[1.0, 2.0], [3.0, 4.0]])


def test_scalar_and_array_rows_make_one_column():
    np.testing.assert_array_equal(rows_to_columns([1, 2, 3], 0)["0"], [1, 2, 3])
    assert rows_to_columns([np.zeros((2, 2))] * 5, 0)["0"].shape == (5, 2, 2)


def test_empty_partition_has_no_columns():
    assert rows_to_columns([], 3) == {}


@pytest.mark.parametrize("rows, match", [
    ([([1.0, 2.0], 1), ([1.0], 0)], r"partition 7, row 11, column '0': value \[1.0\]"),
    ([(1, 2), None], r"partition 7, row 11: expected the fields \['0', '1'\]"),
    ([(1, 2), (1, 2, 3)], r"partition 7, row 11: expected the fields"),
    ([(1, None)], r"partition 7, row 10, column '1': value is None"),
    ([{"a": 1}, {"b": 2}], r"partition 7, row 11: expected the fields \['a'\]"),
    ([(object(),)], r"partition 7, row 10, column '0'"),
])
def test_bad_rows_name_partition_row_and_column(rows, match):
    with pytest.raises(FeedDataError, match=match):
        rows_to_columns(rows, partition=7, first_row=10)


def test_arrow_primitive_and_list_columns():
    batch = pa.record_batch({
        "label": pa.array([1, 2, 3], pa.int64()),
        "image": pa.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], pa.list_(pa.float32())),
        "fixed": pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int32(), 2)),
        "name": pa.array(["a", "bb", "c"]),
    })
    columns = arrow_to_columns(batch, 0)
    np.testing.assert_array_equal(columns["label"], [1, 2, 3])
    assert columns["image"].shape == (3, 2) and columns["image"].dtype == np.float32
    np.testing.assert_array_equal(columns["fixed"], [[1, 2], [3, 4], [5, 6]])
    assert list(columns["name"]) == ["a", "bb", "c"]


def test_arrow_primitive_columns_are_not_copied():
    data = pa.array(np.arange(1000, dtype=np.float64))
    column = arrow_to_columns(pa.record_batch({"x": data}), 0)["x"]
    assert column.ctypes.data == data.buffers()[1].address


@pytest.mark.parametrize("column, match", [
    (pa.array([[1.0], [1.0, 2.0]], pa.list_(pa.float64())), r"partition 2, row 6, column 'c': array of length 2"),
    (pa.array([1.0, None]), r"partition 2, row 6, column 'c': value is null"),
    (pa.array([[1.0, None]], pa.list_(pa.float64())), r"partition 2, column 'c': an array element is null"),
])
def test_bad_arrow_columns_name_partition_row_and_column(column, match):
    with pytest.raises(FeedDataError, match=match):
        arrow_to_columns(pa.record_batch({"c": column}), partition=2, first_row=5)


def test_a_list_row_of_thousands_of_values_is_refused_with_the_fix():
    from tfos.core.feed_rows import MAX_COLUMNS
    rows = [[float(i)] * 2000 for i in range(3)]      # meant as one vector per row
    with pytest.raises(FeedDataError, match=r"partition 4, row 10: a row of 2000 fields is "
                                            r"2000 columns .* numpy array, or the list inside "
                                            r"a tuple, \(values,\)"):
        rows_to_columns(rows, 4, 10)
    (column,) = rows_to_columns([(row,) for row in rows], 4, 10).values()   # the fix works
    assert column.shape == (3, 2000)
    # As many columns as allowed still fit one feed message.
    from tfos.core import feed_codec
    from tfos.core import feed_messages as fm
    widest = rows_to_columns([tuple(float(i) for i in range(MAX_COLUMNS))] * 2, 0)
    assert len(widest) == MAX_COLUMNS
    message, columns = feed_codec.decode(b"".join(feed_codec.encode(fm.Batch(2, 0), widest)),
                                         (fm.Batch,), "batch")
    assert message == fm.Batch(2, 0) and len(columns) == MAX_COLUMNS


# -- DataFrames of tensors: Spark ML vectors and equal-length arrays --------------------------

def vector_batch(vectors, name="v"):
    """A record batch laid out as Spark's mapInArrow hands over a VectorUDT column (its Arrow
    type and each row's struct come from pyspark's own converters, not written by hand)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.pandas.types import to_arrow_type
    udt = VectorUDT()
    structs = [None if v is None else dict(zip(("type", "size", "indices", "values"),
                                               udt.serialize(v))) for v in vectors]
    return pa.record_batch({name: pa.array(structs, to_arrow_type(udt))})


def test_vector_column_of_dense_and_sparse_rows_is_one_float64_matrix():
    from pyspark.ml.linalg import Vectors
    batch = vector_batch([Vectors.dense([1.0, 2.0, 3.0, 4.0]),
                          Vectors.sparse(4, [1, 3], [5.0, -6.0]),
                          Vectors.sparse(4, [], []),
                          Vectors.dense([7.0, 8.0, 9.0, 10.0]),
                          Vectors.sparse(4, [0], [11.0])])
    column = arrow_to_columns(batch, 0)["v"]
    assert column.dtype == np.float64 and column.shape == (5, 4)
    np.testing.assert_array_equal(column, [[1, 2, 3, 4], [0, 5, 0, -6], [0, 0, 0, 0],
                                           [7, 8, 9, 10], [11, 0, 0, 0]])


def test_vector_columns_of_a_sliced_batch_keep_their_own_rows():
    from pyspark.ml.linalg import Vectors
    vectors = [Vectors.sparse(3, [i % 3], [float(i)]) if i % 2 else Vectors.dense([i, i, i])
               for i in range(10)]
    batch = vector_batch(vectors)
    for start, length in [(0, 10), (3, 4), (5, 1), (9, 1), (4, 0)]:
        expected = np.array([v.toArray() for v in vectors[start:start + length]]).reshape(-1, 3)
        column = arrow_to_columns(batch.slice(start, length), 0)["v"]
        np.testing.assert_array_equal(column, expected if length else np.zeros((0, 0)))


def test_an_all_dense_vector_column_is_a_view_of_the_arrow_values():
    from pyspark.ml.linalg import Vectors
    batch = vector_batch([Vectors.dense(np.arange(6.0) + i) for i in range(8)]).slice(2, 5)
    column = arrow_to_columns(batch, 0)["v"]
    np.testing.assert_array_equal(column, np.arange(6.0) + np.arange(2, 7)[:, None])
    values = batch.column(0).field("values").flatten()
    assert column.ctypes.data == values.buffers()[1].address + values.offset * 8


def test_an_all_sparse_vector_column_of_a_million_rows_is_scattered_at_once():
    """No Python work per row: a million rows take a few numpy operations (a loop over the
    rows would take seconds)."""
    import time
    rows, size = 1_000_000, 8
    counts = np.arange(rows) % 3                          # 0, 1 or 2 entries per row
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    indices = (np.arange(offsets[-1]) * 5 % size).astype(np.int32)
    values = np.arange(offsets[-1], dtype=np.float64) + 1
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.pandas.types import to_arrow_type
    fields = list(to_arrow_type(VectorUDT()))
    struct = pa.StructArray.from_arrays(
        [pa.array(np.zeros(rows, np.int8)), pa.array(np.full(rows, size, np.int32)),
         pa.ListArray.from_arrays(pa.array(offsets), pa.array(indices), type=fields[2].type),
         pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), type=fields[3].type)],
        fields=fields)
    started = time.perf_counter()
    column = arrow_to_columns(pa.record_batch({"v": struct}), 0)["v"]
    elapsed = time.perf_counter() - started
    expected = np.zeros((rows, size))
    expected[np.repeat(np.arange(rows), counts), indices] = values
    np.testing.assert_array_equal(column, expected)
    assert elapsed < 1.5, f"{elapsed:.2f} s for {rows} sparse rows"


@pytest.mark.parametrize("vectors, match", [
    (["d3", "s4"], r"partition 2, row 6, column 'v': vector of size 4 where the column's first "
                   r"row has size 3; every vector of a column must have the same size"),
    (["s3", "d3", "d2"], r"partition 2, row 7, column 'v': vector of size 2 where the column's "
                         r"first row has size 3"),
    (["d3", None], r"partition 2, row 6, column 'v': value is null; drop or fill"),
])
def test_bad_vector_columns_name_partition_row_and_column(vectors, match):
    from pyspark.ml.linalg import Vectors
    made = {"d3": Vectors.dense([1.0, 2.0, 3.0]), "d2": Vectors.dense([1.0, 2.0]),
            "s3": Vectors.sparse(3, [2], [1.0]), "s4": Vectors.sparse(4, [2], [1.0]), None: None}
    with pytest.raises(FeedDataError, match=match):
        arrow_to_columns(vector_batch([made[v] for v in vectors]), partition=2, first_row=5)


@pytest.mark.parametrize("second, match", [
    ({"type": 0, "size": 3, "indices": [0, -1], "values": [1.0, 2.0]},
     r"partition 1, row 4, column 'v': sparse vector index -1 outside its size 3; build sparse "
     r"vectors with pyspark.ml.linalg.Vectors.sparse"),
    ({"type": 0, "size": 3, "indices": [0, 1], "values": [1.0]},
     r"partition 1, row 4, column 'v': sparse vector with 2 indices but 1 values"),
    ({"type": 2, "size": 3, "indices": None, "values": [1.0, 2.0, 3.0]},
     r"partition 1, row 4, column 'v': vector type 2 is neither sparse \(0\) nor dense \(1\)"),
])
def test_malformed_vector_structs_name_their_row(second, match):
    """Spark builds such structs only from hand-made rows; numpy would wrap a negative index
    around silently, so they are refused."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.pandas.types import to_arrow_type
    rows = [{"type": 0, "size": 3, "indices": [0], "values": [1.0]}, second]
    batch = pa.record_batch({"v": pa.array(rows, to_arrow_type(VectorUDT()))})
    with pytest.raises(FeedDataError, match=match):
        arrow_to_columns(batch, 1, first_row=3)


@pytest.mark.parametrize("list_type", [pa.list_(pa.float32()), pa.list_(pa.float32(), 3),
                                       pa.large_list(pa.float32())])
def test_equal_length_array_columns_are_views_of_the_arrow_values(list_type):
    data = pa.array([[i, i + 0.5, i + 0.25] for i in range(10)], list_type)
    piece = pa.record_batch({"a": data}).slice(4, 3)
    column = arrow_to_columns(piece, 0)["a"]
    assert column.dtype == np.float32 and column.shape == (3, 3)
    np.testing.assert_array_equal(column[:, 0], [4, 5, 6])
    values = piece.column(0).flatten()
    assert column.ctypes.data == values.buffers()[1].address + values.offset * 4
