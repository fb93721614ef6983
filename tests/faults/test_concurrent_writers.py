"""Concurrent writers of one output folder: the second fails at once naming the holder.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.errors import LockError
from pipeline.experiment import load_config
from pipeline.state import locks
from pipeline.state.layout import RunLayout
from tests.faults.helpers import (
    HOLDER,
    assert_user_error,
    kill,
    results,
    slm,
    spawn,
    temporaries,
)


def test_a_second_writer_of_one_output_folder_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "out", "slm")
    holder = spawn(HOLDER, str(locks.lock_path(layout)), env={"SLURM_JOB_ID": "4242"})
    try:
        start = time.monotonic()
        with pytest.raises(LockError) as err, locks.writer_lock(layout):
            pass
        assert time.monotonic() - start < 5, "fails at once, does not wait"
        message = str(err.value)
        for fragment in (f"pid {holder.pid}", f"host {socket.gethostname()}", "Slurm job 4242",
                         str(layout.root), str(locks.lock_path(layout))):
            assert fragment in message, message
        assert "scancel 4242" in (err.value.hint or "")
        assert locks.holder(locks.lock_path(layout))["pid"] == holder.pid
        with locks.writer_lock(layout.for_method("seq_lora")):
            pass  # another method of the same output_dir is another folder: no conflict
    finally:
        kill(holder)


def test_status_shows_the_writer_without_waiting_for_it(tmp_path: Path, capsys) -> None:
    layout = RunLayout.of(load_config(None, [f"output_dir={tmp_path / 'out'}"]))
    holder = spawn(HOLDER, str(locks.lock_path(layout)), env={"SLURM_JOB_ID": "77"})
    try:
        assert cli.main(["status", f"output_dir={tmp_path / 'out'}"]) == 0
    finally:
        kill(holder)
    assert f"output folder is being written by pid {holder.pid} on host {socket.gethostname()} (Slurm job 77)" \
        in capsys.readouterr().out


def test_a_writer_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "out", "slm")
    kill(spawn(HOLDER, str(locks.lock_path(layout))))
    with locks.writer_lock(layout):
        pass
    assert locks.holder(locks.lock_path(layout)) is None


def test_the_writer_lock_is_reentrant_and_only_rank_0_takes_it(tmp_path: Path, monkeypatch) -> None:
    layout = RunLayout(tmp_path / "out", "slm")
    with locks.writer_lock(layout), locks.writer_lock(layout):  # slm run -> train: one process, one writer
        assert locks.holder(locks.lock_path(layout))["pid"] == os.getpid()
    monkeypatch.setenv("RANK", "1")
    holder = spawn(HOLDER, str(locks.lock_path(layout)), env={"RANK": "0"})
    try:
        with locks.writer_lock(layout):
            pass  # rank 1 of a torchrun job is the same writer as its rank 0
    finally:
        kill(holder)


def test_prepare_while_another_prepare_holds_the_data_fails_naming_it(earlier, capsys, tmp_path: Path,
                                                                       monkeypatch) -> None:
    path = earlier()
    layout = RunLayout.of(load_config(path))
    before = results(tmp_path / "out")
    monkeypatch.setattr(locks, "DATA_LOCK_WAIT_S", 0.3)  # a real prepare waits up to an hour
    holder = spawn(HOLDER, str(locks.data_lock_path(layout)))
    try:
        code, err = slm(capsys, "prepare", "--force", "-c", str(path))
    finally:
        kill(holder)
    assert_user_error(code, err, f"data folder {layout.data} is in use by pid {holder.pid}")
    assert results(tmp_path / "out") == before and not temporaries(tmp_path / "out")
