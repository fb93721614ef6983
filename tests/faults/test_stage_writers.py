"""Concurrent writers in the stages.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from pipeline.state import checkpoints, locks
from pipeline.state.preemption import EXIT_TERMINATED
from tests.faults.helpers import (
    HOLDER,
    REPO,
    Run,
    assert_user_error,
    call,
    child_env,
    kill,
    results,
    spawn,
    temporaries,
    tree,
)


@pytest.mark.parametrize("command", [["run"], ["train", "--task", "0"], ["index"], ["eval", "--after", "0"]],
                         ids=["run", "train", "index", "eval"])
def test_a_writer_stage_beside_a_submitted_job_fails_at_once_naming_it(finished_copy: Run, capsys,
                                                                       command: list[str]) -> None:
    run = finished_copy
    before = results(run.out)
    holder = spawn(HOLDER, str(locks.lock_path(run.layout)), env={"SLURM_JOB_ID": "4242"})
    try:
        start = time.monotonic()
        code, _, err = call(capsys, *run.argv(*command))
        elapsed = time.monotonic() - start
    finally:
        kill(holder)
    assert_user_error(code, err, f"{run.layout.root} (method slm) is in use by pid {holder.pid}", "Slurm job 4242",
                      str(locks.lock_path(run.layout)), "scancel 4242")
    assert elapsed < 15, "fails at once, before any model is loaded"
    assert results(run.out) == before and not temporaries(run.out)


def test_report_and_status_read_finished_results_beside_a_writer(finished_copy: Run, capsys) -> None:
    run = finished_copy
    holder = spawn(HOLDER, str(locks.lock_path(run.layout)))
    try:
        assert call(capsys, *run.argv("report"))[0] == 0
        code, out, _ = call(capsys, *run.argv("status"))
    finally:
        kill(holder)
    assert code == 0 and f"output folder is being written by pid {holder.pid}" in out


@pytest.mark.slow
def test_a_second_train_of_a_task_in_training_fails_at_once_and_leaves_its_train_state_alone(
        prepared_copy: Run, capsys) -> None:
    run, long = prepared_copy, ["train.max_steps=400", "train.save_every=5"]
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *run.argv("train", "--task", "0", *long)],
                             cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(run.state().glob("step-*/COMPLETE")) and first.poll() is None:
            assert time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.2)
        record = tree(run.state())["INPUTS.json"] if (run.state() / "INPUTS.json").is_file() else None
        code, _, err = call(capsys, *run.argv("train", "--task", "0", *long))
        assert_user_error(code, err, f"is in use by pid {first.pid}", str(locks.lock_path(run.layout)))
        assert first.poll() is None, "the first writer runs on"
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=300)
    assert first.returncode == EXIT_TERMINATED, out[-2000:]
    assert tree(run.state()).get("INPUTS.json") == record
    assert checkpoints.verify_checkpoint(checkpoints.list_tags(run.state())[0]) is None
    assert not (run.task_dir(0) / "DONE").exists()
