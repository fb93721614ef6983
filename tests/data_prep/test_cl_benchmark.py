"""data_prep.cl_benchmark: an O-LoRA-shaped tree becomes task folders the shipped loader reads,
and one task folder becomes JSONL records with upstream's instruction and label options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import ReadOptions, convert, read
from data_prep.__main__ import main
from data_prep.common import DataPrepError


def _task(root: Path, family: str, name: str, splits: dict[str, list[dict]], labels: list[str] | None) -> None:
    folder = root / family / name
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(rows))
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))


def _rows(n: int) -> list[dict]:
    return [{"sentence": f"review number {i} was {'good' if i % 2 else 'bad'}", "label": "Good" if i % 2 else "Bad"}
            for i in range(n)]


def test_upstream_tasks_become_task_folders_the_cl_benchmark_source_loads(tmp_path, capsys) -> None:
    from pipeline.data.prepared import load_prepared
    from pipeline.experiment import Experiment, load_config
    from pipeline.stages import prepare
    from pipeline.state.layout import RunLayout

    up = tmp_path / "CL_Benchmark"
    rows = _rows(50)
    _task(up, "SC", "IMDB", {"train": rows + rows[:5]}, ["Good", "Bad"])  # one split only, with duplicates
    _task(up, "QQP", "QQP", {"train": rows[:30], "dev": rows[30:]}, ["Good", "Bad"])
    _task(up, "WiC", "WiC", {"train": rows}, None)  # no labels: skipped
    (up / "instruction_config.json").write_text(json.dumps({"SC": [{"instruction_type": "zero-shot",
                                                                    "instruction": "What is the sentiment?\n"}]}))
    out = tmp_path / "data"
    assert main(["cl_benchmark", str(up), str(out)]) == 0
    assert "WiC/WiC" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["IMDB", "QQP", "instruction_config.json"]
    train = json.loads((out / "IMDB" / "train.json").read_text())
    test = json.loads((out / "IMDB" / "test.json").read_text())
    assert len(train) + len(test) == 50 and not {r["sentence"] for r in train} & {r["sentence"] for r in test}
    assert json.loads((out / "QQP" / "test.json").read_text()) == rows[30:]  # dev stands in for test

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"data_root={out}",
                             "tasks=[{name: imdb, source: {type: cl_benchmark, path: IMDB}}]"])
    prepare.run(Experiment.of(cfg))
    prepared = load_prepared(cfg, RunLayout.of(cfg))["imdb"]
    assert len(prepared["test"]) == len(test) and prepared["train"][0]["output"] in ("Good", "Bad")


def test_one_task_folder_reads_with_its_family_instruction_and_label_options(tmp_path) -> None:
    root = tmp_path / "bench"
    _task(root, "SC", "yelp", {"train": _rows(20), "test": _rows(24)[20:]}, ["Good", "Bad"])
    (root / "SC" / "instruction_config.json").write_text(json.dumps({"SC": [{"instruction": "Sentiment?\n"}]}))
    source = read("cl_benchmark", root / "SC" / "yelp")
    assert source.train[0].instruction == "Sentiment?\nOption: Good, Bad"
    assert source.labels == ["Good", "Bad"] and len(source.test) == 4
    result = convert(source)
    assert (result.counts.train, result.counts.test, result.counts.overlap) == (20, 4, 0)


def test_a_label_outside_labels_json_names_the_record(tmp_path) -> None:
    root = tmp_path / "bench"
    rows = _rows(6)
    rows[3]["label"] = "Meh"
    _task(root, "SC", "yelp", {"train": rows}, ["Good", "Bad"])
    with pytest.raises(DataPrepError, match=r"train\.json record 3: field 'label' is 'Meh', not one of"):
        read("cl_benchmark", root / "SC" / "yelp", ReadOptions())
