"""A full disk (simulated), leftovers and prepare's config in the training stages.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from pipeline.experiment import load_config
from pipeline.state.artifacts import atomic_path
from pipeline.state.layout import RunLayout
from tests.faults.helpers import (
    EXPERIMENT,
    Run,
    _cl_folder,
    assert_user_error,
    call,
    kill,
    results,
    resume_to_the_uninterrupted_adapter,
    slm,
    spawn,
    temporaries,
)


def test_a_full_disk_while_saving_the_keys_leaves_no_partial_file_and_the_rerun_resumes(
        prepared_copy: Run, tiny_finished: Run, capsys, monkeypatch) -> None:
    run = prepared_copy
    import pipeline.dtkr.key_files as key_files

    save_file = key_files.save_file

    def full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        if "train_state" in Path(filename).parts:  # the keys cache, before training: there was space
            return save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write() names no file

    with monkeypatch.context() as m:
        m.setattr(key_files, "save_file", full)  # the task's keys; the adapter before them is saved
        code, _, err = call(capsys, *run.argv("train", "--task", "0"))
    keys = run.task_dir(0) / "keys.safetensors"
    assert_user_error(code, err, f"no space left on the device (or quota exceeded): {keys}", "df -h")
    assert not keys.exists() and not (run.task_dir(0) / "DONE").exists() and not temporaries(run.out)
    resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, 4)


def test_a_full_disk_while_writing_an_eval_row_leaves_no_row_and_the_others_unchanged(
        finished_copy: Run, capsys, monkeypatch) -> None:
    run = finished_copy
    row = run.layout.eval_row(1)
    row.unlink()
    before = results(run.out)
    from pipeline.stages import evaluate

    def full(path: Path, obj: Any) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text('{"after": 1, "sco')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(evaluate, "atomic_write_json", full)
    code, _, err = call(capsys, *run.argv("eval", "--after", "1"))
    assert_user_error(code, err, f"no space left on the device (or quota exceeded): {row}")
    assert not row.exists() and results(run.out) == before and not temporaries(run.out)


def test_a_writer_stage_removes_what_killed_writers_left_but_not_a_live_writers_temporary(
        finished_copy: Run, capsys) -> None:
    run = finished_copy
    dead = run.task_dir(0) / ".adapter.safetensors.k1ll3d.tmp"
    dead.mkdir()
    (dead / ".owner").touch()  # its writer died: nobody holds the lock on it
    (dead / "adapter.safetensors").write_bytes(b"half")
    writer = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.state.artifacts import atomic_path\n"
              "with atomic_path(Path(sys.argv[1])) as tmp:\n    tmp.write_text('half')\n"
              "    print('ready', flush=True)\n    time.sleep(120)\n")
    live = spawn(writer, str(run.layout.eval / "notes.json"))
    try:
        code, out, _ = call(capsys, *run.argv("index"))
        assert code == 0 and "already up to date" in out
        assert f"removed {dead}, left by a killed writer" in out and not dead.exists()
        assert len(list(run.layout.eval.glob(".notes.json.*.tmp"))) == 1, "a live writer's temporary stays"
    finally:
        kill(live)


def test_a_prepare_that_fails_its_data_checks_leaves_config_yaml_as_it_was(earlier, capsys, tmp_path: Path) -> None:
    config = RunLayout.of(load_config(earlier())).config
    before = config.read_bytes()
    folder = _cl_folder(tmp_path, labels=None)
    news = {"name": "news", "source": {"type": "cl_benchmark", "path": str(folder)}}
    code, err = slm(capsys, "prepare", "-c", str(earlier(tasks=[EXPERIMENT["tasks"][0], news])))
    assert_user_error(code, err, "labels.json")
    assert config.read_bytes() == before, "config.yaml describes the config whose data is on disk"
