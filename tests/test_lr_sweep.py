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


def test_the_table_marks_each_methods_best_final_aa() -> None:
    from pathlib import Path

    from bench.lr_sweep import markdown

    def point(method: str, value: float, aa: float) -> dict:
        return {"method": method, "knob": "train.lr", "value": value, "AA": aa, "BWT": 0.0, "forgetting": 0.0,
                "wall_s": 1.0, "orders": ["order1"]}

    result = {"rule": "max final AA", "points": [point("slm", 1e-3, 0.4), point("slm", 3e-3, 0.5),
                                                 point("o_lora", 1e-3, 0.6), point("o_lora", 5e-3, 0.3)]}
    rows = [line for line in markdown(result, Path("lr_sweep-x.json")).splitlines() if line.startswith("| `")]
    picked = [(r.split("|")[1].strip(), r.split("|")[3].strip()) for r in rows if r.rstrip(" |").endswith("yes")]
    assert picked == [("`slm`", "0.003"), ("`o_lora`", "0.001")]


def test_a_method_no_longer_registered_sorts_last_instead_of_failing() -> None:
    from pathlib import Path

    from bench.lr_sweep import markdown

    def point(method: str, value: float) -> dict:
        return {"method": method, "knob": "train.lr", "value": value, "AA": 0.5, "BWT": 0.0, "forgetting": None,
                "wall_s": 1.0, "orders": ["order1"]}

    result = {"rule": "max final AA", "points": [point("retired_method", 1e-3), point("slm", 1e-3)]}
    rows = [line for line in markdown(result, Path("lr_sweep-x.json")).splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`slm`", "`retired_method`"]
