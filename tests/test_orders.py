"""Several task orders in one experiment: each runs into its own folder; the report averages them."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main as slm
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.orders import order_runs, select_run


def test_orders_and_seeds_make_one_single_order_run_each() -> None:
    cfg = load_config(None, ["orders=[{name: fwd, tasks: [sentiment, geography, animals]},"
                             " {name: rev, tasks: [animals, geography, sentiment]}]", "seeds=[1, 2]"])
    runs = order_runs(cfg)
    assert [n for n, _ in runs] == ["fwd-seed1", "fwd-seed2", "rev-seed1", "rev-seed2"]
    rev = dict(runs)["rev-seed2"]
    assert [t.name for t in rev.tasks] == ["animals", "geography", "sentiment"] and rev.seed == 2
    assert rev.output_dir.endswith("rev-seed2") and rev.orders is None
    assert [n for n, _ in order_runs(load_config(None))] == [""]  # no orders: the experiment itself


def test_a_per_run_stage_needs_the_order_and_an_unknown_one_is_named() -> None:
    cfg = load_config(None, ["orders=[{name: a, tasks: [sentiment, geography, animals]},"
                             " {name: b, tasks: [geography, sentiment, animals]}]"])
    with pytest.raises(ConfigError, match=r"2 runs \(a, b\)") as err:
        select_run(cfg, None)
    assert err.value.hint.startswith("pass --order NAME")
    with pytest.raises(ConfigError, match=r"--order 'c'.*runs a, b"):
        select_run(cfg, "c")


def test_run_does_every_order_and_report_gives_mean_and_std(tmp_path, tiny_model_dir, capsys) -> None:
    overrides = [f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
                 "train.max_steps=2", "train.micro_batch_size=4", "eval.max_records_per_task=4",
                 "eval.max_new_tokens=3", "model.max_seq_len=64",
                 "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}},"
                 " {name: geography, source: {type: synthetic, generator: geography}}]",
                 "orders=[{name: fwd, tasks: [sentiment, geography]}, {name: rev, tasks: [geography, sentiment]}]"]
    assert slm(["run", "--method", "seq_lora", *overrides]) == 0
    assert (tmp_path / "run" / "fwd" / "seq_lora" / "tasks" / "0-sentiment" / "DONE").is_file()
    assert (tmp_path / "run" / "rev" / "seq_lora" / "tasks" / "0-geography" / "DONE").is_file()
    summary = json.loads((tmp_path / "run" / "orders.json").read_text())
    (method,) = summary["methods"]
    per_run = [method["runs"][n]["AA"] for n in ("fwd", "rev")]
    assert method["complete_runs"] == 2
    assert method["mean_std"]["AA"]["mean"] == pytest.approx(sum(per_run) / 2)
    assert method["mean_std"]["AA"]["std"] == pytest.approx(abs(per_run[0] - per_run[1]) / 2)
    assert "± " in (tmp_path / "run" / "orders.md").read_text()
    assert slm(["train", "--method", "seq_lora", "--task", "0", *overrides]) == 2  # which order?
    assert "pass --order" in capsys.readouterr().err
    assert slm(["report", "--method", "seq_lora", "--order", "rev", *overrides]) == 0
