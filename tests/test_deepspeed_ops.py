"""pipeline.deepspeed_ops: a build that was killed leaves torch's baton behind, and the next
build of the op goes on instead of waiting for it forever (CI hung 90 minutes on one)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.deepspeed_ops import HELD_LOCK, TORCH_BATON, build_op

ROOT = Path(__file__).resolve().parents[1]


def test_a_stale_baton_is_removed_and_the_build_runs_as_the_only_builder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    (tmp_path / "some_op").mkdir()
    (tmp_path / "some_op" / TORCH_BATON).touch()  # what a SIGKILLed build leaves

    def load() -> str:
        assert not (tmp_path / "some_op" / TORCH_BATON).exists()
        # flock is per open file: a second open of the held lock cannot take it (another builder)
        with open(tmp_path / "some_op" / HELD_LOCK) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "built"

    assert build_op("some_op", load) == "built"
    assert f"removing {tmp_path / 'some_op' / TORCH_BATON}" in capsys.readouterr().err
    with open(tmp_path / "some_op" / HELD_LOCK) as after:  # released once the build is done
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_fresh_build_folder_needs_no_removal(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert build_op("other_op", lambda: 7) == 7
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_process_group_comes_up_past_a_stale_baton_of_the_shm_op() -> None:
    """The real case, in this environment's own extensions folder: DeepSpeed's shared-memory op
    with the baton of a killed build beside it (built already, or built here once)."""
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
    from torch.utils.cpp_extension import _get_build_directory

    baton = Path(_get_build_directory(ShareMemCommBuilder.NAME, verbose=False)) / TORCH_BATON
    baton.touch()
    try:
        proc = subprocess.run([sys.executable, "-c", "from pipeline import distributed; print(distributed.setup())"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        baton.unlink(missing_ok=True)  # never leave the suite's later runs a baton to wait for
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(0, 1)"
    assert f"removing {baton}" in proc.stderr
