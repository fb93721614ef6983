"""One sweep rule, run the same way for every method: its learning rate, then its own knob; the
sweep is kept as data, and every pick is made on a validation split, never on the test split.

    python bench/lr_sweep.py cl_benchmark_cpu-order1                   # every method it lists
    python bench/lr_sweep.py cl_benchmark_cpu-order1 --methods slm,o_lora

The sweep experiment bench/experiments/lr_sweep/<name>.yaml names a bench/cl_methods.py
experiment, the task order, the methods and the validation split (`validation: {ratio,
max_records}`: `data.validation_ratio`, `data.max_validation`): every point is trained as the
experiment trains it and scored with `eval.split=validation`, on records carved from each task's
training pool (seeded, disjoint from what trains and from the test split the tables report).

Each method declares what a sweep turns: its learning rate (`Method.sweep_key`) and, for the
peers and replay, its own knob (`Method.own_knob`: O-LoRA's and GainLoRA's lambda1, N-LoRA's
sparsity, replay's ratio). Every knob gets the same rule: a three-point geometric grid around
its default d (d/5, d, 4d), extended by the grid's own ratio on any side where the best point
lies at the edge, until the final AA turns down there (at most MAX_EXTENSIONS steps a side; a
value the option refuses ends that side). The learning rate is swept first; the own knob then at
the learning rate's pick. Each point runs through bench/cl_methods.py's runner into
<output_dir>/sweep/<method>-<knob>-<value>/; the value with the best final validation AA (ties:
lower forgetting) is the pick. oracle_task_id routes slm's slots, so it takes slm's pick. A point
recorded for the same config and code is not rerun. Writes bench/results/lr_sweep/<name>.json
(section `sweep`: the split, the rule, grids, points, picks; points picked on the test split by
earlier code stay as history, `superseded_*`) after every point; the last line is
`picks: <method>=<knob>:<value>,... ...`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import ValidationError  # noqa: E402

from bench.cl_methods import (  # noqa: E402
    VALIDATION,
    BenchExperiment,
    config_sha256,
    entries_of,
    run_method,
    validation_overrides,
)
from bench.runner import RESULTS, method_fingerprint, read_experiment, read_result, result_path, write_result  # noqa: E402
from pipeline.methods import METHOD_NAMES, registered  # noqa: E402
from pipeline.report.format import fmt  # noqa: E402

BENCH = "lr_sweep"
GRID_RATIOS = (1 / 5, 1.0, 4.0)  # the base grid around a knob's default
MAX_EXTENSIONS = 3  # grid steps a sweep may add past each end of its base grid
SPLIT = VALIDATION  # what every pick is made on
RULE = ("max final AA on the validation split, ties: lower forgetting; the same rule for every knob of every "
        f"method: the grid (d/5, d, 4d) around its default d, extended by its ratio past an edge while the best is "
        f"there (at most {MAX_EXTENSIONS} a side); the learning rate first, the method's own knob at its pick")


def knobs(method: str) -> list[str]:
    """The options a sweep of `method` turns, in order: its learning rate, then its own knob."""
    m = registered()[method]
    return [m.sweep_key, *([m.own_knob] if m.own_knob else [])]


def default_of(method: str, knob: str) -> float:
    """The knob's value in the method's default options (a peer's uniform preset)."""
    return float(registered()[method].Options().resolved(knob))


def grid(method: str, knob: str | None = None) -> tuple[float, ...]:
    """The base grid of `knob` (default: the learning rate) of `method`, around its default."""
    default = default_of(method, knob or registered()[method].sweep_key)
    return tuple(_round(default * r) for r in GRID_RATIOS)


def override(method: str, value: float, knob: str | None = None) -> str:
    m = registered()[method]
    return f"methods.{m.section}.{knob or m.sweep_key}={value}"


def accepts(method: str, knob: str) -> Callable[[float], bool]:
    """Whether the method's options take `value` for `knob` (replay's ratio stops at 1)."""
    options = registered()[method].Options

    def ok(value: float) -> bool:
        try:
            options.model_validate({knob: value})
        except ValidationError:
            return False
        return True

    return ok


def sweep_point(bench: BenchExperiment, order: str, method: str, knob: str, value: float, at: dict[str, float],
                done: dict) -> dict:
    """One run of `method` with `knob` = value (and the knobs swept before it at their picks, `at`)."""
    point = point_experiment(bench, method, knob, value, at)
    exp = point.load(method)
    key = point_key(config_sha256(exp), method_fingerprint(exp.method)["sha256"], order)
    if key in done:
        return done[key]
    record = run_method(point, method, order)
    m = record["metrics"]
    split = {run.get("split") for run in m["per_order"].values()}
    if split != {SPLIT}:
        raise SystemExit(f"[{method}] the sweep point scored {sorted(map(str, split))}, not the {SPLIT} split")
    return {"method": method, "knob": f"methods.{exp.method.section}.{knob}", "value": value,
            "at": {f"methods.{exp.method.section}.{k}": v for k, v in at.items()}, "split": SPLIT,
            "key": key, "orders": [order], "AA": m["AA"], "BWT": m["BWT"],
            "forgetting": m["forgetting"], "wall_s": record["train_info"]["wall_s"],
            "matrix": {name: run["matrix"] for name, run in m["per_order"].items()},
            "output_dir": str(exp.layout.base), "run_info": record["run_info"],
            # the whole run, so bench/cl_methods.py reuses it as this config's order (same code)
            "entries": entries_of(record)}


def point_experiment(bench: BenchExperiment, method: str, knob: str, value: float,
                     at: dict[str, float]) -> BenchExperiment:
    base = bench.load(method).cfg
    folder = Path(base.output_dir) / "sweep" / f"{method}-{knob}-{value:g}"
    return bench.with_overrides([*(override(method, v, k) for k, v in at.items()), override(method, value, knob),
                                 f"output_dir={folder}"])


def point_key(digest: str, code: str, order: str) -> str:
    """A sweep point is one config, made by one code, on one task order."""
    return f"{digest}:{code}@{order}"


def next_value(values: list[float], points: dict[float, dict], base: tuple[float, ...],
               valid: Callable[[float], bool] = lambda v: True) -> float | None:
    """The value to run next under the sweep rule, or None when the sweep of this knob is done:
    the base grid first; then one grid ratio past an edge whose point is the best so far (so the
    final AA has not turned down on that side yet), at most MAX_EXTENSIONS steps a side, and only
    to a value the option accepts."""
    for value in base:
        if value not in points:
            return value
    best = pick(list(points.values()))["value"]
    low, high = min(values), max(values)
    if best == low and low > base[0] / (base[1] / base[0]) ** MAX_EXTENSIONS * 1.0001:
        below = _round(low * base[0] / base[1])
        return below if valid(below) else None
    if best == high and high < base[-1] * (base[-1] / base[-2]) ** MAX_EXTENSIONS * 0.9999:
        above = _round(high * base[-1] / base[-2])
        return above if valid(above) else None
    return None


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def pick(points: list[dict]) -> dict:
    # Rounded so that float noise in a mean (forgetting 1e-17 for 0) never decides between points.
    return max(points, key=lambda p: (round(p["AA"], 6), -round(p["forgetting"] or 0.0, 6)))


def picks_of(points: list[dict]) -> dict[str, dict[str, dict]]:
    """method -> knob -> its pick, among the points of that knob."""
    by_knob: dict[tuple[str, str], list[dict]] = {}
    for pt in points:
        by_knob.setdefault((pt["method"], pt["knob"]), []).append(pt)
    out: dict[str, dict[str, dict]] = {}
    for (method, knob), pts in by_knob.items():
        out.setdefault(method, {})[knob] = pick(pts)
    return out


def markdown(record: dict, source: str) -> str:
    """One row per sweep point of a results file, grouped by method and knob; each knob's pick is marked."""
    sweep = record["sweep"]
    picked = {id(pt) for knobs_ in picks_of(sweep["points"]).values() for pt in knobs_.values()}
    lines = ["| method | option | value | at | AA ↑ | BWT ↑ | forgetting ↓ | wall s | pick |",
             "|---|---|---|---|---|---|---|---|---|"]
    # Registry order; a method no longer registered (an old results file) sorts last, by name.
    rank = {m: i for i, m in enumerate(METHOD_NAMES)}
    for pt in sorted(sweep["points"], key=lambda pt: (rank.get(pt["method"], len(rank)), pt["method"],
                                                      not pt["knob"].endswith(".lr"), pt["knob"], pt["value"])):
        at = ", ".join(f"`{k.rsplit('.', 1)[-1]}` {v:g}" for k, v in (pt.get("at") or {}).items())
        lines.append(f"| `{pt['method']}` | `{pt['knob']}` | {pt['value']:g} | {at} | {fmt(pt['AA'])} | "
                     f"{fmt(pt['BWT'], True)} | {fmt(pt['forgetting'])} | {pt['wall_s']:.0f} | "
                     f"{'yes' if id(pt) in picked else ''} |")
    orders = sorted({o for pt in sweep["points"] for o in pt.get("orders", [])})
    splits = sorted({pt.get("split", "test") for pt in sweep["points"]})
    lines += ["", f"rule: {sweep['rule']}; scored on: {', '.join(f'the {s} split' for s in splits)}; "
                  f"orders: {', '.join(orders)}; from {source}"]
    return "\n".join(lines) + "\n"


def sweep_section(points: list[dict], methods: list[str], validation: dict, previous: dict | None = None) -> dict:
    """The file's `sweep` section. Points scored on the test split (earlier code) and points of
    earlier code kept under `superseded_*` are history: never picked from."""
    history = {k: v for k, v in (previous or {}).items() if k.startswith("superseded_")}
    current = [pt for pt in points if pt.get("split") == SPLIT]
    on_test = [pt for pt in points if pt.get("split") != SPLIT]
    if on_test:
        history["superseded_test_split_points"] = [*history.get("superseded_test_split_points", []), *on_test]
    picks = picks_of(current)
    return {"split": SPLIT, "validation": validation, "rule": RULE,
            "grids": {m: {k: list(grid(m, k)) for k in knobs(m)} for m in methods}, "points": current,
            "picks": {m: {knob: {"value": pt["value"], "AA": pt["AA"]} for knob, pt in by_knob.items()}
                      for m, by_knob in picks.items()},
            **history}


def sweep_run_info(settings: dict, overrides: list[str]) -> dict:
    """The sweep's own provenance: the code that runs every point (the harness, the stages and every
    method's modules; each point keeps its own method's fingerprint and config hash in its key)."""
    from bench.runner import RUN_STAGES, bench_run_info

    methods = {c.__module__ for m in registered().values() for c in type(m).__mro__
               if c.__module__.startswith("pipeline.")}
    return bench_run_info(["bench.lr_sweep", "bench.cl_methods", *RUN_STAGES, *sorted(methods)],
                          {"settings": settings, "overrides": overrides})


def sweep_method(bench: BenchExperiment, order: str, method: str, done: dict,
                 save: Callable[[], None]) -> dict[str, float]:
    """Every knob of `method` by the rule, each at the picks of the knobs before it; returns the picks."""
    chosen: dict[str, float] = {}
    for knob in knobs(method):
        mine: dict[float, dict] = {}
        base = grid(method, knob)
        while (value := next_value(list(mine), mine, base, accepts(method, knob))) is not None:
            point = sweep_point(bench, order, method, knob, value, chosen, done)
            done[point["key"]] = mine[value] = point
            print(f"[{method}] {point['knob']}={value:g}: validation AA {fmt(point['AA'])}, forgetting "
                  f"{fmt(point['forgetting'])}", flush=True)
            save()  # after every point: an interruption keeps them
        chosen[knob] = pick(list(mine.values()))["value"]
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help="bench/experiments/lr_sweep/<name>.yaml (or a path to such a file)")
    p.add_argument("--methods", help="comma-separated subset of the experiment's methods")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow the flags
    settings = read_experiment(BENCH, args.experiment)
    bench = BenchExperiment.read(settings["experiment"], [*args.overrides, *validation_overrides(settings)])
    # A method that reads another's options (oracle_task_id: slm's slots) takes that one's pick.
    own = [name for name, m in registered().items() if m.section == name]
    order, methods = settings["order"], settings.get("methods") or own
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = result_path(BENCH, settings["name"], args.results_dir)
    previous = read_result(out)["sweep"] if out.is_file() else {}
    done = {pt["key"]: pt for pt in previous.get("points", [])}

    def save() -> None:
        write_result(BENCH, settings["name"], {"sweep": sweep_section(list(done.values()), methods,
                                                                      settings["validation"], previous)},
                     sweep_run_info(settings, args.overrides), results=args.results_dir)

    picks = {method: sweep_method(bench, order, method, done, save) for method in methods}
    save()
    print("picks: " + " ".join(f"{m}=" + ",".join(f"{k}:{v:g}" for k, v in chosen.items())
                               for m, chosen in picks.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
