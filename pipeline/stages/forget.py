"""`slm forget --task NAME`: remove one finished task from a run, exactly, and leave every other task as it is.

For a method whose tasks keep their own parameters apart (slm and oracle_task_id: a task's slots and
keys), removing a task is exact: its adapter and key files are deleted, its keys leave the index
(the other tasks' stay as they were), and from then on every stage leaves it out: the model of
every later row has no slots of it, eval scores no column of it, the report says it was removed.
A method whose model after a task mixes every task learned so far (seq_ft, seq_lora, ...) cannot
take one task back out; it refuses, naming why (`Method.forget_problem`).

The task keeps its place in the sequence: its folder holds FORGOTTEN.json (when, why, what was
deleted) and its DONE, whose hashes the later tasks were trained from, so they stay valid, byte
for byte. The eval rows after the removed task were scored with its slots: `slm run` (or `slm eval`
and `slm report`) scores them again; the rows before it keep every other cell. The prepared
records stay in <output_dir>/data (every method there shares them): delete data/<task> yourself
where a licence requires it, and remove the task from the YAML's sources so nothing prepares it again.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import StageInputError
from pipeline.stages import index
from pipeline.state import validity
from pipeline.state.artifacts import atomic_write_json, read_done
from pipeline.state.locks import writer_stage

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    task: str
    reason: str = ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, metavar="NAME|I", help="the finished task to remove (name or 0-based)")
    p.add_argument("--reason", default="", help="why (recorded, and shown in the report): a licence withdrawn, ...")


def main(experiment: Experiment, args: Args) -> int:
    return run(experiment.single(), args.task, args.reason)


def task_index(exp: Experiment, wanted: str) -> int:
    names = [t.name for t in exp.cfg.tasks]
    t = int(wanted) if wanted.isdigit() else names.index(wanted) if wanted in names else None
    if t is None or t >= len(names):
        raise StageInputError(f"--task {wanted}: no such task; the experiment has {', '.join(names)} "
                              f"(or indices 0..{len(names) - 1})")
    return t


def run(exp: Experiment, wanted: str, reason: str = "") -> int:
    cfg, layout, method = exp.cfg, exp.layout, exp.method
    t = task_index(exp, wanted)
    name = cfg.tasks[t].name
    refusal = method.forget_problem(cfg)
    if refusal is not None:
        raise StageInputError(f"slm forget: method {cfg.method} cannot remove task {t} ({name}) exactly: {refusal}",
                              hint="retrain the sequence without the task (a YAML without it, into a new output_dir)")
    with writer_stage(layout):
        if layout.forgotten(t, name):
            print(f"forget: task {t} ({name}) was already removed ({layout.forgotten_file(t, name)})")
            return 0
        validity.require_task(exp, t)  # a finished task, its files as recorded: exactly what leaves
        folder = layout.task_dir(t, name)
        files = sorted((read_done(folder) or {}).get("outputs") or {})
        # The marker first: killed after it, the task counts as removed and this run finishes the job.
        atomic_write_json(layout.forgotten_file(t, name), {
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "reason": reason, "deleted": files})
        for rel in files:
            (folder / rel).unlink(missing_ok=True)
        for stale in (layout.root / "export" / f"{t}-{name}", layout.root / "export" / f"{t}-{name}-merged"):
            shutil.rmtree(stale, ignore_errors=True)  # an export of it would still answer with it
        layout.eval_row(t).unlink(missing_ok=True)  # no row after a removed task
    print(f"forget: task {t} ({name}) removed: deleted {', '.join(files) or 'nothing'} from {folder}")
    if method.learns_keys:
        index.run(exp)  # its keys leave the index; the other tasks' stay
    later = [f"{j} ({cfg.tasks[j].name})" for j in range(t + 1, validity.done_tasks(exp))]
    rescore = f"; the rows after tasks {', '.join(later)} were scored with its slots: " if later else "; "
    print(f"forget: every other task is as it was{rescore}`slm run` scores what changed and writes the report")
    return 0
