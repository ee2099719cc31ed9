"""Rows read from PySpark's pickled batches (arrays kept as bytes until a column joins them)
give exactly the columns, and the errors, that the rows PySpark unpickles itself give."""
import collections
import io

import numpy as np
import pytest
from pyspark.serializers import AutoBatchedSerializer, CloudPickleSerializer
from pyspark.sql import Row

from tfos import FeedDataError
from tfos.core import pickled_rows
from tfos.core.feed_rows import rows_to_columns
from tfos.executor.feed_task import _PickledRowSource

Point = collections.namedtuple("Point", "x label")
rng = np.random.default_rng(5)


def frames(rows) -> list[bytes]:
    """The rows as PySpark stores a cached RDD's partition: pickled batches, framed."""
    stream = io.BytesIO()
    AutoBatchedSerializer(CloudPickleSerializer()).dump_stream(iter(rows), stream)
    stream.seek(0)
    out = []
    while header := stream.read(4):
        out.append(stream.read(int.from_bytes(header, "big")))
    return out


def columns_both_ways(rows, chunk: int = 7):
    """The columns of ``rows`` in chunks, read from their pickled batches and as PySpark
    gives them (unpickled whole), side by side."""
    source = _PickledRowSource(frames(rows), partition=3)
    ours, theirs, start = [], [], 0
    while True:
        raw, n = source.take_raw(chunk)
        if not n:
            return ours, theirs
        ours.append(source.columns(raw))
        theirs.append(rows_to_columns(rows[start:start + n], 3, start))
        start += n


LAYOUTS = {
    "tuples of an image and a label": [(rng.random(784, dtype=np.float32), i % 10)
                                       for i in range(40)],
    "bare arrays": [rng.random(5) for _ in range(20)],
    "2-D arrays in C order": [(rng.random((4, 3)), i) for i in range(20)],
    "2-D arrays in Fortran order": [(np.asfortranarray(rng.random((4, 3))), i)
                                    for i in range(20)],
    "arrays of different dtypes in a column": [(np.arange(3, dtype=np.int32 if i % 2 else
                                                          np.int64), i) for i in range(20)],
    "dicts": [{"x": rng.random(3).astype(np.float32), "y": float(i)} for i in range(20)],
    "Spark Rows": [Row(x=rng.random(3), label=i) for i in range(20)],
    "namedtuples": [Point(rng.random(3), i) for i in range(20)],
    "a list of arrays as one field": [([rng.random(2), rng.random(2)], i) for i in range(20)],
    "lists in some rows, arrays in others": [(rng.random(2) if i % 3 else [0.5, 1.5], i)
                                             for i in range(20)],
    "non-contiguous arrays": [(rng.random(8)[::2], i) for i in range(20)],
    "no arrays": [(float(i), str(i)) for i in range(20)],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_columns_are_those_of_the_rows_pyspark_unpickles(layout):
    ours, theirs = columns_both_ways(LAYOUTS[layout])
    assert len(ours) == len(theirs) > 1
    for mine, expected in zip(ours, theirs):
        assert list(mine) == list(expected)
        for name in expected:
            assert mine[name].dtype == expected[name].dtype, name
            np.testing.assert_array_equal(mine[name], expected[name])


def test_a_column_of_alike_arrays_is_joined_from_their_pickled_bytes():
    rows = LAYOUTS["tuples of an image and a label"]
    unpickled = pickled_rows.unpickle_batch(frames(rows)[0])
    assert isinstance(unpickled[0][0], pickled_rows.PickledArray)   # not an ndarray yet
    column = pickled_rows.pickled_column([row[0] for row in unpickled])
    np.testing.assert_array_equal(column, np.stack([row[0] for row in rows[:len(unpickled)]]))


@pytest.mark.parametrize("layout", ["tuples of an image and a label", "bare arrays", "dicts",
                                    "Spark Rows", "2-D arrays in Fortran order"])
def test_arrays_that_are_rows_or_fields_stay_pickled_until_a_column_joins_them(layout):
    source = _PickledRowSource(frames(LAYOUTS[layout]), partition=0)
    raw, _ = source.take_raw(5)
    row = raw[0]
    field = row if not isinstance(row, (tuple, dict)) else \
        next(iter(row.values())) if isinstance(row, dict) else row[0]
    assert isinstance(field, pickled_rows.PickledArray)


def test_a_partition_whose_first_row_nests_arrays_is_unpickled_as_pyspark_would():
    rows = LAYOUTS["a list of arrays as one field"]
    source = _PickledRowSource(frames(rows), partition=0)
    raw, _ = source.take_raw(5)
    assert isinstance(raw[0][0][0], np.ndarray)
    assert not pickled_rows.shallow(pickled_rows.unpickle_batch(frames(rows)[0])[0])


@pytest.mark.parametrize("rows, match", [
    ([(np.zeros(3), 1), (np.zeros(2), 0)], r"partition 3, row 1, column '0': value array"),
    ([(np.zeros(3), 1), (None, 0)], r"partition 3, row 1, column '0': value is None"),
    ([(np.zeros(3), 1), (np.zeros(3), 2, 3)], r"partition 3, row 1: expected the fields"),
])
def test_bad_rows_name_partition_row_and_column(rows, match):
    source = _PickledRowSource(frames(rows), partition=3)
    raw, _ = source.take_raw(10)
    with pytest.raises(FeedDataError, match=match):
        source.columns(raw)
