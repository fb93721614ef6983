"""One learning-rate sweep, run the same way for every method; the sweep is kept as data.

    python bench/lr_sweep.py -c default.yaml                     # every method, ~3 points each
    python bench/lr_sweep.py -c default.yaml --methods seq_lora,o_lora
    python bench/lr_sweep.py -c cl_benchmark_cpu.yaml --order order1 --methods slm,o_lora data_root=...

Each method family has its own learning-rate knob (README "Fairness"): JARe `train.lr`, the LoRA
family `train.lora_lr`, full fine-tuning `train.ft_lr`. Every method gets the same rule: a
three-point geometric grid around its family's default (x1/3 .. x3, or x1/5 .. x4 for the LoRA
family, whose default sits between two values seen in practice), extended by the grid's own
ratio on any side where the best point lies at the edge, until the final AA turns down there
(at most MAX_EXTENSIONS steps a side). Each point is run with `bench/cl_methods.py`'s runner into
<output_dir>/sweep/<knob>-<value>/, and the value with the best final AA (ties: lower
forgetting) is the method's pick. The rule is the same for every method and is applied to the
test-split scores of this small benchmark; that is a tuning-on-test caveat the README states.
oracle_task_id uses slm's slots, so it takes slm's pick. Points already recorded with the same
config hash and task orders are not rerun; a point whose config bench/results/cl-<exp>-<m>.json
holds for (at least) the same orders is read from that file. Writes
bench/results/lr_sweep-<experiment>.json (lr_sweep-<experiment>-<order>.json with --order) and
its table as .md next to it (the README's `lr-sweep` block); the last line is
`picks: <method>=<value> ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cl_methods import (  # noqa: E402
    RESULTS,
    config_sha256,
    recorded_orders,
    result_record,
    results_path,
    run_method,
    runs_of,
)
from bench.provenance import run_provenance  # noqa: E402
from pipeline.experiment import load_config  # noqa: E402
from pipeline.methods import METHOD_NAMES, get_method  # noqa: E402
from pipeline.methods.jare import JareMethod  # noqa: E402
from pipeline.methods.lora import LoraMethod  # noqa: E402
from pipeline.state.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from pipeline.state.layout import RunLayout  # noqa: E402

GRIDS = {"lr": (3e-4, 1e-3, 3e-3), "lora_lr": (1e-3, 5e-3, 2e-2), "ft_lr": (1e-5, 3e-5, 1e-4)}
MAX_EXTENSIONS = 3  # grid steps a sweep may add past each end of its base grid


def knob(method: str) -> str:
    m = get_method(method)
    return "lr" if isinstance(m, JareMethod) else "lora_lr" if isinstance(m, LoraMethod) else "ft_lr"


def sweep_point(args: argparse.Namespace, method: str, key: str, value: float, done: dict) -> dict:
    base = load_config(args.config, args.overrides)
    overrides = [*args.overrides, f"train.{key}={value}",
                 f"output_dir={Path(base.output_dir) / 'sweep' / f'{key}-{value:g}'}"]
    cfg = load_config(args.config, [*overrides, f"method={method}"])
    digest = config_sha256(cfg)
    orders = [name or "as_listed" for name, _ in runs_of(cfg, args.order)]
    if point_key(digest, orders) in done:
        return done[point_key(digest, orders)]
    main_results = results_path(args.results_dir, base.name, method)
    recorded = recorded_orders(main_results, digest)  # the same config, run by cl_methods
    if all(o in recorded for o in orders):
        record = result_record(cfg, method, {o: recorded[o] for o in orders})
    else:
        record = run_method(argparse.Namespace(config=args.config, overrides=overrides, order=args.order), method)
    m = record["metrics"]
    return {"method": method, "knob": f"train.{key}", "value": value, "config_sha256": digest, "orders": orders,
            "AA": m["AA"], "BWT": m["BWT"], "forgetting": m["forgetting"], "wall_s": record["train_info"]["wall_s"],
            "matrix": {name: run["matrix"] for name, run in m["per_order"].items()},
            "output_dir": str(RunLayout.of(cfg).base), "commit": record["run_info"]["commit"],
            # The file's run_info is the last invocation; a sweep may be several (one per method).
            "sweep_command": run_provenance()["command"]}


def next_value(values: list[float], points: dict[float, dict], grid: tuple[float, ...]) -> float | None:
    """The value to run next under the sweep rule, or None when the sweep of this method is done:
    the base grid first; then one grid ratio past an edge whose point is the best so far (so the
    final AA has not turned down on that side yet), at most MAX_EXTENSIONS steps a side."""
    for value in grid:
        if value not in points:
            return value
    best = pick(list(points.values()))["value"]
    low, high = min(values), max(values)
    if best == low and low > grid[0] / (grid[1] / grid[0]) ** MAX_EXTENSIONS * 1.0001:
        return _round(low * grid[0] / grid[1])
    if best == high and high < grid[-1] * (grid[-1] / grid[-2]) ** MAX_EXTENSIONS * 0.9999:
        return _round(high * grid[-1] / grid[-2])
    return None


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def point_key(digest: str, orders: list[str]) -> str:
    """A sweep point is one config on one set of task orders (the config hash has no order in it)."""
    return f"{digest}@{','.join(orders)}"


def pick(points: list[dict]) -> dict:
    return max(points, key=lambda p: (p["AA"], -(p["forgetting"] or 0.0)))


def picks_of(points: list[dict]) -> dict[str, dict]:
    by_method: dict[str, list[dict]] = {}
    for pt in points:
        by_method.setdefault(pt["method"], []).append(pt)
    return {m: pick(pts) for m, pts in by_method.items()}


def markdown(result: dict, source: Path) -> str:
    """One row per sweep point, grouped by method; the method's pick is marked."""
    picked = {id(pt) for pt in picks_of(result["points"]).values()}
    lines = ["| method | knob | value | AA ↑ | BWT ↑ | forgetting ↓ | wall s | pick |",
             "|---|---|---|---|---|---|---|---|"]
    # Registry order; a method no longer registered (an old results file) sorts last, by name.
    rank = {m: i for i, m in enumerate(METHOD_NAMES)}
    for pt in sorted(result["points"], key=lambda pt: (rank.get(pt["method"], len(rank)), pt["method"], pt["value"])):
        forgetting = "n/a" if pt["forgetting"] is None else f"{pt['forgetting']:.3f}"
        lines.append(f"| `{pt['method']}` | `{pt['knob']}` | {pt['value']:g} | {pt['AA']:.3f} | {pt['BWT']:+.3f} | "
                     f"{forgetting} | {pt['wall_s']:.0f} | {'yes' if id(pt) in picked else ''} |")
    orders = sorted({o for pt in result["points"] for o in pt.get("orders", [])})
    lines += ["", f"rule: {result['rule']}; orders: {', '.join(orders)}; "
                  f"from bench/results/{source.name}"]
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict) -> None:
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result, out))


def sweep_result(name: str, points: list[dict]) -> dict:
    picks = picks_of(points)
    return {"experiment": name,
            "rule": "max final AA, ties: lower forgetting; the same rule per family: a 3-point geometric grid, "
                    f"extended by its ratio past an edge while the best is there (at most {MAX_EXTENSIONS} a side)",
            "grids": {f"train.{k}": list(v) for k, v in GRIDS.items()}, "points": points,
            "picks": {m: {"knob": pt["knob"], "value": pt["value"], "AA": pt["AA"]} for m, pt in picks.items()},
            "run_info": run_provenance()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default="default.yaml")
    p.add_argument("--methods", default=",".join(m for m in METHOD_NAMES if m != "oracle_task_id"))
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--order", metavar="NAME", help="sweep on one of the experiment's task orders (default: all)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    name = load_config(args.config, args.overrides).name
    out = args.results_dir / f"lr_sweep-{name}{f'-{args.order}' if args.order else ''}.json"
    previous = json.loads(out.read_text()) if out.is_file() else {"points": []}
    done = {point_key(pt["config_sha256"], pt.get("orders", [])): pt for pt in previous["points"]}
    orders = [n or "as_listed" for n, _ in runs_of(load_config(args.config, args.overrides), args.order)]
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        key = knob(method)
        mine = {pt["value"]: pt for pt in done.values() if pt["method"] == method and pt.get("orders") == orders}
        while (value := next_value(list(mine), mine, GRIDS[key])) is not None:
            point = sweep_point(args, method, key, value, done)
            done[point_key(point["config_sha256"], point["orders"])] = mine[value] = point
            print(f"[{method}] train.{key}={value:g}: AA {point['AA']:.3f}, forgetting {point['forgetting']}",
                  flush=True)
            write(out, sweep_result(name, list(done.values())))  # after every point: an interruption keeps them
    result = sweep_result(name, list(done.values()))
    write(out, result)
    print("picks: " + " ".join(f"{m}={pt['value']:g}" for m, pt in result["picks"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
