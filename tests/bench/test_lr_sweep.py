"""bench/lr_sweep.py's rule and bookkeeping: one grid rule for every method, points keyed by
config, code and task order."""

from __future__ import annotations

import pytest

from bench.lr_sweep import grid, next_value, override, pick, point_key
from pipeline.methods import METHOD_NAMES, get_method


def _points(aa_by_value: dict[float, float]) -> dict[float, dict]:
    return {v: {"value": v, "AA": aa, "forgetting": 0.0} for v, aa in aa_by_value.items()}


def test_the_sweep_runs_the_base_grid_then_extends_past_an_edge_until_the_score_turns_down() -> None:
    base = (1e-3, 5e-3, 2e-2)
    assert next_value([], {}, base) == base[0]
    interior = _points({1e-3: 0.3, 5e-3: 0.5, 2e-2: 0.4})
    assert next_value(list(interior), interior, base) is None  # the best is inside: done
    rising = _points({1e-3: 0.3, 5e-3: 0.4, 2e-2: 0.5})
    assert next_value(list(rising), rising, base) == 8e-2  # one ratio (x4) past the top edge
    turned = _points({1e-3: 0.3, 5e-3: 0.4, 2e-2: 0.5, 8e-2: 0.45})
    assert next_value(list(turned), turned, base) is None
    falling = _points({1e-3: 0.5, 5e-3: 0.4, 2e-2: 0.3})
    assert next_value(list(falling), falling, base) == 2e-4  # one ratio (x5) below the bottom edge


def test_a_tie_in_aa_goes_to_lower_forgetting_and_float_noise_decides_nothing() -> None:
    # Means of the same scores summed in another order differ in the last bits (1.85e-17 for 0).
    noisy = {"value": 1e-3, "AA": 0.52 + 2e-16, "forgetting": 0.04}
    clean = {"value": 5e-3, "AA": 0.52, "forgetting": 0.0}
    assert pick([noisy, clean])["value"] == 5e-3
    assert pick([{"value": 1e-3, "AA": 0.5, "forgetting": 1.85e-17}, {"value": 5e-3, "AA": 0.5, "forgetting": 0.0}]
                )["value"] == 1e-3  # equal in every digit that means something: the first point stays


def test_an_extension_stops_after_the_most_steps_a_side() -> None:
    values = [1e-3, 5e-3, 2e-2, 8e-2, 0.32, 1.28]
    rising = _points({v: i / 10 for i, v in enumerate(values)})
    assert next_value(list(rising), rising, (1e-3, 5e-3, 2e-2)) is None


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_is_swept_on_the_option_it_declares_with_one_grid_rule(method: str) -> None:
    m = get_method(method)
    default = m.Options.model_fields[m.sweep_key].default
    assert grid(method) == pytest.approx((default / 5, default, default * 4))
    assert override(method, 0.01) == f"methods.{m.section}.{m.sweep_key}=0.01"


def test_points_are_keyed_by_config_code_and_order() -> None:
    assert point_key("abc", "c1", "order1") != point_key("abc", "c2", "order1")  # other code: another point
    assert point_key("abc", "c1", "order1") != point_key("abc", "c1", "order2")
    assert point_key("abc", "c1", "order1") == point_key("abc", "c1", "order1")


def test_the_table_marks_each_methods_best_final_aa() -> None:

    from bench.lr_sweep import markdown

    def point(method: str, value: float, aa: float) -> dict:
        return {"method": method, "knob": "train.lr", "value": value, "AA": aa, "BWT": 0.0, "forgetting": 0.0,
                "wall_s": 1.0, "orders": ["order1"]}

    result = {"rule": "max final AA", "points": [point("slm", 1e-3, 0.4), point("slm", 3e-3, 0.5),
                                                 point("o_lora", 1e-3, 0.6), point("o_lora", 5e-3, 0.3)]}
    table = markdown({"sweep": result}, "bench/results/lr_sweep/x.json")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    picked = [(r.split("|")[1].strip(), r.split("|")[3].strip()) for r in rows if r.rstrip(" |").endswith("yes")]
    assert picked == [("`slm`", "0.003"), ("`o_lora`", "0.001")]


def test_a_method_no_longer_registered_sorts_last_instead_of_failing() -> None:

    from bench.lr_sweep import markdown

    def point(method: str, value: float) -> dict:
        return {"method": method, "knob": "train.lr", "value": value, "AA": 0.5, "BWT": 0.0, "forgetting": None,
                "wall_s": 1.0, "orders": ["order1"]}

    result = {"rule": "max final AA", "points": [point("retired_method", 1e-3), point("slm", 1e-3)]}
    table = markdown({"sweep": result}, "bench/results/lr_sweep/x.json")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`slm`", "`retired_method`"]
