"""The per-epoch split of partitions among workers: equal records per worker, nothing twice."""
import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfos.core.errors import ConfigError
from tfos.core.feed_plan import plan_epoch


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(0, 50), max_size=30), workers=st.integers(1, 8),
       epoch=st.integers(0, 5), seed=st.one_of(st.none(), st.integers(0, 3)))
def test_every_worker_gets_the_same_count_and_no_row_is_fed_twice(counts, workers, epoch, seed):
    plan = plan_epoch(counts, workers, epoch, seed)
    total = sum(counts)
    assert plan.per_worker == total // workers
    assert plan.dropped == total % workers < workers
    per_worker = collections.Counter()
    rows = set()
    for r in plan.ranges:
        assert 0 <= r.start < r.stop <= counts[r.partition]
        per_worker[r.worker] += len(r)
        for row in range(r.start, r.stop):
            assert (r.partition, row) not in rows
            rows.add((r.partition, row))
    assert all(per_worker[w] == plan.per_worker for w in range(workers) if plan.per_worker)
    assert set(per_worker) <= set(range(workers))
    assert len(rows) == total - plan.dropped


def test_uneven_partitions_are_cut_across_workers():
    plan = plan_epoch([10, 0, 3, 7], num_workers=2, seed=None)
    assert plan.per_worker == 10 and plan.dropped == 0
    assert [(r.partition, r.worker, r.start, r.stop) for r in plan.ranges] == [
        (0, 0, 0, 10), (2, 1, 0, 3), (3, 1, 0, 7)]


def test_the_remainder_is_the_tail_of_the_sequence():
    plan = plan_epoch([5, 4], num_workers=2, seed=None)
    assert (plan.per_worker, plan.dropped) == (4, 1)
    assert [(r.partition, r.worker, r.start, r.stop) for r in plan.ranges] == [
        (0, 0, 0, 4), (0, 1, 4, 5), (1, 1, 0, 3)]


def test_the_assignment_changes_between_epochs_but_not_between_runs():
    counts = [10] * 8
    plans = [plan_epoch(counts, 2, epoch, seed=7) for epoch in range(4)]
    assert len({p.ranges for p in plans}) > 1
    assert plan_epoch(counts, 2, 3, seed=7) == plans[3]


def test_fewer_rows_than_workers_feeds_nothing():
    plan = plan_epoch([1, 0, 1], num_workers=3)
    assert (plan.per_worker, plan.dropped, plan.ranges) == (0, 2, ())


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="num_workers=0"):
        plan_epoch([1], 0)
    with pytest.raises(ConfigError, match=">= 0"):
        plan_epoch([1, -1], 1)
