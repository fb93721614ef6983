"""`slm index`: one FAISS index over the keys of every finished task (methods with DTKR keys).

Each task is checked against the current config first (pipeline/state/validity.py); the index's DONE
records the tasks' hashes, and its readers (`load_store`, generate, serve) check them, and the
index files, before use. Runs under the writer lock of the output folder.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline import preflight
from pipeline.dtkr.key_files import load_keys
from pipeline.errors import StageInputError
from pipeline.stages import CHECK_HELP
from pipeline.state import validity
from pipeline.state.artifacts import read_done, write_done
from pipeline.state.locks import writer_stage

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    check: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help=CHECK_HELP)


def main(experiment: Experiment, args: Args) -> int:
    exp = experiment.single()
    if args.check:
        return preflight.check(exp, "index")
    return run(exp)


def run(exp: Experiment) -> int:
    if not exp.method.learns_keys:
        print(f"index: method {exp.cfg.method} has no DTKR keys; nothing to index")
        return 0
    build = preflight.use_faiss_of(exp)
    faiss = exp.cfg.dtkr.faiss
    print(f"index: {build.describe()}; searches on the {'GPU' if build.searches_on_gpu(faiss) else 'CPU'} "
          f"(dtkr.faiss={faiss})")
    with writer_stage(exp.layout):
        return _build(exp)


def _build(exp: Experiment) -> int:
    cfg, layout = exp.cfg, exp.layout
    n = valid_tasks(exp)
    inputs = validity.index_inputs(exp, n)
    if read_done(layout.index) is not None:
        problem = validity.problem_of(lambda: validity.require_valid(
            layout.index, "index", validity.index_command(exp.cfg.method), inputs, validity.labeller(exp)))
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
            store = KeyStore(keys.shape[1] * keys.shape[2], d.groups, exp.method.key_slots(cfg), d.encoder)
        store.add_task(name, keys)
    assert store is not None
    store.save(layout.index)
    write_done(layout.index, "index", inputs=inputs, tasks=store.tasks)
    print(f"index: {n} task(s), {store.index.ntotal} slots -> {layout.index}")
    return 0


def valid_tasks(exp: Experiment) -> int:
    """How many leading tasks are DONE and match the config (their keys verified). A stale task
    after them (task 0 was just retrained by `slm run --restart`) is left out with a warning; a
    stale first task is an error, as is no finished task."""
    n = validity.done_tasks(exp)
    if n == 0:
        raise StageInputError(f"no task is DONE under {exp.layout.root / 'tasks'}: run `slm train --task 0` "
                              "(or `slm run`) before `slm index`")
    for j in range(n):
        problem = validity.problem_of(lambda j=j: validity.require_task(exp, j))
        if problem and j == 0:
            validity.require_task(exp, 0)  # raises, with its hint
        if problem:
            print(f"warning: index: {problem}; indexing tasks 0..{j - 1} only")
            return j
    return n
