"""The tf.data source of DataFeed.dataset(): traced once per kind of block, callables dropped
with their datasets."""
import gc

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tfos.node.block_dataset import BlockSources  # noqa: E402


def specs(dtype=tf.float32, width=3):
    return (tf.TensorSpec((None, None, width), dtype), tf.TensorSpec((None, None), tf.int64))


def blocks_of(values, batch=2, width=3, dtype=np.float32):
    """A callable yielding ``values`` as blocks of two batches, then a short last batch."""
    def blocks():
        x = np.repeat(np.asarray(values, dtype)[:, None], width, axis=1)
        y = np.asarray(values, np.int64)
        whole = len(values) // (2 * batch) * 2 * batch
        for start in range(0, whole, 2 * batch):
            yield (x[start:start + 2 * batch].reshape(2, batch, width),
                   y[start:start + 2 * batch].reshape(2, batch))
        if whole < len(values):
            yield x[whole:][None], y[whole:][None]
    return blocks


def test_batches_come_in_order_with_the_short_last_one_and_each_iterator_starts_over():
    sources = BlockSources()
    dataset = sources.dataset(specs(), blocks_of(list(range(9))))
    assert dataset.element_spec == (tf.TensorSpec((None, 3), tf.float32),
                                    tf.TensorSpec((None,), tf.int64))
    for _ in range(2):
        labels = [y.numpy().tolist() for _, y in dataset]
        assert labels == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    x, _ = next(iter(dataset))
    assert x.numpy().tolist() == [[0.0] * 3, [1.0] * 3]


def test_one_column_gives_tensors_not_tuples():
    sources = BlockSources()

    def blocks():
        yield (np.arange(4, dtype=np.int32).reshape(2, 2),)
    dataset = sources.dataset((tf.TensorSpec((None, None), tf.int32),), blocks)
    assert [b.numpy().tolist() for b in dataset] == [[0, 1], [2, 3]]


def test_functions_are_traced_once_per_kind_of_block():
    sources = BlockSources()
    first = sources.dataset(specs(), blocks_of([1, 2, 3, 4]))
    again = sources.dataset(specs(), blocks_of([5, 6, 7, 8]))
    assert sources.traced == 1
    wider = sources.dataset(specs(width=5), blocks_of([9, 10], width=5))
    doubles = sources.dataset(specs(tf.float64), blocks_of([11], dtype=np.float64))
    assert sources.traced == 3
    assert [int(y[0]) for _, y in again] == [5, 7]         # each dataset reads its own callable
    assert [int(y[0]) for _, y in first] == [1, 3]
    assert [x.shape[1] for x, _ in wider] == [5]
    assert [x.dtype for x, _ in doubles] == [tf.float64]


def test_callables_and_generators_are_dropped_with_their_datasets_and_iterators():
    sources = BlockSources()
    dataset = sources.dataset(specs(), blocks_of(list(range(8))))
    iterator = iter(dataset)
    next(iterator)
    assert sources.live() == (1, 1)
    del iterator
    gc.collect()
    assert sources.live() == (1, 0)
    del dataset
    gc.collect()
    assert sources.live() == (0, 0)


def test_an_error_in_the_callable_reaches_the_reader():
    sources = BlockSources()

    def blocks():
        yield np.zeros((1, 2, 3), np.float32), np.zeros((1, 2), np.int64)
        raise ValueError("partition 3 is broken")
    with pytest.raises(tf.errors.OpError, match="partition 3 is broken"):
        list(sources.dataset(specs(), blocks))

