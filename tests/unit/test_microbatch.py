"""How the learner cuts a batch into micro-batches: batch order, or sorted by length under a token budget."""

import numpy as np
import pytest

from cluster.algo.microbatch import plan


def test_without_a_budget_rows_stay_in_batch_order():
    parts = plan(np.array([5, 9, 2, 7, 3]), max_rows=2)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4]]


def test_a_budget_buckets_rows_by_length_and_covers_each_row_once():
    lengths = np.array([30, 6, 31, 5, 7, 29, 6, 32])
    parts = plan(lengths, max_rows=8, max_tokens=64)
    assert sorted(np.concatenate(parts).tolist()) == list(range(8))
    for p in parts:
        assert len(p) * lengths[p].max() <= 64
    # the short rows share micro-batches, the long ones are not padded beside them
    assert [sorted(p.tolist()) for p in parts] == [[1, 3, 4, 6], [0, 5], [2, 7]]
    padded = sum(len(p) * lengths[p].max() for p in parts)
    assert padded < 0.6 * len(lengths) * lengths.max()  # 152 padded tokens instead of 256


def test_a_row_longer_than_the_budget_runs_alone_and_max_rows_still_holds():
    parts = plan(np.array([3, 100, 3, 3, 3]), max_rows=2, max_tokens=10)
    assert [sorted(p.tolist()) for p in parts] == [[0, 2], [3, 4], [1]]


def test_groups_stay_whole_sorted_by_their_longest_row():
    lengths = np.array([4, 20, 5, 5, 21, 3])  # pairs (0, 1), (2, 3), (4, 5)
    parts = plan(lengths, max_rows=4, max_tokens=84, group_rows=2)
    assert [p.tolist() for p in parts] == [[2, 3, 0, 1], [4, 5]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": 2, "max_tokens": 0}, "max_tokens"),
        ({"max_rows": 2, "group_rows": 2}, "groups of 2"),
    ],
)
def test_bad_sizes_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(np.array([1, 2, 3]), **kwargs)
