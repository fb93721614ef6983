"""Where a benchmark number comes from: the command, the commit, the machine, the library versions.

Every bench/ script records `run_provenance()` in its results JSON, so a number in the README can
be traced to the exact code and machine that produced it.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> dict[str, object]:
    """The commit of the checkout and whether tracked files differ from it."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def machine() -> dict[str, object]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else None, "load_avg": list(os.getloadavg())}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "deepspeed", "faiss-cpu", "faiss-gpu", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def run_provenance() -> dict[str, object]:
    return {"command": command_line(), **git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(), "versions": versions()}
