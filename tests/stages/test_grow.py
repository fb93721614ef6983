"""A sequence that grows: tasks appended to a finished run train alone; earlier results stay byte for
byte; an edited task invalidates itself and what follows; `slm forget` removes a task exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as slm
from pipeline.experiment import load_experiment
from tests.tiny import tiny_overrides

TASKS = [{"name": "sentiment", "source": {"type": "synthetic", "generator": "sentiment"}},
         {"name": "geography", "source": {"type": "synthetic", "generator": "geography"}},
         {"name": "animals", "source": {"type": "synthetic", "generator": "animal_class"}}]


def experiment(tmp_path: Path, tasks: list[dict], name: str) -> str:
    """The embedded default with these tasks, written as its own YAML (the user's file, grown)."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "pipeline/configs/default.yaml").read_text())
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**raw, "tasks": tasks}, sort_keys=False))
    return str(path)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def task_files(root: Path) -> dict[str, str]:
    """sha256 of every file the finished tasks hold (adapters, keys, buffers, DONE)."""
    return {str(p.relative_to(root)): sha(p) for p in sorted((root / "tasks").rglob("*")) if p.is_file()}


def trained_tasks(out: str) -> list[str]:
    """The tasks a command's output says it trained (`train: task i (...) done`)."""
    return [line.split("(")[1].split(")")[0] for line in out.splitlines() if line.startswith("train: task ")
            and ") done ->" in line]


@pytest.fixture
def grown(tmp_path, tiny_model_dir):
    def make(method: str, extra: list[str] = ()):
        run = [*tiny_overrides(tmp_path / "run", tiny_model_dir, steps=2), f"method={method}", *extra]
        two, three = experiment(tmp_path, TASKS[:2], "two.yaml"), experiment(tmp_path, TASKS, "three.yaml")
        return two, three, run
    return make


@pytest.mark.slow
@pytest.mark.parametrize("method", ["slm", "replay", "seq_lora"])
def test_appending_a_task_trains_only_it_and_keeps_every_earlier_file_and_cell(grown, tmp_path, method, capsys):
    two, three, run = grown(method)
    assert slm(["run", "-c", two, *run]) == 0
    root = load_experiment(two, run).layout.root
    before, rows_before = task_files(root), {i: json.loads((root / "eval" / f"row-{i}.json").read_text())
                                              for i in range(2)}
    capsys.readouterr()

    assert slm(["run", "-c", three, *run]) == 0
    out = capsys.readouterr().out
    assert trained_tasks(out) == ["animals"], out  # the one appended task trains; the others are DONE
    assert "prepare: 1 task(s) prepared, 2 kept as they were" in out
    after = task_files(root)
    assert {k: v for k, v in after.items() if not k.startswith("tasks/2-")} == before  # byte for byte
    for i, old in rows_before.items():  # each earlier row gained the new column and kept its own cells
        row = json.loads((root / "eval" / f"row-{i}.json").read_text())
        assert set(row["scores"]) == {"sentiment", "geography", "animals"}
        for name in ("sentiment", "geography"):
            assert (row["scores"][name], row["predictions"][name]) == (old["scores"][name], old["predictions"][name])
            assert f"eval after {i}: {name:<16} kept" in out
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["tasks"] == ["sentiment", "geography", "animals"] and len(metrics["matrix"]) == 3
    assert metrics["complete"] and len(metrics["untrained"]) == 3
    if method == "slm":
        index = json.loads((root / "index" / "DONE").read_text())
        assert index["tasks"] == ["sentiment", "geography", "animals"]
        assert "index: added animals to the 2 task(s) it held" in out


@pytest.mark.slow
def test_editing_a_task_invalidates_it_and_the_tasks_after_it_only(grown, tmp_path, capsys):
    two, three, run = grown("slm")
    assert slm(["run", "-c", three, *run]) == 0
    root = load_experiment(three, run).layout.root
    first = task_files(root)
    edited = [*run, "tasks.1.max_train=20"]  # geography's records change: tasks 1 and 2 are stale
    capsys.readouterr()
    assert slm(["run", "-c", three, *edited]) == 2
    err = capsys.readouterr().err
    assert "task 1 (geography)" in err and "its prepared records" in err and "task 0" not in err.split("hint")[0]
    assert slm(["run", "-c", three, *edited, "--restart"]) == 0
    assert trained_tasks(capsys.readouterr().out) == ["geography", "animals"]
    again = task_files(root)
    assert {k: v for k, v in again.items() if k.startswith("tasks/0-")} == \
        {k: v for k, v in first.items() if k.startswith("tasks/0-")}


@pytest.mark.slow
def test_forget_removes_one_task_of_slm_exactly_and_is_refused_for_seq_ft(grown, tmp_path, capsys):
    two, three, run = grown("slm")
    assert slm(["run", "-c", three, *run]) == 0
    exp = load_experiment(three, run)
    root = exp.layout.root
    before = task_files(root)
    assert slm(["forget", "-c", three, *run, "--task", "geography", "--reason", "licence withdrawn"]) == 0
    gone = root / "tasks" / "1-geography"
    assert not (gone / "adapter.safetensors").exists() and not (gone / "keys.safetensors").exists()
    assert json.loads((gone / "FORGOTTEN.json").read_text())["reason"] == "licence withdrawn"
    kept = {k: v for k, v in task_files(root).items() if not k.startswith("tasks/1-")}
    assert kept == {k: v for k, v in before.items() if not k.startswith("tasks/1-")}  # every other task as it was
    assert json.loads((root / "index" / "DONE").read_text())["tasks"] == ["sentiment", "animals"]
    capsys.readouterr()
    assert slm(["run", "-c", three, *run]) == 0  # nothing trains; the rows after it are scored again
    out = capsys.readouterr().out
    assert trained_tasks(out) == []
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["tasks"] == ["sentiment", "animals"] and [f["task"] for f in metrics["forgotten"]] == ["geography"]
    assert "was removed** by `slm forget`" in (root / "eval" / "report.md").read_text()

    assert slm(["run", "-c", three, *run, "method=seq_ft"]) == 0
    capsys.readouterr()
    assert slm(["forget", "-c", three, *run, "method=seq_ft", "--task", "geography"]) == 2
    assert "method seq_ft cannot remove task 1 (geography) exactly" in capsys.readouterr().err


def test_submit_on_a_grown_sequence_renders_only_the_new_tasks_and_the_finish_job(grown, tmp_path, capsys,
                                                                                   monkeypatch):
    import pipeline.planning.checks
    from pipeline.state import validity
    from pipeline.state.artifacts import write_done

    monkeypatch.setattr(pipeline.planning.checks, "check_fits", lambda cfg, method: (True, "PLAN"))
    two, three, run = grown("slm")
    exp = load_experiment(three, run)
    for t in range(2):  # tasks 0 and 1 DONE as training records them
        write_done(exp.layout.task_dir(t, exp.cfg.tasks[t].name), "train", inputs=validity.task_inputs(exp, t),
                   files=[])
    assert slm(["submit", "--dry-run", "-c", three, *run]) == 0
    out = capsys.readouterr().out
    assert "tasks 0..1 are DONE and current: submitting tasks 2..2 and the finish job" in out
    assert "prepare.sbatch ====" not in out and "train.sbatch ====" in out and "finish.sbatch ====" in out
    assert "#SBATCH --array=2-2%1" in out
    submits = [line for line in out.splitlines() if line.endswith("sbatch")]
    assert [line.split("=")[0] for line in out.splitlines() if "=$(sbatch" in line] == ["TRAIN_JOB", "FINISH_JOB"], \
        submits


@pytest.mark.parametrize(("method", "extra", "why"), [
    ("o_lora", [], "every later task's LoRA was trained beside this one"),
    ("gainlora", [], "every later task's LoRA was trained beside this one"),
    ("slm", ["methods.slm.transfer=route_retrieved"], "routing through this task's slots"),
])
def test_forget_refuses_before_touching_the_run_where_later_tasks_were_fitted_to_the_task(
        grown, tmp_path, capsys, method, extra, why):
    _, three, run = grown(method, extra)
    assert slm(["forget", "-c", three, *run, "--task", "geography"]) == 2
    err = capsys.readouterr().err
    assert f"method {method} cannot remove task 1 (geography) exactly" in err and why in err, err
    assert not (tmp_path / "run").exists()  # refused from the config alone: nothing was written
