"""report: eval rows -> accuracy matrix, continual-learning metrics, plots and a markdown summary.

Reads `eval/row-<i>.json` (row i of the matrix, written by `slm eval --after i`) and the untrained
model's `eval/row-untrained.json`, and writes, each atomically, into `eval/`:
matrix.json, metrics.json, report.md, matrix.png, retrieval_confusion.png (methods that retrieve),
loss.png (the training loss of every task, from its JSONL or TensorBoard log: pipeline.report.loss_curve).
It also rewrites `<output_dir>/comparison.md`, which compares every method under output_dir
that has a metrics.json (quality, and cost: trainable parameters, bytes stored per task, training
wall time), so one file answers "SLM vs every baseline".

A run in progress has only the first rows; the report then covers the tasks learned so far and
says so. A gap (row 2 present, row 1 missing) is an error: BWT needs every diagonal score. So is
a row whose recorded inputs (data, settings, tasks 0..i) no longer match the tasks on disk, or a
task whose DONE no longer matches the config (pipeline/state/validity.py): the message names the row
or task and the command that rebuilds it. Reading takes no lock.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import preflight
from pipeline.report.format import fmt
from pipeline.report.loss_curve import write_loss_curve
from pipeline.report.markdown import collect_methods, render_comparison, render_report, write_orders_summary
from pipeline.report.plots import write_plots
from pipeline.report.rows import load_rows
from pipeline.report.summary import compute_metrics, matrix_json
from pipeline.stages import CHECK_HELP
from pipeline.state.artifacts import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    check: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help=CHECK_HELP)


def main(experiment: Experiment, args: Args) -> int:
    runs = experiment.runs()
    if args.check:
        return max(preflight.check(exp, "report") for exp in runs)
    for exp in runs:
        m = run(exp)
        status = "" if m["complete"] else f" (partial: {m['rows_present']}/{m['rows_expected']} rows)"
        print(f"{exp.run_name + ': ' if exp.run_name else ''}{exp.layout.method}{status}: AA {fmt(m['AA'])}  "
              f"BWT {fmt(m['BWT'], True)}  forgetting {fmt(m['forgetting'])}  FWT {fmt(m['FWT'], True)}  "
              f"retrieval {fmt(m['retrieval_accuracy'])}")
        for warning in m["training"]["capture_warnings"]:
            print(f"warning: {warning}")
        print(f"comparison: {exp.layout.base / 'comparison.md'}")
        print(exp.layout.eval / "report.md")
    if experiment.has_runs:
        print(f"over all runs: {write_orders_summary(experiment.cfg, experiment.layout.base)}")
    return 0


def run(exp: Experiment) -> dict[str, Any]:
    """Build and write every report artifact; returns the metrics.json content."""
    cfg, layout = exp.cfg, exp.layout
    ev = load_rows(exp)
    m = {**compute_metrics(cfg, layout, ev), "split": cfg.eval.split}  # what the rows scored (eval.split)
    atomic_write_json(layout.eval / "matrix.json", matrix_json(m, ev))
    # metrics.json first, so the comparison below includes this method.
    atomic_write_json(layout.eval / "metrics.json", m)
    write_plots(m, ev, layout)
    loss = write_loss_curve(cfg, layout, layout.eval / "loss.png")  # beside the heatmaps
    methods = collect_methods(layout)
    others = [x for x in methods if x["method"] != layout.method]
    section = render_comparison(methods, ev.tasks, None) if others else []
    atomic_write_text(layout.eval / "report.md", render_report(m, ev, section, loss))
    comparison = "\n".join(render_comparison(methods, ev.tasks, layout.base)).rstrip() + "\n"
    atomic_write_text(layout.base / "comparison.md", comparison)
    return m
