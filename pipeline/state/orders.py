"""Task orders and seeds: one experiment, several sequential runs, each in its own folder.

CL results depend on the order the tasks come in (and on the seed), so an experiment may list
`orders:` (permutations of its tasks) and `seeds:`. Each (order, seed) is a plain single-order
experiment in `<output_dir>/<run name>/`, with the tasks reordered; every stage runs on it
unchanged. `slm report` then adds the mean and standard deviation over the runs.
"""

from __future__ import annotations

from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError
from pipeline.state.layout import run_folder

# The stages that do every run of an experiment unless --order names one.
ALL_RUNS_COMMANDS = "prepare, run, status, plan, report and submit"


def order_runs(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """(run name, its single-order config) for every order x seed; one unnamed run without either."""
    if not cfg.orders and not cfg.seeds:
        return [("", cfg)]
    by_name = {t.name: t for t in cfg.tasks}
    orders = [(o.name, [by_name[n] for n in o.tasks]) for o in cfg.orders] if cfg.orders else [("", cfg.tasks)]
    seeds = cfg.seeds or [cfg.seed]
    runs = []
    for order, tasks in orders:
        for seed in seeds:
            name = "-".join(p for p in (order, f"seed{seed}" if cfg.seeds else "") if p)
            runs.append((name, cfg.model_copy(update={
                "tasks": tasks, "seed": seed, "orders": None, "seeds": None,
                "output_dir": str(run_folder(cfg.output_dir, name))})))
    return runs


def select_run(cfg: ExperimentConfig, name: str | None) -> ExperimentConfig:
    """The config of run `name`; without a name only an experiment of one run is accepted."""
    runs = order_runs(cfg)
    if name is None:
        if len(runs) > 1:
            raise ConfigError(f"experiment {cfg.name!r} has {len(runs)} runs ({', '.join(n for n, _ in runs)}): "
                              "pass --order NAME, this command works on one of them",
                              hint=f"e.g. --order {runs[0][0]}; {ALL_RUNS_COMMANDS} do every run by default")
        return runs[0][1]
    for run, run_cfg in runs:
        if run == name:
            return run_cfg
    names = ", ".join(n for n, _ in runs if n) or "(none: it lists no orders or seeds)"
    raise ConfigError(f"--order {name!r}: experiment {cfg.name!r} has the runs {names}",
                      hint=f"name one of those runs, or leave --order out ({ALL_RUNS_COMMANDS} do every run)")
