"""The contract between `prepare` and every later stage: each task's prepared data has its own identity.

    data/<task>/      the task's splits (datasets save_to_disk), entry.json (its manifest entry) and a DONE
    data/manifest.json  every task's entry, in the experiment's order (rewritten by each prepare)
    data/DONE         written last: every task of the experiment is prepared

A task's DONE records what its records were built from (`task_prepare_inputs`: its own spec, the
data section, the content of its own source files, the tokenizer the token statistics used) and the
sha256 of the records themselves. Later stages depend on a task's records only through that one
digest (`task_data_digest`), so appending a task, or editing another, never changes the identity of
a task's data: only its own spec, its own files or the data section do. A tokenizer change rebuilds
the folder (its token statistics) but leaves the records, and so the digest, as they were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.config import BUILTIN_CONFIGS, ExperimentConfig, TaskSpec
from pipeline.data.sources import source_files
from pipeline.errors import StageInputError
from pipeline.state.artifacts import read_done, records_digest, require_done, sha256_file, sha256_json
from pipeline.state.layout import RunLayout

STAGE = "prepare"
SPLITS: tuple[str, ...] = ("train", "test", "validation")  # validation: only with data.validation_ratio > 0
ENTRY = "entry.json"  # in a task's data folder: its manifest entry (sizes, token statistics, drops)
# Data options that change no record while they keep these values: left out of the data hash
# then, so data prepared before they existed still matches.
NEUTRAL_DATA = {"validation_ratio": 0.0, "max_validation": None}


# Task keys that change how training uses the records, not the records: a trained task's settings
# record them (pipeline.state.validity.task_settings), the data hashes do not.
TRAINING_ONLY = {"source": {"train_on"}}


def records_spec(task: TaskSpec) -> dict[str, Any]:
    """The task spec as far as its prepared records depend on it."""
    return task.model_dump(mode="json", exclude=TRAINING_ONLY)


def task_spec_hash(task: TaskSpec) -> str:
    return sha256_json(records_spec(task))


def task_sources_hash(task: TaskSpec, cfg: ExperimentConfig) -> str:
    """The content of the local files a task reads. Keys are relative to the source's parent folder,
    so moving the data keeps the hash; paths are hashed as written, not resolved, for the same reason."""
    files = source_files(task, cfg)
    root = cfg.resolve_source_path(task.source.path or "").parent if files else None
    return sha256_json({os.path.relpath(p, root): sha256_file(p) if p.is_file() else "missing" for p in files})


def data_section(cfg: ExperimentConfig) -> dict[str, Any]:
    """The data section as the records depend on it (NEUTRAL_DATA left out at their neutral values)."""
    data = cfg.data.model_dump(mode="json")
    return {k: v for k, v in data.items() if not (k in NEUTRAL_DATA and v == NEUTRAL_DATA[k])}


def tokenizer_hash(cfg: ExperimentConfig) -> str:
    m = cfg.model
    parts: dict[str, object] = {"name": m.name_or_path, "prompt_format": m.prompt_format, "max_seq_len": m.max_seq_len}
    # The separate caps change the truncation counts; left out when unset, so older hashes hold.
    parts.update({k: v for k, v in (("max_prompt_len", m.max_prompt_len), ("max_answer_len", m.max_answer_len))
                  if v is not None})
    return sha256_json(parts)


def task_prepare_inputs(task: TaskSpec, cfg: ExperimentConfig) -> dict[str, str]:
    """What one task's prepared folder is built from (recorded in its DONE): nothing of the other tasks."""
    return {"spec": task_spec_hash(task), "data": sha256_json(data_section(cfg)),
            "sources": task_sources_hash(task, cfg), "tokenizer": tokenizer_hash(cfg)}


def prepare_command(cfg: ExperimentConfig) -> str:
    """The command that rebuilds this experiment's data, for error messages."""
    if cfg.config_dir == str(BUILTIN_CONFIGS):
        return f"slm prepare -c {cfg.name}.yaml" if cfg.name != "default" else "slm prepare"
    return f"slm prepare -c <the YAML of experiment {cfg.name!r} in {cfg.config_dir}> (same overrides)"


# ---- which tasks are prepared ----------------------------------------------------------------------


# A task's prepare inputs, in words. The tokenizer only sizes the token statistics: a later stage
# reads records that a tokenizer change left as they were (`for_reading`).
INPUT_WORDS = {"spec": "its task spec", "data": "the data section", "sources": "its source files",
               "tokenizer": "the tokenizer settings"}


def task_problem(task: TaskSpec, cfg: ExperimentConfig, layout: RunLayout, for_reading: bool = False) -> str | None:
    """Why task `task`'s prepared folder cannot be used as it is (None: it is current): missing,
    torn, built from other inputs (naming which), or a file changed since. `for_reading`: whether
    its records can be read (a tokenizer change re-runs prepare but keeps the records)."""
    folder = layout.task_data(task.name)
    marker = read_done(folder)
    if marker is None:
        return f"task {task.name!r} is not prepared ({folder} has no DONE)"
    recorded, current = marker.get("inputs") or {}, task_prepare_inputs(task, cfg)
    checked = [k for k in INPUT_WORDS if not (for_reading and k == "tokenizer")]
    changed = [INPUT_WORDS[k] for k in checked if recorded.get(k) != current[k]]
    if changed:
        return f"task {task.name!r} was prepared from other inputs ({', '.join(changed)} changed)"
    try:
        require_done(folder, STAGE, rerun="slm prepare")
    except StageInputError as e:
        return str(e)
    return None


def stale_tasks(cfg: ExperimentConfig, layout: RunLayout, quiet: bool = True) -> list[TaskSpec]:
    """The tasks whose prepared folder must be built (again), in the experiment's order."""
    stale = []
    for task in cfg.tasks:
        problem = task_problem(task, cfg, layout)
        if problem is not None:
            if not quiet and read_done(layout.task_data(task.name)) is not None:
                print(f"prepare: rebuilding: {problem}")
            stale.append(task)
    return stale


def prepared_up_to_date(cfg: ExperimentConfig, layout: RunLayout) -> bool:
    """Every task is prepared and current, and the manifest lists exactly them."""
    marker = read_done(layout.data)
    return (not stale_tasks(cfg, layout) and marker is not None and layout.manifest.is_file()
            and marker.get("inputs") == manifest_inputs(cfg, layout))


def task_data_digest(layout: RunLayout, name: str) -> str:
    """The identity of task `name`'s prepared records: what a result built from them records."""
    return records_digest(layout.task_data(name))


def manifest_inputs(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, str]:
    """data/DONE's inputs: the record digest of every task the experiment prepares."""
    return {t.name: task_data_digest(layout, t.name) for t in cfg.tasks}


def read_manifest(layout: RunLayout) -> dict[str, Any]:
    return json.loads(layout.manifest.read_text())


# ---- the checked loader ------------------------------------------------------------------------------


class PreparedData(Mapping[str, Any]):
    """Task name -> datasets.DatasetDict("train", "test"), each checked and loaded when first asked
    for: a stage loads only the tasks it reads, so an appended task that is not prepared yet
    stops nothing that does not read it."""

    def __init__(self, cfg: ExperimentConfig, layout: RunLayout) -> None:
        self.cfg, self.layout = cfg, layout
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(t.name for t in self.cfg.tasks)

    def __len__(self) -> int:
        return len(self.cfg.tasks)

    def _load(self, name: str) -> Any:
        import datasets

        task = next((t for t in self.cfg.tasks if t.name == name), None)
        if task is None:
            raise KeyError(name)
        problem = task_problem(task, self.cfg, self.layout, for_reading=True)
        if problem is not None:
            rerun = prepare_command(self.cfg)
            raise StageInputError(f"prepared data in {self.layout.data}: {problem}. Rerun `{rerun}`.",
                                  hint=f"`{rerun}` prepares the tasks that are missing or changed and keeps the rest")
        return datasets.load_from_disk(str(self.layout.task_data(name)))


def load_prepared(cfg: ExperimentConfig, layout: RunLayout) -> PreparedData:
    """The experiment's prepared tasks, each checked (DONE, files intact, built from its current
    spec, sources and the data section) when a stage first reads it."""
    return PreparedData(cfg, layout)
