"""Resume with other inputs: refused, or discarded with --restart.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipeline import cli
from pipeline.state import artifacts
from pipeline.state.preemption import EXIT_TERMINATED
from tests import fault_hooks
from tests.faults.helpers import (
    Run,
    assert_user_error,
    call,
    tree,
)


def test_resume_after_a_config_change_is_refused_naming_the_key_and_restart_discards(stopped: Run, capsys) -> None:
    state_before, config_before = tree(stopped.state()), stopped.layout.config.read_bytes()
    code, _, err = call(capsys, *stopped.argv("train", "--task", "0", "methods.slm.lr=0.002"))
    assert_user_error(code, err, str(stopped.state()), "was started from other inputs",
                      "methods.slm.lr: 0.005 -> 0.002", "--restart")
    assert tree(stopped.state()) == state_before and stopped.layout.config.read_bytes() == config_before
    assert not (stopped.task_dir(0) / "DONE").exists()
    code, out, err = call(capsys, *stopped.argv("train", "--task", "0", "methods.slm.lr=0.002", "--restart"))
    assert code == 0, err
    assert f"train: --restart: discarding {stopped.task_dir(0)} ({stopped.state()} (checkpoints and cached keys) " \
           "was started from other inputs: the config changed (methods.slm.lr: 0.005 -> 0.002))" in out
    assert artifacts.read_done(stopped.task_dir(0))["settings"]["methods"]["slm"]["lr"] == 0.002


def test_resume_after_the_data_changed_is_refused_naming_the_data(stopped: Run, capsys) -> None:
    assert cli.main(stopped.argv("prepare", "data.seed=1")) == 0  # another split of the same tasks
    state_before = tree(stopped.state())
    code, _, err = call(capsys, *stopped.argv("train", "--task", "0", "data.seed=1"))
    assert_user_error(code, err, str(stopped.state()), f"its prepared records (in {stopped.layout.data}) changed")
    assert tree(stopped.state()) == state_before and not (stopped.task_dir(0) / "DONE").exists()


@pytest.mark.parametrize("damage", ["truncated", "not-utf8", "missing"])
def test_a_train_state_whose_inputs_record_is_damaged_is_refused_naming_it(stopped: Run, capsys,
                                                                          damage: str) -> None:
    record = stopped.state() / "INPUTS.json"
    if damage == "truncated":
        record.write_bytes(record.read_bytes()[:20])
    elif damage == "not-utf8":
        record.write_bytes(b'{"inputs": "caf\xe9"}')
    else:
        record.unlink()  # as an older slm left it: checkpoints without a record of their inputs
    state_before = tree(stopped.state())
    code, _, err = call(capsys, *stopped.argv("train", "--task", "0"))
    expected = "records no inputs (INPUTS.json is missing" if damage == "missing" else f"{record} cannot be read"
    assert_user_error(code, err, expected, "--restart")
    assert tree(stopped.state()) == state_before


def test_resume_after_an_earlier_task_changed_is_refused_naming_that_task(finished_copy: Run, capsys,
                                                                        monkeypatch) -> None:
    run = finished_copy
    shutil.rmtree(run.task_dir(1))
    with monkeypatch.context() as m:
        fault_hooks.install(m.setattr, "mid-step", signal.SIGTERM, 0)
        assert cli.main(run.argv("train", "--task", "1")) == EXIT_TERMINATED
    # Task 0 is replaced by another valid result (retrained elsewhere, copied in): its DONE is intact.
    from safetensors.torch import save_file

    adapter = load_file(str(run.task_dir(0) / "adapter.safetensors"))
    save_file({k: v + 1 for k, v in adapter.items()}, str(run.task_dir(0) / "adapter.safetensors"),
              metadata=dict(safe_metadata(run.task_dir(0) / "adapter.safetensors")))
    marker = artifacts.read_done(run.task_dir(0))
    artifacts.write_done(run.task_dir(0), "train", inputs=marker["inputs"], files=list(marker["outputs"]),
                         **{k: v for k, v in marker.items() if k not in ("stage", "format", "outputs", "inputs")})
    state_before = tree(run.state(1))
    code, _, err = call(capsys, *run.argv("train", "--task", "1"))
    assert_user_error(code, err, str(run.state(1)), "task 0 (sentiment) changed")
    assert tree(run.state(1)) == state_before


def safe_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def test_resume_on_another_gpu_count_is_refused_before_the_model_loads(stopped: Run, capsys, monkeypatch) -> None:
    """The checkpoint says 2 ranks wrote it (as after a job on 2 GPUs); this run has 1. DeepSpeed
    would restore the model and the LR schedule, then fail on the optimizer shards."""
    import json

    from pipeline.stages import train
    from pipeline.state import checkpoints

    tag = stopped.state() / checkpoints.tag(1)
    marker = json.loads((tag / checkpoints.COMPLETE).read_text())
    assert (marker["world_size"], marker["global_batch"]) == (1, 4)  # micro batch 4 x grad_accum 1 x 1 rank
    marker["world_size"], marker["global_batch"] = 2, 8
    (tag / checkpoints.COMPLETE).write_text(json.dumps(marker))
    state_before = tree(stopped.state())
    monkeypatch.setattr(train, "load_base_model", lambda *a, **k: pytest.fail("the base was loaded"))
    code, _, err = call(capsys, *stopped.argv("train", "--task", "0"))
    assert_user_error(code, err, str(tag), "was written by 2 rank(s), global batch 8",
                      "this run has 1 rank(s), global batch 4", "slm train --task 0 --restart")
    assert tree(stopped.state()) == state_before
