"""DataFeed over a FeedQueue: TFoS-style rows, results routed back in order, tf.data epochs."""
import threading

import numpy as np
import pytest

from tfos.core.errors import FeedUsageError
from tfos.node.data_feed import DataFeed
from tfos.node.feed_queue import Chunk, FeedQueue


def feeding(epochs, replies=None, row_width=3):
    """A queue holding ``epochs``: a list of lists of chunk sizes, values counting up."""
    q = FeedQueue("train", 1 << 24)
    value = 0
    for epoch, sizes in enumerate(epochs):
        q.announce_epoch(epoch, sum(sizes))
        for size in sizes:
            x = np.arange(value, value + size, dtype=np.float32)
            image = np.repeat(x[:, None], row_width, axis=1)
            reply = None if replies is None else (lambda cols, i=len(replies): replies.append(cols))
            q.put(Chunk({"image": image, "label": x.astype(np.int64)}, size, epoch,
                        image.nbytes + x.nbytes * 2, reply))
            value += size
    q.end_of_data(len(epochs) - 1)
    return q


def test_next_batch_returns_rows_and_should_stop_at_the_end():
    feed = DataFeed(feeding([[3, 2]]))
    rows = feed.next_batch(4)
    assert len(rows) == 4 and rows[3][1] == 3 and list(rows[3][0]) == [3.0] * 3
    assert not feed.should_stop()
    assert [r[1] for r in feed.next_batch(4)] == [4]   # the last row: the feed is over
    assert feed.should_stop()
    assert feed.next_batch(4) == []


def put_rows(q: FeedQueue, start: int, size: int, epoch: int = 0) -> None:
    x = np.arange(start, start + size, dtype=np.float32)
    q.put(Chunk({"x": x}, size, epoch, x.nbytes))


def test_a_training_batch_waits_for_all_its_rows_an_inference_batch_does_not():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 10)
    put_rows(q, 0, 3)
    taken = []
    reader = threading.Thread(target=lambda: taken.append(DataFeed(q).next_batch(5)))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()          # 3 of its 5 rows came: it waits (TensorFlowOnSpark's way)
    put_rows(q, 3, 7)
    reader.join(5)
    assert [row[0] for row in taken[0]] == [0, 1, 2, 3, 4]
    q = FeedQueue("predict", 1 << 20)
    q.announce_epoch(0, 10)
    put_rows(q, 0, 3)
    assert len(DataFeed(q, train_mode=False).next_batch(5)) == 3   # results are awaited


def test_input_mapping_gives_tensor_names_to_columns():
    feed = DataFeed(feeding([[4]]), input_mapping={"image": "x", "label": "y"})
    batch = feed.next_batch(2)
    assert set(batch) == {"x", "y"} and batch["x"].shape == (2, 3)


def test_results_go_back_to_each_chunk_in_order():
    replies = []
    feed = DataFeed(feeding([[3, 3]], replies=replies), train_mode=False)
    rows = feed.next_batch(4)                       # 3 rows of chunk 0, 1 row of chunk 1
    feed.batch_results([r[1] * 10 for r in rows])
    rows = feed.next_batch(4)
    feed.batch_results([r[1] * 10 for r in rows])
    assert [list(r["0"]) for r in replies] == [[0, 10, 20], [30], [40, 50]]


def test_a_wrong_number_of_results_is_refused():
    feed = DataFeed(feeding([[3]], replies=[]), train_mode=False)
    feed.next_batch(3)
    with pytest.raises(FeedUsageError, match=r"got \[2\] results for 3 rows"):
        feed.batch_results([1, 2])


def test_terminate_stops_the_feed_and_calls_back():
    called = threading.Event()
    feed = DataFeed(feeding([[3]]), on_terminate=called.set)
    feed.terminate()
    assert feed.should_stop() and called.is_set() and feed.next_batch(1) == []


def test_dataset_gives_equal_epochs_to_keras_fit():
    import tensorflow as tf
    feed = DataFeed(feeding([[7, 5], [6, 6]], row_width=4))
    dataset = feed.dataset(batch_size=5, columns=["image", "label"])
    epoch0 = [(x.shape[0], int(y[0])) for x, y in dataset]
    epoch1 = [(x.shape[0], int(y[0])) for x, y in dataset]
    assert epoch0 == [(5, 0), (5, 5), (2, 10)]
    assert epoch1 == [(5, 12), (5, 17), (2, 22)]
    assert list(dataset) == []     # the feed is over

    feed = DataFeed(feeding([[32], [32]], row_width=4))
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(feed.dataset(8, ["image", "label"]), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_dataset_batches_are_whole_and_in_order_across_its_blocks_of_batches():
    # 100 rows, batches of 8: TensorFlow gets blocks of BLOCK_BATCHES batches (64 rows) and
    # slices them; the batches are the same as one at a time, the last one short.
    feed = DataFeed(feeding([[30, 30, 40]], row_width=2))
    labels = [[int(v) for v in y] for y in feed.dataset(8, ["label"])]   # one column: tensors
    assert [len(b) for b in labels] == [8] * 12 + [4]
    assert [v for b in labels for v in b] == list(range(100))


def test_dataset_with_unknown_columns_names_them():
    with pytest.raises(FeedUsageError, match=r"no columns \['pixels'\]"):
        DataFeed(feeding([[2]])).dataset(2, columns=["pixels"])


def test_dataset_with_an_input_mapping_names_columns_by_their_tensors():
    feed = DataFeed(feeding([[3, 2]]), input_mapping={"image": "x", "label": "y_"})
    ((x, y),) = [(x.numpy(), y.numpy()) for x, y in feed.dataset(5, ["x", "y_"])]
    assert x.shape == (5, 3) and list(y) == [0, 1, 2, 3, 4]
    with pytest.raises(FeedUsageError, match=r"no tensors \['image'\]; it has \['x', 'y_'\]"):
        DataFeed(feeding([[2]]), input_mapping={"image": "x", "label": "y_"}).dataset(
            2, ["image"])


def test_dataset_turns_tensorflow_auto_sharding_off():
    import tensorflow as tf
    dataset = DataFeed(feeding([[4]])).dataset(2)
    # The feed already split the data among workers: sharding again would drop most of it.
    assert dataset.options().experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.OFF


def test_input_mapping_of_unnamed_rows_follows_the_sorted_column_names():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 2)
    x, y = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([5.0, 6.0])
    q.put(Chunk({"0": x, "1": y}, 2, 0, x.nbytes + y.nbytes))   # an RDD of (features, label)
    q.end_of_data(0)
    # TensorFlowOnSpark's pipeline fed the columns in sorted order: "features" < "label".
    feed = DataFeed(q, input_mapping={"label": "y_", "features": "x_"})
    batch = feed.next_batch(2)
    np.testing.assert_array_equal(batch["x_"], x)
    np.testing.assert_array_equal(batch["y_"], y)
    assert not feed.done_feeding
    assert feed.next_batch(2) == {} and feed.done_feeding
    with pytest.raises(FeedUsageError, match="names columns the feed does not have"):
        DataFeed(feeding([[2]]), input_mapping={"a": "x"}).next_batch(1)


def test_dataset_joins_large_chunks_in_reused_memory_tensorflow_can_share():
    # Chunks of 100 rows of 784 floats (313 KB) are pooled; blocks of 8 batches of 64 rows
    # span several of them. Across two epochs the batches hold every row once, in order.
    feed = DataFeed(feeding([[100] * 6, [100] * 6], row_width=784))
    dataset = feed.dataset(64, ["image", "label"])
    for epoch in range(2):
        seen = []
        for image, label in dataset:
            assert np.array_equal(image.numpy()[:, 0], label.numpy())
            assert np.all(image.numpy() == image.numpy()[:, :1])
            seen.extend(label.numpy().tolist())
        assert seen == list(range(600 * epoch, 600 * (epoch + 1)))


def test_rows_joined_from_several_chunks_come_aligned_from_the_pool():
    from tfos.node.chunk_memory import ALIGN, ChunkMemory
    from tfos.node.data_feed import _assemble

    def chunk(start, rows, label_dtype):
        image = np.full((rows, 784), start, np.float32)
        return Chunk({"image": image, "label": np.arange(start, start + rows,
                                                         dtype=label_dtype)}, rows, 0, 0)

    memory = ChunkMemory(64 << 20)
    pieces = [(chunk(0, 100, np.int32), 10, 100), (chunk(100, 100, np.int64), 0, 50)]
    for _ in range(3):
        joined = _assemble(pieces, memory)
        assert joined["image"].shape == (140, 784) and joined["image"][89, 0] == 0
        assert joined["image"][90, 0] == 100
        assert joined["label"].dtype == np.int64    # as np.concatenate promotes
        assert joined["label"].tolist() == list(range(10, 150))
        assert joined["image"].ctypes.data % ALIGN == 0
        del joined
    # The image column (438 KB) is pooled and its buffer reused; the labels are too small.
    assert 140 * 784 * 4 <= memory.pooled_bytes < 2 * 140 * 784 * 4
