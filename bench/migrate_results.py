"""One-off: results files of the flat bench/results/ layout -> bench/results/<bench>/<name>.json in
the runner's schema (bench/runner.py), keeping every recorded number and provenance.

    python bench/migrate_results.py          # idempotent: files already migrated are left alone

What it adds, and from where: `schema`; a `date` the file never recorded is the date its first
commit added it (`date_source` says so); the code fingerprint of what made each continual-learning
result, computed over the same files at the commit the result records (`code_fingerprint`), so
the runner never reuses a result of other code. Files without any commit are not migrated: they
are re-recorded by their bench (the README cites none of them until then). Markdown copies of
tables are deleted: tables are rendered from the JSON (bench/tables.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runner import RESULT_SCHEMA, RESULTS, ROOT, RUN_STAGES, check_result  # noqa: E402
from pipeline.state.artifacts import atomic_write_json  # noqa: E402


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def fingerprint_at(commit: str, method: str) -> str:
    """bench.runner.method_fingerprint's digest, over the files as they were at `commit`."""
    from pipeline.methods import get_method

    # The method's class and bases: their modules kept their paths across every recorded commit.
    classes = [c for c in type(get_method(method)).__mro__ if c.__module__.startswith("pipeline.methods")]
    files = sorted({c.__module__.replace(".", "/") + ".py" for c in classes}
                   | {m.replace(".", "/") + ".py" for m in RUN_STAGES})
    digest = hashlib.sha256()
    for f in files:
        blob = subprocess.run(["git", "show", f"{commit}:{f}"], cwd=ROOT, capture_output=True, check=False).stdout
        digest.update(f.encode() + b"\0" + blob + b"\0")
    return digest.hexdigest()


def first_commit_date(path: Path) -> str | None:
    dates = git("log", "--diff-filter=A", "--format=%cI", "--", str(path.relative_to(ROOT))).splitlines()
    return dates[-1] if dates else None


def cl_methods(path: Path) -> tuple[str, str, dict]:
    r = json.loads(path.read_text())
    info, train, meta = r["run_info"], r["train_info"], r["meta_info"]
    orders = list(info["orders"])
    per_order = info.get("per_order") or {o: {k: info[k] for k in ("command", "commit", "dirty", "date")}
                                          for o in orders}
    for o in orders:
        per_order[o] = {**per_order[o], "config_sha256": info["config_sha256"],
                        "code_fingerprint": fingerprint_at(per_order[o]["commit"], info["method"])}
    n = len(orders)
    train.setdefault("wall_s_per_order", {o: round(train["wall_s"] / n, 1) for o in orders})
    train.setdefault("peak_rss_mib_per_order", {o: train["peak_rss_mib"] for o in orders})
    meta.setdefault("per_order", {o: {k: v for k, v in meta.items() if k != "per_order"} for o in orders})
    last = max(per_order.values(), key=lambda p: p["date"])
    info.update({"per_order": per_order, "code_fingerprint": last["code_fingerprint"]})
    name = path.stem.removeprefix("cl-")
    return "cl_methods", name, {"schema": RESULT_SCHEMA, "run_info": info, "meta_info": meta,
                                "train_info": train, "metrics": r["metrics"]}


def lr_sweep(path: Path) -> tuple[str, str, dict]:
    r = json.loads(path.read_text())
    for pt in r["points"]:  # made by the code before the restructure: kept as history, never reused
        pt["key"] = f"legacy:{pt.pop('config_sha256')}"
    sweep = {"rule": r["rule"], "grids": r["grids"], "points": [], "picks": {},
             "superseded_points": r["points"], "superseded_picks": r.get("picks", {})}
    run = r["run_info"]
    return "lr_sweep", path.stem.removeprefix("lr_sweep-"), {
        "schema": RESULT_SCHEMA, "run_info": {k: run[k] for k in ("command", "commit", "dirty", "date")},
        "meta_info": {"versions": run["versions"], "machine": run["machine"]}, "sweep": sweep}


def plasticity(path: Path) -> tuple[str, str, dict]:
    r = json.loads(path.read_text())
    for pt in r["points"]:
        pt["key"] = f"legacy:{pt.pop('config_sha256')}"
    run = r["run_info"]
    return "plasticity", path.stem.removeprefix("plasticity-"), {
        "schema": RESULT_SCHEMA, "run_info": {k: run[k] for k in ("command", "commit", "dirty", "date")},
        "meta_info": {"versions": run["versions"], "machine": run["machine"]},
        "experiment": r["experiment"], "order": r["order"], "points": r["points"]}


def retrieval(path: Path) -> tuple[str, str, dict]:
    r = json.loads(path.read_text())
    run = r.pop("run_info")
    if "date" not in run:
        run["date"], run["date_source"] = first_commit_date(path), "the commit that added the file"
    meta = {"versions": run.pop("versions", {}), "machine": run.pop("machine", {})}
    return "retrieval", path.stem.removeprefix("retrieval-"), {"schema": RESULT_SCHEMA, "run_info": run,
                                                              "meta_info": meta, **r}


def plan_vs_measured(path: Path) -> tuple[str, str, dict] | None:
    r = json.loads(path.read_text())
    if not isinstance(r, dict) or "provenance" not in r:
        return None  # no provenance at all: re-recorded by bench/plan_vs_measured.py
    run = r["provenance"]
    return "plan_vs_measured", path.stem.removeprefix("plan_vs_measured-"), {
        "schema": RESULT_SCHEMA, "run_info": {k: run[k] for k in ("command", "commit", "dirty", "date")},
        "meta_info": {"versions": run["versions"], "machine": run["machine"]}, "results": r["results"]}


KINDS = {"cl-": cl_methods, "lr_sweep-": lr_sweep, "plasticity-": plasticity, "retrieval-": retrieval,
         "plan_vs_measured-": plan_vs_measured}


def main() -> int:
    for path in sorted(RESULTS.glob("*")):
        if path.is_dir():
            continue
        if path.suffix == ".md":
            path.unlink()
            print(f"deleted {path.name} (tables are rendered from the JSON)")
            continue
        if path.suffix == ".png" and path.name.startswith("cl-"):
            target = RESULTS / "cl_methods" / path.name.removeprefix("cl-")
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
            continue
        kind = next((k for k in KINDS if path.name.startswith(k)), None)
        migrated = KINDS[kind](path) if kind and path.suffix == ".json" else None
        if migrated is None:
            print(f"left {path.name}: no commit recorded; its bench re-records it")
            continue
        bench, name, record = migrated
        problems = check_result(record)
        if problems:
            raise SystemExit(f"{path.name}: {problems}")
        target = RESULTS / bench / f"{name}.json"
        target.parent.mkdir(exist_ok=True)
        atomic_write_json(target, record)
        path.unlink()
        print(f"{path.name} -> {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
