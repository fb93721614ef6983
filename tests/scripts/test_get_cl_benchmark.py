"""scripts/get_cl_benchmark.py on an O-LoRA-shaped tree: the shipped loader reads what it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import get_cl_benchmark  # noqa: E402


def _task(root: Path, family: str, name: str, splits: dict[str, list[dict]], labels: list[str] | None) -> None:
    folder = root / family / name
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(rows))
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))


def test_upstream_tasks_become_task_folders_the_cl_benchmark_source_loads(tmp_path) -> None:
    from pipeline.data.prepared import load_prepared
    from pipeline.experiment import Experiment, load_config
    from pipeline.stages import prepare
    from pipeline.state.layout import RunLayout

    up = tmp_path / "CL_Benchmark"
    rows = [{"sentence": f"review number {i} was {'good' if i % 2 else 'bad'}", "label": "Good" if i % 2 else "Bad"}
            for i in range(50)]
    _task(up, "SC", "IMDB", {"train": rows + rows[:5]}, ["Good", "Bad"])  # one split only, with duplicates
    _task(up, "QQP", "QQP", {"train": rows[:30], "dev": rows[30:]}, ["Good", "Bad"])
    _task(up, "WiC", "WiC", {"train": rows}, None)  # no labels: skipped
    (up / "instruction_config.json").write_text(json.dumps({"SC": [{"instruction_type": "zero-shot",
                                                                    "instruction": "What is the sentiment?\n"}]}))
    out = tmp_path / "data"
    assert get_cl_benchmark.main([str(up), str(out)]) == 0
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
