"""The eval rows of one method, read and checked: row i of the matrix is eval/row-<i>.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import metrics
from pipeline.errors import StageInputError
from pipeline.state import validity
from pipeline.state.artifacts import sha256_file
from pipeline.state.layout import RunLayout
from pipeline.state.validity import eval_command

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

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


def _read_row(path: Path, after: int, tasks: list[str], method: str) -> dict[str, Any]:
    """One row file, checked against the experiment: same index, method and task list."""
    rerun = eval_command(method, after)
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
    recorded = row.get("tasks", tasks)
    if [t for t in recorded if t in tasks] != [t for t in tasks if t in recorded]:
        raise StageInputError(f"{path} scores tasks {recorded} but the experiment has {tasks}; "
                              f"it is from another config. Rerun `{rerun}`.")
    missing = [t for t in tasks if t not in row["scores"]]
    if missing:
        raise StageInputError(f"{path} has no score for {missing} yet (a task appended since it was scored?). "
                              f"Rerun `{rerun}`: it scores only the missing cells.")
    return row


def _present_prefix(layout: RunLayout, indices: list[int]) -> int:
    """How many of the leading rows (after the tasks `indices`) exist; refuses no rows at all and a
    gap before a later row."""
    present = [i for i in indices if layout.eval_row(i).is_file()]
    if not present:
        first = indices[0]
        raise StageInputError(f"no eval rows in {layout.eval}: run `{eval_command(layout.method, first)}` after "
                              f"training task {first}, or `slm run --method {layout.method}` for everything.")
    prefix = next((k for k, i in enumerate(indices) if i not in present), len(indices))
    if present[-1] > indices[min(prefix, len(indices) - 1)]:
        gap = indices[prefix]
        raise StageInputError(f"row {gap} of the matrix ({layout.eval_row(gap)}) is missing but row "
                              f"{present[-1]} exists. Run `{eval_command(layout.method, gap)}`.")
    return prefix


def load_rows(exp: Experiment) -> EvalRows:
    """Every eval row of this method that exists, validated; raises StageInputError otherwise."""
    cfg, layout = exp.cfg, exp.layout
    # The matrix has a row after each task and a column per task, less those `slm forget` removed.
    tasks = validity.scored_tasks(exp)
    indices = [cfg.task_index(name) for name in tasks]
    n_rows = _present_prefix(layout, indices)
    rows = [_read_row(layout.eval_row(i), i, tasks, layout.method) for i in indices[:n_rows]]
    untrained_path = layout.eval_row(-1)
    untrained = _read_row(untrained_path, -1, tasks, layout.method) if untrained_path.is_file() else None
    _require_current(exp, indices[:n_rows], rows, untrained)
    paths = [layout.eval_row(i) for i in indices[:n_rows]] + ([untrained_path] if untrained else [])
    loaded = EvalRows(tasks, rows, untrained, {p.name: sha256_file(p) for p in paths})
    try:
        metrics.check_matrix(loaded.matrix)
        if loaded.untrained_scores is not None:
            metrics.check_matrix([loaded.untrained_scores])
    except ValueError as e:
        raise StageInputError(f"bad scores in {layout.eval}: {e}. Rerun `slm eval` for that row.") from None
    return loaded


def _require_current(exp: Experiment, indices: list[int], rows: list[dict], untrained: dict | None) -> None:
    """Every task the rows scored still matches the config, and every row was scored from the
    tasks, data and settings as they are now."""
    try:
        validity.require_tasks(exp, indices[-1] + 1 if indices else 0, verify=False)  # eval verified the files
    except StageInputError as e:
        raise StageInputError(f"{e} The eval rows after it were scored with that result.",
                              hint="retrain it, then `slm eval` those rows and `slm report` again; "
                                   "`slm run --restart` does all of it") from None
    for i, row in zip(indices, rows, strict=True):
        validity.require_row(exp, i, row)
    if untrained is not None:
        validity.require_row(exp, -1, untrained)


def row_labels(ev: EvalRows) -> list[str]:
    return [f"after {i}: {ev.tasks[i]}" for i in range(len(ev.rows))]
