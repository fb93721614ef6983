"""Few-shot tasks: `max_train_per_label: k` keeps a seeded sample of k training records per label."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.data.build import build_task
from pipeline.errors import ConfigError, DataError
from pipeline.experiment import Experiment, load_config
from pipeline.stages import prepare

# Imbalanced on purpose: k=5 takes 5 of 40 "pos", 5 of 25 "neg" and all 3 "mixed".
COUNTS = {"pos": 40, "neg": 25, "mixed": 3}


def _write_rows(path: Path) -> None:
    rows = [{"input": f"review {label} {i}", "output": label} for label, n in COUNTS.items() for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _experiment(tmp_path: Path, write_yaml, small_experiment: dict[str, Any], overrides: list[str]):
    _write_rows(tmp_path / "reviews.jsonl")
    small_experiment["tasks"] = [{"name": "reviews", "instruction": "Sentiment?", "labels": list(COUNTS),
                                  "source": {"type": "file", "path": "reviews.jsonl"}}]
    return load_config(write_yaml(small_experiment), overrides)


def _inputs(records: list[dict]) -> list[str]:
    return [r["input"] for r in records]


def test_k_per_label_is_seeded_stable_and_leaves_the_test_split_alone(tmp_path, write_yaml, small_experiment) -> None:
    full = build_task(*_split(_experiment(tmp_path, write_yaml, small_experiment, [])))
    cfg = _experiment(tmp_path, write_yaml, small_experiment, ["tasks.0.max_train_per_label=5"])
    few = build_task(*_split(cfg))
    # The random test split took some "mixed" records; the rest are all kept.
    available = Counter(r["output"] for r in full.train)
    assert 0 < available["mixed"] < 5
    expected = {"pos": 5, "neg": 5, "mixed": available["mixed"]}
    assert Counter(r["output"] for r in few.train) == expected == few.train_per_label
    # Drawn after the seeded shuffle: the first k of each label in the full set's train order.
    assert _inputs(few.train) == [r["input"] for r in full.train
                                  if r["input"] in set(_inputs(few.train))]
    assert few.test == full.test
    assert build_task(*_split(cfg)).train == few.train  # stable across runs
    other = build_task(*_split(_experiment(tmp_path, write_yaml, small_experiment,
                                           ["tasks.0.max_train_per_label=5", "data.seed=1"])))
    assert _inputs(other.train) != _inputs(few.train)


def test_max_train_caps_the_few_shot_sample(tmp_path, write_yaml, small_experiment) -> None:
    cfg = _experiment(tmp_path, write_yaml, small_experiment, ["tasks.0.max_train_per_label=5", "tasks.0.max_train=4"])
    few = build_task(*_split(cfg))
    assert len(few.train) == 4


def test_few_shot_needs_a_label_set(tmp_path, write_yaml, small_experiment) -> None:
    cfg = _experiment(tmp_path, write_yaml, small_experiment, ["tasks.0.labels=null", "tasks.0.max_train_per_label=2"])
    with pytest.raises(ConfigError, match="task 'reviews': max_train_per_label=2 needs a label set"):
        build_task(*_split(cfg))


def test_the_manifest_records_the_few_shot_sample(tmp_path, write_yaml, small_experiment) -> None:
    cfg = _experiment(tmp_path, write_yaml, small_experiment, ["tasks.0.max_train_per_label=4"])
    entry = prepare.run(Experiment.of(cfg))["tasks"]["reviews"]
    assert entry["max_train_per_label"] == 4
    per_label = entry["train_per_label"]
    assert per_label["pos"] == per_label["neg"] == 4 and entry["train"] == sum(per_label.values())


def test_first_word_tasks_need_one_word_answers(tmp_path, write_yaml, small_experiment) -> None:
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"input": f"q{i}", "output": f"it is {i}"}) + "\n"
                                               for i in range(10)))
    small_experiment["tasks"] = [{"name": "qa", "instruction": "Answer.", "metric": "first_word",
                                  "source": {"type": "file", "path": "qa.jsonl"}}]
    cfg = load_config(write_yaml(small_experiment))
    one_word = "task 'qa': test record .*qa.jsonl.* 3 words .*first_word needs one-word"
    with pytest.raises(DataError, match=one_word) as err:
        build_task(*_split(cfg))
    assert str(err.value).startswith("2 bad records in the test split of task 'qa':")  # each one, not the first


def _split(cfg):
    return cfg.tasks[0], cfg
