"""bench/lr_sweep.py's bookkeeping: a sweep point is one config on one set of task orders."""

from __future__ import annotations

from bench.lr_sweep import point_key, reusable


def _record(digest: str, orders: list[str]) -> dict:
    return {"run_info": {"config_sha256": digest, "orders": {name: ["a", "b"] for name in orders}}}


def test_a_results_file_is_reused_only_for_the_same_config_on_the_same_orders() -> None:
    assert reusable(_record("abc", ["order1"]), "abc", ["order1"])
    assert not reusable(_record("abc", ["order1"]), "abc", ["order1", "order2", "order3"])
    assert not reusable(_record("abc", ["order1", "order2"]), "abc", ["order1"])
    assert not reusable(_record("abc", ["order1"]), "abd", ["order1"])


def test_points_on_different_orders_are_different_points() -> None:
    assert point_key("abc", ["order1"]) != point_key("abc", ["order1", "order2"])
    assert point_key("abc", ["order1"]) == point_key("abc", ["order1"])
