"""`slm run`: every stage locally, in order, skipping finished work.

prepare -> for each task i: train i, index, eval row i -> eval of the untrained model -> report.
Each stage checks its own DONE marker / row inputs, so a second run does nothing and says so. The
whole run holds the writer lock of <output_dir>/<method>: a second `slm run` (or a Slurm job of
the same method) fails at once naming it. `--restart` retrains the tasks whose result or
train_state no longer matches the config. An experiment with several task orders (or seeds)
runs each into <output_dir>/<run>/, then writes the mean and standard deviation over the runs
(<output_dir>/orders.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.report.markdown import write_orders_summary
from pipeline.stages import RESTART_HELP, evaluate, index, prepare, report, train
from pipeline.state.locks import writer_stage

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    restart: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true", help=RESTART_HELP)


def main(experiment: Experiment, args: Args) -> int:
    """Every order/seed run of the experiment (or the one `--order` names), each into its own folder."""
    for exp in experiment.runs():
        if exp.run_name:
            print(f"run: order {exp.run_name!r} -> {exp.cfg.output_dir}")
        status = run(exp, restart=args.restart)
        if status != 0:
            return status
    if experiment.has_runs:
        print(f"run: over all runs: {write_orders_summary(experiment.cfg, experiment.layout.base)}")
    return 0


def run(exp: Experiment, restart: bool = False) -> int:
    start = time.time()
    with writer_stage(exp.layout):  # before prepare: a second run fails at once, not after the data
        prepare.run(exp)
        for i in range(len(exp.cfg.tasks)):
            status = train.run(exp, i, restart=restart)
            if status != 0:
                return status
            index.run(exp)
            evaluate.run(exp, i)
        evaluate.run(exp, -1)
        report.run(exp)
    print(f"run: {exp.cfg.method} finished in {time.time() - start:.0f} s; report: {exp.layout.eval / 'report.md'}")
    return 0
