"""bench/lr_sweep.py's rule and bookkeeping: one grid rule for every knob of every method (its
learning rate, then its own knob at that pick), points keyed by config, code and task order,
and every pick made on the validation split (test-split points of earlier code kept as history)."""

from __future__ import annotations

import pytest

from bench import lr_sweep
from bench.lr_sweep import accepts, grid, knobs, next_value, override, pick, point_key, sweep_section
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


def test_an_extension_stops_at_a_value_the_option_refuses() -> None:
    # replay's ratio is a fraction: its grid 0.002 / 0.01 / 0.04 may grow to 0.16 and 0.64, never past 1
    base = grid("replay", "ratio")
    assert base == pytest.approx((0.002, 0.01, 0.04))
    ok = accepts("replay", "ratio")
    rising = _points({0.002: 0.1, 0.01: 0.2, 0.04: 0.3, 0.16: 0.4, 0.64: 0.5})
    assert not ok(2.56) and ok(0.64)
    assert next_value(list(rising), rising, base, ok) is None
    assert next_value(list(rising)[:3], dict(list(rising.items())[:3]), base, ok) == 0.16


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_is_swept_on_its_learning_rate_then_its_own_knob_with_one_grid_rule(method: str) -> None:
    m = get_method(method)
    assert knobs(method)[0] == m.sweep_key and knobs(method)[1:] == ([m.own_knob] if m.own_knob else [])
    for knob in knobs(method):
        default = m.Options().resolved(knob)  # a peer's unset lr: its uniform preset's
        assert isinstance(default, float) and default > 0
        assert grid(method, knob) == pytest.approx((default / 5, default, default * 4))
        assert override(method, 0.01, knob) == f"methods.{m.section}.{knob}=0.01"


def test_each_peer_and_replay_declare_their_own_knob() -> None:
    own = {name: get_method(name).own_knob for name in METHOD_NAMES}
    assert own == {"slm": None, "oracle_task_id": None, "seq_ft": None, "seq_lora": None, "replay": "ratio",
                   "o_lora": "lambda1", "n_lora": "sparsity", "gainlora": "lambda1", "multitask": None}


def test_points_are_keyed_by_config_code_and_order() -> None:
    assert point_key("abc", "c1", "order1") != point_key("abc", "c2", "order1")  # other code: another point
    assert point_key("abc", "c1", "order1") != point_key("abc", "c1", "order2")
    assert point_key("abc", "c1", "order1") == point_key("abc", "c1", "order1")


def _point(method: str, knob: str, value: float, aa: float, split: str | None = "validation",
           at: dict | None = None) -> dict:
    pt = {"method": method, "knob": knob, "value": value, "AA": aa, "BWT": 0.0, "forgetting": 0.0,
          "wall_s": 1.0, "orders": ["order1"], "key": f"{method}-{knob}-{value}-{split}", "at": at or {}}
    if split is not None:
        pt["split"] = split
    return pt


def test_the_sweep_file_records_the_validation_split_and_keeps_test_split_points_as_history() -> None:
    old = [_point("o_lora", "methods.o_lora.lr", 5e-3, 0.9, split=None)]  # earlier code, picked on test
    new = [_point("o_lora", "methods.o_lora.lr", 1e-3, 0.4), _point("o_lora", "methods.o_lora.lr", 5e-3, 0.5),
           _point("o_lora", "methods.o_lora.lambda1", 0.1, 0.6, at={"methods.o_lora.lr": 5e-3})]
    section = sweep_section([*old, *new], ["o_lora"], {"ratio": 0.1, "max_records": 50}, {"superseded_points": [1]})
    assert section["split"] == "validation" and section["validation"] == {"ratio": 0.1, "max_records": 50}
    assert section["points"] == new  # only validation points can be picked
    assert section["superseded_test_split_points"] == old and section["superseded_points"] == [1]
    assert section["picks"] == {"o_lora": {"methods.o_lora.lr": {"value": 5e-3, "AA": 0.5},
                                           "methods.o_lora.lambda1": {"value": 0.1, "AA": 0.6}}}
    assert section["grids"]["o_lora"] == {"lr": list(grid("o_lora")), "lambda1": list(grid("o_lora", "lambda1"))}


def test_a_sweep_without_a_validation_split_is_refused() -> None:
    from bench.cl_methods import validation_overrides

    with pytest.raises(SystemExit, match="never made on the test split"):
        validation_overrides({"name": "x"})
    assert validation_overrides({"name": "x", "validation": {"ratio": 0.1, "max_records": 50}}) == [
        "data.validation_ratio=0.1", "data.max_validation=50", "eval.split=validation"]


def test_the_learning_rate_is_picked_first_and_the_own_knob_swept_at_that_pick(monkeypatch) -> None:
    """sweep_method on fakes: validation AA peaks at lr 5e-3, then at lambda1 0.5 (for that lr only)."""
    calls: list[tuple[str, float, dict]] = []

    def fake_point(bench, order, method, knob, value, at, done) -> dict:
        calls.append((knob, value, dict(at)))
        lr = at.get("lr", value if knob == "lr" else None)
        aa = {1e-3: 0.3, 5e-3: 0.5, 2e-2: 0.4}[lr] + (0.1 if knob == "lambda1" and value == 0.5 else 0.0)
        return _point(method, f"methods.o_lora.{knob}", value, aa, at={f"methods.o_lora.{k}": v for k, v in at.items()})

    monkeypatch.setattr(lr_sweep, "sweep_point", fake_point)
    chosen = lr_sweep.sweep_method(None, "order1", "o_lora", {}, lambda: None)
    assert chosen == {"lr": 5e-3, "lambda1": 0.5}
    assert [(k, v) for k, v, _ in calls] == [("lr", 1e-3), ("lr", 5e-3), ("lr", 2e-2),
                                             ("lambda1", 0.1), ("lambda1", 0.5), ("lambda1", 2.0)]
    assert all(at == {"lr": 5e-3} for knob, _, at in calls if knob == "lambda1")


def test_the_table_marks_each_knobs_best_validation_aa() -> None:
    from bench.lr_sweep import markdown

    result = {"rule": "max final AA", "points": [
        _point("slm", "methods.slm.lr", 1e-3, 0.4), _point("slm", "methods.slm.lr", 3e-3, 0.5),
        _point("o_lora", "methods.o_lora.lr", 1e-3, 0.6), _point("o_lora", "methods.o_lora.lr", 5e-3, 0.3),
        _point("o_lora", "methods.o_lora.lambda1", 0.1, 0.7, at={"methods.o_lora.lr": 1e-3}),
        _point("o_lora", "methods.o_lora.lambda1", 0.5, 0.6, at={"methods.o_lora.lr": 1e-3})]}
    table = markdown({"sweep": result}, "bench/results/lr_sweep/x.json")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    picked = [(r.split("|")[1].strip(), r.split("|")[2].strip(), r.split("|")[3].strip())
              for r in rows if r.rstrip(" |").endswith("yes")]
    assert picked == [("`slm`", "`methods.slm.lr`", "0.003"), ("`o_lora`", "`methods.o_lora.lr`", "0.001"),
                      ("`o_lora`", "`methods.o_lora.lambda1`", "0.1")]
    assert "`lr` 0.001" in rows[-1] and "scored on: the validation split" in table


def test_a_method_no_longer_registered_sorts_last_and_old_points_read_as_test_split() -> None:
    from bench.lr_sweep import markdown

    result = {"rule": "max final AA", "points": [_point("retired_method", "train.lr", 1e-3, 0.5, split=None),
                                                 _point("slm", "methods.slm.lr", 1e-3, 0.5, split=None)]}
    table = markdown({"sweep": result}, "bench/results/lr_sweep/x.json")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`slm`", "`retired_method`"]
    assert "scored on: the test split" in table


@pytest.mark.slow
def test_a_sweep_point_trains_as_the_bench_does_and_scores_the_validation_split(tmp_path) -> None:
    """One point end to end on a tiny LLaMA (a few steps): `slm run` in its own folder, every row
    scored on the validation split, the point keyed and recorded as such."""
    import json

    import yaml

    from bench.cl_methods import BenchExperiment, validation_overrides
    from tests.tiny import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "tiny")
    path = tmp_path / "tinybench.yaml"
    path.write_text(yaml.safe_dump({"config": "default.yaml", "overrides": [
        f"output_dir={tmp_path / 'run'}", f"model.name_or_path={model}", "name=tinybench", "data.synthetic_size=40",
        "train.max_steps=2", "train.micro_batch_size=4", "train.save_every=2", "model.max_seq_len=64",
        "eval.max_records_per_task=4", "orders=[{name: fwd, tasks: [sentiment, geography, animals]}]"]}))
    settings = {"name": "tiny", "validation": {"ratio": 0.25, "max_records": 3}}
    bench = BenchExperiment.read(str(path), validation_overrides(settings))
    point = lr_sweep.sweep_point(bench, "fwd", "seq_lora", "lr", 1e-3, {}, {})
    assert point["split"] == "validation" and point["knob"] == "methods.seq_lora.lr" and point["value"] == 1e-3
    assert point["key"].endswith("@fwd") and 0.0 <= point["AA"] <= 1.0
    folder = tmp_path / "run" / "sweep" / "seq_lora-lr-0.001" / "fwd"
    rows = [json.loads(p.read_text()) for p in sorted((folder / "seq_lora" / "eval").glob("row-*.json"))]
    assert rows and all(r["split"] == "validation" and set(r["n_records"].values()) == {3} for r in rows)
    manifest = json.loads((folder / "data" / "manifest.json").read_text())
    assert all(t["validation"] == 3 for t in manifest["tasks"].values())
    # the same point again is the recorded one, not a second run
    assert lr_sweep.sweep_point(bench, "fwd", "seq_lora", "lr", 1e-3, {}, {point["key"]: point}) is point
