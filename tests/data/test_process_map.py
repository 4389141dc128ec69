"""Tests for moejax/data/process_map.py: the ordered, bounded map over worker processes."""

import pytest

from moejax.data.process_map import ordered_map

FAIL_AT = 7


def _offset(base: int) -> int:  # the per-process state
    return base


def _add_or_fail(offset: int, item: int) -> int:
    if item == FAIL_AT:
        raise KeyError(f"item {item}")
    return item + offset


class _Counting:
    """Items 0..n-1 that remember how many were taken."""

    def __init__(self, n: int):
        self.taken, self._n = 0, n

    def __iter__(self):
        for item in range(self._n):
            self.taken += 1
            yield item


def test_in_process_map_keeps_order_and_is_lazy():
    items = _Counting(5)
    results = ordered_map(_add_or_fail, items, setup=_offset, setup_args=(100,))
    assert next(results) == (0, 100) and items.taken == 1
    assert list(results) == [(i, i + 100) for i in range(1, 5)]
    with pytest.raises(ValueError, match="workers=-1"):
        next(ordered_map(_add_or_fail, [], setup=_offset, workers=-1))


def test_worker_processes_keep_order_bound_the_items_out_and_raise_the_workers_error():
    """The one test here that starts processes: two workers, at most three items out."""
    items = _Counting(20)
    seen = []
    with pytest.raises(KeyError, match=f"item {FAIL_AT}"):
        for item, result in ordered_map(_add_or_fail, items, setup=_offset, setup_args=(10,),
                                        workers=2, in_flight=3):
            assert items.taken - len(seen) <= 3
            seen.append((item, result))
    assert seen == [(i, i + 10) for i in range(FAIL_AT)]
    assert items.taken <= FAIL_AT + 3
