"""`slm index`: one FAISS index over the keys of every finished task (methods with DTKR keys).

Each task is checked against the current config first (pipeline/state/validity.py); the index's DONE
records the tasks' hashes, and its readers (`load_store`, generate, serve) check them, and the
index files, before use. Runs under the writer lock of the output folder.
"""

from __future__ import annotations

import argparse

from pipeline import preflight
from pipeline.adapters import load_keys
from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.methods import get_method
from pipeline.state import validity
from pipeline.state.artifacts import read_done, write_done
from pipeline.state.layout import RunLayout
from pipeline.state.locks import writer_stage
from pipeline.state.orders import single_run
from pipeline.state.validity import done_tasks


def run(cfg: ExperimentConfig, layout: RunLayout) -> int:
    if not get_method(cfg.method).learns_keys:
        print(f"index: method {cfg.method} has no DTKR keys; nothing to index")
        return 0
    build = preflight.use_faiss_of(cfg)
    print(f"index: {build.describe()}; searches on the {'GPU' if build.searches_on_gpu(cfg.dtkr.faiss) else 'CPU'} "
          f"(dtkr.faiss={cfg.dtkr.faiss})")
    with writer_stage(layout):
        return _build(cfg, layout)


def _build(cfg: ExperimentConfig, layout: RunLayout) -> int:
    n = valid_tasks(cfg, layout)
    inputs = validity.index_inputs(cfg, layout, n)
    if read_done(layout.index) is not None:
        problem = validity.problem_of(lambda: validity.require_valid(
            layout.index, "index", validity.index_command(cfg), inputs, validity.labeller(cfg, layout)))
        if problem is None:
            print(f"index: already up to date with {n} task(s) ({layout.index})")
            return 0
        print(f"index: rebuilding: {problem}")
    from pipeline.dtkr.store import KeyStore

    d = cfg.dtkr
    store = None
    for j in range(n):
        name = cfg.tasks[j].name
        keys = load_keys(layout.keys_file(j, name), d.encoder, d.groups)
        if store is None:
            store = KeyStore(keys.shape[1] * keys.shape[2], d.groups, get_method(cfg.method).key_slots(cfg), d.encoder)
        store.add_task(name, keys)
    assert store is not None
    store.save(layout.index)
    write_done(layout.index, "index", inputs=inputs, tasks=store.tasks)
    print(f"index: {n} task(s), {store.index.ntotal} slots -> {layout.index}")
    return 0


def valid_tasks(cfg: ExperimentConfig, layout: RunLayout) -> int:
    """How many leading tasks are DONE and match the config (their keys verified). A stale task
    after them (task 0 was just retrained by `slm run --restart`) is left out with a warning; a
    stale first task is an error, as is no finished task."""
    n = done_tasks(cfg, layout)
    method = get_method(cfg.method)
    if n == 0:
        raise StageInputError(f"no task is DONE under {layout.root / 'tasks'}: run `slm train --task 0` "
                              "(or `slm run`) before `slm index`")
    for j in range(n):
        problem = validity.problem_of(lambda j=j: validity.require_task(cfg, method, layout, j))
        if problem and j == 0:
            validity.require_task(cfg, method, layout, 0)  # raises, with its hint
        if problem:
            print(f"warning: index: {problem}; indexing tasks 0..{j - 1} only")
            return j
    return n


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    cfg, layout = single_run(cfg, args)
    if getattr(args, "check", False):
        return preflight.check(cfg, layout, "index")
    return run(cfg, layout)
