"""The validation split a sweep picks on (data.validation_ratio, data.max_validation): carved from
each task's training pool, seeded, disjoint from what trains and from the test split, recorded in
the manifest; `eval.split=validation` scores it instead of the test split."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from pipeline.data.build import build_task
from pipeline.data.prepared import task_prepare_inputs
from pipeline.data.records import record_key
from pipeline.errors import DataError, StageInputError
from pipeline.experiment import Experiment, load_config
from pipeline.stages import prepare
from pipeline.state.layout import RunLayout


def _keys(records) -> set[str]:
    return {record_key(r) for r in records}


def test_validation_records_never_train_never_overlap_test_and_leave_a_capped_tasks_training_records_alone(
        tmp_path: Path) -> None:
    caps = ["tasks.0.max_train=200", "tasks.1.max_train=200"]
    plain = load_config(None, [f"output_dir={tmp_path / 'a'}", *caps])
    carved = load_config(None, [f"output_dir={tmp_path / 'b'}", *caps, "data.validation_ratio=0.25",
                                "data.max_validation=50"])
    for task in carved.tasks:
        before, after = build_task(task, plain), build_task(task, carved)
        assert len(after.validation) == 50  # 25 % of the 320 training records is 80: capped at 50
        assert not _keys(after.validation) & _keys(after.train) and not _keys(after.validation) & _keys(after.test)
        assert after.test == before.test
        if task.max_train:  # 320 - 50 left >= 200 taken: the very same training records
            assert after.train == before.train
        else:  # uncapped: training keeps the rest of its pool
            assert len(after.train) == len(before.train) - 50 and _keys(after.train) < _keys(before.train)
        assert after.validation == build_task(task, carved).validation  # seeded: the same every time


def test_the_validation_split_is_saved_and_counted_in_the_manifest(tmp_path: Path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path}", "data.validation_ratio=0.1"])
    manifest = prepare.run(Experiment.of(cfg))
    layout = RunLayout.of(cfg)
    for name, entry in manifest["tasks"].items():
        dd = datasets.load_from_disk(str(layout.task_data(name)))
        assert set(dd) == {"train", "test", "validation"}
        assert (entry["train"], entry["validation"]) == (len(dd["train"]), len(dd["validation"])) == (288, 32)
        assert len(entry["sha256"]["validation"]) == 64
    assert manifest["data"]["validation_ratio"] == 0.1


def test_no_validation_split_keeps_the_data_hash_so_earlier_prepared_data_stays_valid() -> None:
    def data_hash(cfg):
        return task_prepare_inputs(cfg.tasks[0], cfg)["data"]

    base = load_config(None)
    assert data_hash(base) == data_hash(load_config(None, ["data.validation_ratio=0"]))
    assert data_hash(base) != data_hash(load_config(None, ["data.validation_ratio=0.1"]))


def test_a_validation_record_repeating_a_test_input_is_dropped_and_counted(write_yaml, small_experiment,
                                                                          tmp_path: Path) -> None:
    rows = [{"instruction": "Say it.", "input": f"text {i}", "output": "yes"} for i in range(20)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))  # repeats 5 of them
    small_experiment["tasks"] = [{"name": "echo", "source": {"type": "file", "path": "train.jsonl",
                                                             "test_split": "test.jsonl"}}]
    small_experiment["data"].update(validation_ratio=0.5, on_overlap="drop_test")
    cfg = load_config(write_yaml(small_experiment))
    task = build_task(cfg.tasks[0], cfg)
    assert not _keys(task.validation) & _keys(task.test) and not _keys(task.validation) & _keys(task.train)
    assert len(task.validation) + task.validation_dropped == 10 and task.validation_dropped > 0


def test_a_ratio_that_leaves_nothing_to_train_is_refused(write_yaml, small_experiment) -> None:
    small_experiment["data"].update(validation_ratio=0.9999)
    cfg = load_config(write_yaml(small_experiment))
    with pytest.raises(DataError, match="validation_ratio"):
        build_task(cfg.tasks[0], cfg)


def test_eval_scores_the_validation_split_when_asked_and_says_what_to_set_without_one(tmp_path, tiny_model_dir,
                                                                                      capsys) -> None:
    from pipeline.cli import main as slm
    from tests.tiny import tiny_overrides

    overrides = [*tiny_overrides(tmp_path / "run", tiny_model_dir), "method=seq_lora"]
    assert slm(["prepare", *overrides]) == 0
    assert slm(["eval", "--after", "-1", *overrides, "eval.split=validation"]) == 2
    assert "data.validation_ratio" in capsys.readouterr().err
    with_validation = [*overrides, "data.validation_ratio=0.1"]
    assert slm(["prepare", *with_validation]) == 0
    assert slm(["eval", "--after", "-1", *with_validation, "eval.split=validation"]) == 0
    row = json.loads((tmp_path / "run" / "seq_lora" / "eval" / "row-untrained.json").read_text())
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert row["split"] == "validation"
    assert row["n_records"] == {n: min(4, t["validation"]) for n, t in manifest["tasks"].items()}
    # the same row on the test split is another row: scored again, not reused
    assert slm(["eval", "--after", "-1", *with_validation]) == 0
    assert json.loads((tmp_path / "run" / "seq_lora" / "eval" / "row-untrained.json").read_text())["split"] == "test"


def test_scored_split_names_the_tasks_without_it() -> None:
    from pipeline.stages.evaluate import scored_split

    cfg = load_config(None, ["eval.split=validation"])
    with pytest.raises(StageInputError, match="sentiment.*no validation split"):
        scored_split(cfg, {"sentiment": {"train": [], "test": []}}, "sentiment")
    assert scored_split(cfg, {"sentiment": {"train": [], "test": [], "validation": ["v"]}}, "sentiment") == ["v"]
