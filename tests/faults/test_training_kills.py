"""Kills and signals during training: resume ends bit-identical to an uninterrupted run.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pipeline.state import checkpoints
from pipeline.state.preemption import EXIT_PREEMPTED, EXIT_TERMINATED
from tests import fault_hooks
from tests.faults.helpers import (
    REPO,
    Run,
    call,
    child_env,
    copy_run,
    finished_files,
    flip_byte,
    resume_to_the_uninterrupted_adapter,
)

SIGKILL_POINTS = {
    "keys": (0, None),  # keys learned, not cached: learned again, the same
    "mid-step": (2, 2),  # after forward/backward of step 3, before its update: from the checkpoint of step 2
    "checkpoint": (4, 2),  # step 4's files written, its COMPLETE not: that checkpoint is never loaded
}


@pytest.fixture(scope="module")
def sigkilled(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Run) -> dict[str, tuple[Run, int, str]]:
    """Task 0 killed by SIGKILL at each point, in children started together (each pays for its
    imports; side by side they share the cores): point -> (run, exit status, output)."""
    runs = {point: copy_run(tiny_prepared, tmp_path_factory.mktemp(f"sigkill-{point}")) for point in SIGKILL_POINTS}
    children = {point: subprocess.Popen(
        [sys.executable, "-m", "tests.fault_hooks", point, "SIGKILL", str(SIGKILL_POINTS[point][0]),
         *run.argv("train", "--task", "0")], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for point, run in runs.items()}
    outputs = {point: child.communicate(timeout=900)[0] for point, child in children.items()}  # drains the pipes
    return {point: (runs[point], children[point].returncode, outputs[point]) for point in runs}


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(SIGKILL_POINTS))
def test_sigkill_then_the_rerun_ends_with_the_adapter_of_an_uninterrupted_run(
        sigkilled: dict[str, tuple[Run, int, str]], tiny_prepared: Run, tiny_finished: Run, capsys, point: str) -> None:
    run, status, output = sigkilled[point]
    assert status == -signal.SIGKILL, output[-3000:]
    assert not (run.task_dir(0) / "DONE").exists() and not (run.task_dir(0) / "adapter.safetensors").exists()
    out, err = resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, SIGKILL_POINTS[point][1])
    if point == "keys":
        assert "learning DTKR keys of task 0" in out
    if point == "checkpoint":
        assert f"checkpoint {run.state() / 'step-000004'} could not be loaded: it is incomplete" in err
    data = {k: v for k, v in finished_files(run.out).items() if k.startswith("data")}
    assert data == finished_files(tiny_prepared.out), "the prepared data is byte for byte what it was"


@pytest.mark.parametrize(("point", "step", "stopped_at"), [("mid-step", 1, 2), ("checkpoint", 2, 3)])
def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes_to_the_same_adapter(
        prepared_copy: Run, tiny_finished: Run, capsys, monkeypatch, point: str, step: int, stopped_at: int) -> None:
    run = prepared_copy
    with monkeypatch.context() as m:
        fault_hooks.install(m.setattr, point, signal.SIGTERM, step)
        code, out, _ = call(capsys, *run.argv("train", "--task", "0"))
    assert code == EXIT_TERMINATED
    assert f"checkpoint at step {stopped_at} saved; exiting 143 (stop signal (SIGTERM): not requeued" in out
    assert not (run.task_dir(0) / "DONE").exists()
    assert checkpoints.verify_checkpoint(run.state() / checkpoints.tag(stopped_at)) is None
    resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, stopped_at)


def test_sigterm_during_key_learning_resumes_with_the_cached_keys_to_the_same_adapter(
        stopped: Run, tiny_finished: Run, capsys) -> None:
    assert (stopped.state() / "keys.safetensors").is_file()
    out, _ = resume_to_the_uninterrupted_adapter(stopped, capsys, tiny_finished, 1)
    assert "learning DTKR keys" not in out, "the cached keys, verified, were reused"


def test_a_task_preempted_twice_resumes_each_time_and_ends_with_the_same_adapter(
        prepared_copy: Run, tiny_finished: Run, capsys, monkeypatch) -> None:
    run = prepared_copy
    for step, saved, resumed in ((0, 1, None), (2, 3, 1)):
        with monkeypatch.context() as m:
            fault_hooks.install(m.setattr, "mid-step", signal.SIGUSR1, step)
            code, out, _ = call(capsys, *run.argv("train", "--task", "0"))
        assert code == EXIT_PREEMPTED, out
        assert f"checkpoint at step {saved} saved; exiting 75 (preemption signal: requeue to resume)" in out
        assert resumed is None or f"resumed task 0 from step {resumed}/4" in out
    resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, 3)


def test_a_tampered_keys_cache_in_train_state_is_learned_again_not_used(stopped: Run, tiny_finished: Run,
                                                                         capsys) -> None:
    flip_byte(stopped.state() / "keys.safetensors")
    out, _ = resume_to_the_uninterrupted_adapter(stopped, capsys, tiny_finished, 1)
    assert f"warning: {stopped.state() / 'keys.safetensors'} does not match the sha256 recorded" in out
    assert "learning DTKR keys of task 0" in out


def test_a_tampered_checkpoint_is_never_loaded_and_training_restarts_to_the_same_adapter(
        stopped: Run, tiny_finished: Run, capsys) -> None:
    model = next((stopped.state() / checkpoints.tag(1)).glob("*model_states.pt"))
    flip_byte(model)
    _, err = resume_to_the_uninterrupted_adapter(stopped, capsys, tiny_finished, None)
    assert f"{model} does not match the sha256" in err and "training this task from step 0" in err
