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
task whose DONE no longer matches the config (pipeline/validity.py): the message names the row
or task and the command that rebuilds it. Reading takes no lock.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline import metrics, preflight, validity
from pipeline.artifacts import atomic_path, atomic_write_json, atomic_write_text, read_done, sha256_file
from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.layout import RunLayout
from pipeline.loss_curve import write_loss_curve
from pipeline.methods import METHOD_NAMES, get_method
from pipeline.orders import order_runs, selected_runs

COMPARED = ("AA", "BWT", "forgetting", "FWT", "retrieval_accuracy")


@dataclass(frozen=True)
class EvalRows:
    """The validated eval rows of one method: rows 0..R-1 in order, plus the untrained row."""

    tasks: list[str]
    rows: list[dict[str, Any]]
    untrained: dict[str, Any] | None
    inputs: dict[str, str]  # row file name -> sha256, recorded in metrics.json as provenance

    @property
    def matrix(self) -> list[list[float]]:
        return [[row["scores"][t] for t in self.tasks] for row in self.rows]

    @property
    def untrained_scores(self) -> list[float] | None:
        return None if self.untrained is None else [self.untrained["scores"][t] for t in self.tasks]


# ---- reading the eval rows -----------------------------------------------------------------


def _eval_command(after: int, method: str) -> str:
    return f"slm eval --after {after} --method {method}"


def _read_row(path: Path, after: int, tasks: list[str], method: str) -> dict[str, Any]:
    """One row file, checked against the experiment: same index, method and task list."""
    rerun = _eval_command(after, method)
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: torn JSON, or not UTF-8
        raise StageInputError(f"{path} cannot be read as JSON ({type(e).__name__}: {e}). Rerun `{rerun}`.") from None
    if not isinstance(row, dict) or not isinstance(row.get("scores"), dict):
        raise StageInputError(f"{path} is not an eval row (no `scores` mapping). Rerun `{rerun}`.")
    if row.get("after") != after:
        raise StageInputError(f"{path} says after={row.get('after')!r}, expected {after}. Rerun `{rerun}`.")
    if row.get("method", method) != method:
        raise StageInputError(f"{path} was written by method {row['method']!r}, not {method!r}. Rerun `{rerun}`.")
    if row.get("tasks", tasks) != tasks:
        raise StageInputError(f"{path} scores tasks {row['tasks']} but the experiment has {tasks}; "
                              f"it is from another config. Rerun `{rerun}`.")
    missing = [t for t in tasks if t not in row["scores"]]
    if missing:
        raise StageInputError(f"{path} has no score for {missing}. Rerun `{rerun}`.")
    return row


def _present_prefix(layout: RunLayout, n_tasks: int) -> int:
    """How many leading rows exist; refuses no rows at all and a gap before a later row."""
    present = [i for i in range(n_tasks) if layout.eval_row(i).is_file()]
    if not present:
        raise StageInputError(f"no eval rows in {layout.eval}: run `{_eval_command(0, layout.method)}` "
                              f"after training task 0, or `slm run --method {layout.method}` for everything.")
    prefix = next((i for i in range(n_tasks) if i not in present), n_tasks)
    if present[-1] > prefix:
        raise StageInputError(f"row {prefix} of the matrix ({layout.eval_row(prefix)}) is missing but row "
                              f"{present[-1]} exists. Run `{_eval_command(prefix, layout.method)}`.")
    return prefix


def load_rows(cfg: ExperimentConfig, layout: RunLayout) -> EvalRows:
    """Every eval row of this method that exists, validated; raises StageInputError otherwise."""
    tasks = [t.name for t in cfg.tasks]
    n_rows = _present_prefix(layout, len(tasks))
    rows = [_read_row(layout.eval_row(i), i, tasks, layout.method) for i in range(n_rows)]
    untrained_path = layout.eval_row(-1)
    untrained = _read_row(untrained_path, -1, tasks, layout.method) if untrained_path.is_file() else None
    _require_current(cfg, layout, rows, untrained)
    paths = [layout.eval_row(i) for i in range(n_rows)] + ([untrained_path] if untrained else [])
    loaded = EvalRows(tasks, rows, untrained, {p.name: sha256_file(p) for p in paths})
    try:
        metrics.check_matrix(loaded.matrix)
        if loaded.untrained_scores is not None:
            metrics.check_matrix([loaded.untrained_scores])
    except ValueError as e:
        raise StageInputError(f"bad scores in {layout.eval}: {e}. Rerun `slm eval` for that row.") from None
    return loaded


def _require_current(cfg: ExperimentConfig, layout: RunLayout, rows: list[dict], untrained: dict | None) -> None:
    """Every task the rows scored still matches the config, and every row was scored from the
    tasks, data and settings as they are now."""
    try:
        validity.require_tasks(cfg, layout, len(rows), verify=False)  # eval verified the files it loaded
    except StageInputError as e:
        raise StageInputError(f"{e} The eval rows after it were scored with that result.",
                              hint="retrain it, then `slm eval` those rows and `slm report` again; "
                                   "`slm run --restart` does all of it") from None
    for i, row in enumerate(rows):
        validity.require_row(cfg, layout, i, row)
    if untrained is not None:
        validity.require_row(cfg, layout, -1, untrained)


# ---- metrics --------------------------------------------------------------------------------


def _retrieval(row: dict[str, Any], n_tasks: int, where: Path) -> dict[str, Any]:
    """accuracy / per_task / confusion of one row; all None for methods that do not retrieve."""
    r = row.get("retrieval") or {}
    confusion = r.get("confusion")
    if confusion is not None:
        ok = len(confusion) == n_tasks and all(len(c) == n_tasks for c in confusion)
        if not ok:
            raise StageInputError(f"{where}: retrieval.confusion must be {n_tasks} x {n_tasks} "
                                  "(true task x retrieved task). Rerun `slm eval` for that row.")
    return {"accuracy": r.get("accuracy"), "per_task": r.get("per_task") or {}, "confusion": confusion}


def compute_metrics(cfg: ExperimentConfig, layout: RunLayout, ev: EvalRows) -> dict[str, Any]:
    """The content of metrics.json."""
    matrix = ev.matrix
    last = ev.rows[-1]
    retrieval = _retrieval(last, len(ev.tasks), layout.eval_row(len(ev.rows) - 1))
    return {
        "method": layout.method,
        "experiment": cfg.name,
        "tasks": ev.tasks,
        "metric": {t.name: (last.get("metric") or {}).get(t.name, t.metric) for t in cfg.tasks},
        "rows_present": len(ev.rows),
        "rows_expected": len(ev.tasks),
        "complete": len(ev.rows) == len(ev.tasks),
        **metrics.cl_metrics(matrix, ev.untrained_scores),
        "retrieval_accuracy": retrieval["accuracy"],
        "retrieval_per_task": retrieval["per_task"],
        "retrieval_confusion": retrieval["confusion"],
        "retrieval_accuracy_by_row": [(row.get("retrieval") or {}).get("accuracy") for row in ev.rows],
        "final_scores": dict(zip(ev.tasks, matrix[-1], strict=True)),
        "matrix": matrix,
        "untrained": ev.untrained_scores,
        "training": training_summary(cfg, layout),
        "inputs": ev.inputs,
    }


def training_summary(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    """Cost of the method from its task DONE markers: trainable parameters (largest task), bytes it
    stores per task (mean over finished tasks), training wall time and peak memory (summed / max)."""
    done = [(i, t.name, m) for i, t in enumerate(cfg.tasks) if (m := read_done(layout.task_dir(i, t.name)))]
    markers = [m for _, _, m in done]
    if not markers:
        return {"tasks": 0, "capture_warnings": [], "trainable_params": None, "bytes_per_task": None,
                "wall_s": None, "peak_rss_mib": None}
    sizes = [sum((layout.task_dir(i, name) / f).stat().st_size for f in m.get("outputs", {})
                 if (layout.task_dir(i, name) / f).is_file()) for i, name, m in done]
    walls = [m.get("wall_s") for m in markers]
    peaks = [m.get("peak_rss_mib") for m in markers if m.get("peak_rss_mib") is not None]
    return {"tasks": len(markers),
            "capture_warnings": capture_warnings(done),
            "trainable_params": max((m.get("trainable_params") or 0) for m in markers) or None,
            "bytes_per_task": round(sum(sizes) / len(sizes)),
            "wall_s": round(sum(walls), 1) if all(w is not None for w in walls) else None,
            "peak_rss_mib": max(peaks) if peaks else None}


def capture_warnings(done: list[tuple[int, str, dict[str, Any]]]) -> list[str]:
    """DTKR methods record in each task's DONE how much of every earlier task's held-out queries
    the new task's keys take (top-1); above CAPTURE_WARN those inputs run the wrong slots."""
    from pipeline.methods.jare import CAPTURE_WARN

    return [f"task {i} ({name}) captures {rate:.0%} of {earlier}'s held-out queries"
            for i, name, m in done for earlier, rate in (m.get("capture") or {}).items() if rate > CAPTURE_WARN]


def row_labels(ev: EvalRows) -> list[str]:
    return [f"after {i}: {ev.tasks[i]}" for i in range(len(ev.rows))]


def matrix_json(m: dict[str, Any], ev: EvalRows) -> dict[str, Any]:
    """matrix.json: the whole matrix with its labels; the untrained row kept apart (it is b, not a)."""
    return {
        "method": m["method"],
        "tasks": ev.tasks,
        "row_labels": row_labels(ev),
        "after": list(range(len(ev.rows))),
        "matrix": m["matrix"],
        "untrained": None if ev.untrained is None else {"label": "untrained", "scores": m["untrained"]},
        "metric": m["metric"],
        "rows_expected": m["rows_expected"],
        "complete": m["complete"],
    }


# ---- plots (matplotlib's object API on the Agg canvas: no pyplot global state, no display) ---


def _heatmap(values: list[list[float]], rows: list[str], cols: list[str], title: str,
             labels: list[list[str]], bar_label: str) -> Figure:
    fig = Figure(figsize=(1.6 + 1.1 * len(cols), 1.4 + 0.55 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for j, row in enumerate(values):
        for i, value in enumerate(row):
            # Dark text on the bright end of viridis, light text on the dark end.
            color = "black" if value > 0.6 else "white"
            ax.text(i, j, labels[j][i], ha="center", va="center", color=color, fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label=bar_label)
    return fig


def _save_png(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def plot_matrix(m: dict[str, Any], ev: EvalRows, path: Path) -> None:
    values = ([m["untrained"]] if m["untrained"] is not None else []) + m["matrix"]
    rows = (["untrained"] if m["untrained"] is not None else []) + row_labels(ev)
    labels = [[f"{v:.2f}" for v in row] for row in values]
    title = f"{m['method']}: score on each task (columns)\nafter training each task (rows)"
    _save_png(_heatmap(values, rows, ev.tasks, title, labels, "score"), path)


def plot_confusion(m: dict[str, Any], path: Path) -> None:
    counts = m["retrieval_confusion"]
    # Colour by the fraction of each true task's queries, so tasks of different sizes compare.
    fractions = [[c / max(sum(row), 1) for c in row] for row in counts]
    labels = [[f"{c:g}" for c in row] for row in counts]
    acc = m["retrieval_accuracy"]
    title = f"{m['method']}: true task (rows)\nvs task of the top-1 slot (columns)"
    if acc is not None:
        title += f"\ntop-1 retrieval accuracy {acc:.3f}"
    _save_png(_heatmap(fractions, m["tasks"], m["tasks"], title, labels, "fraction of the row"), path)


# ---- markdown -------------------------------------------------------------------------------


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _matrix_section(m: dict[str, Any], ev: EvalRows) -> list[str]:
    rows = [["untrained (b)"] + [_fmt(v) for v in m["untrained"]]] if m["untrained"] is not None else []
    for j, (label, row) in enumerate(zip(row_labels(ev), m["matrix"], strict=True)):
        # Bold the diagonal: the score on a task right after learning it.
        rows.append([label] + [f"**{_fmt(v)}**" if i == j else _fmt(v) for i, v in enumerate(row)])
    n_records = ev.rows[-1].get("n_records") or {}
    per_task = ", ".join(f"{t}: {m['metric'][t]}"
                         + (f" on {n_records[t]} records" if t in n_records else "") for t in ev.tasks)
    return ["## Accuracy matrix", "",
            "Row *after j* holds the score on every task (columns) after training task j; "
            "the diagonal (bold) is each task right after it was learned.", "",
            *_table(["after \\ task", *ev.tasks], rows), "",
            f"Task metrics: {per_task}.", "", "![accuracy matrix](matrix.png)", ""]


def _metrics_section(m: dict[str, Any]) -> list[str]:
    t = m["rows_present"]
    rows = [
        ["AA", _fmt(m["AA"]), f"mean score on the {t} learned task(s) after the last one (higher is better)"],
        ["BWT", _fmt(m["BWT"], True), "mean change on earlier tasks since each was learned (< 0: forgetting)"],
        ["forgetting", _fmt(m["forgetting"]), "mean drop from each earlier task's best score (lower is better)"],
        ["FWT", _fmt(m["FWT"], True), "mean score on a task just before learning it, minus the untrained score"],
    ]
    notes = []
    if t < 2:
        notes.append("BWT, forgetting and FWT need at least two learned tasks.")
    elif m["untrained"] is None:
        notes.append(f"FWT needs the untrained row: run `{_eval_command(-1, m['method'])}`.")
    return ["## Continual-learning metrics", "", *_table(["metric", "value", "meaning"], rows), "",
            *[line for note in notes for line in (note, "")]]


def _retrieval_section(m: dict[str, Any]) -> list[str]:
    lines = ["## Retrieval (DTKR)", ""]
    if m["retrieval_accuracy"] is None and m["retrieval_confusion"] is None:
        return lines + [f"Method `{m['method']}` does not retrieve slots, so it has no retrieval accuracy.", ""]
    lines += [f"Top-1 retrieval accuracy after the last task (held-out queries whose top-1 slot belongs "
              f"to their own task): **{_fmt(m['retrieval_accuracy'])}**.", ""]
    warnings = (m.get("training") or {}).get("capture_warnings") or []
    if warnings:
        lines += ["**Warning, keys capturing an earlier task** (recorded by `slm train`): "
                  + "; ".join(warnings) + ". Those inputs use the newer task's slots.", ""]
    if m["retrieval_per_task"]:
        lines += [*_table(["task", "retrieval accuracy"],
                          [[t, _fmt(m["retrieval_per_task"].get(t))] for t in m["tasks"]
                           if t in m["retrieval_per_task"]]), ""]
    if m["retrieval_confusion"] is not None:
        rows = [[t, *[f"{c:g}" for c in row]] for t, row in zip(m["tasks"], m["retrieval_confusion"], strict=True)]
        lines += ["Confusion (rows: true task, columns: task of the top-1 slot; counts):", "",
                  *_table(["true \\ retrieved", *m["tasks"]], rows), "",
                  "![retrieval confusion](retrieval_confusion.png)", ""]
    return lines


def render_report(m: dict[str, Any], ev: EvalRows, comparison: list[str], loss: list[str] | None = None) -> str:
    lines = [f"# Report: experiment `{m['experiment']}`, method `{m['method']}`", ""]
    if not m["complete"]:
        nxt = m["rows_present"]
        lines += [f"**Partial matrix: {nxt} of {m['rows_expected']} rows.** The metrics cover the "
                  f"{nxt} task(s) learned so far. Next: train task {nxt}, then "
                  f"`{_eval_command(nxt, m['method'])}`, or `slm run --method {m['method']}`.", ""]
    lines += _matrix_section(m, ev) + (loss or []) + _metrics_section(m) + _retrieval_section(m)
    return "\n".join(lines + comparison).rstrip() + "\n"


# ---- cross-method comparison ----------------------------------------------------------------


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


def comparison_table(methods: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    rows = []
    for m in methods:
        # Only methods scored on the same tasks compare like with like; flag the others.
        same = m.get("tasks") == tasks
        name = f"`{m['method']}`" + ("" if same else " (other tasks)")
        done = f"{m.get('rows_present', '?')}/{m.get('rows_expected', '?')}"
        values = [_fmt(m.get(k), signed=k in ("BWT", "FWT")) for k in COMPARED]
        rows.append([name, _role(m["method"]), done, *values, *_cost(m.get("training") or {})])
    header = ["method", "role", "rows", "AA ↑", "BWT ↑", "forgetting ↓", "FWT ↑", "retrieval acc. ↑",
              "trainable params", "stored / task", "train wall"]
    return _table(header, rows)


def _role(method: str) -> str:
    if method not in METHOD_NAMES:
        return ""
    return get_method(method).role


def _cost(training: dict[str, Any]) -> list[str]:
    params, size, wall = (training.get(k) for k in ("trainable_params", "bytes_per_task", "wall_s"))
    return [_count(params) if params else "n/a", _bytes(size) if size else "n/a",
            f"{wall:.0f} s" if wall is not None else "n/a"]


def _count(n: float) -> str:
    for unit in ("", "K", "M"):
        if n < 1000 or unit == "M":
            return f"{n:.0f}" if not unit else f"{n:.1f}{unit}"
        n /= 1000
    return ""


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def render_comparison(methods: list[dict[str, Any]], tasks: list[str], base: Path | None) -> list[str]:
    """The comparison section; with `base`, the standalone comparison.md (with links to each report)."""
    title = "# Method comparison" if base else "## Comparison across methods"
    lines = [title, ""]
    if base:
        lines += [f"Every method under `{base}`, scored on the same prepared data.", ""]
    lines += ["Each method's metrics over the rows it has evaluated (rows: evaluated / expected). "
              "n/a: undefined (one task, no untrained row, or no retrieval).", "",
              *comparison_table(methods, tasks), ""]
    if base:
        lines += [f"- `{m['method']}`: [{m['method']}/eval/report.md]({m['method']}/eval/report.md)"
                  for m in methods] + [""]
    return lines


# ---- the stage ------------------------------------------------------------------------------


def _write_plots(m: dict[str, Any], ev: EvalRows, layout: RunLayout) -> None:
    plot_matrix(m, ev, layout.eval / "matrix.png")
    confusion_png = layout.eval / "retrieval_confusion.png"
    if m["retrieval_confusion"] is not None:
        plot_confusion(m, confusion_png)
    else:
        confusion_png.unlink(missing_ok=True)  # a stale plot from an earlier run would mislead


def run(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    """Build and write every report artifact; returns the metrics.json content."""
    ev = load_rows(cfg, layout)
    m = compute_metrics(cfg, layout, ev)
    atomic_write_json(layout.eval / "matrix.json", matrix_json(m, ev))
    # metrics.json first, so the comparison below includes this method.
    atomic_write_json(layout.eval / "metrics.json", m)
    _write_plots(m, ev, layout)
    loss = write_loss_curve(cfg, layout, layout.eval / "loss.png")  # beside the heatmaps
    methods = collect_methods(layout)
    others = [x for x in methods if x["method"] != layout.method]
    section = render_comparison(methods, ev.tasks, None) if others else []
    atomic_write_text(layout.eval / "report.md", render_report(m, ev, section, loss))
    comparison = "\n".join(render_comparison(methods, ev.tasks, layout.base)).rstrip() + "\n"
    atomic_write_text(layout.base / "comparison.md", comparison)
    return m


# ---- several task orders / seeds -------------------------------------------------------------


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and (population) standard deviation of the defined values; (None, None) if none are."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    return statistics.fmean(defined), statistics.pstdev(defined)


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
            cells.append("n/a" if mean is None else f"{_fmt(mean, k in ('BWT', 'FWT'))} ± {std:.3f}")
        rows.append([f"`{s['method']}`", f"{s['complete_runs']}/{s['expected_runs']}", *cells])
    lines += [*_table(header, rows), "", "Per run:", ""]
    per_run = [[f"`{s['method']}`", n, *[_fmt(r[k]) if (r := s["runs"][n]) else "not run" for k in COMPARED]]
               for s in summaries for n in names]
    lines += _table(["method", "run", *COMPARED], per_run)
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


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace | None = None) -> int:
    runs = selected_runs(cfg, args) if args is not None else order_runs(cfg)
    if getattr(args, "check", False):
        return max(preflight.check(run_cfg, RunLayout.of(run_cfg), "report") for _, run_cfg in runs)
    for name, run_cfg in runs:
        run_layout = RunLayout.of(run_cfg)
        m = run(run_cfg, run_layout)
        status = "" if m["complete"] else f" (partial: {m['rows_present']}/{m['rows_expected']} rows)"
        print(f"{name + ': ' if name else ''}{run_layout.method}{status}: AA {_fmt(m['AA'])}  "
              f"BWT {_fmt(m['BWT'], True)}  forgetting {_fmt(m['forgetting'])}  FWT {_fmt(m['FWT'], True)}  "
              f"retrieval {_fmt(m['retrieval_accuracy'])}")
        for warning in m["training"]["capture_warnings"]:
            print(f"warning: {warning}")
        print(f"comparison: {run_layout.base / 'comparison.md'}")
        print(run_layout.eval / "report.md")
    if len(order_runs(cfg)) > 1:
        print(f"over all runs: {write_orders_summary(cfg, layout.base)}")
    return 0
