"""`slm <stage> --check`: can this stage run with this config, and has it already?

Every stage the Slurm jobs run (prepare, train, index, eval, report) answers `--check` the way
`slm train --check` always has, offline and without loading a model or data:

    0  its output exists and matches the current config, data and earlier results
    1  it has not run yet (or must run again): the job would do the work
    2  it cannot run with this config: the `error:` line says why (raised as an SlmError)

The static part (`require_runnable`) is what each stage would otherwise find only on the cluster,
after the queue: a local data source that is not there, a DeepSpeed JSON that cannot pair with
the base, a model whose shape is unknown offline, a FAISS build that cannot do `dtkr.faiss`.
tests/config/test_shipped_configs.py runs every rendered stage's --check on every shipped config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config import PUBLIC_FORMATS
from pipeline.dtkr import faiss_build
from pipeline.errors import ConfigError
from pipeline.state import validity
from pipeline.state.artifacts import read_done

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment

EXIT_CURRENT = 0
EXIT_WOULD_RUN = 1
FAISS_STAGES = ("train", "index", "eval", "generate", "serve")
# Sources read from a local path that must exist on the node that prepares.
LOCAL_SOURCE_TYPES = ("file", "cl_benchmark", *PUBLIC_FORMATS)


def use_faiss_of(exp: Experiment) -> faiss_build.FaissBuild | None:
    """At the start of a stage that searches keys: check `dtkr.faiss` against this machine and
    search that way from now on. None for a method without keys."""
    if not exp.method.learns_keys:
        return None
    from pipeline.dtkr.store import use_faiss

    return use_faiss(exp.cfg.dtkr.faiss)


def require_runnable(exp: Experiment, stage: str) -> None:
    """Raise what `stage` would raise on the cluster before its real work (see the module doc)."""
    cfg = exp.cfg
    if stage == "prepare":
        _require_local_sources(cfg)
    if stage == "train":
        from pipeline.planning.memory import shape_of_config
        from pipeline.runtime.deepspeed_config import build_ds_config

        exp.method.check(cfg)
        build_ds_config(cfg, world_size=1)  # the JSON exists, parses, pairs with the quantization
        shape_of_config(cfg)  # the model's architecture is known offline (pipeline/planning/shapes.py)
    if stage in FAISS_STAGES and exp.method.learns_keys:
        # A login node renders the jobs without a GPU: the build is checked here, the GPU at run time.
        faiss_build.require(cfg.dtkr.faiss, need_device=False)


def _require_local_sources(cfg: ExperimentConfig) -> None:
    missing = [f"task {t.name}: {cfg.resolve_source_path(t.source.path)}" for t in cfg.tasks
               if t.source.type in LOCAL_SOURCE_TYPES and t.source.path
               and not cfg.resolve_source_path(t.source.path).exists()]
    if missing:
        raise ConfigError(f"data sources not found: {'; '.join(missing)}",
                          hint="set data_root=<the folder that holds them> (relative source paths resolve from "
                               "data_root, else from the YAML's folder)")


def check(exp: Experiment, stage: str, after: int | None = None) -> int:
    """The `--check` of prepare, index, eval (row `after`) and report (train has its own)."""
    require_runnable(exp, stage)
    problem = _not_current(exp, stage, after)
    print(f"{stage}: {'would run: ' + problem if problem else 'done and current'}")
    return EXIT_WOULD_RUN if problem else EXIT_CURRENT


def _not_current(exp: Experiment, stage: str, after: int | None) -> str | None:
    """Why `stage` would (re)do its work, or None when its output is current."""
    layout = exp.layout
    if stage == "prepare":
        from pipeline.data.prepared import prepared_up_to_date, stale_tasks

        if prepared_up_to_date(exp.cfg, layout):
            return None
        stale = stale_tasks(exp.cfg, layout)
        return f"tasks not prepared or changed: {', '.join(t.name for t in stale)}" if stale else \
            f"{layout.data / 'manifest.json'} does not list the current tasks"
    if stage == "index":
        if not exp.method.learns_keys:
            return None  # nothing to index
        if read_done(layout.index) is None:
            return f"no index in {layout.index}"
        return validity.problem_of(lambda: validity.require_index(exp, validity.done_tasks(exp)))
    if stage == "eval":
        if after is None:
            return "no task is DONE yet"
        row = validity.read_row(layout, after)
        if row is None:
            return f"no row {layout.eval_row(after)}"
        return validity.problem_of(lambda: validity.require_row(exp, after, row))
    if stage == "report":
        if not (layout.eval / "report.md").is_file():
            return f"no {layout.eval / 'report.md'}"
        from pipeline.report.rows import load_rows

        load_rows(exp)  # rows that no longer match are an error for report itself too
        return None
    raise ValueError(f"no --check for stage {stage!r}")
