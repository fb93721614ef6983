"""bench/lr_sweep.py's bookkeeping: a sweep point is one config on one set of task orders."""

from __future__ import annotations

from bench.lr_sweep import GRIDS, next_value, point_key


def _points(aa_by_value: dict[float, float]) -> dict[float, dict]:
    return {v: {"value": v, "AA": aa, "forgetting": 0.0} for v, aa in aa_by_value.items()}


def test_the_sweep_runs_the_base_grid_then_extends_past_an_edge_until_the_score_turns_down() -> None:
    grid = GRIDS["lr"]  # 3e-4, 1e-3, 3e-3
    assert next_value([], {}, grid) == grid[0]
    interior = _points({3e-4: 0.3, 1e-3: 0.5, 3e-3: 0.4})
    assert next_value(list(interior), interior, grid) is None  # the best is inside: done
    rising = _points({3e-4: 0.3, 1e-3: 0.4, 3e-3: 0.5})
    assert next_value(list(rising), rising, grid) == 9e-3  # one ratio (x3) past the top edge
    turned = _points({3e-4: 0.3, 1e-3: 0.4, 3e-3: 0.5, 9e-3: 0.45})
    assert next_value(list(turned), turned, grid) is None
    falling = _points({3e-4: 0.5, 1e-3: 0.4, 3e-3: 0.3})
    assert next_value(list(falling), falling, grid) == 9e-5  # one ratio (1e-3 / 3e-4) below the bottom edge


def test_an_extension_stops_after_the_most_steps_a_side() -> None:
    grid = GRIDS["lr"]
    values = [3e-4, 1e-3, 3e-3, 9e-3, 2.7e-2, 8.1e-2]
    rising = _points({v: i / 10 for i, v in enumerate(values)})
    assert next_value(list(rising), rising, grid) is None


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
