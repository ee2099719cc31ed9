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
