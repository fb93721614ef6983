"""Checkpoints: a bad newest one is never unpickled, resume falls back.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.state import checkpoints
from tests.faults.helpers import (
    FakeEngine,
)


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> tuple[Path, FakeEngine]:
    state, engine = tmp_path / "train_state", FakeEngine()
    for step in (3, 6):
        checkpoints.save_checkpoint(engine, state, step)
    return state, engine


@pytest.mark.parametrize("fault", ["modified", "truncated", "extra_file", "group_writable", "old_marker", "no_marker"])
def test_a_bad_newest_checkpoint_is_never_unpickled_and_resume_falls_back(two_checkpoints, capsys, fault: str) -> None:
    state, engine = two_checkpoints
    newest = state / checkpoints.tag(6)
    model = newest / "mp_rank_00_model_states.pt"
    if fault == "modified":
        model.write_bytes(b"import os; os.system('echo owned')")  # a pickle that runs code, say
    elif fault == "truncated":
        model.write_bytes(model.read_bytes()[:10])
    elif fault == "extra_file":
        (newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"planted")
    elif fault == "group_writable":
        os.chmod(model, 0o664)
    elif fault == "old_marker":
        (newest / checkpoints.COMPLETE).write_text("6")  # the format before hashes were recorded
    else:
        (newest / checkpoints.COMPLETE).unlink()
    assert checkpoints.resume_latest(engine, state) == 3
    assert engine.loaded == [checkpoints.tag(3)], "the bad checkpoint never reached DeepSpeed's torch.load"
    warning = capsys.readouterr().err
    assert f"checkpoint {newest} could not be loaded" in warning and "not unpickling" in warning
    expected = {"modified": f"{model} does not match the sha256", "truncated": "does not match the sha256",
                "extra_file": "does not list: zero_pp_rank_1", "group_writable": "chmod -R go-w",
                "old_marker": "records no file hashes", "no_marker": "incomplete"}[fault]
    assert expected in warning


def test_saved_checkpoints_are_private_and_list_every_file(two_checkpoints) -> None:
    state, _ = two_checkpoints
    tag_dir = state / checkpoints.tag(6)
    marker = json.loads((tag_dir / checkpoints.COMPLETE).read_text())
    assert set(marker["sha256"]) == {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert os.stat(state).st_mode & 0o077 == 0 and os.stat(tag_dir / "mp_rank_00_model_states.pt").st_mode & 0o077 == 0
    assert checkpoints.verify_checkpoint(tag_dir) is None


def test_when_no_checkpoint_verifies_training_starts_afresh_with_a_warning(two_checkpoints, capsys) -> None:
    state, engine = two_checkpoints
    for tag_dir in checkpoints.list_tags(state):
        (tag_dir / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert checkpoints.resume_latest(engine, state) == 0 and engine.loaded == []
    assert "training this task from step 0" in capsys.readouterr().err
