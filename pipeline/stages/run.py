"""`slm run`: every stage locally, in order, skipping finished work.

prepare -> for each task i: train i, index, eval row i -> eval of the untrained model -> report.
Each stage checks its own DONE marker / row inputs, so a second run does nothing and says so. The
whole run holds the writer lock of <output_dir>/<method>: a second `slm run` (or a Slurm job of
the same method) fails at once naming it. `--restart` retrains the tasks whose result or
train_state no longer matches the config. An experiment with several task orders (or seeds)
runs each into <output_dir>/<run>/, then writes the mean and standard deviation over the runs
(<output_dir>/orders.md).

One machine with several GPUs, no Slurm: `torchrun --nproc_per_node=N -m pipeline.cli run ...`.
Every rank trains each task together (DeepSpeed, one slice of each global batch per rank); rank 0
alone prepares, indexes, evaluates and reports, and the other ranks wait for its files (the data,
then each eval row) on the file system rather than in a collective, which would time out during a
long evaluation. A rank that fails ends the job: torchrun stops the others.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.data.prepared import prepared_up_to_date
from pipeline.report.markdown import write_orders_summary
from pipeline.stages import RESTART_HELP, evaluate, index, prepare, report, train
from pipeline.state.locks import writer_stage

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

WAIT_POLL_S = 2.0  # how often a rank other than 0 looks for rank 0's files


@dataclass(frozen=True)
class Args:
    restart: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true", help=RESTART_HELP)


def main(experiment: Experiment, args: Args) -> int:
    """Every order/seed run of the experiment (or the one `--order` names), each into its own folder."""
    main_rank = launched_rank() == 0
    for exp in experiment.runs():
        if exp.run_name and main_rank:
            print(f"run: order {exp.run_name!r} -> {exp.cfg.output_dir}")
        status = run(exp, restart=args.restart)
        if status != 0:
            return status
    if experiment.has_runs and main_rank:
        print(f"run: over all runs: {write_orders_summary(experiment.cfg, experiment.layout.base)}")
    return 0


def run(exp: Experiment, restart: bool = False) -> int:
    start = time.time()
    rank = launched_rank()
    with writer_stage(exp.layout):  # before prepare: a second run fails at once, not after the data
        if rank == 0:
            prepare.run(exp)
        else:
            wait_for_rank0(lambda: prepared_up_to_date(exp.cfg, exp.layout), "prepares the data")
        for i in range(len(exp.cfg.tasks)):
            if rank != 0 and i > 0:  # the next task's first collective would time out in a long evaluation
                wait_for_rank0(lambda i=i: evaluate.row_is_current(exp, i - 1), f"evaluates after task {i - 1}")
            status = train.run(exp, i, restart=restart)
            if status != 0:
                return status
            if rank == 0:
                index.run(exp)
                evaluate.run(exp, i)
        if rank != 0:
            return 0  # rank 0 evaluates the untrained model and reports
        evaluate.run(exp, -1)
        report.run(exp)
    print(f"run: {exp.cfg.method} finished in {time.time() - start:.0f} s; report: {exp.layout.eval / 'report.md'}")
    return 0


def launched_rank() -> int:
    """This process's rank as torchrun (or srun) launched it; 0 for a plain `slm run`."""
    return int(os.environ.get("RANK", "0"))


def wait_for_rank0(ready: Callable[[], bool], what: str) -> None:
    """Poll the file system until rank 0's output is there (a failed rank 0 ends the job first)."""
    said = False
    while not ready():
        if not said:
            print(f"run: rank {launched_rank()} waits while rank 0 {what}", flush=True)
            said = True
        time.sleep(WAIT_POLL_S)
