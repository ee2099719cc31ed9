"""Feed tasks against a real feed server over shm and tcp, without Spark."""
import threading

import numpy as np
import pytest

from tfos.data_feed import DataFeed
from tfos.feed_plan import plan_epoch
from tfos.feed_server import FeedServer
from tfos.feed_task import FeedSpec, NodeEndpoint, feed_training_partition

SECRET = b"s" * 32


@pytest.fixture(params=["shm", "tcp"])
def node(request, tmp_path):
    server = FeedServer(["tcp://127.0.0.1:0", f"shm://{tmp_path}/feed.sock"], SECRET,
                        buffer_bytes=32 << 20)
    uris = tuple(u for u in server.addresses if u.startswith(request.param))
    yield server, NodeEndpoint("worker:0@127.0.0.1", uris)
    server.close()


def consume(server, out):
    feed = DataFeed(server.queue("input"), timeout=60)
    while (batch := feed.next_columns(7, within_epoch=True)):
        out.extend(int(i) for i in batch["1"])


def test_records_larger_than_a_chunk_are_sent_in_smaller_messages(node):
    server, endpoint = node
    rows = 100   # 1 MiB each: 100 MiB in all, more than the 64 MiB ring and the 32 MiB buffer
    plan = plan_epoch([rows], 1)
    server.queue("input").announce_epoch(0, rows)
    received = []
    reader = threading.Thread(target=consume, args=(server, received), daemon=True)
    reader.start()
    spec = FeedSpec("input", 0, (endpoint,), SECRET, plan, timeout=60)
    data = ((np.full(1 << 18, i, np.float32), i) for i in range(rows))
    assert feed_training_partition(spec, 0, data) == rows
    reader.join(60)
    assert received == list(range(rows))


def test_small_records_still_travel_in_full_chunks(node):
    server, endpoint = node
    plan = plan_epoch([5000], 1)
    server.queue("input").announce_epoch(0, 5000)
    spec = FeedSpec("input", 0, (endpoint,), SECRET, plan, timeout=60)
    assert feed_training_partition(spec, 0, ((np.zeros(4, np.float32), i)
                                             for i in range(5000))) == 5000
    chunks = server.queue("input").take(5000, within_epoch=True, timeout=10)
    assert [stop - start for _, start, stop in chunks][:3] == [1, 1024, 1024]
