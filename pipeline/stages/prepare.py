"""`slm prepare`: every task's source -> fixed train/test splits on disk, one folder per task.

Reads top to bottom: find the tasks whose folder is missing or was built from other inputs (its
own spec, its source files, the data section: pipeline.data.prepared); load and check every one
of them (no file is written until all pass; every bad record of every task is reported at once,
up to a limit); measure token lengths with the experiment's tokenizer (and warn where a cap cuts
answers); write each task's datasets, manifest entry and DONE into a temporary folder that
replaces <output_dir>/data/<task> in one rename; then the manifest and data/DONE; only then the
resolved config (a failed prepare must not leave a config.yaml describing the config that
failed). A bad task leaves no half-written data, a failed first prepare no lock either
(pipeline.state.locks), and the tasks that were current are not touched: a task appended to the
experiment is the only one prepared.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from pipeline import preflight
from pipeline.config import ExperimentConfig, TaskSpec
from pipeline.data.build import PreparedTask, build_task, cut_warnings, length_stats, token_lengths
from pipeline.data.prepared import (
    ENTRY,
    STAGE,
    manifest_inputs,
    prepared_up_to_date,
    read_manifest,
    stale_tasks,
    task_prepare_inputs,
    task_spec_hash,
)
from pipeline.data.records import COLUMNS, HISTORY, REFERENCES, records_sha256
from pipeline.data.synthetic import describe_generators
from pipeline.errors import DataError
from pipeline.prompts.truncation import TokenCaps
from pipeline.stages import CHECK_HELP
from pipeline.state.artifacts import atomic_path, atomic_write_json, atomic_write_text, write_done
from pipeline.state.layout import RunLayout
from pipeline.state.locks import data_lock

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

@dataclass(frozen=True)
class Args:
    force: bool = False
    list_synthetic: bool = False
    check: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="rebuild even if data is DONE")
    p.add_argument("--list-synthetic", action="store_true", help="list the built-in synthetic task generators and exit")
    p.add_argument("--check", action="store_true", help=CHECK_HELP)


def main(experiment: Experiment, args: Args) -> int:
    if args.list_synthetic:
        print(describe_generators())
        return 0
    # Each task order (or seed) is its own experiment in its own folder, data included: the folder
    # `slm train --order NAME` reads (pipeline.state.orders).
    worst = 0
    for exp in experiment.runs():
        if exp.run_name:
            print(f"prepare: order {exp.run_name!r} -> {exp.cfg.output_dir}")
        if args.check:
            worst = max(worst, preflight.check(exp, "prepare"))
        else:
            run(exp, force=args.force)
    return worst


def run(exp: Experiment, force: bool = False) -> dict[str, Any]:
    """Prepare every task of the experiment (idempotent) and return the manifest.

    Holds the data lock throughout: a second prepare of the same output_dir waits for this one,
    then finds the data DONE instead of building it again.
    """
    from pipeline.stages.fetch import require_fetched

    require_fetched(exp)  # offline (a job): the tokenizer's model must be in the cache
    with data_lock(exp.layout):
        return _prepare(exp.cfg, exp.layout, force)


def _prepare(cfg: ExperimentConfig, layout: RunLayout, force: bool) -> dict[str, Any]:
    todo = list(cfg.tasks) if force else stale_tasks(cfg, layout, quiet=False)
    if not todo and prepared_up_to_date(cfg, layout):
        atomic_write_text(layout.config, cfg.to_yaml())
        print(f"prepare: already done ({layout.data}, {len(cfg.tasks)} tasks; --force rebuilds)")
        return read_manifest(layout)

    # Every task to build is loaded and checked before anything is written.
    prepared = build_tasks(todo, cfg)
    if prepared:
        tokenizer = _tokenizer(cfg.model.name_or_path)  # imports torch: only once the data is known good
        for task in tqdm(prepared, desc="prepare: tokenize + save", disable=None):
            _write_task(task, cfg, layout, tokenizer)  # each task's folder in one rename, with its DONE
    manifest = _manifest(cfg, layout)
    atomic_write_json(layout.manifest, manifest)
    write_done(layout.data, STAGE, inputs=manifest_inputs(cfg, layout), files=[layout.manifest.name])
    atomic_write_text(layout.config, cfg.to_yaml())  # the data is in place: this config is the one used
    kept = len(cfg.tasks) - len(prepared)
    print(f"prepare: {len(prepared)} task(s) prepared" + (f", {kept} kept as they were" if kept else ""))
    print_table(manifest, layout.data)
    return manifest


def _write_task(task: PreparedTask, cfg: ExperimentConfig, layout: RunLayout, tokenizer: Any) -> None:
    """data/<task>/: the splits, the task's manifest entry, and a DONE naming what they were built
    from and the sha256 of the records (the task's data identity, pipeline.data.prepared)."""
    with atomic_path(layout.task_data(task.spec.name)) as tmp:
        _save(task, tmp)
        atomic_write_json(tmp / ENTRY, _task_entry(task, tokenizer, cfg))
        write_done(tmp, STAGE, inputs=task_prepare_inputs(task.spec, cfg),
                   records={"train": records_sha256(task.train), "test": records_sha256(task.test),
                            **({"validation": records_sha256(task.validation)} if task.validation else {})})


def _manifest(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    """Every task's entry (written with its folder), in the experiment's order."""
    head = {"experiment": cfg.name, "data": cfg.data.model_dump(mode="json"), "tokenizer": cfg.model.name_or_path,
            "prompt_format": cfg.model.prompt_format, "max_seq_len": cfg.model.max_seq_len, "columns": list(COLUMNS)}
    tasks = {t.name: {"index": i, **json.loads((layout.task_data(t.name) / ENTRY).read_text())}
             for i, t in enumerate(cfg.tasks)}
    return {**head, "tasks": tasks}


def build_tasks(tasks: list[TaskSpec], cfg: ExperimentConfig) -> list[PreparedTask]:
    """`tasks` loaded and checked; the problems of all of them reported together (DataError)."""
    prepared, problems = [], []
    for task in tqdm(tasks, desc="prepare: load + check", disable=None):
        try:
            prepared.append(build_task(task, cfg))
        except DataError as e:
            problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise DataError(f"{len(problems)} of {len(tasks)} tasks have bad data:\n" + "\n".join(map(str, problems)),
                        hint=problems[0].hint)
    return prepared


@functools.lru_cache(maxsize=2)
def _tokenizer(name: str) -> Any:
    # Loading takes seconds; `slm run` and the tests prepare several times in one process.
    from pipeline.runtime.models import load_tokenizer

    return load_tokenizer(name)


def _task_entry(task: PreparedTask, tokenizer: Any, cfg: ExperimentConfig) -> dict[str, Any]:
    train = token_lengths(tokenizer, cfg.model.prompt_format, task.train)
    test = token_lengths(tokenizer, cfg.model.prompt_format, task.test)
    caps = TokenCaps.of(cfg.model)
    stats = length_stats(train + test, caps)
    warnings = cut_warnings(task.spec.name, task.spec.metric, train, test, caps, cfg.eval.max_new_tokens,
                            eos=bool(getattr(tokenizer, "eos_token", None)))
    return {
        "type": task.spec.source.type, "source": task.origin,
        "train": len(task.train), "test": len(task.test), "own_test_split": task.own_test_split,
        "labels": task.labels, "metric": task.spec.metric,
        "sha256": {"train": records_sha256(task.train), "test": records_sha256(task.test),
                   **({"validation": records_sha256(task.validation)} if task.validation else {})},
        "spec_sha256": task_spec_hash(task.spec),
        "label_dropped": task.label_dropped, "duplicates_dropped": task.duplicates_dropped,
        "overlap_dropped": task.overlap_dropped,
        "tokens": {k: stats[k] for k in ("min", "mean", "p95", "max")}, "truncated": stats["truncated"],
        "prompt_tokens": _spread([p for p, _ in train + test]), "answer_tokens": _spread([r for _, r in train + test]),
        "cut_warnings": warnings,
        "max_train_per_label": task.spec.max_train_per_label, "train_per_label": task.train_per_label,
        # carved from the training pool before the training records were taken (data.validation_ratio)
        "validation": len(task.validation), "validation_dropped": task.validation_dropped,
    }


def _spread(lengths: list[int]) -> dict[str, int]:
    """p95 (nearest rank) and max of one kind of token length."""
    s = sorted(lengths) or [0]
    return {"p95": s[math.ceil(0.95 * len(s)) - 1], "max": s[-1]}


def _save(task: PreparedTask, folder: Path) -> None:
    import datasets

    # Conversation tasks keep their earlier turns in one more column (JSON text), tasks with several
    # accepted answers their references in another.
    every = task.train + task.test + task.validation
    columns = COLUMNS + tuple(c for c in (HISTORY, REFERENCES) if any(c in r for r in every))
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    parts = {"train": task.train, "test": task.test, **({"validation": task.validation} if task.validation else {})}
    splits = {k: [{c: r.get(c, "") for c in columns} for r in records] for k, records in parts.items()}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v, features=features) for k, v in splits.items()})
    # datasets prints one "Saving the dataset" bar per split; our own tqdm already tracks tasks.
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dd.save_to_disk(str(folder))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def print_table(manifest: dict[str, Any], where: Path) -> None:
    """One line per task: sizes, token lengths (prompt + answer) and how many get truncated."""
    limit = manifest["max_seq_len"]
    head = f"{'task':<16} {'type':<12} {'train':>6} {'test':>6} {'labels':>6}  tokens min/mean/p95/max  " \
           f"truncated(>{limit})"
    print(f"prepare: {len(manifest['tasks'])} tasks -> {where}\n{head}\n{'-' * len(head)}")
    for name, t in manifest["tasks"].items():
        tok = t["tokens"]
        lengths = f"{tok['min']}/{tok['mean']}/{tok['p95']}/{tok['max']}"
        n_labels = len(t["labels"]) if t["labels"] else "-"
        print(f"{name:<16} {t['type']:<12} {t['train']:>6} {t['test']:>6} {n_labels:>6}  {lengths:<22} "
              f"{t['truncated']}")
    for t in manifest["tasks"].values():
        for line in t.get("cut_warnings", []):
            print(f"warning: {line}")
