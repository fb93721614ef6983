"""A Slurm-initiated requeue of a training task, through a real single-node Slurm (markers slurm,
slow): the rendered train script with a stand-in trainer (no model), so only Slurm's states and
the script's reading of them are tested. About 90 s, most of it Slurm's wait before a requeued
job may start again.

Task 0 is requeued by Slurm (`scontrol requeue`, as for a node failure) while it trains, and its
trainer takes seconds to stop (a checkpoint on SIGTERM). Task 1 starts meanwhile (the %1 throttle
lets it), must find task 0 queued again and wait on hold behind it, not exit 3 (which cancels the
finish job); task 0 runs again, releases it, and both end DONE.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from pipeline import slurm
from pipeline.experiment import load_config
from pipeline.stages import status
from pipeline.state.layout import RunLayout
from tests.slurm.test_slurm_integration import local_slurm  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TASKS = ("tasks=[{name: a, source: {type: synthetic, generator: sentiment}},"
         " {name: b, source: {type: synthetic, generator: geography}}]")


def stand_in_trainer(path: Path, work: Path, done: list[Path]) -> None:
    """Answers what train.sbatch asks its interpreter: the port, --check (not done), and training:
    task 0's first run trains until SIGTERM and takes 5 s to stop; every other run writes DONE."""
    path.write_text(f"""#!/bin/bash
if [[ " $* " == *" master-port "* ]]; then echo 29555; exit 0; fi
if [[ " $* " == *" --check "* ]]; then exit 1; fi
task=${{@: -1}}
if [[ $task == 0 && ${{SLURM_RESTART_COUNT:-0}} == 0 ]]; then
  trap 'sleep 5; exit 143' TERM
  touch {work}/started
  while :; do sleep 0.2; done
fi
if [[ $task == 0 ]]; then mkdir -p "$(dirname {done[0]})"; touch {done[0]}
else mkdir -p "$(dirname {done[1]})"; touch {done[1]}; fi
""")
    path.chmod(0o755)


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_slurm_requeue_of_the_previous_task_holds_the_next_one_and_both_finish(local_slurm, tmp_path) -> None:  # noqa: F811
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", "slurm.train.mem=200M", "slurm.train.cpus_per_task=1",
                             TASKS])
    layout = RunLayout.of(cfg)
    done = [layout.task_dir(i, t.name) / "DONE" for i, t in enumerate(cfg.tasks)]
    trainer = tmp_path / "python"
    stand_in_trainer(trainer, tmp_path, done)
    layout.logs.mkdir(parents=True)
    script = tmp_path / "train.sbatch"
    script.write_text(slurm.render_sbatch(cfg, layout, "train", str(trainer)))
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                         check=True).stdout.strip().split(";")[0]
    try:
        wait_until((tmp_path / "started").exists, 120, "task 0 to train")
        subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True)
        wait_until(lambda: all(p.exists() for p in done), 300, "both tasks DONE")
        # DONE is written before the script logs it and exits: read the logs once the job is gone.
        wait_until(lambda: not status.live_jobs({job}), 60, "the array job to leave the queue")
    finally:
        subprocess.run(["scancel", job], check=False)
    logs = {p.name: p.read_text() for p in layout.logs.glob("*.out")}
    second = next(text for name, text in logs.items() if name.endswith("_1.out"))
    assert "stopping here" not in second, second  # never exit 3
    assert "task 0 is queued again" in second and "task 1 DONE" in second
