"""The epoch ledger: workers kept level as chunks are granted, retries granted the same."""
import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfos.core.errors import ConfigError
from tfos.core.feed_plan import BALANCE_ROWS, EpochLedger

chunks = st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3000)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(workers=st.integers(1, 9), grants=chunks, balance=st.sampled_from([BALANCE_ROWS, 8]))
def test_workers_stay_level_and_every_row_goes_to_exactly_one_worker(workers, grants, balance):
    ledger = EpochLedger(workers, balance)
    offsets = collections.defaultdict(int)
    received = [0] * workers
    for partition, rows in grants:
        grant = ledger.grant(partition, offsets[partition], rows)
        offsets[partition] += rows
        assert sum(n for _, n in grant.pieces) == rows
        assert all(n > 0 and 0 <= w < workers for w, n in grant.pieces)
        assert len({w for w, _ in grant.pieces}) == len(grant.pieces)   # one piece per worker
        for worker, n in grant.pieces:
            received[worker] += n
        # After every grant: level within the margin, and the floor is what all will have.
        assert max(received) - min(received) <= balance
        assert grant.floor == min(received)
    assert received == ledger.granted and ledger.total == sum(r for _, r in grants)


def test_a_chunk_goes_whole_to_one_worker_while_that_keeps_them_level():
    ledger = EpochLedger(3, balance=8)
    assert ledger.grant(0, 0, 5).pieces == ((0, 5),)
    assert ledger.grant(1, 0, 5).pieces == ((1, 5),)       # the least-fed one next
    assert ledger.grant(0, 5, 3).pieces == ((2, 3),)
    # 1,000 rows would put one worker far ahead: they are cut to raise all to one level.
    grant = ledger.grant(1, 5, 1000)
    assert grant.pieces == ((0, 333), (1, 332), (2, 335))
    assert ledger.granted == [338, 337, 338] and grant.floor == 337


def test_a_retried_chunk_goes_to_the_same_workers_and_is_counted_once():
    ledger = EpochLedger(2)
    first = ledger.grant(3, 0, 100)
    ledger.grant(4, 0, 100)
    before = list(ledger.granted)
    again = ledger.grant(3, 0, 100)        # Spark's retry of partition 3's task
    assert again.pieces == first.pieces and ledger.granted == before
    # A retry whose chunk is shorter gets the first pieces cut to it; a longer one gets the
    # rest granted anew.
    assert sum(n for _, n in ledger.grant(3, 0, 30).pieces) == 30
    longer = ledger.grant(3, 0, 130)
    assert sum(n for _, n in longer.pieces) == 130 and ledger.total == 230


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="at least one worker"):
        EpochLedger(0)
    with pytest.raises(ConfigError, match="rows >= 1"):
        EpochLedger(2).grant(0, 0, 0)
