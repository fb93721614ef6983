"""`slm index`: one FAISS index over the keys of every finished task (methods with DTKR keys).

A task finished after the index was built (an appended one) is added to the saved index (FAISS
add: the other tasks' keys stay as they were); a task `slm forget` removed leaves it. Only when a
task it holds was retrained is the index built again from every task's keys.

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
from pipeline.errors import CheckpointError, StageInputError
from pipeline.stages import CHECK_HELP
from pipeline.state import validity
from pipeline.state.artifacts import read_done, require_done, write_done
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
    marker = read_done(layout.index)
    if marker is not None:
        problem = validity.problem_of(lambda: validity.require_valid(
            layout.index, "index", validity.index_command(cfg.method), inputs, validity.labeller(exp)))
        if problem is None:
            print(f"index: already up to date with {n} task(s) ({layout.index})")
            return 0
    store, kept = _store_to_extend(exp, marker, inputs)
    d = cfg.dtkr
    added, removed = [], []
    for j in range(n):
        name = cfg.tasks[j].name
        if layout.forgotten(j, name):
            if store is not None and name in store.tasks:
                store.remove_task(name)  # its keys only: the other tasks' stay as they were
                removed.append(name)
            continue
        if store is not None and name in store.tasks:
            continue
        keys = load_keys(layout.keys_file(j, name), d.encoder, d.groups)
        if store is None:
            from pipeline.dtkr.store import KeyStore

            store = KeyStore(keys.shape[1] * keys.shape[2], d.groups, exp.method.key_slots(cfg), d.encoder)
        store.add_task(name, keys)  # FAISS add: the next P ids
        added.append(name)
    if store is None:
        raise StageInputError(f"index: every finished task under {layout.root / 'tasks'} was removed by `slm forget`; "
                              "there are no keys to index")
    store.save(layout.index)
    write_done(layout.index, "index", inputs=inputs, tasks=store.tasks)
    how = (f"added {', '.join(added) or 'nothing'}" + (f", removed {', '.join(removed)}" if removed else "")
           + f" to the {kept} task(s) it held" if kept else "built")
    print(f"index: {how}: {len(store.tasks)} task(s), {store.index.ntotal} slots -> {layout.index}")
    return 0


def _store_to_extend(exp: Experiment, marker: dict | None, inputs: dict[str, str]):
    """(the saved store, how many tasks it holds) when every task it holds is still the task it
    indexed (or has been forgotten since): appending a task then only adds its keys. (None, 0):
    build it from nothing (no index yet, a task in it was retrained, or its files do not check out)."""
    from pipeline.dtkr.store import KeyStore

    if marker is None:
        return None, 0
    recorded = marker.get("inputs") or {}
    for key, digest in recorded.items():
        j = int(key.removeprefix("task"))
        since_forgotten = j < len(exp.cfg.tasks) and exp.layout.forgotten(j, exp.cfg.tasks[j].name)
        if j >= len(exp.cfg.tasks) or (inputs.get(key) != digest and not since_forgotten):
            print(f"index: rebuilding: {key} is not the task it indexed")
            return None, 0
    problem = validity.problem_of(lambda: require_done(exp.layout.index, "index", rerun="slm index"))
    if problem is not None:
        print(f"index: rebuilding: {problem}")
        return None, 0
    try:
        store = KeyStore.load(exp.layout.index, encoder=exp.cfg.dtkr.encoder)
    except CheckpointError as e:
        print(f"index: rebuilding: {e}")
        return None, 0
    return store, len(store.tasks)


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
