"""bench/majority_label.py: the constant-answer floor of a benchmark's closed-answer tasks, and how
close each recorded row comes to it, on the records `slm prepare` builds."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from bench import majority_label
from bench.runner import check_result


def _write_tasks(root) -> None:
    # 30 stance records, 20 of them answered A: whatever the seeded test cut takes, A stays the
    # training majority; the open task has no answer set.
    letters = ["A"] * 20 + ["B"] * 6 + ["C"] * 4
    stance = [{"instruction": "Stance letter?", "input": f"statement number {i}", "output": x}
              for i, x in enumerate(letters)]
    open_answers = [{"instruction": "Describe it.", "input": f"thing {i}", "output": f"a thing of kind {i % 3}"}
                    for i in range(20)]
    (root / "stance.json").write_text(json.dumps(stance))
    (root / "open.json").write_text(json.dumps(open_answers))


def _bench_yaml(tmp_path) -> str:
    path = tmp_path / "tinyfloor.yaml"
    path.write_text(yaml.safe_dump({"config": "default.yaml", "overrides": [
        f"data_root={tmp_path}", f"output_dir={tmp_path / 'run'}", "data.test_ratio=0.3",
        "tasks=[{name: stance, source: {type: alpaca, path: stance.json}, metric: letter},"
        " {name: open, source: {type: alpaca, path: open.json}, metric: rouge_l}]",
        "orders=[{name: o1, tasks: [stance, open]}]"]}))
    return str(path)


def _row_file(results, row: str, finals: dict | None) -> None:
    entry = {"AA": 0.5} | ({"final_record_scores": finals} if finals is not None else {})
    path = results / "cl_methods" / f"tinyfloor-{row}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_info": {"method": row}, "metrics": {"per_order": {"o1": entry}}}))


def test_the_floor_is_the_majority_answers_score_and_rows_are_compared_with_it(tmp_path, capsys) -> None:
    from bench.cl_methods import BenchExperiment
    from pipeline.data.build import build_task
    from pipeline.experiment import load_experiment

    _write_tasks(tmp_path)
    bench = _bench_yaml(tmp_path)
    read = BenchExperiment.read(bench)
    experiment = load_experiment(read.config, read.overrides)
    test = {spec.name: build_task(spec, experiment.cfg).test for spec in experiment.cfg.tasks}
    a_share = Counter(r["output"] for r in test["stance"])["A"] / len(test["stance"])
    as_majority = [float(r["output"] == "A") for r in test["stance"]]

    results = tmp_path / "results"
    _row_file(results, "slm", {"stance": as_majority, "open": [0.5] * len(test["open"])})
    _row_file(results, "seq_lora", {"stance": [1.0 - s for s in as_majority]})
    _row_file(results, "replay", None)  # recorded before per-record scores: nothing to compare
    assert majority_label.main([bench, "--results-dir", str(results)]) == 0

    record = json.loads((results / "majority_label" / "tinyfloor.json").read_text())
    assert check_result(record) == []
    assert len(record["run_info"]["config_sha256"]) == 64 and record["run_info"]["code_fingerprint"]
    stance, open_task = record["tasks"]["stance"], record["tasks"]["open"]
    assert stance["majority"] == "A" and stance["n_test"] == len(test["stance"])
    assert stance["score"] == pytest.approx(a_share) and stance["scores"] == as_majority
    assert open_task["majority"] is None and open_task["score"] is None
    assert record["rows"] == {"slm": {"o1": {"stance": 1.0}}, "seq_lora": {"o1": {"stance": 0.0}}}
    out = capsys.readouterr().out
    assert f"task=stance metric=letter n_test={len(test['stance'])} majority='A' score={a_share:.3f}" in out
    assert "task=open metric=rouge_l open_answers" in out
