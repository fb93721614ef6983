"""`python -m data_prep`: files the pipeline's `type: file` source reads, the counts printed, and
an error that leaves no output behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from data_prep.__main__ import main, output_files

REPO = Path(__file__).resolve().parents[2]


def _superni(path: Path, n: int = 20) -> Path:
    instances = [{"id": f"t-{i}", "input": f"Question {i}?", "output": [f"answer {i}", f"reply {i}"]}
                 for i in range(n)]
    path.write_text(json.dumps({"Definition": ["Answer the question."], "Instances": instances}))
    return path


def test_a_folder_gets_train_and_test_jsonl_and_the_counts_are_printed(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["superni", str(_superni(tmp_path / "task.json")), str(out), "--test-ratio", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "read 20, 0 duplicates removed, 0 conflicting repeats removed, 0 test inputs also in train removed " \
           "-> train 15, test 5" in printed
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(train) == 15 and len(test) == 5
    assert set(train[0]) == {"instruction", "input", "output", "references"}
    assert train[0]["references"][0] == train[0]["output"] and len(train[0]["references"]) == 2


def test_a_jsonl_name_puts_the_test_split_beside_it() -> None:
    assert output_files(Path("d/med.jsonl")) == (Path("d/med.jsonl"), Path("d/med.test.jsonl"))
    assert output_files(Path("d/med")) == (Path("d/med/train.jsonl"), Path("d/med/test.jsonl"))


def test_a_malformed_record_is_named_and_nothing_is_written(tmp_path, capsys) -> None:
    rows = [{"instruction": "Do it.", "input": "x", "output": "y"}, {"instruction": "Do it.", "output": 3.5},
            {"input": "z", "output": "w"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    assert main(["alpaca", str(tmp_path / "alpaca.json"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "alpaca.json record 2: missing field 'instruction'" in err
    assert not out.exists()


def test_the_module_runs_as_a_command_and_the_pipeline_output_trains(tmp_path) -> None:
    out = tmp_path / "qa"
    done = subprocess.run([sys.executable, "-m", "data_prep", "superni", str(_superni(tmp_path / "task.json", 12)),
                           str(out), "--max-test", "2"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "-> train 11, test 1" in done.stdout  # 12 * 0.1 rounds to one test record
    from pipeline.experiment import Experiment, load_config
    from pipeline.stages import prepare

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"data_root={out}", "tasks=[{name: qa, metric: rouge_l,"
                             " source: {type: file, path: train.jsonl, test_split: test.jsonl}}]"])
    manifest = prepare.run(Experiment.of(cfg))
    assert (manifest["tasks"]["qa"]["train"], manifest["tasks"]["qa"]["test"]) == (11, 1)
