"""Feed tasks against a real feed server over shm and tcp, without Spark."""
import threading

import numpy as np
import pytest

from rdma import ConnectFailed, peer
from tfos import FeedDataError, FeedFailed
from tfos.executor.feed_task import FeedSpec, NodeEndpoint, feed_training_partition
from tfos.node.data_feed import DataFeed
from tfos.node.feed_server import FeedServer

SECRET = b"s" * 32


@pytest.fixture(params=["shm", "tcp"])
def node(request, tmp_path):
    server = FeedServer(["tcp://127.0.0.1:0", f"shm://{tmp_path}/feed.sock"], SECRET,
                        buffer_bytes=32 << 20)
    uris = tuple(peer.advertise(u, "127.0.0.1")
                 for u in server.addresses if u.startswith(request.param))
    yield server, NodeEndpoint("worker:0@127.0.0.1", uris)
    server.close()


def consume(server, out):
    feed = DataFeed(server.queue("input"), timeout=60)
    while (batch := feed.next_columns(7, within_epoch=True)):
        out.extend(int(i) for i in batch["1"])


def test_records_larger_than_a_chunk_are_sent_in_smaller_messages(node):
    server, endpoint = node
    rows = 100   # 1 MiB each: 100 MiB in all, more than the 8 MiB ring and the 32 MiB buffer
    server.queue("input").announce_epoch(0, rows)
    received = []
    reader = threading.Thread(target=consume, args=(server, received), daemon=True)
    reader.start()
    spec = FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60)
    data = ((np.full(1 << 18, i, np.float32), i) for i in range(rows))
    assert feed_training_partition(spec, 0, data) == rows
    reader.join(60)
    assert received == list(range(rows))


# Small records travel in full chunks of 1,024 rows. MNIST-shaped rows (3,144 bytes): 1,024
# are read and placed at once (3.2 MB, under the 4 MiB lease size) and sent as 333 + 333 + 333
# + 25 rows, so a new connection's ring and staging stay small (fresh memory costs more than
# the copy, see feed_sizes).
@pytest.mark.parametrize("width, rows, first_messages", [
    (4, 5000, [1, 1024, 1024]),
    (784, 3000, [1, 333, 333, 333, 25, 333]),
])
def test_rows_go_in_chunks_and_large_ones_in_messages_of_about_a_mebibyte(node, width, rows,
                                                                            first_messages):
    server, endpoint = node
    server.queue("input").announce_epoch(0, rows)
    spec = FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60)
    assert feed_training_partition(spec, 0, ((np.zeros(width, np.float32), i)
                                             for i in range(rows))) == rows
    chunks = server.queue("input").take(rows, within_epoch=True, timeout=10)
    sizes = [stop - start for _, start, stop in chunks]
    assert sizes[:len(first_messages)] == first_messages
    assert [int(i) for c, a, b in chunks for i in c.columns["1"][a:b]] == list(range(rows))


def test_a_record_larger_than_the_ring_still_goes_through(node):
    server, endpoint = node   # 32 MiB buffer: an 8 MiB shm ring
    rows = 3
    server.queue("input").announce_epoch(0, rows)
    received = []
    reader = threading.Thread(target=consume, args=(server, received), daemon=True)
    reader.start()
    spec = FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60, buffer_bytes=32 << 20)
    data = ((np.full(5 << 20, i, np.float32), i) for i in range(rows))   # 20 MiB each
    assert feed_training_partition(spec, 0, data) == rows
    reader.join(60)
    assert received == list(range(rows))


def test_a_record_larger_than_the_buffer_fails_naming_partition_row_and_sizes(node):
    server, endpoint = node
    spec = FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60, buffer_bytes=32 << 20)
    data = [(np.zeros(9 << 20, np.float32), i) for i in range(3)]     # 36 MiB each
    with pytest.raises(FeedDataError, match=r"partition 1, row 0: 37748\d+ bytes, more than the "
                                         r"feed buffer of node worker:0@127.0.0.1 \(33554432 "
                                         r"bytes\): raise feed_buffer_bytes"):
        feed_training_partition(spec, 1, data)
    # The node keeps serving the next feeder.
    server.queue("input").announce_epoch(0, 2)
    assert feed_training_partition(
        FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60,
                 buffer_bytes=32 << 20), 0, [(np.zeros(4, np.float32), i) for i in range(2)]) == 2


def test_messages_stay_within_a_small_buffer(tmp_path):
    buffer = 1 << 20   # 1 MiB: the default 4 MiB messages would not fit
    server = FeedServer(["tcp://127.0.0.1:0"], SECRET, buffer_bytes=buffer)
    try:
        endpoint = NodeEndpoint("worker:0@127.0.0.1", tuple(server.addresses))
        rows = 5000
        server.queue("input").announce_epoch(0, rows)
        received = []
        reader = threading.Thread(target=consume, args=(server, received), daemon=True)
        reader.start()
        spec = FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60, buffer_bytes=buffer)
        data = ((np.zeros(256, np.float32), i) for i in range(rows))   # ~1 KiB each
        assert feed_training_partition(spec, 0, data) == rows
        reader.join(60)
        assert received == list(range(rows))
    finally:
        server.close()


def test_shared_memory_only_for_a_node_on_this_host(tmp_path):
    sock = tmp_path / "feed.sock"
    sock.touch()
    tcp = "tcp://10.0.0.2:4000"

    def chosen(key, path=sock):
        return peer.choose((f"shm://{path}#{key}", tcp))

    assert chosen(peer.host_key()) == f"shm://{sock}"
    assert peer.advertise(f"shm://{sock}", "h") == f"shm://{sock}#{peer.host_key()}"
    # Another network namespace or kernel: the path may exist here (shared filesystem) but the
    # node is on another host.
    assert chosen("other-boot.4026531840") == tcp
    assert chosen(peer.host_key(), tmp_path / "gone.sock") == tcp
    assert peer.choose((f"shm://{sock}#{peer.host_key()}", tcp), same_host=False) == tcp
    with pytest.raises(ConnectFailed, match="no address reachable"):
        peer.choose((f"shm://{sock}#elsewhere",))
    endpoint = NodeEndpoint("worker:0@h", (f"shm://{sock}#elsewhere",))
    with pytest.raises(FeedFailed, match="no feed address reachable"):
        feed_training_partition(FeedSpec("input", 0, (endpoint,), SECRET, True),
                                0, [(np.zeros(1), 0)])


def test_a_retried_partition_is_taken_in_once(node):
    server, endpoint = node
    rows = 3000
    server.queue("input").announce_epoch(0, rows)
    spec = FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60, chunk_rows=100)

    def failing_source():
        for i in range(rows):
            if i == 1234:
                raise OSError("executor lost")
            yield np.zeros(2, np.float32), i

    with pytest.raises(OSError):
        feed_training_partition(spec, 0, failing_source())
    # Spark's retry sends the partition again from its first row.
    assert feed_training_partition(spec, 0, ((np.zeros(2, np.float32), i)
                                             for i in range(rows))) == rows
    received = []
    consume(server, received)
    assert received == list(range(rows))


def test_rows_of_another_shape_in_a_later_message_are_refused_by_the_node(node):
    server, endpoint = node
    server.queue("input").announce_epoch(0, 6)
    spec = FeedSpec("input", 0, (endpoint,), SECRET, True, timeout=60)
    assert feed_training_partition(spec, 0, [(np.zeros(4, np.float32), i) for i in range(3)]) == 3
    with pytest.raises(FeedFailed, match=r"feed 'input', partition 1, row 0: column '0' has "
                                         r"shape \(5,\) per row, but the feed's earlier rows"):
        feed_training_partition(spec, 1, [(np.zeros(5, np.float32), i) for i in range(3)])


def test_retry_bookkeeping_forgets_epochs_the_node_read_past(node):
    server, endpoint = node
    for epoch in range(3):
        server.queue("input").announce_epoch(epoch, 8)
        for partition in range(2):
            spec = FeedSpec("input", epoch, (endpoint,), SECRET, True,
                            timeout=60)
            assert feed_training_partition(spec, partition, [(np.zeros(2, np.float32), i)
                                                             for i in range(4)]) == 4
        received = []
        feed = DataFeed(server.queue("input"), timeout=60)
        while (batch := feed.next_columns(3, within_epoch=True)):
            received.extend(batch["1"])
        assert len(received) == 8
    # Epochs 0 and 1 are over: only the last epoch's partitions are remembered.
    assert sorted(server._taken) == [("input", 2)]


def test_inference_results_become_arrow_columns_from_their_buffers():
    import pyarrow as pa

    from tfos.executor.feed_task import _arrow_column
    assert _arrow_column(np.array([1.5, 2.5], np.float32), pa.float64()).to_pylist() == [1.5, 2.5]
    vectors = _arrow_column(np.arange(6, dtype=np.float32).reshape(3, 2), pa.list_(pa.float32()))
    assert vectors.type == pa.list_(pa.float32())
    assert vectors.to_pylist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert _arrow_column(np.array(["a", "bc"]), pa.string()).to_pylist() == ["a", "bc"]
    assert _arrow_column(np.array([7, 8]), pa.string()).to_pylist() == ["7", "8"]
    cube = np.arange(8).reshape(2, 2, 2)   # a matrix per row: through Python lists
    assert _arrow_column(cube, pa.list_(pa.list_(pa.int64()))).to_pylist() == cube.tolist()
