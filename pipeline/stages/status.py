"""`slm status`: where a run stands. DONE markers first, then what Slurm says about the jobs
recorded in <output_dir>/slurm/<method>/jobs.json.

`squeue` gives the live jobs (pending, running); `scontrol show job` gives the ones that ended
recently (Slurm forgets them after MinJobAge, 5 minutes by default). `sacct` is not used: many
small and private Slurm setups run without the accounting daemon. Without Slurm, only the DONE
markers are shown.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import slurm
from pipeline.config import ExperimentConfig
from pipeline.state import locks, validity
from pipeline.state.artifacts import is_done
from pipeline.state.layout import RunLayout

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}
QUERY_TIMEOUT_S = 30


@dataclass(frozen=True)
class JobState:
    """One job, or one task of an array job, as Slurm reports it."""

    job_id: str  # the id of the whole job (the array job id for an array task)
    task: int | None  # array task id
    state: str  # Slurm's JobState: PENDING, RUNNING, COMPLETED, FAILED, ...
    reason: str = ""
    exit_code: str = ""


class SlurmUnreachable(Exception):
    """squeue is missing or cannot reach the controller."""


# ---- asking Slurm ---------------------------------------------------------------------------------


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise SlurmUnreachable(f"{argv[0]} is not installed")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise SlurmUnreachable(f"{argv[0]} did not answer within {QUERY_TIMEOUT_S} s") from e


def _task_id(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def live_jobs(job_ids: set[str]) -> list[JobState]:
    """Pending and running jobs among `job_ids` (array tasks one per line)."""
    proc = _run(["squeue", "--me", "-h", "-r", "-o", "%F|%K|%T|%r"])
    if proc.returncode != 0:
        raise SlurmUnreachable(proc.stderr.strip() or f"squeue exited {proc.returncode}")
    jobs = []
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0] in job_ids:
            jobs.append(JobState(parts[0], _task_id(parts[1]), parts[2], parts[3]))
    return jobs


def _field(line: str, key: str) -> str:
    m = re.search(rf"(?:^|\s){key}=(\S*)", line)
    return m.group(1) if m else ""


def recent_jobs(job_id: str) -> list[JobState]:
    """Every record `scontrol show job` still holds for `job_id` (all tasks of an array job)."""
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode != 0:  # "Invalid job id": Slurm has forgotten it
        return []
    jobs = []
    for line in proc.stdout.splitlines():
        array_id = _field(line, "ArrayJobId")
        jobs.append(JobState(array_id or _field(line, "JobId"), _task_id(_field(line, "ArrayTaskId")),
                             _field(line, "JobState"), _field(line, "Reason"), _field(line, "ExitCode")))
    return jobs


def slurm_view(job_ids: set[str]) -> dict[tuple[str, int | None], JobState]:
    """(job id, task) -> state, live records taking precedence over ended ones."""
    # squeue first: it fails fast when the controller is unreachable.
    view = {(job.job_id, job.task): job for job in live_jobs(job_ids)}
    for job_id in sorted(job_ids):
        for job in recent_jobs(job_id):
            view.setdefault((job.job_id, job.task), job)
    return view


# ---- describing --------------------------------------------------------------------------------------


def read_jobs(layout: RunLayout) -> dict[str, Any] | None:
    path = slurm.script_dir(layout) / "jobs.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def describe_job(job: JobState | None) -> str:
    """"running", "pending (Dependency)", "failed (FAILED, exit 1:0)", or "" when unknown."""
    if job is None:
        return ""
    if job.state in RUNNING_STATES:
        return "running"
    if job.state in {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}:
        return f"pending ({job.reason})" if job.reason and job.reason != "None" else "pending"
    if job.state == "COMPLETED":
        return "ended (exit 0)"
    return f"failed ({job.state}, exit {job.exit_code or '?'})"


def _array_task(view: dict[tuple[str, int | None], JobState], job_id: str, task: int) -> JobState | None:
    job = view.get((job_id, task))
    if job is None and task == 0:
        job = view.get((job_id, None))  # an array of one task can show up without a task id
    return job


def task_rows(exp: Experiment, jobs: dict[str, Any] | None,
              view: dict[tuple[str, int | None], JobState]) -> list[list[str]]:
    cfg, layout = exp.cfg, exp.layout
    train = (jobs or {}).get("jobs", {}).get("train", {})
    train_id, name = train.get("id"), train.get("name") or slurm.job_name(cfg, "train")
    rows = []
    for i, task in enumerate(cfg.tasks):
        job = _array_task(view, train_id, i) if train_id else None
        state = "done" if is_done(layout.task_dir(i, task.name)) else describe_job(job) or "not done"
        if state == "done" and stale_reason(exp, i):
            state = "stale (see below)"
        log = slurm.log_file(layout, name, train_id, i) if train_id else None
        rows.append([f"task {i}", task.name, state, f"{train_id}_{i}" if train_id else "", existing(log)])
    return rows


def stale_reason(exp: Experiment, i: int) -> str | None:
    """Why task i's DONE no longer counts (config, data or an earlier task changed), or None.
    Compares the recorded inputs only: status does not hash the task's files."""
    return validity.problem_of(lambda: validity.require_task(exp, i, verify=False))


def _single_job(cfg: ExperimentConfig, layout: RunLayout, jobs: dict[str, Any] | None,
                view: dict[tuple[str, int | None], JobState], kind: str) -> tuple[str, str, str]:
    """(job id, state, log file) of the prepare or finish job."""
    job = (jobs or {}).get("jobs", {}).get(kind, {})
    job_id, name = job.get("id", ""), job.get("name") or slurm.job_name(cfg, kind)
    log = slurm.log_file(layout, name, job_id) if job_id else None
    return job_id, describe_job(view.get((job_id, None))), existing(log)


def prepare_row(cfg: ExperimentConfig, layout: RunLayout, jobs: dict[str, Any] | None,
                view: dict[tuple[str, int | None], JobState]) -> list[str]:
    job_id, state, log = _single_job(cfg, layout, jobs, view, "prepare")
    return ["prepare", "", "done" if is_done(layout.data) else state or "not done", job_id, log]


def finish_rows(cfg: ExperimentConfig, layout: RunLayout, jobs: dict[str, Any] | None,
                view: dict[tuple[str, int | None], JobState]) -> list[list[str]]:
    """index, eval and report, which the finish job runs, and the finish job itself."""
    rows_done = [after for after in range(-1, len(cfg.tasks)) if layout.eval_row(after).is_file()]
    fin_id, fin_state, fin_log = _single_job(cfg, layout, jobs, view, "finish")
    evals = f"{len(rows_done)}/{len(cfg.tasks) + 1} rows"
    return [
        ["index", "", "done" if is_done(layout.index) else "not done", "", ""],
        ["eval", "", evals + (f" ({', '.join(map(str, rows_done))})" if rows_done else ""), "", ""],
        ["report", "", "done" if (layout.eval / "report.md").is_file() else "not done", "", ""],
        ["finish job", "", fin_state or ("not queued" if fin_id else "-"), fin_id, fin_log],
    ]


def existing(path: Path | None) -> str:
    return str(path) if path and path.exists() else ""


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# ---- the stage -------------------------------------------------------------------------------------


def _job_ids(jobs: dict[str, Any] | None) -> set[str]:
    return {j["id"] for j in (jobs or {}).get("jobs", {}).values() if j.get("id")}


@dataclass(frozen=True)
class Args:
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`slm status` has no options of its own: -c, --method and --order say which run."""


def main(experiment: Experiment, args: Args | None = None) -> int:
    """Every run of the experiment (task orders x seeds), or the one `--order` names."""
    for i, exp in enumerate(experiment.runs()):
        if i:
            print()
        show(exp)
    return 0


def show(exp: Experiment) -> None:
    """The status of one run: its prepare job, one row per task, index, eval, report, finish job."""
    cfg, layout = exp.cfg, exp.layout
    jobs = read_jobs(layout)
    print(f"{cfg.name}{f' order {exp.run_name}' if exp.run_name else ''} (method {cfg.method}): {layout.root}")
    view: dict[tuple[str, int | None], JobState] = {}
    if jobs is None:
        print(f"no Slurm submission recorded ({slurm.script_dir(layout) / 'jobs.json'}): DONE markers only")
    else:
        ids = ", ".join(f"{k} {v['id']}" for k, v in jobs.get("jobs", {}).items())
        print(f"jobs: {ids} (submitted {jobs.get('submitted', '?')})")
        try:
            view = slurm_view(_job_ids(jobs))
        except SlurmUnreachable as e:
            print(f"Slurm is not reachable ({e}): DONE markers only")
    rows = [prepare_row(cfg, layout, jobs, view), *task_rows(exp, jobs, view),
            *finish_rows(cfg, layout, jobs, view)]
    print(format_table(rows))
    for i, task in enumerate(cfg.tasks):
        if is_done(layout.task_dir(i, task.name)) and (reason := stale_reason(exp, i)):
            print(f"stale: {reason}")
    for what, path in (("output folder", locks.lock_path(layout)), ("data", locks.data_lock_path(layout))):
        if holder := locks.holder(path):  # a look, not a hold: status never waits for a writer
            print(f"{what} is being written by {locks.describe(holder)}")
    print(f"logs: {layout.logs}")
