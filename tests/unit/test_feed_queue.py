"""The bounded, epoch-aware feed buffer: epochs end exactly, producers block when it is full."""
import threading
import time

import numpy as np
import pytest

from tfos.core.errors import FeedError
from tfos.node.feed_queue import Chunk, FeedQueue


def chunk(epoch, rows, start=0, row_bytes=8, floor=None):
    values = np.arange(start, start + rows, dtype=np.int64)
    return Chunk({"x": values}, rows, epoch, rows * row_bytes, floor=floor)


def rows_of(pieces):
    return [int(v) for c, a, b in pieces for v in c.columns["x"][a:b]]


def test_batches_stop_at_the_epoch_boundary_then_signal_its_end():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 5)
    q.announce_epoch(1, 3)
    q.put(chunk(0, 3, 0))
    q.put(chunk(0, 2, 3))
    q.put(chunk(1, 3, 100))
    q.end_of_data(1)
    assert rows_of(q.take(4, within_epoch=True)) == [0, 1, 2, 3]
    assert rows_of(q.take(4, within_epoch=True)) == [4]
    assert q.take(4, within_epoch=True) == []          # end of epoch 0
    assert rows_of(q.take(4, within_epoch=True)) == [100, 101, 102]
    assert q.take(4, within_epoch=True) == []          # end of epoch 1
    assert q.take(4, within_epoch=True) is None        # end of data
    assert q.done


def test_next_batch_style_takes_cross_epochs():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 2)
    q.announce_epoch(1, 2)
    q.put(chunk(0, 2, 0))
    q.put(chunk(1, 2, 10))
    q.end_of_data(1)
    assert rows_of(q.take(3, within_epoch=False)) == [0, 1, 10]
    assert rows_of(q.take(3, within_epoch=False)) == [11]
    assert q.take(3, within_epoch=False) is None


def test_an_epoch_without_rows_for_this_worker_ends_at_once():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 0)
    assert q.take(8, within_epoch=True) == []


def test_a_full_buffer_blocks_the_producer_until_rows_are_taken():
    q = FeedQueue("train", capacity_bytes=80)
    q.announce_epoch(0, 20)
    q.put(chunk(0, 10, 0))
    put_done = threading.Event()
    threading.Thread(target=lambda: (q.put(chunk(0, 10, 10)), put_done.set()),
                     daemon=True).start()
    assert not put_done.wait(0.3), "the second chunk must wait for room"
    assert rows_of(q.take(10, within_epoch=True)) == list(range(10))
    assert put_done.wait(5)
    assert rows_of(q.take(10, within_epoch=True)) == list(range(10, 20))


def test_a_chunk_larger_than_the_buffer_is_refused_with_the_sizes():
    with pytest.raises(FeedError, match="800 bytes, more than the feed buffer of 100"):
        FeedQueue("big", 100).put(chunk(0, 100))


def test_waits_have_deadlines_that_say_what_is_missing():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 10)
    q.put(chunk(0, 4))
    start = time.monotonic()
    with pytest.raises(FeedError, match="epoch 0: 4 of 10 records received"):
        q.take(8, within_epoch=True, timeout=0.2)
    assert time.monotonic() - start < 2
    full = FeedQueue("full", 8)
    full.put(chunk(0, 1))
    with pytest.raises(FeedError, match="consumed nothing"):
        full.put(chunk(0, 1), timeout=0.2)


def test_terminate_releases_a_blocked_producer_and_ends_the_feed():
    q = FeedQueue("train", 8)
    q.put(chunk(0, 1))
    blocked = threading.Thread(target=q.put, args=(chunk(0, 1),), daemon=True)
    blocked.start()
    q.terminate()
    blocked.join(5)
    assert not blocked.is_alive()
    assert q.take(1, within_epoch=True) is None and q.done


def test_a_cut_epoch_ends_with_what_arrived_and_drops_stragglers():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 10)
    q.put(chunk(0, 3, 0))
    q.cut_epoch(0)                   # its feed job failed after 3 of 10 records
    q.put(chunk(0, 2, 3))            # a feeder that was still sending: dropped
    q.announce_epoch(1, 2)
    q.put(chunk(1, 2, 100))
    q.end_of_data(1)
    assert rows_of(q.take(5, within_epoch=True)) == [0, 1, 2]
    assert q.take(5, within_epoch=True) == []
    assert rows_of(q.take(5, within_epoch=True)) == [100, 101]
    assert q.take(5, within_epoch=True) == []
    assert q.take(5, within_epoch=True) is None
    q.put(chunk(0, 1, 7))            # and one of an epoch long over takes no buffer
    assert q.take(5, within_epoch=True) is None


def test_a_feed_cut_before_its_records_came_owes_the_reader_nothing():
    q = FeedQueue("train", 1 << 20)
    q.announce_epoch(0, 10)
    assert q.unread                       # records are due: returning now would lose them
    q.cut_epoch(0)                        # the feed job failed before any reached this node
    assert not q.unread
    q.announce_epoch(1, 4)
    q.put(Chunk({"x": np.arange(3)}, 3, 1, 24))
    q.cut_epoch(1)                        # three arrived before the cut: they are owed
    assert q.unread


def test_before_its_end_an_epoch_gives_only_the_rows_every_worker_is_sure_to_get():
    q = FeedQueue("input", 1 << 20)
    q.announce_epoch(0, None)                # its length is told at its end
    q.put(chunk(0, 5, 0, floor=3))
    assert rows_of(q.take(10, within_epoch=False)) == [0, 1, 2]     # rows 3, 4 are held
    with pytest.raises(FeedError, match="no data arrived"):
        q.take(10, within_epoch=True, timeout=0.05)
    assert q.stalled_for() == (0.0, 0)      # held rows are not a reader that is late
    q.put(chunk(0, 4, 5, floor=6))          # a later grant raised the floor
    assert rows_of(q.take(10, within_epoch=False)) == [3, 4, 5]
    assert q.epoch_counts(0) == (9, 6)
    # A reader waiting for a full batch gets the rest once the epoch's length is known: every
    # worker keeps 7, so rows 7 and 8 are dropped.
    waiting = threading.Timer(0.1, q.end_epoch, args=(0, 7))
    waiting.start()
    assert rows_of(q.take(10, within_epoch=True, timeout=10)) == [6]
    assert q.take(10, within_epoch=True) == []
    assert q.epoch_counts(0) == (7, 7)       # over: its length
    assert q.stalled_for() == (0.0, 0)       # the dropped rows left the buffer
    q.put(chunk(1, 2, 100))                  # one worker: nothing is held
    assert rows_of(q.take(10, within_epoch=False)) == [100, 101]


def test_an_end_below_what_the_reader_took_or_above_what_arrived_is_refused():
    q = FeedQueue("input", 1 << 20)
    q.announce_epoch(0, None)
    q.put(chunk(0, 5, 0, floor=4))
    q.take(4, within_epoch=True)
    with pytest.raises(FeedError, match="already took 4 rows, more than the 3 every worker"):
        q.end_epoch(0, 3)
    with pytest.raises(FeedError, match="5 rows arrived, fewer than the 6"):
        q.end_epoch(0, 6)


def test_epochs_this_node_never_saw_end_with_the_data_too():
    # An inference feed whose rows all went to other nodes: this node's queue saw no epoch at
    # all (or was opened after the driver's end_all). Its reader must stop, not wait forever.
    q = FeedQueue("predict", 1 << 20)
    q.end_of_data(1)
    assert q.take(4, within_epoch=False, timeout=5) is None
    assert q.done

    q = FeedQueue("predict", 1 << 20)
    q.put(chunk(1, 2, 7))            # the second inference pass sent rows here, the first none
    q.end_of_data(1)
    assert rows_of(q.take(4, within_epoch=False, timeout=5)) == [7, 8]
    assert q.take(4, within_epoch=False, timeout=5) is None
