"""One learning-rate sweep, run the same way for every method; the sweep is kept as data.

    python bench/lr_sweep.py cl_benchmark_cpu-order1                   # every method it lists
    python bench/lr_sweep.py cl_benchmark_cpu-order1 --methods slm,o_lora

The sweep experiment bench/experiments/lr_sweep/<name>.yaml names a bench/cl_methods.py
experiment, the task order and the methods. Each method declares the option a sweep turns
(`Method.sweep_key`, `methods.<name>.lr`), and every method gets the same rule: a three-point
geometric grid around its option's default d (d/5, d, 4d), extended by the grid's own ratio on
any side where the best point lies at the edge, until the final AA turns down there (at most
MAX_EXTENSIONS steps a side). Each point runs through bench/cl_methods.py's runner into
<output_dir>/sweep/<method>-<value>/; the value with the best final AA (ties: lower forgetting) is
the method's pick. The rule is applied to the test-split scores of this small benchmark: a
tuning-on-test caveat the docs state. oracle_task_id routes slm's slots, so it takes slm's pick.
A point recorded for the same config and code is not rerun. Writes
bench/results/lr_sweep/<name>.json (section `sweep`: the rule, grids, points, picks) after every
point; the last line is `picks: <method>=<value> ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cl_methods import BenchExperiment, config_sha256, entries_of, run_method  # noqa: E402
from bench.runner import RESULTS, method_fingerprint, read_experiment, result_path, write_result  # noqa: E402
from pipeline.methods import METHOD_NAMES, registered  # noqa: E402
from pipeline.report.format import fmt  # noqa: E402

BENCH = "lr_sweep"
GRID_RATIOS = (1 / 5, 1.0, 4.0)  # the base grid around a method's default learning rate
MAX_EXTENSIONS = 3  # grid steps a sweep may add past each end of its base grid
RULE = ("max final AA, ties: lower forgetting; the same rule for every method: the grid (d/5, d, 4d) around its "
        f"default d, extended by its ratio past an edge while the best is there (at most {MAX_EXTENSIONS} a side)")


def grid(method: str) -> tuple[float, ...]:
    """The base grid of `method`'s sweep option, around its default."""
    m = registered()[method]
    default = m.Options.model_fields[m.sweep_key].default
    return tuple(_round(default * r) for r in GRID_RATIOS)


def override(method: str, value: float) -> str:
    m = registered()[method]
    return f"methods.{m.section}.{m.sweep_key}={value}"


def sweep_point(bench: BenchExperiment, order: str, method: str, value: float, done: dict) -> dict:
    base = bench.load(method).cfg
    point = bench.with_overrides([override(method, value),
                                  f"output_dir={Path(base.output_dir) / 'sweep' / f'{method}-{value:g}'}"])
    exp = point.load(method)
    key = point_key(config_sha256(exp), method_fingerprint(exp.method)["sha256"], order)
    if key in done:
        return done[key]
    record = run_method(point, method, order)
    m = record["metrics"]
    return {"method": method, "knob": f"methods.{exp.method.section}.{exp.method.sweep_key}",
            "value": value, "key": key, "orders": [order], "AA": m["AA"], "BWT": m["BWT"],
            "forgetting": m["forgetting"], "wall_s": record["train_info"]["wall_s"],
            "matrix": {name: run["matrix"] for name, run in m["per_order"].items()},
            "output_dir": str(exp.layout.base), "run_info": record["run_info"],
            # the whole run, so bench/cl_methods.py reuses it as this config's order (same code)
            "entries": entries_of(record)}


def point_key(digest: str, code: str, order: str) -> str:
    """A sweep point is one config, made by one code, on one task order."""
    return f"{digest}:{code}@{order}"


def next_value(values: list[float], points: dict[float, dict], base: tuple[float, ...]) -> float | None:
    """The value to run next under the sweep rule, or None when the sweep of this method is done:
    the base grid first; then one grid ratio past an edge whose point is the best so far (so the
    final AA has not turned down on that side yet), at most MAX_EXTENSIONS steps a side."""
    for value in base:
        if value not in points:
            return value
    best = pick(list(points.values()))["value"]
    low, high = min(values), max(values)
    if best == low and low > base[0] / (base[1] / base[0]) ** MAX_EXTENSIONS * 1.0001:
        return _round(low * base[0] / base[1])
    if best == high and high < base[-1] * (base[-1] / base[-2]) ** MAX_EXTENSIONS * 0.9999:
        return _round(high * base[-1] / base[-2])
    return None


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def pick(points: list[dict]) -> dict:
    # Rounded so that float noise in a mean (forgetting 1e-17 for 0) never decides between points.
    return max(points, key=lambda p: (round(p["AA"], 6), -round(p["forgetting"] or 0.0, 6)))


def picks_of(points: list[dict]) -> dict[str, dict]:
    by_method: dict[str, list[dict]] = {}
    for pt in points:
        by_method.setdefault(pt["method"], []).append(pt)
    return {m: pick(pts) for m, pts in by_method.items()}


def markdown(record: dict, source: str) -> str:
    """One row per sweep point of a results file, grouped by method; the method's pick is marked."""
    sweep = record["sweep"]
    picked = {id(pt) for pt in picks_of(sweep["points"]).values()}
    lines = ["| method | option | value | AA ↑ | BWT ↑ | forgetting ↓ | wall s | pick |",
             "|---|---|---|---|---|---|---|---|"]
    # Registry order; a method no longer registered (an old results file) sorts last, by name.
    rank = {m: i for i, m in enumerate(METHOD_NAMES)}
    for pt in sorted(sweep["points"], key=lambda pt: (rank.get(pt["method"], len(rank)), pt["method"], pt["value"])):
        lines.append(f"| `{pt['method']}` | `{pt['knob']}` | {pt['value']:g} | {fmt(pt['AA'])} | "
                     f"{fmt(pt['BWT'], True)} | {fmt(pt['forgetting'])} | {pt['wall_s']:.0f} | "
                     f"{'yes' if id(pt) in picked else ''} |")
    orders = sorted({o for pt in sweep["points"] for o in pt.get("orders", [])})
    lines += ["", f"rule: {sweep['rule']}; orders: {', '.join(orders)}; from {source}"]
    return "\n".join(lines) + "\n"


def sweep_section(points: list[dict], methods: list[str], previous: dict | None = None) -> dict:
    """The file's `sweep` section; points of earlier code stay under their own keys (history)."""
    picks = picks_of(points)
    history = {k: v for k, v in (previous or {}).items() if k.startswith("superseded_")}
    return {"rule": RULE, "grids": {m: list(grid(m)) for m in methods}, "points": points,
            "picks": {m: {"knob": pt["knob"], "value": pt["value"], "AA": pt["AA"]} for m, pt in picks.items()},
            **history}


def sweep_run_info(settings: dict, overrides: list[str]) -> dict:
    """The sweep's own provenance: the code that runs every point (the harness, the stages and every
    method's modules; each point keeps its own method's fingerprint and config hash in its key)."""
    from bench.runner import RUN_STAGES, bench_run_info

    methods = {c.__module__ for m in registered().values() for c in type(m).__mro__
               if c.__module__.startswith("pipeline.")}
    return bench_run_info(["bench.lr_sweep", "bench.cl_methods", *RUN_STAGES, *sorted(methods)],
                          {"settings": settings, "overrides": overrides})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help="bench/experiments/lr_sweep/<name>.yaml (or a path to such a file)")
    p.add_argument("--methods", help="comma-separated subset of the experiment's methods")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow the flags
    settings = read_experiment(BENCH, args.experiment)
    bench = BenchExperiment.read(settings["experiment"], args.overrides)
    # A method that reads another's options (oracle_task_id: slm's slots) takes that one's pick.
    own = [name for name, m in registered().items() if m.section == name]
    order, methods = settings["order"], settings.get("methods") or own
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = result_path(BENCH, settings["name"], args.results_dir)
    previous = json.loads(out.read_text())["sweep"] if out.is_file() else {}
    done = {pt["key"]: pt for pt in previous.get("points", [])}
    for method in methods:
        mine = {pt["value"]: pt for pt in done.values() if pt["method"] == method and pt["key"].endswith(f"@{order}")
                and pt["key"] == point_key(config_sha256(bench.with_overrides([override(method, pt["value"])]).load(
                    method)), method_fingerprint(registered()[method])["sha256"], order)}
        while (value := next_value(list(mine), mine, grid(method))) is not None:
            point = sweep_point(bench, order, method, value, done)
            done[point["key"]] = mine[value] = point
            print(f"[{method}] {point['knob']}={value:g}: AA {fmt(point['AA'])}, forgetting {fmt(point['forgetting'])}",
                  flush=True)
            write_result(BENCH, settings["name"], {"sweep": sweep_section(list(done.values()), methods, previous)},
                         sweep_run_info(settings, args.overrides), results=args.results_dir)  # each point kept
    sweep = sweep_section(list(done.values()), methods, previous)
    write_result(BENCH, settings["name"], {"sweep": sweep}, sweep_run_info(settings, args.overrides),
                 results=args.results_dir)
    print("picks: " + " ".join(f"{m}={pt['value']:g}" for m, pt in sweep["picks"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
