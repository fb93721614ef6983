"""`slm status` with stub squeue/scontrol, and without any Slurm at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline import cli, slurm
from pipeline.experiment import load_config, load_experiment
from pipeline.stages import status
from pipeline.state import validity
from pipeline.state.artifacts import write_done
from pipeline.state.layout import RunLayout

SCONTROL = """\
case $4 in
  101) echo "JobId=101 JobName=default-slm-prepare JobState=COMPLETED Reason=None ExitCode=0:0" ;;
  102) echo "JobId=103 ArrayJobId=102 ArrayTaskId=0 JobState=COMPLETED Reason=None ExitCode=0:0"
       echo "JobId=104 ArrayJobId=102 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0" ;;
  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
esac
"""


def stub(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("#!/bin/bash\n" + body)
    (folder / name).chmod(0o755)


@pytest.fixture
def run_dir(tmp_path: Path) -> RunLayout:
    """A run with prepare and task 0 DONE and jobs 101 (prepare), 102 (train), 105 (finish) recorded."""
    exp = load_experiment(None, [f"output_dir={tmp_path / 'run'}"])
    cfg, layout = exp.cfg, exp.layout
    # Markers as the stages write them (status shows a DONE that no longer matches as stale).
    write_done(layout.data, "prepare", files=[])
    inputs = validity.task_inputs(exp, 0)
    write_done(layout.task_dir(0, cfg.tasks[0].name), "train", inputs=inputs, files=[])
    slurm.script_dir(layout).mkdir(parents=True)
    jobs = {"submitted": "2026-01-01T00:00:00", "jobs": {k: {"id": v} for k, v in
                                                        (("prepare", "101"), ("train", "102"), ("finish", "105"))}}
    (slurm.script_dir(layout) / "jobs.json").write_text(json.dumps(jobs))
    layout.logs.mkdir()
    (layout.logs / "default-slm-train-102_1.out").write_text("boom\n")
    return layout


def status_lines(layout: RunLayout, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert cli.main(["status", f"output_dir={layout.base}"]) == 0
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        words = line.split()
        if words and words[0] in {"prepare", "task", "index", "eval", "report", "finish"}:
            lines[" ".join(words[:2]) if words[0] in {"task", "finish"} else words[0]] = line
    lines["all"] = out
    return lines


def test_status_combines_done_markers_with_what_slurm_reports(run_dir, tmp_path, monkeypatch, capsys) -> None:
    bin_dir = tmp_path / "bin"
    live = ["102|2|PENDING|JobHeldUser", "105|N/A|PENDING|Dependency", "9|N/A|RUNNING|None"]
    stub(bin_dir, "squeue", "".join(f'echo "{line}"\n' for line in live))
    stub(bin_dir, "scontrol", SCONTROL)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    lines = status_lines(run_dir, capsys)
    assert "done" in lines["prepare"] and "101" in lines["prepare"]
    assert "done" in lines["task 0"]
    assert "failed (FAILED, exit 1:0)" in lines["task 1"] and "default-slm-train-102_1.out" in lines["task 1"]
    assert "pending (JobHeldUser)" in lines["task 2"] and "102_2" in lines["task 2"]
    assert "pending (Dependency)" in lines["finish job"]
    assert "0/4 rows" in lines["eval"] and "not done" in lines["report"]


def test_status_without_slurm_shows_done_markers_and_says_slurm_is_unreachable(run_dir, tmp_path, monkeypatch,
                                                                              capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue here
    lines = status_lines(run_dir, capsys)
    assert "Slurm is not reachable (squeue is not installed)" in lines["all"]
    assert "done" in lines["task 0"] and "not done" in lines["task 1"]


def test_status_of_a_run_never_submitted(tmp_path, capsys) -> None:
    lines = status_lines(RunLayout.of(load_config(None, [f"output_dir={tmp_path}"])), capsys)
    assert "no Slurm submission recorded" in lines["all"]
    assert "not done" in lines["task 2"]


def test_describe_job_names_each_slurm_state() -> None:
    job = status.JobState
    assert status.describe_job(job("1", 0, "RUNNING")) == "running"
    assert status.describe_job(job("1", 0, "PENDING", "BeginTime")) == "pending (BeginTime)"
    assert status.describe_job(job("1", 0, "TIMEOUT", "TimeLimit", "0:15")) == "failed (TIMEOUT, exit 0:15)"
    assert status.describe_job(None) == ""
