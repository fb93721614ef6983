"""report: eval rows -> accuracy matrix, continual-learning metrics, plots and a markdown summary.

Reads `eval/row-<i>.json` (row i of the matrix, written by `slm eval --after i`) and the untrained
model's `eval/row-untrained.json`, and writes, each atomically, into `eval/`:
matrix.json, metrics.json, report.md, matrix.png, retrieval_confusion.png (methods that retrieve),
loss.png (the training loss of every task, from its JSONL or TensorBoard log: pipeline.loss_curve).
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
from typing import Any

from pipeline import preflight
from pipeline.config import ExperimentConfig
from pipeline.loss_curve import write_loss_curve
from pipeline.report.format import fmt
from pipeline.report.markdown import collect_methods, render_comparison, render_report, write_orders_summary
from pipeline.report.plots import write_plots
from pipeline.report.rows import load_rows
from pipeline.report.summary import compute_metrics, matrix_json
from pipeline.state.artifacts import atomic_write_json, atomic_write_text
from pipeline.state.layout import RunLayout
from pipeline.state.orders import order_runs, selected_runs


def run(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    """Build and write every report artifact; returns the metrics.json content."""
    ev = load_rows(cfg, layout)
    m = compute_metrics(cfg, layout, ev)
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


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace | None = None) -> int:
    runs = selected_runs(cfg, args) if args is not None else order_runs(cfg)
    if getattr(args, "check", False):
        return max(preflight.check(run_cfg, RunLayout.of(run_cfg), "report") for _, run_cfg in runs)
    for name, run_cfg in runs:
        run_layout = RunLayout.of(run_cfg)
        m = run(run_cfg, run_layout)
        status = "" if m["complete"] else f" (partial: {m['rows_present']}/{m['rows_expected']} rows)"
        print(f"{name + ': ' if name else ''}{run_layout.method}{status}: AA {fmt(m['AA'])}  "
              f"BWT {fmt(m['BWT'], True)}  forgetting {fmt(m['forgetting'])}  FWT {fmt(m['FWT'], True)}  "
              f"retrieval {fmt(m['retrieval_accuracy'])}")
        for warning in m["training"]["capture_warnings"]:
            print(f"warning: {warning}")
        print(f"comparison: {run_layout.base / 'comparison.md'}")
        print(run_layout.eval / "report.md")
    if len(order_runs(cfg)) > 1:
        print(f"over all runs: {write_orders_summary(cfg, layout.base)}")
    return 0
