"""`slm prepare`: every task's source -> fixed train/test splits on disk, plus a manifest.

Reads top to bottom: skip if DONE with the same input hashes; load and check every task (no
file is written until all of them pass); write the resolved config (only now: a failed prepare
must not leave a config.yaml describing the config that failed); measure token lengths with
the experiment's tokenizer; write all datasets, the manifest and DONE into a temporary folder
that replaces <output_dir>/data in one rename. A bad task therefore leaves no half-written data.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from pipeline import preflight
from pipeline.config import ExperimentConfig
from pipeline.data.build import PreparedTask, build_task, length_stats, token_lengths
from pipeline.data.prepared import (
    STAGE,
    prepare_inputs,
    prepared_up_to_date,
    read_manifest,
    task_spec_hash,
)
from pipeline.data.records import COLUMNS, HISTORY, records_sha256
from pipeline.data.synthetic import describe_generators
from pipeline.prompts.truncation import TokenCaps
from pipeline.stages import CHECK_HELP
from pipeline.state.artifacts import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    write_done,
)
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
    inputs = prepare_inputs(cfg)
    if not force and prepared_up_to_date(layout, inputs):
        atomic_write_text(layout.config, cfg.to_yaml())
        print(f"prepare: already done ({layout.data}, {len(cfg.tasks)} tasks; --force rebuilds)")
        return read_manifest(layout)

    prepared = [build_task(t, cfg) for t in tqdm(cfg.tasks, desc="prepare: load + check", disable=None)]
    atomic_write_text(layout.config, cfg.to_yaml())  # the data checks passed: this config is the one used

    tokenizer = _tokenizer(cfg.model.name_or_path)  # imports torch: only once the data is known good
    manifest = _manifest_head(cfg, inputs)
    with atomic_path(layout.data) as tmp:
        tmp.mkdir()
        for index, task in enumerate(tqdm(prepared, desc="prepare: tokenize + save", disable=None)):
            manifest["tasks"][task.spec.name] = _task_entry(index, task, tokenizer, cfg)
            _save(task, tmp / layout.task_data(task.spec.name).name)
        atomic_write_json(tmp / layout.manifest.name, manifest)
        write_done(tmp, STAGE, inputs=inputs)
    print_table(manifest, layout.data)
    return manifest


@functools.lru_cache(maxsize=2)
def _tokenizer(name: str) -> Any:
    # Loading takes seconds; `slm run` and the tests prepare several times in one process.
    from pipeline.runtime.models import load_tokenizer

    return load_tokenizer(name)


def _manifest_head(cfg: ExperimentConfig, inputs: dict[str, str]) -> dict[str, Any]:
    return {"experiment": cfg.name, "inputs": inputs, "data": cfg.data.model_dump(mode="json"),
            "tokenizer": cfg.model.name_or_path, "prompt_format": cfg.model.prompt_format,
            "max_seq_len": cfg.model.max_seq_len, "columns": list(COLUMNS), "tasks": {}}


def _task_entry(index: int, task: PreparedTask, tokenizer: Any, cfg: ExperimentConfig) -> dict[str, Any]:
    lengths = token_lengths(tokenizer, cfg.model.prompt_format, task.train + task.test)
    stats = length_stats(lengths, TokenCaps.of(cfg.model))
    return {
        "index": index, "type": task.spec.source.type, "source": task.origin,
        "train": len(task.train), "test": len(task.test), "own_test_split": task.own_test_split,
        "labels": task.labels, "metric": task.spec.metric,
        "sha256": {"train": records_sha256(task.train), "test": records_sha256(task.test)},
        "spec_sha256": task_spec_hash(task.spec),
        "label_dropped": task.label_dropped, "duplicates_dropped": task.duplicates_dropped,
        "overlap_dropped": task.overlap_dropped,
        "tokens": {k: stats[k] for k in ("min", "mean", "p95", "max")}, "truncated": stats["truncated"],
        "max_train_per_label": task.spec.max_train_per_label, "train_per_label": task.train_per_label,
    }


def _save(task: PreparedTask, folder: Path) -> None:
    import datasets

    # Conversation tasks keep their earlier turns in one more column (JSON text).
    columns = COLUMNS + ((HISTORY,) if any(HISTORY in r for r in task.train + task.test) else ())
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    splits = {"train": [{c: r.get(c, "") for c in columns} for r in task.train],
              "test": [{c: r.get(c, "") for c in columns} for r in task.test]}
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
    for name, t in manifest["tasks"].items():
        if t["truncated"]:
            print(f"warning: {t['truncated']} records of task {name!r} exceed model.max_seq_len={limit} "
                  f"and will be truncated; raise max_seq_len or accept losing their tails")
