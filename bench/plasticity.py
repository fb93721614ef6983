"""JARe settings against each other on one experiment and order: how well each learns every task
(the diagonal of the accuracy matrix) and what it keeps (forgetting); the runs are kept as data.

    python bench/plasticity.py -c cl_benchmark_cpu.yaml --order order1 data_root=../shared/data/cl_benchmark
    python bench/plasticity.py -c cl_benchmark_cpu.yaml --order order1 --settings lora,paper data_root=...
    python bench/plasticity.py -c cl_benchmark_cpu.yaml --order order1 --summary

The settings (name + config overrides) are bench/experiments/plasticity.yaml. Each runs as
`slm run --method slm` through bench/cl_methods.py's runner into <output_dir>/plasticity/<name>/;
a setting already recorded for the same config hash is not rerun. Writes
bench/results/plasticity-<experiment>-<order>.json (one point per setting: AA, BWT, forgetting,
mean diagonal, the matrix, retrieval accuracy, wall time, commit) after every setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cl_methods import RESULTS, config_sha256, run_method  # noqa: E402
from bench.provenance import ROOT, run_provenance  # noqa: E402
from pipeline.experiment import load_config  # noqa: E402
from pipeline.state.artifacts import atomic_write_json  # noqa: E402

SETTINGS = ROOT / "bench" / "experiments" / "plasticity.yaml"


def settings(path: Path, names: list[str] | None) -> list[dict]:
    entries = yaml.safe_load(path.read_text())["settings"]
    if names:
        unknown = sorted(set(names) - {e["name"] for e in entries})
        if unknown:
            raise SystemExit(f"unknown settings {unknown}; {path} has {[e['name'] for e in entries]}")
        entries = [e for e in entries if e["name"] in names]
    return entries


def point(args: argparse.Namespace, setting: dict) -> dict:
    base = load_config(args.config, args.overrides)
    overrides = [*args.overrides, *setting["overrides"],
                 f"output_dir={Path(base.output_dir) / 'plasticity' / setting['name']}"]
    cfg = load_config(args.config, [*overrides, "method=slm"])
    record = run_method(argparse.Namespace(config=args.config, overrides=overrides, order=args.order), "slm")
    m = record["metrics"]
    run = m["per_order"][args.order]
    diagonal = [row[i] for i, row in enumerate(run["matrix"])]
    return {"name": setting["name"], "overrides": setting["overrides"], "config_sha256": config_sha256(cfg),
            "AA": m["AA"], "BWT": m["BWT"], "forgetting": m["forgetting"],
            "mean_diagonal": sum(diagonal) / len(diagonal), "diagonal": diagonal, "matrix": run["matrix"],
            "tasks": run["tasks"], "retrieval_accuracy": m["retrieval_accuracy"],
            "wall_s": record["train_info"]["wall_s"], "commit": record["run_info"]["commit"],
            "dirty": record["run_info"]["dirty"]}


def table(points: list[dict]) -> str:
    lines = ["| setting | AA ↑ | mean diagonal ↑ | forgetting ↓ | retrieval ↑ | diagonal | wall s |",
             "|---|---|---|---|---|---|---|"]
    for p in points:
        retrieval = "n/a" if p["retrieval_accuracy"] is None else f"{p['retrieval_accuracy']:.3f}"
        lines.append(f"| `{p['name']}` | {p['AA']:.3f} | {p['mean_diagonal']:.3f} | {p['forgetting']:.3f} | "
                     f"{retrieval} | {' / '.join(f'{d:.2f}' for d in p['diagonal'])} | {p['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default="cl_benchmark_cpu.yaml")
    p.add_argument("--order", required=True, metavar="NAME", help="the task order to run on")
    p.add_argument("--settings", help="comma-separated names from the settings file (default: all)")
    p.add_argument("--settings-file", type=Path, default=SETTINGS)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--summary", action="store_true", help="print the recorded points only")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    name = load_config(args.config, args.overrides).name
    out = args.results_dir / f"plasticity-{name}-{args.order}.json"
    recorded = json.loads(out.read_text())["points"] if out.is_file() else []
    if args.summary:
        print(table(recorded))
        return 0
    done = {pt["config_sha256"]: pt for pt in recorded}
    wanted = settings(args.settings_file, args.settings.split(",") if args.settings else None)
    for setting in wanted:
        cfg = load_config(args.config, [*args.overrides, *setting["overrides"], "method=slm"])
        if config_sha256(cfg) in done:
            print(f"[{setting['name']}] already recorded in {out}; kept", flush=True)
            continue
        pt = point(args, setting)
        done[pt["config_sha256"]] = pt
        print(f"[{pt['name']}] AA {pt['AA']:.3f}, diagonal {pt['mean_diagonal']:.3f}, "
              f"forgetting {pt['forgetting']:.3f}", flush=True)
        atomic_write_json(out, {"experiment": name, "order": args.order, "points": list(done.values()),
                                "run_info": run_provenance()})
    print(table(list(done.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
