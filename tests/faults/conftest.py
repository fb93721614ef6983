"""Fixtures of the fault suite: prepared and finished tiny runs, built once for the whole package
(they train)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli
from pipeline.state.preemption import EXIT_TERMINATED
from tests import fault_hooks
from tests.faults.helpers import (
    EXPERIMENT,
    Run,
    _write,
    copy_run,
    make_run,
)
from tests.tiny import save_tiny_checkpoint


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLM_DEBUG", raising=False)


@pytest.fixture(scope="package")
def prepared_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output_dir whose data `slm prepare` finished once (copied per test: prepare takes seconds)."""
    folder = tmp_path_factory.mktemp("prepared")
    path = _write(folder / "experiment.yaml", {**EXPERIMENT, "output_dir": str(folder / "out")})
    assert cli.main(["prepare", "-c", str(path)]) == 0
    return folder / "out"


@pytest.fixture
def earlier(tmp_path: Path, prepared_once: Path) -> Callable[..., Path]:
    """earlier(**changes) -> an experiment YAML on a copy of the prepared output_dir."""
    shutil.copytree(prepared_once, tmp_path / "out")

    def write(**changes: Any) -> Path:
        return _write(tmp_path / "experiment.yaml", {**EXPERIMENT, "output_dir": str(tmp_path / "out"), **changes})

    return write


@pytest.fixture(scope="package")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="package")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Run:
    run = make_run(tmp_path_factory.mktemp("tiny-prepared"), tiny_model)
    assert cli.main(run.argv("prepare")) == 0
    return run


@pytest.fixture(scope="package")
def tiny_finished(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Run) -> Run:
    """Both tasks trained without interruption, indexed, every eval row scored, reported."""
    run = copy_run(tiny_prepared, tmp_path_factory.mktemp("tiny-finished"))
    assert cli.main(run.argv("run")) == 0
    return run


@pytest.fixture
def prepared_copy(tmp_path: Path, tiny_prepared: Run) -> Run:
    return copy_run(tiny_prepared, tmp_path)


@pytest.fixture
def finished_copy(tmp_path: Path, tiny_finished: Run) -> Run:
    return copy_run(tiny_finished, tmp_path)


@pytest.fixture(scope="package")
def stopped_in_keys(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Run) -> Run:
    """Task 0 stopped by SIGTERM during its key learning: train_state holds INPUTS.json, the
    cached keys and the checkpoint of step 1."""
    run = copy_run(tiny_prepared, tmp_path_factory.mktemp("stopped-in-keys"))
    patch = pytest.MonkeyPatch()
    try:
        fault_hooks.install(patch.setattr, "keys", signal.SIGTERM)
        assert cli.main(run.argv("train", "--task", "0")) == EXIT_TERMINATED
    finally:
        patch.undo()
    return run


@pytest.fixture
def stopped(tmp_path: Path, stopped_in_keys: Run) -> Run:
    return copy_run(stopped_in_keys, tmp_path)
