"""The metrics of a run (AA, BWT, forgetting, FWT, retrieval) and what training cost, as
metrics.json and matrix.json hold them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import metrics
from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.report.rows import EvalRows, row_labels
from pipeline.state.artifacts import read_done
from pipeline.state.layout import RunLayout


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
    retrieval = _retrieval(last, len(ev.tasks), layout.eval_row(last["after"]))
    return {
        "method": layout.method,
        "experiment": cfg.name,
        "tasks": ev.tasks,
        "metric": {t.name: (last.get("metric") or {}).get(t.name, t.metric) for t in cfg.tasks
                   if t.name in ev.tasks},
        "forgotten": forgotten_tasks(cfg, layout),
        "rows_present": len(ev.rows),
        "rows_expected": len(ev.tasks),
        "complete": len(ev.rows) == len(ev.tasks),
        **metrics.cl_metrics(matrix, ev.untrained_scores),
        "retrieval_accuracy": retrieval["accuracy"],
        "retrieval_per_task": retrieval["per_task"],
        "retrieval_confusion": retrieval["confusion"],
        "retrieval_accuracy_by_row": [(row.get("retrieval") or {}).get("accuracy") for row in ev.rows],
        "final_scores": dict(zip(ev.tasks, matrix[-1], strict=True)),
        # each test record's score after the last task (rows from before per-record scores: None)
        "final_record_scores": last.get("record_scores"),
        "matrix": matrix,
        "untrained": ev.untrained_scores,
        "training": training_summary(cfg, layout),
        "inputs": ev.inputs,
    }


def forgotten_tasks(cfg: ExperimentConfig, layout: RunLayout) -> list[dict[str, Any]]:
    """The tasks `slm forget` removed from this run, with when and why: the report says so."""
    import json

    return [{"task": t.name, "index": i, **json.loads(layout.forgotten_file(i, t.name).read_text())}
            for i, t in enumerate(cfg.tasks) if layout.forgotten(i, t.name)]


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
    from pipeline.methods.jare.method import CAPTURE_WARN

    return [f"task {i} ({name}) captures {rate:.0%} of {earlier}'s held-out queries"
            for i, name, m in done for earlier, rate in (m.get("capture") or {}).items() if rate > CAPTURE_WARN]


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
