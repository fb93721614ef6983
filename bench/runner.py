"""The one bench runner: what every benchmark shares, so results are data of one shape.

A benchmark (bench/<bench>.py) reads its settings from bench/experiments/<bench>/<name>.yaml and
writes bench/results/<bench>/<name>.json through `write_result`, which always holds

    schema      RESULT_SCHEMA
    run_info    command, commit, dirty, date (`run_info()`), plus what the bench adds (config hash,
                code fingerprint, per-order provenance, ...)
    meta_info   library versions and the machine (`meta_info()`)
    <sections>  the bench's own numbers (train_info, metrics, points, ...)

`check_result` is the schema (a record written from uncommitted code passes it, for a trial run);
`check_committed` adds a clean tree, and is tested over every committed file (tests/bench/test_results.py).
A result is reused (not rerun) only when its config hash and its code fingerprint (`fingerprint`
of the modules that made it) both match: the same experiment run by other code is other data.
(PEFT's method_comparison keeps benchmarks the same way: one settings file per experiment, one
results file per run, with run_info / meta_info.)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from pydantic import BaseModel

    from pipeline.methods.base import Method

S = TypeVar("S", bound="BaseModel")

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "bench" / "experiments"
RESULTS = ROOT / "bench" / "results"
RESULT_SCHEMA = 1
RUN_INFO_KEYS = ("command", "commit", "dirty", "date", "code_fingerprint")
CONFIG_HASH_KEYS = ("config_sha256", "config_hash")  # the settings' hash, under either name
# The stages `slm run` runs: part of every continual-learning result's code fingerprint.
RUN_STAGES = ("pipeline.stages.prepare", "pipeline.stages.train", "pipeline.stages.index",
              "pipeline.stages.evaluate", "pipeline.stages.report", "pipeline.stages.run")


def preamble() -> None:
    """Make `pipeline` and `bench` importable from a checkout, and keep tokenizers single-threaded
    (their thread pool fights torch's for the same cores and skews every timing)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- settings ----------------------------------------------------------------------------------


def experiment_file(bench: str, name: str) -> Path:
    """bench/experiments/<bench>/<name>.yaml (a path is taken as it is)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    found = EXPERIMENTS / bench / f"{name}.yaml"
    if not found.is_file():
        known = sorted(p.stem for p in (EXPERIMENTS / bench).glob("*.yaml"))
        raise SystemExit(f"no bench experiment {name!r} for {bench}: {found} is missing (known: {', '.join(known)})")
    return found


def read_experiment(bench: str, name: str) -> dict[str, Any]:
    """The bench's settings, with `name` (the file's stem) filled in."""
    path = experiment_file(bench, name)
    settings = yaml.safe_load(path.read_text()) or {}
    return {"name": path.stem, **settings}


def settings_loader(bench: str, schema: type[S]) -> Callable[[str], S]:
    """`load_settings(name)` of a bench: its experiment file validated by its pydantic `schema`
    (an unknown key or a wrong type is an error naming the field)."""

    def load_settings(name: str) -> S:
        return schema.model_validate(read_experiment(bench, name))

    return load_settings


def log(msg: str, err: bool = False) -> None:
    """One timestamped progress line (stderr with `err`, where stdout carries the bench's numbers)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr if err else sys.stdout, flush=True)


# ---- provenance --------------------------------------------------------------------------------


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def run_info() -> dict[str, Any]:
    """The command, the checkout's commit, whether the code differs from it (a changed or an
    uncommitted file under the code folders), and the date."""
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    # bench/results is data: a file an earlier bench of the same session wrote does not make it dirty.
    # An untracked file under the code folders does (a new bench not yet committed is not clean code).
    code = ("pipeline", "data_prep", "bench", "scripts", ":(exclude)bench/results")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=normal", "--", *code))
    return {"command": command, "commit": _git("rev-parse", "HEAD") or None, "dirty": dirty,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def bench_run_info(modules: list[str] | tuple[str, ...], settings: Any) -> dict[str, Any]:
    """`run_info()` plus what makes a result reproducible: the fingerprint of the code it measured
    (`modules`: the bench and the pipeline modules it exercises) and the sha256 of its settings."""
    from pipeline.state.artifacts import sha256_json

    return {**run_info(), "code_fingerprint": fingerprint(modules)["sha256"], "config_sha256": sha256_json(settings)}


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg": list(os.getloadavg())}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "deepspeed", "faiss-cpu", "faiss-gpu", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def meta_info() -> dict[str, Any]:
    return {"versions": versions(), "machine": machine()}


def fingerprint(modules: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The sha256 over the source files of `modules` (dotted names) as they are in this checkout."""
    import importlib

    files = sorted({str(Path(inspect.getfile(importlib.import_module(m))).resolve().relative_to(ROOT))
                    for m in modules})
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.encode() + b"\0" + (ROOT / f).read_bytes() + b"\0")
    return {"sha256": digest.hexdigest(), "files": files}


def method_fingerprint(method: Method) -> dict[str, Any]:
    """The code a continual-learning result depends on: the method's modules (its class and the
    classes it derives from, up to the base) and the stages `slm run` ran."""
    classes = [c for c in type(method).__mro__ if c.__module__.startswith("pipeline.")]
    return fingerprint([*{c.__module__ for c in classes}, *RUN_STAGES])


# ---- results -----------------------------------------------------------------------------------


def result_path(bench: str, name: str, results: Path = RESULTS) -> Path:
    return results / bench / f"{name}.json"


def read_result(path: Path) -> dict[str, Any]:
    """A results file as written by `write_result`; a file that is not JSON or not a mapping fails
    with its path (json's own error names no file)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a results file: {e}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a results file: a {type(record).__name__}, not a mapping")
    return record


def write_result(bench: str, name: str, sections: dict[str, Any], run: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None, results: Path = RESULTS) -> Path:
    """bench/results/<bench>/<name>.json in the one schema, written atomically."""
    from pipeline.state.artifacts import atomic_write_json

    record = {"schema": RESULT_SCHEMA, "run_info": run if run is not None else run_info(),
              "meta_info": meta if meta is not None else meta_info(), **sections}
    problems = check_result(record)
    if problems:
        raise ValueError(f"{bench}/{name}: not a results record: {'; '.join(problems)}")
    path = result_path(bench, name, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


def check_committed(record: Any) -> list[str]:
    """What keeps `record` from being a results file to commit: `check_result`'s problems, or a run
    from a dirty tree (no commit holds the code that made it). tests/bench/test_results.py."""
    problems = check_result(record)
    info = record.get("run_info") if isinstance(record, dict) else None
    if isinstance(info, dict) and info.get("dirty") is not False:
        problems.append(f"run_info.dirty is {info.get('dirty')!r}: made from uncommitted code, so no commit "
                        "holds the code that made it")
    return problems


def check_result(record: Any) -> list[str]:
    """What keeps `record` from being a results record with provenance (empty: nothing)."""
    if not isinstance(record, dict):
        return [f"a {type(record).__name__}, not a mapping"]
    problems = []
    if record.get("schema") != RESULT_SCHEMA:
        problems.append(f"schema is {record.get('schema')!r}, not {RESULT_SCHEMA}")
    info = record.get("run_info")
    if not isinstance(info, dict):
        problems.append("no run_info")
    else:
        problems += [f"run_info has no {k}" for k in RUN_INFO_KEYS if not info.get(k) and k != "dirty"]
        if not any(info.get(k) for k in CONFIG_HASH_KEYS):
            problems.append("run_info has no config hash (config_sha256)")
        if info.get("commit") is None:
            problems.append("run_info.commit is unknown")
    meta = record.get("meta_info")
    if not isinstance(meta, dict) or not {"versions", "machine"} <= meta.keys():
        problems.append("meta_info lacks versions or machine")
    if not set(record) - {"schema", "run_info", "meta_info"}:
        problems.append("no section with numbers")
    return problems
