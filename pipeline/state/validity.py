"""A stage's output is valid only for the exact inputs it records; every reader checks that here.

Each finished stage leaves a DONE marker (`pipeline.state.artifacts.write_done`) holding the code's
format version, the sha256 of every file it wrote and the hashes of what it was built from:

    task i     the method's config subset (`task_settings`), task i's prepared records (and those of
               the earlier tasks whose records its training reads: replay, multitask), tasks 0..i-1
    index      tasks 0..n-1 (it may hold more than a reader needs)
    eval row   the inference settings, tasks 0..i; and per cell (one task's column) that task's records

Nothing depends on a task after it, nor on another task's data unless it reads it: appending a
task to the experiment keeps every result before it, and editing task k invalidates k and what
came after it. A task removed by `slm forget` keeps its DONE (later tasks were trained beside it,
and stay valid), but the index and the eval rows, whose model no longer has it, know it is gone.

Every reader (train's resume and "already done", `slm train --check` behind the Slurm skip,
index, eval, generate, serve, report) calls `require_valid` through one of the `require_*`
helpers before it loads anything. The error names the file, what changed (down to the config
key when the marker recorded its settings) and the command that rebuilds it, so nothing is
ever computed from, or scored with, a result of other inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import StageInputError
from pipeline.state.artifacts import (
    DONE,
    DONE_FORMAT,
    format_of,
    marker_digest,
    read_done,
    read_done_checked,
    records_digest,
    sha256_json,
    verify_outputs,
)

if TYPE_CHECKING:
    from pipeline.experiment import Experiment
    from pipeline.state.layout import RunLayout

MAX_LISTED = 4  # config keys named in one message; the rest are counted


# ---- what each result depends on ----------------------------------------------------------------


def task_settings(exp: Experiment, t: int) -> dict[str, Any]:
    """The config subset task t's result depends on (the method's own knobs and the task spec)."""
    settings = exp.method.settings(exp.cfg)
    settings["task"] = exp.cfg.tasks[t].model_dump()
    return settings


def data_digest(exp: Experiment, j: int) -> str:
    """The identity of task j's prepared records (pipeline.data.prepared)."""
    return records_digest(exp.layout.task_data(exp.cfg.tasks[j].name))


def task_inputs(exp: Experiment, t: int) -> dict[str, str]:
    """What task t's result depends on; recorded in its DONE and in its train_state."""
    inputs = {"settings": sha256_json(task_settings(exp, t)), "data": data_digest(exp, t)}
    for j in exp.method.reads_data_of(t):
        if j != t:  # replay's buffer, multitask's joint records
            inputs[f"data{j}"] = data_digest(exp, j)
    for j in range(t):
        inputs[f"task{j}"] = marker_digest(exp.layout.task_dir(j, exp.cfg.tasks[j].name))
    return inputs


def _served_digest(exp: Experiment, j: int) -> str:
    """Task j as the index and evaluation see it: its result, or that `slm forget` removed it."""
    digest = marker_digest(exp.layout.task_dir(j, exp.cfg.tasks[j].name))
    return sha256_json({"forgotten": digest}) if exp.layout.forgotten(j, exp.cfg.tasks[j].name) else digest


def index_inputs(exp: Experiment, n: int) -> dict[str, str]:
    return {f"task{j}": _served_digest(exp, j) for j in range(n)}


def eval_settings(exp: Experiment) -> dict[str, Any]:
    """The config subset an eval row depends on (recorded in the row, so a refusal names the key)."""
    return exp.method.eval_settings(exp.cfg)


def eval_inputs(exp: Experiment, after: int) -> dict[str, str]:
    """What row `after` as a whole depends on: the model after that task. Each cell also depends on
    its own task's records (`cell_data`, recorded per cell), so a row grows a column for an
    appended task without rescoring the others."""
    inputs = {"settings": sha256_json(eval_settings(exp))}
    for j in range(after + 1):
        inputs[f"task{j}"] = _served_digest(exp, j)
    return inputs


def scored_tasks(exp: Experiment) -> list[str]:
    """The tasks every eval row scores: all of the experiment's but those `slm forget` removed."""
    return [t.name for i, t in enumerate(exp.cfg.tasks) if not exp.layout.forgotten(i, t.name)]


def cell_data(exp: Experiment) -> dict[str, str]:
    """Per scored task, the identity of the records its cells are scored on."""
    return {name: records_digest(exp.layout.task_data(name)) for name in scored_tasks(exp)}


# ---- commands that rebuild a result ---------------------------------------------------------------


def train_command(method: str, t: int) -> str:
    return f"slm train --method {method} --task {t} --restart"


def eval_command(method: str, after: int) -> str:
    return f"slm eval --after {after} --method {method}"


def index_command(method: str) -> str:
    return f"slm index --method {method}"


# ---- the one check ----------------------------------------------------------------------------------


def require_valid(folder: Path, stage: str, rerun: str, inputs: dict[str, str], label: Callable[[str], str],
                  settings: dict[str, Any] | None = None, verify: bool = True, prefix: bool = False) -> dict:
    """The DONE marker of `folder` if it is finished, in this code's format, built from exactly
    `inputs` and its files hash as recorded; otherwise a StageInputError naming the file, what
    changed and `rerun`.

    `settings`: the current config subset, diffed against the one the marker recorded so the
    message names the changed keys. `prefix`: the marker may record more inputs than `inputs`
    (an index over more tasks than the reader needs).
    """
    marker = read_done_checked(folder, stage, rerun)
    recorded = marker.get("inputs") or {}
    if prefix:
        recorded = {k: recorded.get(k) for k in inputs}
    if recorded != inputs:
        what = what_changed(recorded, inputs, label, marker.get("settings"), settings)
        raise StageInputError(f"{stage}: {folder / DONE} was built from other inputs than the current ones: "
                              f"{what}. Rerun `{rerun}`.", hint=_rerun_hint(rerun))
    if verify:
        verify_outputs(folder, marker, stage, rerun)
    return marker


def problem_of(check: Callable[[], object]) -> str | None:
    """The message of the StageInputError `check` raises, or None when it passes."""
    try:
        check()
    except StageInputError as e:
        return str(e)
    return None


def _rerun_hint(rerun: str) -> str:
    return (f"run `{rerun}` with this command's -c and overrides (or `slm run --restart` for the whole "
            "sequence); nothing was loaded from the stale result")


# ---- what changed -----------------------------------------------------------------------------------


def what_changed(recorded: dict[str, Any], current: dict[str, str], label: Callable[[str], str],
                 recorded_settings: dict | None = None, current_settings: dict | None = None) -> str:
    """'the config changed (methods.slm.lr: 0.005 -> 0.002); task 0 (sentiment) changed' for the inputs that differ."""
    parts = []
    for key in sorted(set(recorded) | set(current), key=_input_order):
        if recorded.get(key) == current.get(key):
            continue
        if key == "settings" and recorded_settings is not None and current_settings is not None:
            parts.append(f"{label(key)} changed ({settings_diff(recorded_settings, current_settings)})")
        elif current.get(key) is None:
            parts.append(f"{label(key)} is no longer an input")
        elif recorded.get(key) is None:
            parts.append(f"{label(key)} is not among its inputs")
        else:
            parts.append(f"{label(key)} changed")
    return "; ".join(parts)


def _input_order(key: str) -> tuple[int, int, str]:
    if key.startswith("task") and key[4:].isdigit():
        return (2, int(key[4:]), key)
    return (0 if key == "settings" else 1, 0, key)


def settings_diff(before: dict, after: dict) -> str:
    """'methods.slm.lr: 0.005 -> 0.002, seed: 1 -> 2' (the first few keys that differ)."""
    old, new = _flatten(_plain(before)), _flatten(_plain(after))
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k, _MISSING) != new.get(k, _MISSING)]
    shown = [f"{k}: {_show(old.get(k, _MISSING))} -> {_show(new.get(k, _MISSING))}" for k in keys[:MAX_LISTED]]
    more = f", and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(shown) + more if shown else "same keys, other values"


_MISSING = object()


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))  # tuples -> lists, as the recorded JSON has them


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else json.dumps(value)


def labeller(exp: Experiment) -> Callable[[str], str]:
    """Input key -> words: 'the config', 'the prepared data (<path>)', 'task 1 (geography)'."""
    cfg, layout = exp.cfg, exp.layout

    def label(key: str) -> str:
        if key == "settings":
            return "the config"
        if key == "data":
            return f"its prepared records (in {layout.data})"
        if key.startswith("data") and key[4:].isdigit() and int(key[4:]) < len(cfg.tasks):
            return f"the prepared records of task {key[4:]} ({cfg.tasks[int(key[4:])].name})"
        if key.startswith("task") and key[4:].isdigit() and int(key[4:]) < len(cfg.tasks):
            return f"task {key[4:]} ({cfg.tasks[int(key[4:])].name})"
        return key

    return label


# ---- the readers' helpers ---------------------------------------------------------------------------


def require_task(exp: Experiment, t: int, verify: bool = True) -> dict:
    """Task t's DONE, checked against the current config, data and earlier tasks (and its files;
    a task `slm forget` removed has none left to check)."""
    name = exp.cfg.tasks[t].name
    verify = verify and not exp.layout.forgotten(t, name)
    return require_valid(exp.layout.task_dir(t, name), f"task {t} ({name})", train_command(exp.cfg.method, t),
                         task_inputs(exp, t), labeller(exp), task_settings(exp, t), verify=verify)


def require_tasks(exp: Experiment, n: int, verify: bool = True) -> None:
    """Tasks 0..n-1 are each DONE and valid (the first stale one is named)."""
    for j in range(n):
        require_task(exp, j, verify=verify)


def require_index(exp: Experiment, n: int) -> dict:
    """The index's DONE: its files intact and built from the keys of tasks 0..n-1 as they are now."""
    return require_valid(exp.layout.index, "index", index_command(exp.cfg.method), index_inputs(exp, n), labeller(exp),
                         prefix=True)


def require_row(exp: Experiment, after: int, row: dict) -> None:
    """Eval row `after` (already parsed) was scored in this code's format from the current data,
    settings and tasks 0..after."""
    path, rerun = exp.layout.eval_row(after), eval_command(exp.cfg.method, after)
    if format_of(row) != DONE_FORMAT:
        raise StageInputError(f"{path} was written in format {format_of(row)!r} by another version of slm; this "
                              f"one reads format {DONE_FORMAT}. Rerun `{rerun}`.", hint=_rerun_hint(rerun))
    current = eval_inputs(exp, after)
    recorded = row.get("inputs") or {}
    if recorded != current:
        what = what_changed(recorded, current, labeller(exp), row.get("settings"), eval_settings(exp))
        raise StageInputError(f"row {after} of the matrix ({path}) was scored from other inputs than the current "
                              f"ones: {what}. Rerun `{rerun}`.", hint=_rerun_hint(rerun))
    scored = row.get("data") or {}
    stale = [name for name, digest in cell_data(exp).items() if scored.get(name) != digest]
    if stale:
        missing = [n for n in stale if n not in scored]
        what = ", ".join(f"{n} ({'not scored yet' if n in missing else 'its prepared records changed'})"
                         for n in stale)
        raise StageInputError(f"row {after} of the matrix ({path}) has no current score for {what}. "
                              f"Rerun `{rerun}` (it scores only those).", hint=_rerun_hint(rerun))


def read_row(layout: RunLayout, after: int) -> dict | None:
    """Row `after`, or None when it is missing or cannot be parsed (torn, not UTF-8): scored again."""
    path = layout.eval_row(after)
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:
        print(f"eval: {path} cannot be read ({type(e).__name__}); scoring row {after} again")
        return None
    return row if isinstance(row, dict) else None


def done_tasks(exp: Experiment) -> int:
    """How many tasks, from the first, are DONE (the sequence is strictly in order)."""
    cfg, layout = exp.cfg, exp.layout
    n = 0
    while n < len(cfg.tasks) and read_done(layout.task_dir(n, cfg.tasks[n].name)):
        n += 1
    return n
