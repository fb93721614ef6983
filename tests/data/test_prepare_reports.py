"""What `slm prepare` tells a user about their data: every bad record at once (up to a limit, then
a count) with the right line and column, nothing left behind by a failed prepare."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pipeline.cli import main as slm
from pipeline.data.readers import MAX_SHOWN
from pipeline.errors import DataError
from pipeline.experiment import Experiment, load_config
from pipeline.stages import prepare
from pipeline.state import locks


def experiment(write_yaml, tmp_path: Path, *tasks: dict, **top) -> Path:
    return write_yaml({"name": "reports", "output_dir": str(tmp_path / "out"),
                       "model": {"name_or_path": "bundled:smollm2", "max_seq_len": 128}, "tasks": list(tasks), **top})


def jsonl_task(name: str, path: Path, **extra) -> dict:
    return {"name": name, "source": {"type": "file", "path": str(path)}, **extra}


def good(i: int) -> str:
    return json.dumps({"instruction": f"Say {i}.", "input": "", "output": f"{i}"})


def test_a_malformed_jsonl_line_names_its_line_and_the_column_on_that_line(write_yaml, tmp_path) -> None:
    torn = '{"instruction": "Say 1.", "input": "", "output": "1"'  # the closing brace is missing
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([good(0), torn, good(2)]) + "\n")
    with pytest.raises(DataError) as err:
        prepare.run(Experiment.of(load_config(experiment(write_yaml, tmp_path, jsonl_task("t", data)))))
    # The column is where the line ends (its newline is not part of it): len + 1, on line 2.
    assert f"{data}:2: malformed JSONL line (Expecting ',' delimiter at column {len(torn) + 1})" in str(err.value)


def test_prepare_reports_every_bad_record_of_every_task_up_to_a_limit_then_a_count(write_yaml, tmp_path,
                                                                                   capsys) -> None:
    a = tmp_path / "a.jsonl"
    lines = [good(i) for i in range(30)]
    lines[3] = "{not json"
    lines[7] = json.dumps({"instruction": "x", "input": "", "output": ""})  # empty answer
    lines[11] = "[1, 2]"
    a.write_text("\n".join(lines) + "\n")
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join(json.dumps({"instruction": "Pick.", "input": f"{i}", "output": "maybe"})
                           for i in range(MAX_SHOWN + 5)) + "\n")
    path = experiment(write_yaml, tmp_path, jsonl_task("a", a), jsonl_task("b", b, labels=["yes", "no"]))
    assert slm(["prepare", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 of 2 tasks have bad data:")
    assert f"2 bad records in {a}:" in err  # the reader's two (lines 4 and 12): the file cannot be parsed past them
    assert f"{a}:4: malformed JSONL line" in err and f"{a}:12: each JSONL line must be a JSON object" in err
    assert f"{MAX_SHOWN + 5} bad records in {b} (task 'b'):" in err
    assert err.count("label 'maybe' is not in the label set") == MAX_SHOWN and "... and 5 more" in err
    assert not (tmp_path / "out").exists()


def test_a_prepare_that_fails_leaves_no_lock_and_no_config(write_yaml, tmp_path, capsys) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(good(0) + "\n{broken\n")
    bad_data = experiment(write_yaml, tmp_path, jsonl_task("t", data))
    assert slm(["prepare", "-c", str(bad_data)]) == 2
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").rglob("*"))
    # The data passes, the tokenizer does not load: still nothing left (no locks/data.lock, no slm/config.yaml).
    data.write_text("\n".join(good(i) for i in range(6)) + "\n")
    assert slm(["prepare", "-c", str(bad_data), f"model.name_or_path={tmp_path / 'no-model'}"]) == 2
    assert "no-model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").rglob("*"))
    # A folder that was there before stays, with what it holds.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert slm(["prepare", "-c", str(bad_data), f"model.name_or_path={tmp_path / 'no-model'}"]) == 2
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["notes.txt"]
    # And a prepare that succeeds writes its config once the data is in place, and keeps its lock file.
    assert slm(["prepare", "-c", str(bad_data)]) == 0
    cfg = load_config(bad_data)
    assert Experiment.of(cfg).layout.config.is_file() and locks.data_lock_path(Experiment.of(cfg).layout).is_file()


def test_a_waiter_on_a_lock_file_its_failed_holder_deleted_locks_the_new_file(tmp_path) -> None:
    path = tmp_path / "locks" / "data.lock"
    fd, made = locks._acquire(path, "test")
    assert made
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(locks._acquire_waiting(path, "test", wait_s=30)[0]))
    waiter.start()
    time.sleep(0.3)  # the waiter has opened the old file and polls its lock
    path.unlink()  # what a failed holder does, still holding the lock
    locks._release(fd)
    waiter.join(timeout=30)
    [locked] = got
    assert os.fstat(locked).st_ino == os.stat(path).st_ino  # the file the path names now, not the deleted one
    locks._release(locked)


# ---- caps that cut answers ----------------------------------------------------------------------------

LONG_ANSWER = " ".join(f"word{i}" for i in range(30))  # ~60 tokens with SmolLM2's tokenizer


def free_text(tmp_path: Path, long: int, short: int = 0) -> Path:
    rows = [{"instruction": f"Describe item {i}.", "input": "", "output": LONG_ANSWER if i < long else f"Item {i}."}
            for i in range(long + short)]
    path = tmp_path / "free.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answer_tokens() -> int:
    from pipeline.runtime.models import load_tokenizer

    return len(load_tokenizer("bundled:smollm2")(LONG_ANSWER, add_special_tokens=False)["input_ids"])


def prepared_warnings(capsys, path: Path, *overrides: str) -> list[str]:
    assert slm(["prepare", "-c", str(path), "--force", *overrides]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]


def test_prepare_warns_when_eval_max_new_tokens_cuts_the_answers_naming_the_length_that_fits(
        write_yaml, tmp_path, capsys) -> None:
    path = experiment(write_yaml, tmp_path, jsonl_task("notes", free_text(tmp_path, 40), metric="rouge_l"),
                      data={"test_ratio": 0.5})
    need = answer_tokens()
    [line] = prepared_warnings(capsys, path)  # eval.max_new_tokens: 16, the default
    assert line.startswith("warning: task 'notes': eval.max_new_tokens=16 cuts 20 of 20 records (100 %")
    assert line.endswith(f"eval.max_new_tokens={need} fits 95% of them (the longest needs {need})")
    assert prepared_warnings(capsys, path, f"eval.max_new_tokens={need}") == []
    manifest = json.loads((tmp_path / "out" / "data" / "manifest.json").read_text())
    assert manifest["tasks"]["notes"]["answer_tokens"]["max"] == need + 1  # with its EOS


def test_prepare_warns_for_the_training_caps_too_and_not_below_five_percent(write_yaml, tmp_path, capsys) -> None:
    need = answer_tokens()
    path = experiment(write_yaml, tmp_path, jsonl_task("notes", free_text(tmp_path, 40), metric="rouge_l"),
                      eval={"max_new_tokens": 128})
    lines = prepared_warnings(capsys, path, "model.max_prompt_len=64", "model.max_answer_len=16")
    assert len(lines) == 1 and "model.max_answer_len=16 cuts 32 of 32 records" in lines[0]
    assert f"model.max_answer_len={need + 1} fits 95%" in lines[0]  # the answer and its EOS
    # 1 long answer in 40 (2.5 %): within what the warning tolerates
    path = experiment(write_yaml, tmp_path, jsonl_task("notes", free_text(tmp_path, 1, short=39), metric="rouge_l"))
    assert not [x for x in prepared_warnings(capsys, path, "data.seed=3") if "max_new_tokens" in x]


def test_label_choice_generates_nothing_so_max_new_tokens_never_warns(write_yaml, tmp_path, capsys) -> None:
    label = " ".join(["a very long label"] * 6)
    rows = [{"instruction": "Pick.", "input": f"{i}", "output": label} for i in range(20)]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = experiment(write_yaml, tmp_path, jsonl_task("pick", data, metric="label_choice", labels=[label]),
                      eval={"max_new_tokens": 2})
    assert prepared_warnings(capsys, path) == []
