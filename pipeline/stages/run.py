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

from pipeline.config import ExperimentConfig
from pipeline.report.markdown import write_orders_summary
from pipeline.stages import evaluate, index, prepare, report, train
from pipeline.state.layout import RunLayout
from pipeline.state.locks import writer_stage
from pipeline.state.orders import order_runs, selected_runs


def run(cfg: ExperimentConfig, layout: RunLayout, restart: bool = False) -> int:
    start = time.time()
    with writer_stage(layout):  # before prepare: a second run fails at once, not after the data
        prepare.run(cfg, layout)
        for i in range(len(cfg.tasks)):
            status = train.run(cfg, layout, i, restart=restart)
            if status != 0:
                return status
            index.run(cfg, layout)
            evaluate.run(cfg, layout, i)
        evaluate.run(cfg, layout, -1)
        report.run(cfg, layout)
    print(f"run: {cfg.method} finished in {time.time() - start:.0f} s; report: {layout.eval / 'report.md'}")
    return 0


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    """Every order/seed run of the experiment (or the one `--order` names), each into its own folder."""
    runs = selected_runs(cfg, args)
    for name, run_cfg in runs:
        if name:
            print(f"run: order {name!r} -> {run_cfg.output_dir}")
        status = run(run_cfg, RunLayout.of(run_cfg), restart=bool(getattr(args, "restart", False)))
        if status != 0:
            return status
    if len(order_runs(cfg)) > 1:
        print(f"run: over all runs: {write_orders_summary(cfg, layout.base)}")
    return 0
