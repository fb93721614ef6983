"""The markdown of report.md, comparison.md (every method under output_dir) and orders.md (mean
and std over task orders)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.methods import METHOD_NAMES, registered
from pipeline.report.format import count, fmt, mean_std, nbytes, table
from pipeline.report.rows import COMPARED, EvalRows, row_labels
from pipeline.state.artifacts import atomic_write_json, atomic_write_text
from pipeline.state.layout import RunLayout
from pipeline.state.orders import order_runs
from pipeline.state.validity import eval_command


def _matrix_section(m: dict[str, Any], ev: EvalRows) -> list[str]:
    rows = [["untrained (b)"] + [fmt(v) for v in m["untrained"]]] if m["untrained"] is not None else []
    for j, (label, row) in enumerate(zip(row_labels(ev), m["matrix"], strict=True)):
        # Bold the diagonal: the score on a task right after learning it.
        rows.append([label] + [f"**{fmt(v)}**" if i == j else fmt(v) for i, v in enumerate(row)])
    n_records = ev.rows[-1].get("n_records") or {}
    per_task = ", ".join(f"{t}: {m['metric'][t]}"
                         + (f" on {n_records[t]} records" if t in n_records else "") for t in ev.tasks)
    return ["## Accuracy matrix", "",
            "Row *after j* holds the score on every task (columns) after training task j; "
            "the diagonal (bold) is each task right after it was learned.", "",
            *table(["after \\ task", *ev.tasks], rows), "",
            f"Task metrics: {per_task}.", "", "![accuracy matrix](matrix.png)", ""]


def _metrics_section(m: dict[str, Any]) -> list[str]:
    t = m["rows_present"]
    # Mixed metrics (ROUGE-L, GSM8K's number, letters) average as TRACE reports AA: per-task scores, each its own.
    mixed = len(set((m.get("metric") or {}).values())) > 1
    each = ", each by its own metric" if mixed else ""
    rows = [
        ["AA", fmt(m["AA"]), f"mean score on the {t} learned task(s) after the last one{each} (higher is better)"],
        ["BWT", fmt(m["BWT"], True), "mean change on earlier tasks since each was learned (< 0: forgetting)"],
        ["forgetting", fmt(m["forgetting"]), "mean drop from each earlier task's best score (lower is better)"],
        ["FWT", fmt(m["FWT"], True), "mean score on a task just before learning it, minus the untrained score"],
    ]
    notes = []
    if t < 2:
        notes.append("BWT, forgetting and FWT need at least two learned tasks.")
    elif m["untrained"] is None:
        notes.append(f"FWT needs the untrained row: run `{eval_command(m['method'], -1)}`.")
    return ["## Continual-learning metrics", "", *table(["metric", "value", "meaning"], rows), "",
            *[line for note in notes for line in (note, "")]]


def _retrieval_section(m: dict[str, Any]) -> list[str]:
    lines = ["## Retrieval (DTKR)", ""]
    if m["retrieval_accuracy"] is None and m["retrieval_confusion"] is None:
        return lines + [f"Method `{m['method']}` does not retrieve slots, so it has no retrieval accuracy.", ""]
    lines += [f"Top-1 retrieval accuracy after the last task (held-out queries whose top-1 slot belongs "
              f"to their own task): **{fmt(m['retrieval_accuracy'])}**.", ""]
    warnings = (m.get("training") or {}).get("capture_warnings") or []
    if warnings:
        lines += ["**Warning, keys capturing an earlier task** (recorded by `slm train`): "
                  + "; ".join(warnings) + ". Those inputs use the newer task's slots.", ""]
    if m["retrieval_per_task"]:
        lines += [*table(["task", "retrieval accuracy"],
                          [[t, fmt(m["retrieval_per_task"].get(t))] for t in m["tasks"]
                           if t in m["retrieval_per_task"]]), ""]
    if m["retrieval_confusion"] is not None:
        rows = [[t, *[f"{c:g}" for c in row]] for t, row in zip(m["tasks"], m["retrieval_confusion"], strict=True)]
        lines += ["Confusion (rows: true task, columns: task of the top-1 slot; counts):", "",
                  *table(["true \\ retrieved", *m["tasks"]], rows), "",
                  "![retrieval confusion](retrieval_confusion.png)", ""]
    return lines


def render_report(m: dict[str, Any], ev: EvalRows, comparison: list[str], loss: list[str] | None = None) -> str:
    lines = [f"# Report: experiment `{m['experiment']}`, method `{m['method']}`", ""]
    if not m["complete"]:
        nxt = m["rows_present"]
        lines += [f"**Partial matrix: {nxt} of {m['rows_expected']} rows.** The metrics cover the "
                  f"{nxt} task(s) learned so far. Next: train task {nxt}, then "
                  f"`{eval_command(m['method'], nxt)}`, or `slm run --method {m['method']}`.", ""]
    for gone in m.get("forgotten") or []:
        lines += [f"**Task {gone['index']} ({gone['task']}) was removed** by `slm forget` on {gone['date']}"
                  f"{': ' + gone['reason'] if gone.get('reason') else ''}. Its slots and keys are gone; the matrix "
                  "and the metrics cover the other tasks.", ""]
    lines += _matrix_section(m, ev) + (loss or []) + _metrics_section(m) + _retrieval_section(m)
    return "\n".join(lines + comparison).rstrip() + "\n"


def collect_methods(layout: RunLayout) -> list[dict[str, Any]]:
    """metrics.json of every method folder under output_dir: known methods first, in registry order."""
    if not layout.base.is_dir():
        return []
    found = [p.parent.parent for p in layout.base.glob("*/eval/metrics.json")]
    found.sort(key=lambda d: (METHOD_NAMES.index(d.name) if d.name in METHOD_NAMES else len(METHOD_NAMES), d.name))
    out = []
    for folder in found:
        try:
            m = json.loads((folder / "eval" / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue  # another method's broken file must not stop this report
        if isinstance(m, dict):
            out.append({**m, "method": folder.name})
    return out


def comparisontable(methods: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    rows = []
    for m in methods:
        # Only methods scored on the same tasks compare like with like; flag the others.
        same = m.get("tasks") == tasks
        name = f"`{m['method']}`" + ("" if same else " (other tasks)")
        done = f"{m.get('rows_present', '?')}/{m.get('rows_expected', '?')}"
        values = [fmt(m.get(k), signed=k in ("BWT", "FWT")) for k in COMPARED]
        rows.append([name, _role(m["method"]), done, *values, *_cost(m.get("training") or {})])
    header = ["method", "role", "rows", "AA ↑", "BWT ↑", "forgetting ↓", "FWT ↑", "retrieval acc. ↑",
              "trainable params", "stored / task", "train wall"]
    return table(header, rows)


def _role(method: str) -> str:
    return registered()[method].role if method in METHOD_NAMES else ""


def _cost(training: dict[str, Any]) -> list[str]:
    params, size, wall = (training.get(k) for k in ("trainable_params", "bytes_per_task", "wall_s"))
    return [count(params) if params else "n/a", nbytes(size) if size else "n/a",
            f"{wall:.0f} s" if wall is not None else "n/a"]


def render_comparison(methods: list[dict[str, Any]], tasks: list[str], base: Path | None) -> list[str]:
    """The comparison section; with `base`, the standalone comparison.md (with links to each report)."""
    title = "# Method comparison" if base else "## Comparison across methods"
    lines = [title, ""]
    if base:
        lines += [f"Every method under `{base}`, scored on the same prepared data.", ""]
    lines += ["Each method's metrics over the rows it has evaluated (rows: evaluated / expected). "
              "n/a: undefined (one task, no untrained row, or no retrieval).", "",
              *comparisontable(methods, tasks), ""]
    if base:
        lines += [f"- `{m['method']}`: [{m['method']}/eval/report.md]({m['method']}/eval/report.md)"
                  for m in methods] + [""]
    return lines


def orders_summary(cfg: ExperimentConfig, method: str) -> dict[str, Any]:
    """Per-run metrics of `method` over every order/seed run of `cfg`, with mean and std per metric."""
    runs = {}
    for name, run_cfg in order_runs(cfg):
        path = RunLayout.of(run_cfg).for_method(method).eval / "metrics.json"
        runs[name] = json.loads(path.read_text()) if path.is_file() else None
    done = [m for m in runs.values() if m is not None and m["complete"]]
    stats = {k: dict(zip(("mean", "std"), mean_std([m[k] for m in done]), strict=True)) for k in COMPARED}
    return {"method": method, "runs": {n: (None if m is None else {k: m[k] for k in (*COMPARED, "tasks", "matrix")})
                                       for n, m in runs.items()},
            "complete_runs": len(done), "expected_runs": len(runs), "mean_std": stats}


def render_orders(cfg: ExperimentConfig, summaries: list[dict[str, Any]]) -> str:
    names = [n for n, _ in order_runs(cfg)]
    lines = [f"# Experiment `{cfg.name}` over {len(names)} runs (task orders x seeds)", "",
             "Mean ± standard deviation over the finished runs; each run is its own sequential experiment in "
             f"`{cfg.output_dir}/<run>/`.", ""]
    header = ["method", "runs", *[f"{k} (mean ± std)" for k in COMPARED]]
    rows = []
    for s in summaries:
        cells = []
        for k in COMPARED:
            mean, std = s["mean_std"][k]["mean"], s["mean_std"][k]["std"]
            cells.append("n/a" if mean is None else f"{fmt(mean, k in ('BWT', 'FWT'))} ± {std:.3f}")
        rows.append([f"`{s['method']}`", f"{s['complete_runs']}/{s['expected_runs']}", *cells])
    lines += [*table(header, rows), "", "Per run:", ""]
    per_run = [[f"`{s['method']}`", n, *[fmt(r[k]) if (r := s["runs"][n]) else "not run" for k in COMPARED]]
               for s in summaries for n in names]
    lines += table(["method", "run", *COMPARED], per_run)
    return "\n".join(lines) + "\n"


def write_orders_summary(cfg: ExperimentConfig, base: Path) -> Path:
    """orders.json and orders.md under output_dir: every method that has results in any run."""
    methods = sorted({p.parent.parent.name for name, c in order_runs(cfg)
                      for p in (Path(c.output_dir).expanduser().resolve()).glob("*/eval/metrics.json")},
                     key=lambda m: METHOD_NAMES.index(m) if m in METHOD_NAMES else len(METHOD_NAMES))
    summaries = [orders_summary(cfg, m) for m in methods]
    atomic_write_json(base / "orders.json", {"experiment": cfg.name, "runs": [n for n, _ in order_runs(cfg)],
                                             "methods": summaries})
    atomic_write_text(base / "orders.md", render_orders(cfg, summaries))
    return base / "orders.md"
