"""Several task orders in one experiment: each runs into its own folder; the report averages them."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main as slm
from pipeline.errors import ConfigError
from pipeline.experiment import load_config
from pipeline.state.orders import order_runs, select_run


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
    assert "pass --order NAME" in str(err.value) and err.value.hint.startswith("e.g. --order a")
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


ORDERS_AB = ["orders=[{name: a, tasks: [sentiment, geography, animals]},"
             " {name: b, tasks: [animals, sentiment, geography]}]", "data.synthetic_size=20"]


def test_prepare_and_status_work_on_the_folder_of_the_order_they_are_given(tmp_path, capsys) -> None:
    overrides = [f"output_dir={tmp_path}", *ORDERS_AB]
    assert slm(["prepare", "--order", "b", *overrides]) == 0
    assert (tmp_path / "b" / "data" / "DONE").is_file()  # where `slm train --order b` reads it
    assert not (tmp_path / "data").exists() and not (tmp_path / "a").exists()
    capsys.readouterr()
    assert slm(["status", "--order", "b", *overrides]) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines() if line.strip().startswith("task ")]
    assert rows == [["task", "0", "animals"], ["task", "1", "sentiment"], ["task", "2", "geography"]]
    assert slm(["status", *overrides]) == 0  # every order, each under its own heading
    out = capsys.readouterr().out
    assert f"order a (method slm): {tmp_path / 'a' / 'slm'}" in out and f"order b (method slm): {tmp_path / 'b'}" in out


@pytest.mark.parametrize("command", ["prepare", "status", "plan", "report", "submit", "train", "run"])
def test_an_unknown_order_is_a_clear_error_for_every_command(command: str, tmp_path, capsys) -> None:
    extra = ["--dry-run"] if command == "submit" else ["--task", "0"] if command == "train" else []
    assert slm([command, "--order", "c", *extra, f"output_dir={tmp_path}", *ORDERS_AB]) == 2
    err = capsys.readouterr().err
    assert "--order 'c'" in err and "runs a, b" in err and err.startswith("error: ")
    assert not any(tmp_path.iterdir())


def test_submit_dry_run_shows_one_chain_per_order_or_the_one_named(tmp_path, capsys) -> None:
    overrides = [f"output_dir={tmp_path}", *ORDERS_AB]
    assert slm(["submit", "--dry-run", *overrides]) == 0
    out = capsys.readouterr().out
    for order in ("a", "b"):
        assert f"# ======== order {order}: {tmp_path / order} ========" in out
        assert f"CONFIG={tmp_path / order / 'slurm' / 'slm' / 'config.yaml'}" in out
        assert f"--job-name=default-{order}-slm-train" in out
    assert slm(["submit", "--dry-run", "--order", "b", *overrides]) == 0
    out = capsys.readouterr().out
    assert "order b" in out and "order a" not in out and str(tmp_path / "a") not in out


def test_a_failed_sbatch_in_a_later_order_cancels_every_job_of_the_submission(tmp_path, monkeypatch, capsys) -> None:
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"sbatch": 'n=$(cat "$0.n" 2>/dev/null || echo 0); echo $((n + 1)) > "$0.n"\n'
                       '[[ $* == */b/slurm/slm/train.sbatch ]] && { echo "bad partition" >&2; exit 1; }\n'
                       'echo $((n + 1))\n',
             "squeue": "exit 0\n", "scancel": 'echo "$*" >> "$0.log"\n'}
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert slm(["submit", f"output_dir={tmp_path / 'out'}", *ORDERS_AB]) == 2
    assert "bad partition" in capsys.readouterr().err
    # order a: 1 2 3 submitted; order b: 4 submitted, its train failed -> b's 4, then a's 1 2 3
    assert (bin_dir / "scancel.log").read_text().split("\n")[:2] == ["4", "1 2 3"]
