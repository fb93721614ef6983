"""Checkpoints: a bad newest one is never unpickled, resume falls back.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.errors import StageInputError
from pipeline.state import checkpoints
from tests.faults.helpers import (
    FakeEngine,
)


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> tuple[Path, FakeEngine]:
    state, engine = tmp_path / "train_state", FakeEngine()
    for step in (3, 6):
        checkpoints.save_checkpoint(engine, state, step, checkpoints.World(1, 4))
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


def test_the_marker_records_the_world_that_wrote_the_checkpoint(two_checkpoints) -> None:
    state, _ = two_checkpoints
    assert checkpoints.recorded_world(state / checkpoints.tag(6)) == checkpoints.World(1, 4)


@pytest.mark.parametrize("marker_world", [(2, 8), None], ids=["other-world", "no-world-recorded"])
def test_checkpoints_of_another_world_are_refused_before_anything_is_loaded(two_checkpoints, marker_world) -> None:
    state, engine = two_checkpoints
    marker_path = state / checkpoints.tag(6) / checkpoints.COMPLETE
    marker = json.loads(marker_path.read_text())
    if marker_world is None:
        del marker["world_size"], marker["global_batch"]  # the format before worlds were recorded
    else:
        marker["world_size"], marker["global_batch"] = marker_world
    marker_path.write_text(json.dumps(marker))
    with pytest.raises(StageInputError) as refused:
        checkpoints.require_same_world(state, checkpoints.World(1, 4), "slm train --task 0 --restart")
    expected = "was written by 2 rank(s), global batch 8" if marker_world else "records no world size"
    assert expected in str(refused.value) and "this run has 1 rank(s), global batch 4" in str(refused.value)
    assert "slm train --task 0 --restart" in refused.value.hint
    assert engine.loaded == []


def test_the_world_that_wrote_the_checkpoints_resumes_them(two_checkpoints) -> None:
    state, engine = two_checkpoints
    checkpoints.require_same_world(state, checkpoints.World(1, 4), "slm train --task 0 --restart")
    assert checkpoints.resume_latest(engine, state) == 6


class HalfLoadingEngine(FakeEngine):
    """DeepSpeed on a checkpoint it cannot finish loading: module and LR scheduler restored, then it raises."""

    def load_checkpoint(self, folder: str, tag: str, load_module_strict: bool) -> tuple[str, dict]:
        self.loaded.append(tag)
        raise RuntimeError("loading the optimizer shards failed")


def test_when_every_load_fails_resume_raises_instead_of_training_from_step_0_on_a_half_restored_engine(
        two_checkpoints) -> None:
    state, _ = two_checkpoints
    engine = HalfLoadingEngine()
    with pytest.raises(StageInputError, match="no checkpoint in .* loaded on every rank") as refused:
        checkpoints.resume_latest(engine, state)
    assert engine.loaded == [checkpoints.tag(6), checkpoints.tag(3)] and "--restart" in refused.value.hint
