"""Bad inputs: each fails with a message naming the file and line/record/key, and leaves no
output data behind (no data folder, no temporary folder, an older DONE data folder untouched)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError, DataError
from pipeline.experiment import Experiment, load_config
from pipeline.stages import prepare
from pipeline.state.artifacts import read_done
from pipeline.state.layout import RunLayout


def _fails(write_yaml, raw: dict[str, Any], error: type[Exception], *fragments: str) -> str:
    """Load + prepare `raw`; assert `error` mentioning every fragment and no data left behind."""
    out = Path(raw["output_dir"])
    with pytest.raises(error) as err:
        cfg = load_config(write_yaml(raw))
        prepare.run(Experiment.of(cfg))
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in: {msg}"
    if error is ConfigError:
        assert not out.exists(), "an invalid config must not create the output folder"
    else:
        assert not (out / "data").exists(), "no half-written data"
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".")] if out.exists() else []
    assert not leftovers, f"temporary files left: {leftovers}"
    return msg


def _file_task(raw: dict[str, Any], path: str, **source: Any) -> dict[str, Any]:
    """Keep the good synthetic first task, so a bad second one proves nothing partial is written."""
    raw["tasks"] = [raw["tasks"][0], {"name": "bad", "source": {"type": "file", "path": path, **source},
                                      "instruction": "Answer."}]
    return raw


def _jsonl(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _row(i: int, **over: Any) -> str:
    return json.dumps({"input": f"question {i}", "output": f"answer {i}", **over})


def test_a_malformed_jsonl_line_names_file_and_line(write_yaml, small_experiment, tmp_path: Path) -> None:
    _jsonl(tmp_path / "qa.jsonl", [_row(0), _row(1), '{"input": "q", "output": ', _row(3)])
    _fails(write_yaml, _file_task(small_experiment, "qa.jsonl"), DataError,
           f"{tmp_path / 'qa.jsonl'}:3: malformed JSONL line")


def test_a_missing_field_names_file_line_key_and_keys_present(write_yaml, small_experiment, tmp_path: Path) -> None:
    _jsonl(tmp_path / "qa.jsonl", [_row(0), _row(1), json.dumps({"input": "q", "answer": "a"})])
    _fails(write_yaml, _file_task(small_experiment, "qa.jsonl"), DataError,
           f"{tmp_path / 'qa.jsonl'}:3: missing field 'output'", "keys present: ['answer', 'input']",
           "source.fields.output")


def test_a_mapped_column_that_does_not_exist_is_named(write_yaml, small_experiment, tmp_path: Path) -> None:
    (tmp_path / "qa.csv").write_text("question,answer\nq1,a1\nq2,a2\n")
    _fails(write_yaml, _file_task(small_experiment, "qa.csv", fields={"input": "questoin", "output": "answer"}),
           DataError, f"{tmp_path / 'qa.csv'}:2: missing field 'questoin'", "keys present: ['answer', 'question']")


def test_an_unknown_config_key_lists_the_valid_keys(write_yaml, small_experiment) -> None:
    small_experiment["tasks"][0]["max_trian"] = 10
    _fails(write_yaml, small_experiment, ConfigError, "tasks.0.max_trian: unknown key", "max_train (default None)")


def test_a_wrong_type_names_the_key(write_yaml, small_experiment) -> None:
    small_experiment["data"]["synthetic_size"] = "many"
    _fails(write_yaml, small_experiment, ConfigError, "data.synthetic_size", "'many'")


def test_a_duplicate_task_name_is_rejected(write_yaml, small_experiment) -> None:
    small_experiment["tasks"].append(dict(small_experiment["tasks"][0]))
    _fails(write_yaml, small_experiment, ConfigError, "duplicate task names ['sentiment']")


def test_a_split_ratio_above_one_is_rejected(write_yaml, small_experiment) -> None:
    small_experiment["data"]["test_ratio"] = 1.5
    _fails(write_yaml, small_experiment, ConfigError, "data.test_ratio", "less than 1")


def test_an_empty_task_names_its_file(write_yaml, small_experiment, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    _fails(write_yaml, _file_task(small_experiment, "empty.jsonl"), DataError,
           str(tmp_path / "empty.jsonl"), "task 'bad' has no records")


def test_a_label_outside_the_label_set_names_record_label_and_valid_labels(write_yaml, small_experiment,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "agnews"
    folder.mkdir()
    good = [{"sentence": f"story {i}", "label": "World"} for i in range(5)]
    (folder / "train.json").write_text(json.dumps([*good, {"sentence": "match", "label": "Sprots"}]))
    (folder / "test.json").write_text(json.dumps([{"sentence": "other", "label": "World"}]))
    (folder / "labels.json").write_text(json.dumps(["World", "Sports"]))
    small_experiment["tasks"][1] = {"name": "news", "source": {"type": "cl_benchmark", "path": "agnews"}}
    _fails(write_yaml, small_experiment, DataError, f"{folder / 'train.json'} record 5",
           "label 'Sprots'", "valid labels: ['World', 'Sports']", "drop_labels")


def test_a_missing_file_is_named_with_what_the_folder_holds(write_yaml, small_experiment, tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text(_row(0) + "\n")
    _fails(write_yaml, _file_task(small_experiment, "qa.jsnol"), DataError,
           f"{tmp_path / 'qa.jsnol'}: no such data file", "qa.jsonl")


def test_a_missing_cl_benchmark_folder_hints_at_data_root(write_yaml, small_experiment, tmp_path: Path) -> None:
    small_experiment["tasks"][1] = {"name": "news", "source": {"type": "cl_benchmark", "path": "agnews"}}
    _fails(write_yaml, small_experiment, DataError, f"{tmp_path / 'agnews'}: no such cl_benchmark folder",
           "data_root")


def test_train_test_overlap_names_both_records(write_yaml, small_experiment, tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", [_row(i) for i in range(5)])
    # The same input up to case and spacing counts as the same example.
    _jsonl(tmp_path / "test.jsonl", [_row(7), json.dumps({"input": "QUESTION   3", "output": "x"})])
    _fails(write_yaml, _file_task(small_experiment, "train.jsonl", test_split="test.jsonl"), DataError,
           f"test record {tmp_path / 'test.jsonl'}:2", f"training record ({tmp_path / 'train.jsonl'}:4)",
           "'QUESTION   3'")


def test_an_empty_output_names_file_and_line(write_yaml, small_experiment, tmp_path: Path) -> None:
    _jsonl(tmp_path / "qa.jsonl", [_row(0), _row(1, output="   ")])
    _fails(write_yaml, _file_task(small_experiment, "qa.jsonl"), DataError,
           f"{tmp_path / 'qa.jsonl'}:2: empty output (field 'output')")


def test_an_unknown_generator_lists_the_known_ones(write_yaml, small_experiment) -> None:
    small_experiment["tasks"][1]["source"]["generator"] = "sentimnet"
    _fails(write_yaml, small_experiment, DataError, "unknown synthetic generator 'sentimnet'",
           "sentiment, arithmetic, geography")


def test_asking_a_generator_for_more_than_it_can_make_is_an_error(write_yaml, small_experiment) -> None:
    small_experiment["data"]["synthetic_size"] = 100_000
    _fails(write_yaml, small_experiment, DataError, "'sentiment' can make at most", "data.synthetic_size")


def test_invalid_json_names_file_line_and_column(write_yaml, small_experiment, tmp_path: Path) -> None:
    (tmp_path / "qa.json").write_text('[\n  {"input": "a", "output": "b"},\n  {"input": "c" "output": "d"}\n]\n')
    _fails(write_yaml, _file_task(small_experiment, "qa.json"), DataError, f"{tmp_path / 'qa.json'}:3:")


def test_a_bad_task_leaves_earlier_prepared_data_untouched(write_yaml, small_experiment, tmp_path: Path) -> None:
    cfg = load_config(write_yaml(small_experiment))
    layout = RunLayout.of(cfg)
    prepare.run(Experiment.of(cfg))
    before = (layout.data / "DONE").read_text()
    _jsonl(tmp_path / "qa.jsonl", [_row(0), "not json"])
    with pytest.raises(DataError, match=":2: malformed JSONL"):
        bad = load_config(write_yaml(_file_task(small_experiment, "qa.jsonl")))
        prepare.run(Experiment.of(bad))
    assert (layout.data / "DONE").read_text() == before
    assert not [p for p in layout.base.iterdir() if p.name.startswith(".")]


def test_a_failure_while_writing_leaves_no_half_written_data(write_yaml, small_experiment, monkeypatch) -> None:
    calls = []

    def boom(*args: Any) -> list[tuple[int, int]]:
        calls.append(1)
        if len(calls) == 3:  # the first task (its train and test lengths) is already saved in the temporary folder
            raise OSError("disk full")
        return [(8, 2)]  # (prompt, answer) tokens

    monkeypatch.setattr(prepare, "token_lengths", boom)
    cfg = load_config(write_yaml(small_experiment))
    with pytest.raises(OSError, match="disk full"):
        prepare.run(Experiment.of(cfg))
    layout = RunLayout.of(cfg)
    first, second = (layout.task_data(t.name) for t in cfg.tasks)
    # Each task's folder is written whole or not at all: the first is complete, the second is not there,
    # and nothing else is left: no temporary, no lock file, no config.yaml.
    assert read_done(first) is not None and not second.exists() and read_done(layout.data) is None
    assert sorted(p.name for p in layout.base.iterdir()) == ["data"], sorted(layout.base.rglob("*"))
    assert sorted(p.name for p in layout.data.iterdir()) == [first.name]
    monkeypatch.undo()
    assert prepare.run(Experiment.of(cfg))["tasks"].keys() == {t.name for t in cfg.tasks}
