"""Readers (eval, generate, index, report, train --check) refuse results of other inputs.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli
from tests.faults.helpers import (
    Run,
    assert_same_tensors,
    assert_user_error,
    call,
    copy_run,
    flip_byte,
    results,
    tensors,
)

GENERATE = ["generate", "Classify the sentiment of this review.", "--input", "I love it", "--max-new-tokens", "2"]


READERS: dict[str, list[str]] = {"eval": ["eval", "--after", "1"], "generate": GENERATE, "index": ["index"],
                                 "report": ["report"], "train-check": ["train", "--task", "0", "--check"],
                                 "train-next": ["train", "--task", "1"]}


def reader_argv(run: Run, reader: str, overrides: list[str]) -> list[str]:
    command, *args = READERS[reader]
    extra = sum((["--set", o] for o in overrides), []) if command == "generate" else overrides
    return run.argv(command, *args, *extra)


CHANGES: dict[str, tuple[list[str], str]] = {
    "config": (["methods.slm.lr=0.002"], "the config changed (methods.slm.lr: 0.005 -> 0.002)"),
    "split": (["data.test_ratio=0.5"], "its prepared records (in {data}) changed"),
}


@pytest.fixture(scope="module", params=sorted(CHANGES))
def changed(request, tmp_path_factory: pytest.TempPathFactory, tiny_finished: Run) -> tuple[Run, list[str], str]:
    """A finished run whose config or split changed afterwards (the split: prepared again)."""
    run = copy_run(tiny_finished, tmp_path_factory.mktemp(f"changed-{request.param}"))
    overrides, message = CHANGES[request.param]
    if request.param == "split":
        assert cli.main(run.argv("prepare", *overrides)) == 0
    return run, overrides, message.format(data=run.layout.data)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_results_whose_inputs_changed_naming_the_change_and_the_rerun(
        changed: tuple[Run, list[str], str], capsys, reader: str) -> None:
    run, overrides, message = changed
    before = results(run.out)
    code, out, err = call(capsys, *reader_argv(run, reader, overrides))
    assert_user_error(code, err, f"task 0 (sentiment): {run.task_dir(0) / 'DONE'} was built from other inputs",
                      message, "slm train --method slm --task 0 --restart")
    assert "answer:" not in out and "eval after" not in out, "nothing was scored or generated"
    assert results(run.out) == before


def test_report_refuses_a_row_scored_with_other_eval_settings_naming_the_row(finished_copy: Run, capsys) -> None:
    run = finished_copy
    before = results(run.out)
    code, _, err = call(capsys, *run.argv("report", "eval.max_new_tokens=3"))
    assert_user_error(code, err, f"row 0 of the matrix ({run.layout.eval_row(0)}) was scored from other inputs",
                      "eval.max_new_tokens: 2 -> 3", "slm eval --after 0 --method slm")
    assert results(run.out) == before


@pytest.mark.parametrize(("target", "damage", "reader", "rerun"), [
    ("adapter", flip_byte, "eval", "slm train --method slm --task 0 --restart"),
    ("adapter", lambda p: p.write_bytes(p.read_bytes()[:100]), "generate", "slm train --method slm --task 0 --restart"),
    ("keys", flip_byte, "index", "slm train --method slm --task 0 --restart"),
    ("index", flip_byte, "eval", "slm index --method slm"),
], ids=["adapter-modified-eval", "adapter-truncated-generate", "keys-modified-index", "index-modified-eval"])
def test_a_tampered_result_is_refused_by_its_reader_naming_the_file(finished_copy: Run, capsys, target: str,
                                                                   damage: Callable[[Path], Any], reader: str,
                                                                   rerun: str) -> None:
    run = finished_copy
    path = {"adapter": run.task_dir(0) / "adapter.safetensors", "keys": run.task_dir(0) / "keys.safetensors",
            "index": run.layout.index / "keys.faiss"}[target]
    damage(path)
    before = results(run.out)
    code, out, err = call(capsys, *reader_argv(run, reader, []))
    assert_user_error(code, err, f"{path} changed after it was written (sha256 differs from", rerun)
    assert "answer:" not in out and "eval after" not in out
    assert results(run.out) == before


@pytest.mark.slow
def test_run_restart_repairs_a_tampered_adapter_and_everything_scored_with_it(finished_copy: Run, tiny_finished: Run,
                                                                             capsys) -> None:
    run = finished_copy
    flip_byte(run.task_dir(0) / "adapter.safetensors")
    code, out, err = call(capsys, *run.argv("run", "--restart"))
    assert code == 0, err
    assert "train: --restart: discarding the result of task 0 (sentiment)" in out
    for i in (0, 1):
        assert_same_tensors(tensors(run.task_dir(i)), tensors(tiny_finished.task_dir(i)))
    assert call(capsys, *run.argv("report"))[0] == 0, "every row matches the tasks on disk again"


@pytest.mark.parametrize("damage", ["truncated", "not-utf8", "format-2"])
def test_a_damaged_eval_row_is_refused_by_report_naming_it(finished_copy: Run, capsys, damage: str) -> None:
    row = finished_copy.layout.eval_row(0)
    if damage == "truncated":
        row.write_bytes(row.read_bytes()[:50])
    elif damage == "not-utf8":
        row.write_bytes(row.read_bytes().replace(b'"scores"', b'"sc\xf6res"', 1))
    else:
        row.write_text(json.dumps({**json.loads(row.read_text()), "format": 2}))
    before = results(finished_copy.out)
    code, _, err = call(capsys, *finished_copy.argv("report"))
    assert_user_error(code, err, str(row), "slm eval --after 0 --method slm")
    assert results(finished_copy.out) == before, "metrics.json and report.md were not rewritten"


def test_eval_scores_a_torn_row_again(finished_copy: Run, capsys) -> None:
    row = finished_copy.layout.eval_row(0)
    row.write_bytes(row.read_bytes()[:50])
    code, out, _ = call(capsys, *finished_copy.argv("eval", "--after", "0"))
    assert code == 0 and f"{row} cannot be read" in out and f"eval: row 0 -> {row}" in out
    assert json.loads(row.read_text())["after"] == 0


@pytest.mark.parametrize("fmt", [0, 2])
def test_a_done_marker_of_another_format_is_refused_with_the_rerun(finished_copy: Run, capsys, fmt: int) -> None:
    done = finished_copy.task_dir(0) / "DONE"
    done.write_text(json.dumps({**json.loads(done.read_text()), "format": fmt}))
    before = results(finished_copy.out)
    for reader in ("eval", "train-check", "train-next"):
        code, _, err = call(capsys, *reader_argv(finished_copy, reader, []))
        assert_user_error(code, err, f"{done} was written in format {fmt}", "this one reads format 1",
                          "slm train --method slm --task 0 --restart")
    assert results(finished_copy.out) == before


def test_a_torn_task_done_counts_as_unfinished_and_retraining_gives_the_same_result(
        finished_copy: Run, tiny_finished: Run, capsys) -> None:
    run = finished_copy
    done = run.task_dir(1) / "DONE"
    done.write_bytes(done.read_bytes()[:40] + b"\xff")
    code, _, err = call(capsys, *run.argv("eval", "--after", "1"))
    assert_user_error(code, err, "only 1 task(s) are DONE", "slm train --task 1")
    assert call(capsys, *run.argv("train", "--task", "1"))[0] == 0
    assert_same_tensors(tensors(run.task_dir(1)), tensors(tiny_finished.task_dir(1)))
    assert call(capsys, *run.argv("index"))[0] == 0, "the index follows the retrained task"


def test_status_shows_a_task_whose_done_no_longer_matches_as_stale_naming_the_change(finished_copy: Run,
                                                                                      capsys) -> None:
    """Fault 66: `slm status` with a stale task."""
    run = finished_copy
    code, out, _ = call(capsys, *run.argv("status"))
    assert code == 0 and "stale" not in out
    before = results(run.out)
    code, out, _ = call(capsys, *run.argv("status", "methods.slm.lr=0.002"))
    assert code == 0
    rows = [line for line in out.splitlines() if line.strip().startswith("task ")]
    assert len(rows) == 2 and all("stale (see below)" in line for line in rows), out
    stale = [line for line in out.splitlines() if line.startswith("stale:")]
    assert stale and "methods.slm.lr: 0.005 -> 0.002" in stale[0] and "--restart" in stale[0], out
    assert results(run.out) == before  # status reads only
