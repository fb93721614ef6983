"""The heatmaps of a report: the accuracy matrix and the retrieval confusion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.report.rows import EvalRows, row_labels
from pipeline.state.artifacts import atomic_path
from pipeline.state.layout import RunLayout


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


def write_plots(m: dict[str, Any], ev: EvalRows, layout: RunLayout) -> None:
    plot_matrix(m, ev, layout.eval / "matrix.png")
    confusion_png = layout.eval / "retrieval_confusion.png"
    if m["retrieval_confusion"] is not None:
        plot_confusion(m, confusion_png)
    else:
        confusion_png.unlink(missing_ok=True)  # a stale plot from an earlier run would mislead
