"""The Slurm skip: a DONE counts only if `slm train --check` accepts it.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.experiment import load_config
from pipeline.state.layout import RunLayout
from tests.faults.helpers import (
    Run,
    child_env,
)


def test_a_resubmitted_array_task_with_a_stale_done_fails_with_the_message_and_trains_nothing(
        finished_copy: Run, tmp_path: Path) -> None:
    from pipeline import slurm

    run = finished_copy
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", 'echo "$*" >> "$FAKE_DIR/srun.log"\n'), ("scontrol", "exit 0\n"),
                       ("squeue", "exit 0\n")):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}")
        (bin_dir / name).chmod(0o755)
    env = {**child_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "101", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "node1", "SLURM_RESTART_COUNT": "0"}
    for lr, code, said in ((0.005, 0, "task 1 is already DONE"), (0.002, 2, "methods.slm.lr: 0.005 -> 0.002")):
        cfg = load_config(run.yaml, [f"methods.slm.lr={lr}"])  # `slm submit` after an edit renders this config
        layout = RunLayout.of(cfg)
        slurm.config_path(layout).parent.mkdir(parents=True, exist_ok=True)
        slurm.config_path(layout).write_text(slurm.resolved_config_yaml(cfg, layout))
        script = tmp_path / "train.sbatch"
        script.write_text(slurm.render_sbatch(cfg, layout, "train", sys.executable))
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == code, done.stdout + done.stderr
        assert said in done.stdout + done.stderr
        assert not (tmp_path / "srun.log").exists(), "no training was launched"
    assert "error: task 0 (sentiment)" in done.stderr and "--restart" in done.stderr  # the first stale one
