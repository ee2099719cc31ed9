"""ChunkMemory: the node's reused chunk buffers never hand out memory something still reads."""
import numpy as np

from tfos.node.chunk_memory import MIN_POOLED_BYTES, ChunkMemory

ROWS, WIDTH = 400, 784     # 1.2 MiB of float32, well above MIN_POOLED_BYTES


def chunk(value: float) -> np.ndarray:
    return np.full((ROWS, WIDTH), value, np.float32)


def test_a_copy_has_the_values_dtype_and_shape_and_is_its_own():
    memory = ChunkMemory(64 << 20)
    source = np.arange(ROWS * WIDTH, dtype=np.float32).reshape(ROWS, WIDTH)
    copy = memory.copy(source)
    assert copy.dtype == source.dtype and copy.shape == source.shape
    np.testing.assert_array_equal(copy, source)
    source[:] = -1
    assert copy[0, 1] == 1 and memory.pooled_bytes >= copy.nbytes


def test_memory_is_reused_only_once_nothing_reads_it():
    memory = ChunkMemory(64 << 20)
    first = memory.copy(chunk(1))
    view = first[10:20]          # map_fun holding a batch sliced from the chunk
    del first
    second = memory.copy(chunk(2))
    assert np.all(view == 1), "a buffer still viewed was handed out again"
    assert memory.pooled_bytes >= 2 * second.nbytes
    del view
    third = memory.copy(chunk(3))
    assert memory.pooled_bytes < 3 * third.nbytes, "a free buffer was not reused"
    assert np.all(second == 2) and np.all(third == 3)


def test_beyond_its_limit_copies_are_ordinary_arrays():
    one = chunk(0).nbytes
    memory = ChunkMemory(2 * one + (64 << 10))
    kept = [memory.copy(chunk(i)) for i in range(5)]
    assert memory.pooled_bytes <= 2 * one + (64 << 10)
    assert [float(c[0, 0]) for c in kept] == [0, 1, 2, 3, 4]


def test_small_columns_and_released_pools_keep_nothing():
    memory = ChunkMemory(64 << 20)
    labels = memory.copy(np.arange(MIN_POOLED_BYTES // 16, dtype=np.int64))
    assert memory.pooled_bytes == 0 and labels[-1] == MIN_POOLED_BYTES // 16 - 1
    held = memory.copy(chunk(5))
    memory.release()
    assert memory.pooled_bytes == 0 and np.all(held == 5)


def test_memory_tensorflow_shares_is_not_reused_while_the_tensor_lives():
    """tf.data's generators take a 64-byte-aligned numpy array without copying it (the tensor
    keeps the array alive): DataFeed.dataset hands them views of the node's chunks."""
    import pytest
    tf = pytest.importorskip("tensorflow")
    memory = ChunkMemory(64 << 20)
    held = [memory.copy(np.ones(1 << 20, np.uint8))]     # the node's chunk column
    start = -held[0].ctypes.data % 64

    def rows():
        yield held[0][start:start + 4096]

    dataset = tf.data.Dataset.from_generator(
        rows, output_signature=tf.TensorSpec((4096,), tf.uint8))
    tensor = next(iter(dataset))
    held[0][start] = 5
    if int(tensor[0]) != 5:
        pytest.skip("this TensorFlow copied the array: no memory shared to protect")
    held[0][start] = 1
    held.clear()
    del dataset
    for value in (2, 3):
        memory.copy(np.full(1 << 20, value, np.uint8))
    assert int(tf.reduce_min(tensor)) == 1 and int(tf.reduce_max(tensor)) == 1


def test_a_column_of_python_objects_is_copied_outside_the_pool():
    memory = ChunkMemory(64 << 20)
    values = np.array([str(i) for i in range(MIN_POOLED_BYTES // 8)], dtype=object)
    copy = memory.copy(values)
    assert copy.dtype == object and list(copy[:3]) == ["0", "1", "2"]
    assert memory.pooled_bytes == 0


def test_arrays_start_where_tensorflow_takes_them_without_a_copy():
    from tfos.node.chunk_memory import ALIGN
    one = chunk(0).nbytes
    memory = ChunkMemory(2 * one + (64 << 10))
    kept = [memory.copy(chunk(i)) for i in range(4)]       # two pooled, two beyond the limit
    kept += [memory.empty((ROWS + i, WIDTH), np.float32) for i in range(1, 4)]
    assert [a.ctypes.data % ALIGN for a in kept] == [0] * len(kept)
