"""JARe settings against each other on one experiment and order: how well each learns every task
(the diagonal of the accuracy matrix) and what it keeps (forgetting); the runs are kept as data.

    python bench/plasticity.py cl_benchmark_cpu --order order1
    python bench/plasticity.py cl_benchmark_cpu_unrelated --order order1 --settings lora,paper
    python bench/plasticity.py cl_benchmark_cpu --order order1 --summary

The settings (a name and config overrides each) are bench/experiments/plasticity/settings.yaml;
the experiment is a bench/cl_methods.py one. Each setting runs as `slm run --method slm` through
bench/cl_methods.py's runner into <output_dir>/plasticity/<name>/, scored on a validation split
carved from each task's training pool (the settings file's `validation:`), never on the test split;
a setting recorded for the same config and code is not rerun. Writes
bench/results/plasticity/<experiment>-<order>.json (section `points`: per setting AA, BWT,
forgetting, mean diagonal, the matrix, retrieval accuracy, wall time and its run's provenance;
points of earlier code scored on the test split stay as `superseded_test_split_points`) after
every setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cl_methods import (  # noqa: E402
    VALIDATION,
    BenchExperiment,
    config_sha256,
    mean_diagonal,
    run_method,
    validation_overrides,
)
from bench.runner import (  # noqa: E402
    RESULTS,
    RUN_STAGES,
    bench_run_info,
    method_fingerprint,
    read_experiment,
    read_result,
    result_path,
    write_result,
)

BENCH = "plasticity"


def settings(names: list[str] | None) -> list[dict]:
    entries = read_experiment(BENCH, "settings")["settings"]
    if names:
        unknown = sorted(set(names) - {e["name"] for e in entries})
        if unknown:
            raise SystemExit(f"unknown settings {unknown}; settings.yaml has {[e['name'] for e in entries]}")
        entries = [e for e in entries if e["name"] in names]
    return entries


def point(bench: BenchExperiment, order: str, setting: dict) -> dict:
    base = bench.load("slm").cfg
    run = bench.with_overrides([*setting["overrides"],
                                f"output_dir={Path(base.output_dir) / 'plasticity' / setting['name']}"])
    record = run_method(run, "slm", order)
    m = record["metrics"]
    per_order = m["per_order"][order]
    diagonal = [row[i] for i, row in enumerate(per_order["matrix"])]
    split = {run.get("split") for run in m["per_order"].values()}
    if split != {VALIDATION}:
        raise SystemExit(f"[{setting['name']}] scored {sorted(map(str, split))}, not the {VALIDATION} split")
    return {"name": setting["name"], "overrides": setting["overrides"], "key": key_of(bench, setting),
            "split": VALIDATION, "AA": m["AA"], "BWT": m["BWT"], "forgetting": m["forgetting"],
            "mean_diagonal": mean_diagonal(per_order["matrix"]), "diagonal": diagonal, "matrix": per_order["matrix"],
            "tasks": per_order["tasks"], "retrieval_accuracy": m["retrieval_accuracy"],
            "wall_s": record["train_info"]["wall_s"], "run_info": record["run_info"]}


def key_of(bench: BenchExperiment, setting: dict) -> str:
    """A setting's point: its config and the code that runs it."""
    exp = bench.with_overrides(setting["overrides"]).load("slm")
    return f"{config_sha256(exp)}:{method_fingerprint(exp.method)['sha256']}"


def table(points: list[dict]) -> str:
    lines = ["| setting | AA ↑ | mean diagonal ↑ | forgetting ↓ | retrieval ↑ | diagonal | wall s |",
             "|---|---|---|---|---|---|---|"]
    for p in points:
        retrieval = "n/a" if p["retrieval_accuracy"] is None else f"{p['retrieval_accuracy']:.3f}"
        lines.append(f"| `{p['name']}` | {p['AA']:.3f} | {p['mean_diagonal']:.3f} | {p['forgetting']:.3f} | "
                     f"{retrieval} | {' / '.join(f'{d:.2f}' for d in p['diagonal'])} | {p['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def markdown(record: dict, source: str) -> str:
    """The table of a results file, with the order it ran on and the split its points scored."""
    splits = ", ".join(f"the {s} split" for s in sorted({p.get("split", "test") for p in record["points"]}))
    return table(record["points"]) + f"\none task order ({record['order']}), scored on {splits}; from {source}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help="a bench/experiments/cl_methods/<name>.yaml")
    p.add_argument("--order", required=True, metavar="NAME", help="the task order to run on")
    p.add_argument("--settings", help="comma-separated names from settings.yaml (default: all)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--summary", action="store_true", help="print the recorded points only")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow the flags
    bench = BenchExperiment.read(args.experiment, [*args.overrides,
                                                   *validation_overrides(read_experiment(BENCH, "settings"))])
    name = f"{bench.name}-{args.order}"
    out = result_path(BENCH, name, args.results_dir)
    previous = read_result(out) if out.is_file() else {}
    recorded = previous.get("points", [])
    if args.summary:
        print(table(recorded), end="")
        return 0
    # Points scored on the test split (earlier code) are history: kept, never compared with these.
    history = [*previous.get("superseded_test_split_points", []),
               *(pt for pt in recorded if pt.get("split") != VALIDATION)]
    done = {pt["key"]: pt for pt in recorded if pt.get("split") == VALIDATION}
    for setting in settings(args.settings.split(",") if args.settings else None):
        if key_of(bench, setting) in done:
            print(f"[{setting['name']}] already recorded in {out} (same config and code); kept", flush=True)
            continue
        pt = point(bench, args.order, setting)
        done[pt["key"]] = pt
        print(f"[{pt['name']}] AA {pt['AA']:.3f}, diagonal {pt['mean_diagonal']:.3f}, "
              f"forgetting {pt['forgetting']:.3f}", flush=True)
        write_result(BENCH, name, {"experiment": bench.name, "order": args.order, "split": VALIDATION,
                                   "points": list(done.values()),
                                   **({"superseded_test_split_points": history} if history else {})},
                     bench_run_info(["bench.plasticity", "bench.cl_methods", *RUN_STAGES,
                                     *{c.__module__ for c in type(bench.load("slm").method).__mro__
                                       if c.__module__.startswith("pipeline.")}],
                                    {"experiment": bench.name, "overrides": bench.overrides, "order": args.order}),
                     results=args.results_dir)
    print(table(list(done.values())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
