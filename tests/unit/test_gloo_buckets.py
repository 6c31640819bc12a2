"""How the gloo weight transfer groups parameters into flat buckets (both sides compute it from the metadata)."""

import pytest

from cluster.transfer.gloo import buckets


def test_consecutive_tensors_share_a_bucket_up_to_the_limit():
    # float32: 4 bytes per element; limit 40 bytes = 10 elements.
    shapes = [[2], [3], [5], [4], [1]]
    assert buckets(["float32"] * 5, shapes, limit=40) == [[0, 1, 2], [3, 4]]


def test_a_tensor_larger_than_the_limit_travels_alone():
    shapes = [[1], [100], [1], [1]]
    assert buckets(["float32"] * 4, shapes, limit=40) == [[0], [1], [2, 3]]


def test_a_bucket_holds_one_dtype():
    dtypes = ["float32", "float32", "bfloat16", "bfloat16", "float32"]
    assert buckets(dtypes, [[1]] * 5, limit=1 << 20) == [[0, 1], [2, 3], [4]]


def test_every_parameter_is_sent_once_in_order():
    shapes = [[7, 3], [11], [], [64, 64], [5, 5, 5]]
    plan = buckets(["float32"] * len(shapes), shapes, limit=600)
    assert [i for bucket in plan for i in bucket] == list(range(len(shapes)))
    assert all(bucket for bucket in plan)


@pytest.mark.parametrize("limit", [1, 4])
def test_no_empty_buckets_even_with_a_tiny_limit(limit):
    assert buckets(["float32"] * 3, [[2], [2], [2]], limit=limit) == [[0], [1], [2]]
