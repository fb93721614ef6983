"""`slm index`: one FAISS index over the keys of every finished task (methods with DTKR keys)."""

from __future__ import annotations

import argparse

from pipeline.adapters import load_keys
from pipeline.artifacts import marker_digest, read_done, require_done, write_done
from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.layout import RunLayout
from pipeline.methods import get_method
from pipeline.orders import single_run


def done_tasks(cfg: ExperimentConfig, layout: RunLayout) -> int:
    """How many tasks, from the first, are DONE (the sequence is strictly in order)."""
    n = 0
    while n < len(cfg.tasks) and read_done(layout.task_dir(n, cfg.tasks[n].name)):
        n += 1
    return n


def index_inputs(cfg: ExperimentConfig, layout: RunLayout, n: int) -> dict[str, str]:
    return {f"task{j}": marker_digest(layout.task_dir(j, cfg.tasks[j].name)) for j in range(n)}


def run(cfg: ExperimentConfig, layout: RunLayout) -> int:
    if not get_method(cfg.method).learns_keys:
        print(f"index: method {cfg.method} has no DTKR keys; nothing to index")
        return 0
    n = done_tasks(cfg, layout)
    if n == 0:
        raise StageInputError(f"no task is DONE under {layout.root / 'tasks'}: run `slm train --task 0` "
                              "(or `slm run`) before `slm index`")
    inputs = index_inputs(cfg, layout, n)
    done = read_done(layout.index)
    if done and done.get("inputs") == inputs:
        print(f"index: already up to date with {n} task(s) ({layout.index})")
        return 0
    from pipeline.dtkr.store import KeyStore

    d = cfg.dtkr
    store = None
    for j in range(n):
        name = cfg.tasks[j].name
        require_done(layout.task_dir(j, name), f"task {j} ({name})", rerun=f"slm train --task {j}")
        keys = load_keys(layout.keys_file(j, name), d.encoder, d.groups)
        if store is None:
            store = KeyStore(keys.shape[1] * keys.shape[2], d.groups, cfg.jare.slots_per_task, d.encoder)
        store.add_task(name, keys)
    assert store is not None
    store.save(layout.index)
    write_done(layout.index, "index", inputs=inputs, tasks=store.tasks)
    print(f"index: {n} task(s), {store.index.ntotal} slots -> {layout.index}")
    return 0


def load_store(cfg: ExperimentConfig, layout: RunLayout, n_tasks: int):
    """The saved index, checked to hold exactly the keys of tasks 0..n_tasks-1 or more."""
    from pipeline.dtkr.store import KeyStore

    marker = require_done(layout.index, "index", rerun="slm index")
    for j in range(n_tasks):
        if marker["inputs"].get(f"task{j}") != marker_digest(layout.task_dir(j, cfg.tasks[j].name)):
            raise StageInputError(f"the index in {layout.index} does not match task {j} ({cfg.tasks[j].name}) "
                                  "on disk; rerun `slm index`")
    return KeyStore.load(layout.index, encoder=cfg.dtkr.encoder)


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    return run(*single_run(cfg, args))
