"""Shared fixtures. Keep them generic: several test modules use them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository with ../shared beside it (docs/design.md section 6).
SHARED = REPO.parent / "shared"
CL_BENCHMARK = SHARED / "data" / "cl_benchmark"


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """Leave torch's process-wide settings as each test found them: a bench or the server's worker
    sets the thread count, and a later in-process run would then sum in another order and differ
    from its reference in the last bits (litgpt's tests/conftest.py restores the default dtype so)."""
    import torch

    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random LLaMA with SmolLM2's tokenizer, saved once per test session (tests/tiny.py)."""
    from tests.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """write_yaml(data, name="experiment.yaml") -> the path of `data` dumped as YAML in tmp_path."""

    def write(data: dict[str, Any], name: str = "experiment.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def small_experiment(tmp_path: Path) -> dict[str, Any]:
    """A minimal, fast experiment as a raw dict: two short synthetic tasks, output in tmp_path.
    Tests change what they need, then write it with `write_yaml`."""
    return {
        "name": "small",
        "output_dir": str(tmp_path / "out"),
        "model": {"name_or_path": "bundled:smollm2", "max_seq_len": 96},
        "data": {"test_ratio": 0.25, "seed": 0, "synthetic_size": 40},
        "tasks": [
            {"name": "sentiment", "source": {"type": "synthetic", "generator": "sentiment"}},
            {"name": "arithmetic", "source": {"type": "synthetic", "generator": "arithmetic"}},
        ],
    }


@pytest.fixture
def cl_benchmark_dir() -> Path:
    """The real CL_Benchmark folder of ../shared, or a skip when this checkout has none."""
    if not CL_BENCHMARK.is_dir():
        pytest.skip(f"no real CL benchmark data at {CL_BENCHMARK}")
    return CL_BENCHMARK
