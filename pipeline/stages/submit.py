"""`slm submit`: the experiment as three Slurm jobs, prepare -> train array -> finish.

Reads top to bottom: render the scripts (pure, pipeline/slurm.py); print the memory plan and
refuse a plan that does not fit unless --ignore-plan; with --dry-run print everything and stop;
otherwise refuse while an earlier submission of this run is still queued, write the resolved
config and the scripts to <output_dir>/slurm/<method>/ (atomically), and submit them in order,
each waiting for the one before, recording the job ids in jobs.json as they come.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import slurm
from pipeline.artifacts import atomic_write_json, atomic_write_text
from pipeline.config import ExperimentConfig
from pipeline.errors import SlmError
from pipeline.layout import RunLayout
from pipeline.stages import status

SBATCH_TIMEOUT_S = 60
NO_SLURM_HINT = ("start the local single-node Slurm with `scripts/local_slurm.sh start` and run the "
                 "`export SLURM_CONF=...` line it prints, or run `slm submit` on a cluster login node; "
                 "`slm submit --dry-run` prints the jobs without Slurm")


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    scripts = slurm.render_all(cfg, layout, python=sys.executable)
    check_plan(cfg, ignore=args.ignore_plan, dry_run=args.dry_run)
    if args.dry_run:
        print_dry_run(layout, scripts)
        return 0
    require_sbatch()
    refuse_if_queued(layout)
    write_scripts(cfg, layout, scripts)
    jobs = submit(cfg, layout)
    print_submitted(cfg, layout, jobs)
    return 0


def check_plan(cfg: ExperimentConfig, ignore: bool, dry_run: bool) -> None:
    """Print the memory plan; a plan that does not fit stops the submission (not a dry run)."""
    try:
        from pipeline.plan import check_fits
    except ImportError:  # the planner is optional: submit works without it
        return
    try:
        fits, text = check_fits(cfg)
    except OSError as e:  # e.g. the model's config.json cannot be read on this machine
        print(f"memory plan skipped: {e}")
        return
    print(text)
    if fits:
        return
    if ignore:
        print("the plan says this does not fit; submitting anyway (--ignore-plan)")
    elif dry_run:
        print("the plan says this does not fit: `slm submit` will refuse it unless given --ignore-plan")
    else:
        raise SlmError("the memory plan above says the training job does not fit its GPUs; change the "
                       "settings it recommends, or pass --ignore-plan to submit anyway")


def print_dry_run(layout: RunLayout, scripts: dict[str, str]) -> None:
    for kind, text in scripts.items():
        print(f"# ==== {slurm.script_path(layout, kind)} ====")
        print(text, end="")
    print("# ==== submit (each job waits for the one before) ====")
    print("\n".join(slurm.sbatch_commands(layout)))
    print(f"# dry run: nothing written or submitted. `slm submit` without --dry-run writes these scripts "
          f"and {slurm.config_path(layout)}, creates {layout.logs} and submits.")


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise SlmError(f"sbatch not found: {NO_SLURM_HINT}")


def refuse_if_queued(layout: RunLayout) -> None:
    """Rewriting the config under a queued array would change what its next task trains."""
    jobs = status.read_jobs(layout)
    ids = {j["id"] for j in (jobs or {}).get("jobs", {}).values() if j.get("id")}
    if not ids:
        return
    try:
        live = status.live_jobs(ids)
    except status.SlurmUnreachable as e:
        raise SlmError(f"Slurm is not reachable ({e}): {NO_SLURM_HINT}") from None
    if live:
        queued = sorted({j.job_id for j in live})
        raise SlmError(f"jobs {', '.join(queued)} of an earlier submission of this run are still queued "
                       f"(see `slm status`); wait for them, or `scancel {' '.join(queued)}`, then submit again")


def write_scripts(cfg: ExperimentConfig, layout: RunLayout, scripts: dict[str, str]) -> None:
    atomic_write_text(slurm.config_path(layout), slurm.resolved_config_yaml(cfg, layout))
    for kind, text in scripts.items():
        path = slurm.script_path(layout, kind)
        atomic_write_text(path, text)
        path.chmod(0o755)
    layout.logs.mkdir(parents=True, exist_ok=True)  # Slurm does not create the log folder


def run_sbatch(argv: list[str]) -> str:
    """Submit; the job id that `sbatch --parsable` prints ("id" or "id;cluster")."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SlmError(f"`{' '.join(argv)}` did not answer within {SBATCH_TIMEOUT_S} s: is slurmctld up?") from None
    job_id = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not job_id.isdigit():
        raise SlmError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return job_id


def submit(cfg: ExperimentConfig, layout: RunLayout) -> dict:
    """Submit prepare, train, finish in order; on a failure cancel what was already submitted."""
    record = {"name": cfg.name, "method": cfg.method, "config": str(slurm.config_path(layout)),
              "submitted": datetime.datetime.now().isoformat(timespec="seconds"),
              "tasks": [t.name for t in cfg.tasks], "jobs": {}}
    previous = None
    for kind in slurm.JOB_KINDS:
        script = slurm.script_path(layout, kind)
        try:
            previous = run_sbatch(slurm.sbatch_argv(script, previous))
        except SlmError:
            cancel([j["id"] for j in record["jobs"].values()])
            raise
        record["jobs"][kind] = {"id": previous, "name": slurm.job_name(cfg, kind), "script": str(script)}
        atomic_write_json(slurm.script_dir(layout) / "jobs.json", record)
    return record


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=SBATCH_TIMEOUT_S, check=False)
        print(f"cancelled the jobs already submitted: {' '.join(job_ids)}", file=sys.stderr)


def print_submitted(cfg: ExperimentConfig, layout: RunLayout, record: dict) -> None:
    ids = {kind: job["id"] for kind, job in record["jobs"].items()}
    train_log = slurm.log_file(layout, slurm.job_name(cfg, "train"), ids["train"], 0)
    print(f"submitted {cfg.name} (method {cfg.method}): prepare {ids['prepare']} -> "
          f"train {ids['train']} (array 0-{len(cfg.tasks) - 1}%1) -> finish {ids['finish']}")
    print(f"scripts, config and job ids: {slurm.script_dir(layout)}")
    print(f"logs: {layout.logs} (task 0: {Path(train_log).name})")
    print(f"follow it: slm status -c {shlex.quote(str(slurm.config_path(layout)))}")
