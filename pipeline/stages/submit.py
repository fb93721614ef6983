"""`slm submit`: the experiment as Slurm jobs, prepare -> train array -> finish, one chain per run.

An experiment with `orders:` (or `seeds:`) has several runs, each a plain single-order experiment
in its own folder (`pipeline.state.orders`, `<output_dir>/<order>/`): each gets its own independent
chain of three jobs, or only the one `--order` names. Reads top to bottom: resolve `slurm.setup`
paths from the folder we run in; render every chain's scripts (pure, pipeline/slurm.py); print the
memory plan (the same for every order: the training and finish jobs' GPUs and host RAM) and
refuse a plan that does not fit unless --ignore-plan; with --dry-run print everything and stop
(refused as submit would be); otherwise refuse while an earlier submission of any of
these runs is still queued, fetch the hub models and datasets the jobs load into the cache
they read (`slm fetch`: the jobs run with the hub offline), then per run write the resolved config and the scripts to
<run>/slurm/<method>/ (atomically) and submit them in order, each waiting for the one before,
recording the job ids in jobs.json as they come. If one sbatch fails, every job this call
submitted is cancelled, so a retry starts from a clean queue.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import slurm
from pipeline.config import ExperimentConfig
from pipeline.errors import SlmError
from pipeline.stages import fetch, status
from pipeline.state import validity
from pipeline.state.artifacts import atomic_write_json, atomic_write_text
from pipeline.state.layout import RunLayout

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

SBATCH_TIMEOUT_S = 60
NO_SLURM_HINT = ("start the local single-node Slurm with `scripts/local_slurm.sh start` and run the "
                 "`export SLURM_CONF=...` line it prints, or run `slm submit` on a cluster login node; "
                 "`slm submit --dry-run` prints the jobs without Slurm")


@dataclass(frozen=True)
class Args:
    dry_run: bool = False
    ignore_plan: bool = False
    no_fetch: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print scripts and sbatch commands only")
    p.add_argument("--ignore-plan", action="store_true",
                   help="submit even when the memory plan says the job does not fit")
    p.add_argument("--no-fetch", action="store_true",
                   help="do not run `slm fetch` first (the jobs run offline: the models must be in the cache already)")


@dataclass(frozen=True)
class Chain:
    """One run's jobs: the run (its name, single-order config, layout) and its scripts."""

    exp: Experiment
    scripts: dict[str, str]
    first: int = 0  # tasks before it are DONE: the train array starts here

    @property
    def run(self) -> str:
        return self.exp.run_name

    @property
    def cfg(self) -> ExperimentConfig:
        return self.exp.cfg

    @property
    def layout(self) -> RunLayout:
        return self.exp.layout


def main(experiment: Experiment, args: Args) -> int:
    experiment = experiment.with_config(slurm.with_resolved_setup(experiment.cfg, Path.cwd()))
    chains = [make_chain(exp) for exp in experiment.runs()]
    refusal = check_plan(chains[0].exp, ignore=args.ignore_plan)  # orders permute the same tasks
    if args.dry_run:
        for chain in chains:
            print_dry_run(chain)
        if refusal:  # a dry run shows what `slm submit` would do, its refusal included
            raise SlmError(refusal)
        return 0
    if refusal:
        raise SlmError(refusal)
    require_sbatch()
    for chain in chains:
        refuse_if_queued(chain.layout)
    if not args.no_fetch:  # here, on the login node: the jobs run with the hub offline
        fetch.run(chains[0].exp)
    records: list[dict] = []
    try:
        for chain in chains:
            write_scripts(chain.cfg, chain.layout, chain.scripts)
            records.append(submit(chain))
    except SlmError:
        cancel([job["id"] for record in records for job in record["jobs"].values()])
        raise
    for chain, record in zip(chains, records, strict=True):
        print_submitted(chain, record)
    if experiment.has_runs:
        print(f"after the finish jobs: `slm report -c <your YAML>` (same overrides) writes the mean and "
              f"standard deviation over the runs to {experiment.layout.base / 'orders.md'}")
    return 0


def make_chain(exp: Experiment) -> Chain:
    first = first_to_train(exp)
    if first:
        print(f"{exp.run_name + ': ' if exp.run_name else ''}tasks 0..{first - 1} are DONE and current: submitting "
              + (f"tasks {first}..{len(exp.cfg.tasks) - 1} and the finish job" if first < len(exp.cfg.tasks)
                 else "the finish job only"))
    return Chain(exp, slurm.render_all(exp.cfg, exp.layout, python=sys.executable, run=exp.run_name, first=first),
                 first)


def first_to_train(exp: Experiment) -> int:
    """The first task without a DONE that matches the current inputs: a sequence that grew (or was
    half trained) submits from there. A stale DONE counts as not done: its array task then fails
    naming what changed, as `slm train --check` words it."""
    for t in range(len(exp.cfg.tasks)):
        if validity.problem_of(lambda t=t: validity.require_task(exp, t, verify=False)) is not None:
            return t
    return len(exp.cfg.tasks)


def check_plan(exp: Experiment, ignore: bool) -> str | None:
    """Print the memory plan; why the jobs would not fit (None: they fit, or --ignore-plan)."""
    try:
        from pipeline.planning.checks import check_fits
    except ImportError:  # the planner is optional: submit works without it
        return None
    try:
        fits, text = check_fits(exp.cfg, exp.method)
    except OSError as e:  # e.g. the model's config.json cannot be read on this machine
        print(f"memory plan skipped: {e}")
        return None
    print(text)
    if fits:
        return None
    if ignore:
        print("the plan says this does not fit; submitting anyway (--ignore-plan)")
        return None
    return ("the memory plan above says the jobs do not fit (its `does not fit` lines name the smallest fix: GPU "
            "memory of the training or finish job, or host RAM against slurm.*.mem); change those settings, or "
            "pass --ignore-plan to submit anyway")


def print_dry_run(chain: Chain) -> None:
    layout = chain.layout
    if chain.run:
        print(f"# ======== order {chain.run}: {layout.base} ========")
    for kind, text in chain.scripts.items():
        print(f"# ==== {slurm.script_path(layout, kind)} ====")
        print(text, end="")
    print("# ==== submit (each job waits for the one before) ====")
    print("\n".join(slurm.sbatch_commands(layout, tuple(chain.scripts))))
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


def submit(chain: Chain) -> dict:
    """Submit one run's prepare, train, finish in order. On a failure cancel this run's jobs (the
    caller cancels those of the runs submitted before) and raise."""
    cfg, layout = chain.cfg, chain.layout
    record = {"name": cfg.name, "run": chain.run, "method": cfg.method, "config": str(slurm.config_path(layout)),
              "submitted": datetime.datetime.now().isoformat(timespec="seconds"),
              "tasks": [t.name for t in cfg.tasks], "train_tasks": [t.name for t in cfg.tasks[chain.first:]],
              "jobs": {}}
    previous = None
    for kind in chain.scripts:
        script = slurm.script_path(layout, kind)
        try:
            previous = run_sbatch(slurm.sbatch_argv(script, previous))
        except SlmError:
            cancel([j["id"] for j in record["jobs"].values()])
            raise
        record["jobs"][kind] = {"id": previous, "name": slurm.job_name(cfg, kind, chain.run), "script": str(script)}
        atomic_write_json(slurm.script_dir(layout) / "jobs.json", record)
    return record


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=SBATCH_TIMEOUT_S, check=False)
        print(f"cancelled the jobs already submitted: {' '.join(job_ids)}", file=sys.stderr)


def print_submitted(chain: Chain, record: dict) -> None:
    cfg, layout = chain.cfg, chain.layout
    ids = {kind: job["id"] for kind, job in record["jobs"].items()}
    first = len(cfg.tasks) - len(record["train_tasks"])
    described = {"prepare": f"prepare {ids.get('prepare')}", "finish": f"finish {ids.get('finish')}",
                 "train": f"train {ids.get('train')} (array {first}-{len(cfg.tasks) - 1}%1: "
                          f"{', '.join(record['train_tasks'])})"}
    order = f" order {chain.run}" if chain.run else ""
    print(f"submitted {cfg.name}{order} (method {cfg.method}): " + " -> ".join(described[k] for k in ids))
    print(f"scripts, config and job ids: {slurm.script_dir(layout)}")
    if "train" in ids:
        train_log = slurm.log_file(layout, record["jobs"]["train"]["name"], ids["train"], first)
        print(f"logs: {layout.logs} (task {first}: {Path(train_log).name})")
    print(f"follow it: slm status -c {shlex.quote(str(slurm.config_path(layout)))}")
