"""Helpers of the fault suite (tests/faults/): the experiments, calling the CLI, comparing results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import cli
from pipeline.config import ExperimentConfig
from pipeline.experiment import load_config
from pipeline.state import artifacts, checkpoints
from pipeline.state.artifacts import sha256_file
from pipeline.state.layout import RunLayout

REPO = Path(__file__).resolve().parents[2]


EXPERIMENT: dict[str, Any] = {
    "name": "faults",
    "model": {"name_or_path": "bundled:smollm2", "max_seq_len": 96},
    "data": {"test_ratio": 0.25, "seed": 0, "synthetic_size": 40},
    "tasks": [{"name": "sentiment", "source": {"type": "synthetic", "generator": "sentiment"}},
              {"name": "arithmetic", "source": {"type": "synthetic", "generator": "arithmetic"}}],
}


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def slm(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def results(out: Path) -> dict[str, str]:
    """sha256 of every result file under `out` (lock files and the resolved config.yaml aside)."""
    return {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*"))
            if p.is_file() and "locks" not in p.relative_to(out).parts and p.name != "config.yaml"}


def temporaries(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))] if out.exists() else []


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert sum(line.startswith("error: ") for line in lines) == 1 and lines[-1].startswith("hint: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"


def spawn(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A Python child running `code`; returns once it printed 'ready'."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "the child did not start"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _cl_folder(tmp_path: Path, labels: bytes | None) -> Path:
    folder = tmp_path / "agnews"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps([{"sentence": f"story {i}", "label": "World"} for i in range(8)]))
    (folder / "test.json").write_text(json.dumps([{"sentence": "other story", "label": "World"}]))
    if labels is not None:
        (folder / "labels.json").write_bytes(labels)
    return folder


HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.state.locks import hold\n"
          "with hold(Path(sys.argv[1]), 'x'):\n    print('ready', flush=True)\n    time.sleep(120)\n")


class FakeEngine:
    """What checkpoints.py needs of a DeepSpeed engine: save writes .pt files, load records the tag."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def save_checkpoint(self, folder: str, tag: str, client_state: dict, exclude_frozen_parameters: bool) -> None:
        (Path(folder) / tag).mkdir(parents=True)
        (Path(folder) / tag / "mp_rank_00_model_states.pt").write_bytes(os.urandom(64))
        (Path(folder) / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(64))

    def load_checkpoint(self, folder: str, tag: str, load_module_strict: bool) -> tuple[str, dict]:
        self.loaded.append(tag)
        return str(Path(folder) / tag), {"step": checkpoints.step_of(Path(folder) / tag)}


TINY_TRAIN = {"max_steps": 4, "micro_batch_size": 4, "save_every": 2}


@dataclass
class Run:
    """One experiment folder on the tiny model: its YAML, its output_dir, and the CLI on it."""

    yaml: Path
    model: str

    @property
    def out(self) -> Path:
        return self.yaml.parent / "out"

    @property
    def cfg(self) -> ExperimentConfig:
        return load_config(self.yaml)

    @property
    def layout(self) -> RunLayout:
        return RunLayout.of(self.cfg)

    def task_dir(self, i: int) -> Path:
        return self.layout.task_dir(i, EXPERIMENT["tasks"][i]["name"])

    def state(self, i: int = 0) -> Path:
        return self.task_dir(i) / "train_state"

    def argv(self, command: str, *args: str) -> list[str]:
        return [command, "-c", str(self.yaml), *args]


def make_run(folder: Path, model: str) -> Run:
    raw = {**EXPERIMENT, "output_dir": str(folder / "out"), "model": {"name_or_path": model, "max_seq_len": 64},
           "train": TINY_TRAIN, "dtkr": {"key_epochs": 1}, "eval": {"max_records_per_task": 4, "max_new_tokens": 2}}
    return Run(_write(folder / "experiment.yaml", raw), model)


def copy_run(run: Run, folder: Path) -> Run:
    """The same experiment on a copy of `run`'s output_dir (results hold no absolute paths)."""
    shutil.copytree(run.out, folder / "out", symlinks=True)
    return make_run(folder, run.model)


def call(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tensors(task_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {f: load_file(str(task_dir / f)) for f in ("adapter.safetensors", "keys.safetensors")}


def assert_same_tensors(got: dict, expected: dict) -> None:
    """torch.equal per tensor: two saves of equal tensors may differ in bytes (safetensors writes its
    metadata in no fixed order), so files are not compared."""
    assert got.keys() == expected.keys()
    for f in expected:
        assert got[f].keys() == expected[f].keys(), f
        for k in expected[f]:
            assert torch.equal(got[f][k], expected[f][k]), f"{f}: tensor {k} differs from the uninterrupted run"


def finished_files(out: Path) -> dict[str, str]:
    """sha256 of every DONE marker under `out` and of every file it lists: the finished results."""
    digests = {}
    for done in sorted(out.rglob(artifacts.DONE)):
        digests[str(done.relative_to(out))] = sha256_file(done)
        for rel in json.loads(done.read_text())["outputs"]:
            digests[str((done.parent / rel).relative_to(out))] = sha256_file(done.parent / rel)
    return digests


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def child_env() -> dict[str, str]:
    """A child's environment: no rendezvous left by in-process stages, and this process's thread
    count, so its arithmetic (and the adapter it trains) is bit for bit this process's."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    threads = str(torch.get_num_threads())
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # still a loadable file: only the hash can tell
    path.write_bytes(bytes(data))


def resume_to_the_uninterrupted_adapter(run: Run, capsys, reference: Run, step: int | None) -> tuple[str, str]:
    code, out, err = call(capsys, *run.argv("train", "--task", "0"))
    assert code == 0, err
    if step is not None:
        assert f"resumed task 0 from step {step}/4 ({run.state()})" in out, out
    assert_same_tensors(tensors(run.task_dir(0)), tensors(reference.task_dir(0)))
    assert not run.state().exists() and not temporaries(run.out)
    return out, err
