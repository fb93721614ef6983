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
        raise StageInputError(f"no eval rows in {layout.eval}: run `{eval_command(layout.method, 0)}` "
                              f"after training task 0, or `slm run --method {layout.method}` for everything.")
    prefix = next((i for i in range(n_tasks) if i not in present), n_tasks)
    if present[-1] > prefix:
        raise StageInputError(f"row {prefix} of the matrix ({layout.eval_row(prefix)}) is missing but row "
                              f"{present[-1]} exists. Run `{eval_command(layout.method, prefix)}`.")
    return prefix


def load_rows(exp: Experiment) -> EvalRows:
    """Every eval row of this method that exists, validated; raises StageInputError otherwise."""
    cfg, layout = exp.cfg, exp.layout
    tasks = [t.name for t in cfg.tasks]
    n_rows = _present_prefix(layout, len(tasks))
    rows = [_read_row(layout.eval_row(i), i, tasks, layout.method) for i in range(n_rows)]
    untrained_path = layout.eval_row(-1)
    untrained = _read_row(untrained_path, -1, tasks, layout.method) if untrained_path.is_file() else None
    _require_current(exp, rows, untrained)
    paths = [layout.eval_row(i) for i in range(n_rows)] + ([untrained_path] if untrained else [])
    loaded = EvalRows(tasks, rows, untrained, {p.name: sha256_file(p) for p in paths})
    try:
        metrics.check_matrix(loaded.matrix)
        if loaded.untrained_scores is not None:
            metrics.check_matrix([loaded.untrained_scores])
    except ValueError as e:
        raise StageInputError(f"bad scores in {layout.eval}: {e}. Rerun `slm eval` for that row.") from None
    return loaded


def _require_current(exp: Experiment, rows: list[dict], untrained: dict | None) -> None:
    """Every task the rows scored still matches the config, and every row was scored from the
    tasks, data and settings as they are now."""
    try:
        validity.require_tasks(exp, len(rows), verify=False)  # eval verified the files it loaded
    except StageInputError as e:
        raise StageInputError(f"{e} The eval rows after it were scored with that result.",
                              hint="retrain it, then `slm eval` those rows and `slm report` again; "
                                   "`slm run --restart` does all of it") from None
    for i, row in enumerate(rows):
        validity.require_row(exp, i, row)
    if untrained is not None:
        validity.require_row(exp, -1, untrained)


def row_labels(ev: EvalRows) -> list[str]:
    return [f"after {i}: {ev.tasks[i]}" for i in range(len(ev.rows))]
