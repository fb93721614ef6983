"""One box, several GPUs, no Slurm: `torchrun --nproc_per_node=2 -m pipeline.cli run` runs the
whole experiment, every rank training each task and rank 0 alone writing the rest (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TWO_TASKS = "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}}, " \
            "{name: geography, source: {type: synthetic, generator: geography}}]"


@pytest.mark.slow
def test_slm_run_under_torchrun_with_two_cpu_ranks_finishes_every_stage_once(tmp_path, tiny_model_dir) -> None:
    out = tmp_path / "run"
    overrides = [*tiny_overrides(out, tiny_model_dir, steps=2), "dtkr.key_epochs=1", TWO_TASKS,
                 "train.deepspeed=zero2"]
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "pipeline.cli", "run",
           *overrides]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown[-5000:]
    method = out / "slm"
    for i, name in enumerate(["sentiment", "geography"]):
        marker = json.loads((method / "tasks" / f"{i}-{name}" / "DONE").read_text())
        assert marker["stage"] == "train"
    assert (method / "index" / "DONE").is_file()
    rows = sorted(p.name for p in (method / "eval").glob("row-*.json"))
    assert rows == ["row-0.json", "row-1.json", "row-untrained.json"]
    assert (method / "eval" / "report.md").is_file()
    # rank 0 alone prepared, indexed, evaluated and reported: each said so once
    assert done.stdout.count("prepare: 2 tasks ->") == 1
    assert done.stdout.count("eval: row 1 ->") == 1 and done.stdout.count("run: slm finished") == 1
    assert "rank 1 waits while rank 0 prepares the data" in done.stdout


@pytest.mark.slow
def test_a_second_torchrun_run_finds_everything_done(tmp_path, tiny_model_dir) -> None:
    out = tmp_path / "run"
    overrides = [*tiny_overrides(out, tiny_model_dir, steps=1), "dtkr.key_epochs=1",
                 "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}}]"]
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "pipeline.cli", "run",
           *overrides]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:]
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert "prepare: already done" in again.stdout and "task 0 (sentiment) already done" in again.stdout
    assert "eval: row 0 already done" in again.stdout
