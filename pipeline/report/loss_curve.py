"""The training loss of every task of a run, read back from its logs and drawn as one curve.

Source per task: the JSONL log `slm train` writes (pipeline.tracking.train_log), else the
TensorBoard event files of runs that predate it (`train/loss` in `logs/tensorboard/<method>/
<i>-<task>/`). A task resumed after preemption logs some steps twice: the last value of a step wins.
Tasks are drawn one after the other on a shared axis of optimizer steps, each in its own colour.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.config import ExperimentConfig
from pipeline.state.artifacts import atomic_path
from pipeline.state.layout import RunLayout
from pipeline.tracking import train_log

Curve = list[tuple[int, float]]  # (step, loss), steps ascending


def read_jsonl(path: Path) -> Curve:
    by_step: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill: the rest of the log still counts
        if isinstance(entry, dict) and "loss" in entry and "step" in entry:
            by_step[int(entry["step"])] = float(entry["loss"])
    return sorted(by_step.items())


def read_tensorboard(folder: Path) -> Curve:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    if "train/loss" not in events.Tags().get("scalars", []):
        return []
    return sorted({e.step: e.value for e in events.Scalars("train/loss")}.items())


def task_curves(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, tuple[Curve, str]]:
    """Task label -> (its loss curve, where it was read from), for the tasks that have one."""
    out: dict[str, tuple[Curve, str]] = {}
    for t, task in enumerate(cfg.tasks):
        label = f"{t}-{task.name}"
        jsonl, board = train_log(layout, t, task.name), layout.tensorboard / label
        if jsonl.is_file() and (curve := read_jsonl(jsonl)):
            out[label] = (curve, "jsonl")
        elif board.is_dir() and (curve := read_tensorboard(board)):
            out[label] = (curve, "tensorboard")
    return out


def plot_loss(curves: dict[str, tuple[Curve, str]], method: str, path: Path) -> None:
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    offset = 0
    for label, (curve, _) in curves.items():
        steps = [offset + s for s, _ in curve]
        ax.plot(steps, [v for _, v in curve], label=label, linewidth=1.2)
        ax.axvline(offset, color="grey", linewidth=0.5, linestyle=":")
        offset = steps[-1]
    ax.set_xlabel("optimizer step (tasks in order)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{method}: training loss per task", fontsize=10)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def write_loss_curve(cfg: ExperimentConfig, layout: RunLayout, path: Path) -> list[str]:
    """Draw `path` and return the report's section about it ([] and no file when no task logged a loss)."""
    curves = task_curves(cfg, layout)
    if not curves:
        path.unlink(missing_ok=True)  # a stale plot from an earlier run would mislead
        return []
    plot_loss(curves, layout.method, path)
    rows = [f"| {label} | {len(c)} | {c[0][1]:.4f} | {c[-1][1]:.4f} | {src} |" for label, (c, src) in curves.items()]
    return ["## Training loss", "", "| task | steps | first loss | last loss | from |", "|---|---|---|---|---|", *rows,
            "", f"![training loss]({path.name})", ""]
