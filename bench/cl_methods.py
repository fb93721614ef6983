"""Every continual-learning method on one experiment, in the same harness; results as data.

    python bench/cl_methods.py cl_benchmark_cpu                           # every method, every order
    python bench/cl_methods.py cl_benchmark_cpu --methods slm,seq_lora --order order1
    python bench/cl_methods.py cl_benchmark_cpu --summary                 # the committed results only

The bench experiment bench/experiments/cl_methods/<name>.yaml names the experiment config, its
overrides and the data folder. A row is a method at the experiment's settings (`o_lora`), or a
method at one of its presets (`o_lora@official`: the method's own options reset to their
defaults under that preset, into <output_dir>/preset-<preset>/, plus what the bench experiment's
`rows:` adds for that row). Each row runs each task order as `slm run --method <m> --order <o>` in
its own process (so its wall time and peak memory are its own). Orders are recorded one by
one in bench/results/cl_methods/<name>-<row>.json: an order already recorded for the same
config hash *and* the same code (`bench.runner.method_fingerprint`) is kept, not rerun, so an
interrupted run resumes and `--order order2` run later adds to an `--order order1` result;
`--force` reruns from scratch (it deletes the method's run folder of the order first; an order
whose folder was built by another config needs it: `slm run` refuses to reuse finished stages for
other inputs). Besides bench.runner's run_info / meta_info, a file holds

    train_info  wall time and peak RSS (total, and per order), per-task training cost
    metrics     AA, BWT, forgetting, FWT, retrieval accuracy, the whole matrix, the untrained row,
                every test record's final score; with several task orders: per order, and the mean
                and standard deviation

and <name>.png plots AA vs forgetting and the matrices of every method with results. The table
compares every method with slm record by record: the AA difference with a paired bootstrap 95 %
interval (pipeline/report/paired.py), "above" only where it excludes 0. `--summary` reads the
results files only and prints one line per row (a method, or a method at its authors' preset,
`o_lora@official`): `method=<row> AA=<x> forgetting=<y> retrieval=<z|na>
slm_minus=<d>[<low>,<high>]:<above|level|below>|na wall_s=<s> orders=<n> current=<yes|no>`
(current=no: the method's code or its config in the bench experiment changed since it ran), or
`method=<row> not_run`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runner import (  # noqa: E402
    RESULTS,
    ROOT,
    meta_info,
    method_fingerprint,
    read_experiment,
    read_result,
    result_path,
    run_info,
    write_result,
)
from pipeline.config import ExperimentConfig  # noqa: E402
from pipeline.experiment import Experiment, load_experiment  # noqa: E402
from pipeline.methods import registered  # noqa: E402
from pipeline.report.format import count, fmt, mean_std, nbytes  # noqa: E402
from pipeline.report.paired import paired_bootstrap  # noqa: E402
from pipeline.state.artifacts import atomic_path, is_done, sha256_json  # noqa: E402
from pipeline.state.layout import RunLayout  # noqa: E402
from pipeline.state.orders import order_runs  # noqa: E402

BENCH = "cl_methods"
VALIDATION = "validation"  # the split every pick is made on (eval.split)
METRICS = ("AA", "BWT", "forgetting", "FWT", "retrieval_accuracy")
# What each order's entry keeps of its eval/metrics.json.
PER_ORDER_KEYS = (*METRICS, "complete", "tasks", "matrix", "untrained", "retrieval_per_task", "retrieval_confusion",
                  "final_scores", "metric", "split", "final_record_scores")
# The method every other one is compared with, record by record (pipeline.report.paired).
REFERENCE = "slm"
PROVENANCE = ("command", "commit", "dirty", "date", "config_sha256", "code_fingerprint")


def rows() -> tuple[str, ...]:
    """Every row a comparison can hold, in registry order: each method, then its presets (`o_lora@official`)."""
    return tuple(r for name, m in registered().items() for r in (name, *(f"{name}@{p}" for p in m.presets)))


def method_of(row: str) -> tuple[str, str | None]:
    """(method, preset) of a row: `o_lora@official` -> ("o_lora", "official"); `slm` -> ("slm", None)."""
    method, _, preset = row.partition("@")
    return method, preset or None


@dataclass(frozen=True)
class BenchExperiment:
    """bench/experiments/cl_methods/<name>.yaml: which experiment, with which overrides (and what
    a preset row adds: `rows: {<method>@<preset>: [KEY=VALUE, ...]}`)."""

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    row_overrides: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, name: str, extra: list[str] | None = None) -> BenchExperiment:
        settings = read_experiment(BENCH, name)
        data_root = [f"data_root={(ROOT / settings['data_root']).resolve()}"] if settings.get("data_root") else []
        unknown = sorted(set(settings.get("rows") or {}) - set(rows()))
        if unknown:
            raise SystemExit(f"bench experiment {name!r}: rows {unknown} are no method's preset; rows: {rows()}")
        return cls(settings["name"], settings["config"], [*data_root, *settings.get("overrides", []), *(extra or [])],
                   dict(settings.get("rows") or {}))

    def with_overrides(self, extra: list[str]) -> BenchExperiment:
        return BenchExperiment(self.name, self.config, [*self.overrides, *extra], self.row_overrides)

    def for_row(self, row: str) -> tuple[str, BenchExperiment]:
        """(the row's method, this experiment as the row runs it). A preset row resets the method's
        options to their defaults under that preset (the experiment's own picks are for the uniform
        one) and runs into its own folder, so its stages never mix with the plain row's."""
        method, preset = method_of(row)
        if preset is None:
            return method, self
        m = registered()[method]
        if preset not in m.presets:
            raise SystemExit(f"row {row!r}: method {method} has no preset {preset!r} (its presets: {m.presets})")
        base = load_experiment(self.config, [*self.overrides, f"method={method}"]).cfg.output_dir
        return method, self.with_overrides([f"methods.{m.section}={{preset: {preset}}}",
                                            f"output_dir={Path(base) / f'preset-{preset}'}",
                                            *self.row_overrides.get(row, [])])

    def load(self, row: str) -> Experiment:
        method, bench = self.for_row(row)
        return load_experiment(bench.config, [*bench.overrides, f"method={method}"])


def validation_overrides(settings: dict) -> list[str]:
    """The overrides of a bench that picks settings (bench/lr_sweep.py, bench/plasticity.py): carve
    each task's validation split (`validation: {ratio, max_records}` of its settings file) and score it
    instead of the test split the tables report."""
    v = settings.get("validation")
    if not v or not v.get("ratio"):
        raise SystemExit(f"bench settings {settings.get('name')!r} give no `validation: {{ratio, max_records}}`: "
                         "a pick is never made on the test split")
    return [f"data.validation_ratio={v['ratio']}", *([f"data.max_validation={v['max_records']}"]
                                                      if v.get("max_records") else []), f"eval.split={VALIDATION}"]


def config_sha256(exp: Experiment) -> str:
    """The experiment as its method runs it: every shared section and that method's own options
    (other methods' options, and where it ran: output_dir, the YAML's folder, data_root, left out)."""
    cfg, method = exp.cfg, exp.method
    shared = cfg.model_dump(mode="json", exclude={"output_dir", "config_dir", "data_root", "methods"})
    return sha256_json({**shared, "methods": {method.section: method.options(cfg).model_dump(mode="json")}})


# ---- running one method ------------------------------------------------------------------------


def run_method(bench: BenchExperiment, row: str, order: str | None = None, force: bool = False,
               path: Path | None = None) -> dict:
    """Run the row (a method, or a method at a preset) on each task order (or the one `order` names),
    one `slm run --order` process per order, and return its results record. Orders that `path` already
    records for the same config and code are kept, not rerun, and the record is written to `path` after
    every order: an interruption loses one order at most, and orders run on different days add up to one
    record."""
    method, bench = bench.for_row(row)
    exp = bench.load(method)
    cfg = exp.cfg
    digest, code = config_sha256(exp), method_fingerprint(exp.method)["sha256"]
    done = recorded_orders(path, digest, code) if path is not None and not force else {}
    for name, _ in runs_of(cfg, order):
        if (name or "as_listed") in done:
            print(f"[{row}] {name or 'as_listed'}: already recorded in {path} (same config and code); kept",
                  flush=True)
            continue
        done[name or "as_listed"] = run_order(bench, cfg, method, name, digest, code, restart=force)
        if path is not None:
            write_record(path, result_record(cfg, bench.name, row, done))
    return result_record(cfg, bench.name, row, done)


def run_order(bench: BenchExperiment, cfg: ExperimentConfig, method: str, name: str, digest: str,
              code: str, restart: bool = False) -> dict:
    """One `slm run` of one task order (`name` empty: an experiment without orders) -> its entry.
    Without `restart` the run resumes what its folder holds for this config (the entry says
    `resumed`: its wall time is then the resume's, not the run's), and `slm run` refuses a folder
    built from other inputs (a changed option). `restart` deletes the method's folder of this order
    first, so the order runs from scratch (`slm run --restart` would keep its valid finished tasks)."""
    run_cfg = dict(order_runs(cfg))[name]
    layout = RunLayout.of(run_cfg)
    if restart and layout.root.exists():
        print(f"[{method}] --force: removing {layout.root} to run from scratch", flush=True)
        shutil.rmtree(layout.root)
    resumed = any(is_done(layout.task_dir(i, task.name)) for i, task in enumerate(run_cfg.tasks))
    log_dir = RunLayout.of(cfg).logs
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"bench-cl-{method}.log"
    argv = [sys.executable, "-m", "pipeline.cli", "run", "-c", bench.config, "--method", method,
            *(["--order", name] if name else []), *bench.overrides]
    print(f"[{method}] {' '.join(argv[2:])}  (log: {log_file})", flush=True)
    start = time.time()
    with open(log_file, "a") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    code_ = os.waitstatus_to_exitcode(status)
    if code_ != 0:
        errors = [ln for ln in log_file.read_text(errors="replace").splitlines()[-20:] if ln.startswith("error:")]
        raise SystemExit(f"[{method}] slm run failed with exit {code_}; see {log_file}"
                         + "".join(f"\n{ln}" for ln in errors[-1:])
                         + ("" if restart else "\n(--force reruns the order from scratch)"))
    metrics = json.loads((layout.root / "eval" / "metrics.json").read_text())
    manifest = json.loads(layout.manifest.read_text())
    return {"metrics": {k: metrics.get(k) for k in PER_ORDER_KEYS}, "training": metrics.get("training"),
            "data_sha256": {t: e["sha256"] for t, e in manifest["tasks"].items()},
            "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024), "resumed": resumed,
            "provenance": {**run_info(), "config_sha256": digest, "code_fingerprint": code},
            "meta_info": meta_info()}


def runs_of(cfg: ExperimentConfig, order: str | None) -> list[tuple[str, ExperimentConfig]]:
    """The task orders a bench run covers: all of the experiment's, or the one --order names."""
    runs = order_runs(cfg)
    if order is None:
        return runs
    chosen = [(name, c) for name, c in runs if name == order]
    if not chosen:
        raise SystemExit(f"--order {order!r}: the experiment's orders are {[n for n, _ in runs]}")
    return chosen


def recorded_orders(path: Path | None, digest: str, code: str) -> dict[str, dict]:
    """The per-order entries `path` holds that this config and this code made (none for others),
    and those of bench/lr_sweep.py points of the same config and code beside it (a sweep point at
    the method's pick is that order's run)."""
    if path is None:
        return {}
    entries = {}
    if path.is_file():
        for name, entry in entries_of(read_result(path)).items():
            made = entry["provenance"]
            if made.get("config_sha256") == digest and made.get("code_fingerprint") == code:
                entries[name] = entry
    for sweep in sorted((path.parent.parent / "lr_sweep").glob("*.json")):
        for point in read_result(sweep)["sweep"]["points"]:
            for order, entry in (point.get("entries") or {}).items():
                if point["key"] == f"{digest}:{code}@{order}":
                    entries.setdefault(order, entry)
    return entries


def entries_of(record: dict) -> dict[str, dict]:
    """The per-order entries of a results record (the inverse of `result_record`)."""
    info, train, metrics = record["run_info"], record["train_info"], record["metrics"]
    return {name: {"metrics": {"complete": metrics["complete"], **metrics["per_order"][name]},
                   "training": train["per_order"][name], "wall_s": train["wall_s_per_order"][name],
                   "peak_rss_mib": train["peak_rss_mib_per_order"][name],
                   "resumed": name in train.get("resumed_orders", []), "provenance": info["per_order"][name],
                   "data_sha256": info["data_sha256"], "meta_info": record["meta_info"]["per_order"][name]}
            for name in info["orders"]}


def result_record(cfg: ExperimentConfig, experiment: str, method: str, entries: dict[str, dict]) -> dict:
    """One row's results record from its per-order entries (run now or recorded earlier); `method`
    is the row's name (`o_lora`, `o_lora@official`)."""
    rank = {name or "as_listed": i for i, (name, _) in enumerate(order_runs(cfg))}
    entries = dict(sorted(entries.items(), key=lambda item: rank.get(item[0], len(rank))))  # the experiment's order
    names = list(entries)
    last = max(entries.values(), key=lambda e: e["provenance"]["date"])
    return {
        "run_info": {**{k: last["provenance"][k] for k in PROVENANCE},  # the latest run's; each order's own below
                     "experiment": experiment, "method": method,
                     "orders": {n: list(e["metrics"]["tasks"]) for n, e in entries.items()},
                     "data_sha256": entries[names[0]]["data_sha256"],
                     "per_order": {n: e["provenance"] for n, e in entries.items()}},
        # the latest run's versions and machine, and each order's own (its load average says
        # whether that order ran beside other jobs)
        "meta_info": {**last["meta_info"], "per_order": {n: e["meta_info"] for n, e in entries.items()}},
        "train_info": {"wall_s": round(sum(e["wall_s"] for e in entries.values()), 1),
                       "peak_rss_mib": max(e["peak_rss_mib"] for e in entries.values()),
                       "per_order": {n: e["training"] for n, e in entries.items()},
                       "wall_s_per_order": {n: e["wall_s"] for n, e in entries.items()},
                       "peak_rss_mib_per_order": {n: e["peak_rss_mib"] for n, e in entries.items()},
                       # orders whose run resumed finished work: their wall time is the resume's only
                       "resumed_orders": [n for n, e in entries.items() if e.get("resumed")]},
        "metrics": summarise([e["metrics"] for e in entries.values()], names),
    }


def write_record(path: Path, record: dict) -> None:
    sections = {k: v for k, v in record.items() if k not in ("run_info", "meta_info")}
    write_result(BENCH, path.stem, sections, record["run_info"], record["meta_info"], results=path.parent.parent)


def summarise(runs: list[dict], names: list[str]) -> dict:
    """Mean and standard deviation over orders of every metric, plus each order's full metrics."""
    out: dict = {}
    for key in METRICS:
        out[key], out[f"{key}_std"] = mean_std([m.get(key) for m in runs])
    out["complete"] = all(m["complete"] for m in runs)
    out["per_order"] = dict(zip(names, runs, strict=True))
    return out


# ---- the comparison ----------------------------------------------------------------------------


def load_results(results: Path, experiment: str) -> list[dict]:
    """The results of every row (registered method, or method at a preset) for `experiment`, in the
    registry's order."""
    found = {p.stem.removeprefix(f"{experiment}-"): p for p in (results / BENCH).glob(f"{experiment}-*.json")}
    return [read_result(found[r]) for r in rows() if r in found]


def all_orders(rows: list[dict]) -> list[str]:
    """Every task order some row has run, in the order of the row that ran the most."""
    fullest = max(rows, key=lambda r: len(r["run_info"]["orders"]))
    return [*fullest["run_info"]["orders"],
            *sorted({o for r in rows for o in r["run_info"]["orders"]} - set(fullest["run_info"]["orders"]))]


def is_current(row: dict, bench: BenchExperiment | None) -> bool | None:
    """Whether every order of `row` ran the method's code as it is now and (with `bench`) the
    config the bench experiment gives it now; None when the method is no longer registered."""
    name = row["run_info"]["method"]
    method, _ = method_of(name)
    if name not in rows():
        return None
    code = method_fingerprint(registered()[method])["sha256"]
    digest = config_sha256(bench.load(name)) if bench is not None else None
    return all(p.get("code_fingerprint") == code and (digest is None or p.get("config_sha256") == digest)
               for p in row["run_info"]["per_order"].values())


def mean_diagonal(matrix: list[list[float]]) -> float:
    """How well each task was learned right after training it: the mean of R[i][i]."""
    return sum(matrix[i][i] for i in range(len(matrix))) / len(matrix)


def paired_vs_reference(rows: list[dict], n_boot: int = 10_000) -> dict[str, dict | str]:
    """method -> the paired bootstrap of AA(slm) - AA(method) over the orders both ran (each order a
    stratum, the same test records resampled for both), or why there is none."""
    ref = next((r for r in rows if r["run_info"]["method"] == REFERENCE), None)
    out: dict[str, dict | str] = {}
    for r in rows:
        method = r["run_info"]["method"]
        if method == REFERENCE:
            continue
        out[method] = "n/a (no slm results)" if ref is None else _paired(ref, r, n_boot)
    return out


def _paired(ref: dict, other: dict, n_boot: int) -> dict | str:
    orders = [o for o in ref["metrics"]["per_order"] if o in other["metrics"]["per_order"]]
    if not orders:
        return "n/a (no order in common)"
    a = [ref["metrics"]["per_order"][o].get("final_record_scores") for o in orders]
    b = [other["metrics"]["per_order"][o].get("final_record_scores") for o in orders]
    if any(x is None for x in a + b):
        return "n/a (no per-record scores)"
    tests = [{t: h.get("test") if isinstance(h, dict) else h for t, h in r["run_info"]["data_sha256"].items()}
             for r in (ref, other)]
    if tests[0] != tests[1]:
        return "n/a (other test records)"
    # the orders of one experiment score the same test records: one resample serves every order
    shared = all(len(run[t]) == len(a[0][t]) for run in a + b for t in a[0])
    return paired_bootstrap(a, b, n_boot=n_boot, shared_records=shared)


def paired_cell(result: dict | str | None) -> str:
    """`+0.012 [-0.020, +0.045] level` (AA of slm minus this method's), or why there is none."""
    if result is None:
        return "(reference)"
    if isinstance(result, str):
        return result
    return f"{result['diff']:+.3f} [{result['low']:+.3f}, {result['high']:+.3f}] {result['verdict']}"


def comparison_markdown(rows: list[dict], bench: BenchExperiment | None = None) -> str:
    """One row per method over the orders it ran; a row that lacks some of the orders the others
    ran is marked (its mean is over fewer orders), and so is a row that earlier code or another
    config made (with `bench`: the config it gives each method now)."""
    orders = all_orders(rows)
    head = ("| method | AA ↑ | diagonal ↑ | BWT ↑ | forgetting ↓ | FWT ↑ | retrieval ↑ | trainable params "
            "| stored / task | wall s / order | peak RSS MiB | slm − it: AA, paired 95 % CI |")
    lines, partial, stale, resumed = [head, "|" + "---|" * 12], [], [], []
    paired = paired_vs_reference(rows)
    for r in rows:
        method, per_order, train = r["run_info"]["method"], r["metrics"]["per_order"], r["train_info"]
        ran = [o for o in orders if o in per_order]
        stats = {k: mean_std([per_order[o].get(k) for o in ran]) for k in METRICS}
        cells = [fmt(stats[k][0], signed=k in ("BWT", "FWT"), std=stats[k][1]) for k in METRICS]
        diagonal, diagonal_std = mean_std([mean_diagonal(per_order[o]["matrix"]) for o in ran])
        cells.insert(1, fmt(diagonal, std=diagonal_std))
        cost = train["per_order"][ran[0]] or {}
        peak = max(train["peak_rss_mib_per_order"][o] for o in ran)
        wall = sum(train["wall_s_per_order"][o] for o in ran) / len(ran)
        marks = ""
        if ran != orders:
            partial.append(f"`{method}` ({', '.join(ran)})")
            marks += "¹"
        if is_current(r, bench) is False:
            stale.append(f"`{method}`")
            marks += "²"
        wall_mark = ""
        if set(ran) & set(train.get("resumed_orders", [])):
            resumed.append(f"`{method}`")
            wall_mark = "³"
        lines.append(f"| `{method}`{marks} | " + " | ".join(cells)
                     + f" | {count(cost.get('trainable_params'))} | {nbytes(cost.get('bytes_per_task'))}"
                     + f" | {wall:.0f}{wall_mark} | {peak} | {paired_cell(paired.get(method))} |")
    note = "one task order" if len(orders) == 1 else f"mean ± std over {len(orders)} task orders"
    note += f" ({', '.join(orders)})" if orders != ["as_listed"] else ""
    if partial:
        note += "; ¹ over the orders it ran only: " + ", ".join(partial)
    if stale:
        note += ("; ² run by earlier code or config than the method's now (its file's provenance says which): "
                 + ", ".join(stale))
    if resumed:
        note += "; ³ resumed finished work, so its wall time is the resume's only: " + ", ".join(resumed)
    note += ("; last column: AA of slm minus the method's, with a paired bootstrap 95 % interval (the same test "
             "records resampled for both, pooled over the orders both ran): above / below where the interval "
             "excludes 0, else level")
    experiment = rows[0]["run_info"]["experiment"]
    return "\n".join(lines) + f"\n\n{note}; from bench/results/{BENCH}/{experiment}-*.json\n"


def published_vs_tuned_markdown(results: Path, experiment: str, bench: BenchExperiment | None = None) -> str:
    """Each method that has presets, as its authors run it (`<method>@<preset>`) beside as the harness
    runs it at its swept settings (the plain row): final AA and forgetting, mean over the orders each
    ran; n/a where a row has no results yet."""
    found = {r["run_info"]["method"]: r for r in load_results(results, experiment)}
    lines = ["| method | as published: row | AA ↑ | forgetting ↓ | as tuned here: row | AA ↑ | forgetting ↓ |",
             "|---|---|---|---|---|---|---|"]
    stale = []
    for name, m in registered().items():
        for preset in m.presets:
            cells = []
            for row in (f"{name}@{preset}", name):
                r = found.get(row)
                mark = ""
                if r is not None and is_current(r, bench) is False:
                    mark = "²"
                    stale.append(f"`{row}`")
                cells += [f"`{row}`{mark}", *(_mean_cell(r, k) for k in ("AA", "forgetting"))]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    note = ("as published: the method's own defaults under the preset the row names (its authors' scripts); as tuned "
            "here: the harness's uniform preset at the bench experiment's settings, the picks of bench/lr_sweep.py; "
            "mean ± std over the orders each row ran")
    if stale:
        note += "; ² run by earlier code or config than the row's now: " + ", ".join(stale)
    return "\n".join(lines) + f"\n\n{note}; from bench/results/{BENCH}/{experiment}-*.json\n"


def _mean_cell(record: dict | None, key: str) -> str:
    if record is None:
        return "n/a"
    runs = record["metrics"]["per_order"].values()
    mean, std = mean_std([run.get(key) for run in runs])
    return fmt(mean, std=std)


def summary_lines(recorded: list[dict], bench: BenchExperiment | None = None) -> list[str]:
    """`method=<row> AA=<x> forgetting=<y> retrieval=<z|na> slm_minus=<d>[<lo>,<hi>]:<verdict>|na wall_s=<s>
    orders=<n> current=<yes|no>` per row with results, then `method=<row> not_run` for every other
    row (each registered method, and each at its authors' preset)."""
    out = []
    paired = paired_vs_reference(recorded)
    for r in recorded:
        m = r["metrics"]
        retrieval = "na" if m["retrieval_accuracy"] is None else f"{m['retrieval_accuracy']:.3f}"
        current = {True: "yes", False: "no", None: "unregistered"}[is_current(r, bench)]
        out.append(f"method={r['run_info']['method']} AA={m['AA']:.3f} forgetting={fmt(m['forgetting'])} "
                   f"retrieval={retrieval} slm_minus={_paired_field(paired.get(r['run_info']['method']))} "
                   f"wall_s={r['train_info']['wall_s']:.0f} orders={len(r['run_info']['orders'])} current={current}")
    ran = {r["run_info"]["method"] for r in recorded}
    return out + [f"method={m} not_run" for m in rows() if m not in ran]


def _paired_field(result: dict | str | None) -> str:
    if result is None:
        return "reference"
    if isinstance(result, str):
        return "na"
    return f"{result['diff']:+.3f}[{result['low']:+.3f},{result['high']:+.3f}]:{result['verdict']}"


def plot(rows: list[dict], path: Path) -> None:
    """AA vs forgetting per method, then each method's (first order's) matrix as a heatmap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 + 3 * len(rows), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(rows) + 1, gridspec_kw={"width_ratios": [1.4] + [1] * len(rows)})
    scatter = axes[0]
    for r in rows:
        m = r["metrics"]
        scatter.errorbar(m["forgetting"] or 0.0, m["AA"], xerr=m.get("forgetting_std") or 0, yerr=m.get("AA_std") or 0,
                         fmt="o", capsize=3)
        scatter.annotate(r["run_info"]["method"], (m["forgetting"] or 0.0, m["AA"]), textcoords="offset points",
                         xytext=(4, 4), fontsize=8)
    scatter.set_xlabel("forgetting ↓")
    scatter.set_ylabel("AA ↑")
    scatter.set_title("AA vs forgetting", fontsize=10)
    for ax, r in zip(axes[1:], rows, strict=True):
        first = next(iter(r["metrics"]["per_order"].values()))
        ax.imshow(first["matrix"], cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for j, row in enumerate(first["matrix"]):
            for i, v in enumerate(row):
                ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.6 else "white")
        ax.set_title(r["run_info"]["method"], fontsize=10)
        ax.set_xticks(range(len(first["tasks"])), first["tasks"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(first["matrix"])), [f"after {t}" for t in first["tasks"][:len(first["matrix"])]],
                      fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


# ---- CLI -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", default="cl_benchmark_cpu",
                   help="bench/experiments/cl_methods/<name>.yaml (or a path to such a file)")
    p.add_argument("--methods", default=",".join(rows()),
                   help="comma-separated rows: methods, or methods at a preset (o_lora@official); default: all")
    p.add_argument("--order", metavar="NAME", help="run one of the experiment's task orders only (default: all)")
    p.add_argument("--force", action="store_true", help="rerun orders already recorded (their file is replaced)")
    p.add_argument("--summary", action="store_true", help="print the recorded results only; run nothing")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more config overrides, as for `slm run`")
    return p.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow the flags


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = BenchExperiment.read(args.experiment, args.overrides)
    if args.summary:
        recorded = load_results(args.results_dir, bench.name)
        if not recorded:
            print(f"no results for {bench.name!r} in {args.results_dir / BENCH} yet: "
                  f"`python bench/cl_methods.py {bench.name}` runs every method", file=sys.stderr)
        print("\n".join(summary_lines(recorded, bench)))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(rows()))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {', '.join(rows())}")
    for method in methods:
        path = result_path(BENCH, f"{bench.name}-{method}", args.results_dir)
        run_method(bench, method, args.order, args.force, path)
        print(f"[{method}] -> {path}", flush=True)
    recorded = load_results(args.results_dir, bench.name)
    plot(recorded, args.results_dir / BENCH / f"{bench.name}.png")
    print(comparison_markdown(recorded, bench))
    print("\n".join(summary_lines(recorded, bench)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
