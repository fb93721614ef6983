"""Every rank resumes from the same checkpoint: two gloo ranks under torchrun that would disagree
if each judged the checkpoints alone (a file one rank sees damaged, a load that fails on one
rank) resume at one step, and raise together when nothing loads everywhere
(pipeline.state.checkpoints.resume_latest; FakeEngine stands in for DeepSpeed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = ("one-rank-sees-a-bad-file", "one-rank-fails-to-load", "nothing-loads-on-one-rank")


def _worker(folder: str) -> None:
    """Every case in one process group (each torchrun start pays for DeepSpeed's import)."""
    import torch
    import torch.distributed as dist

    from pipeline import distributed
    from pipeline.errors import StageInputError
    from pipeline.state import checkpoints
    from tests.faults.helpers import FakeEngine

    rank, world = distributed.setup()
    newest = checkpoints.tag(6)
    verify = checkpoints.verify_checkpoint

    for case in CASES:
        class Engine(FakeEngine):
            def load_checkpoint(self, folder: str, tag: str, load_module_strict: bool, case: str = case):
                fails = case == "nothing-loads-on-one-rank" or (case == "one-rank-fails-to-load" and tag == newest)
                if rank == 1 and fails:
                    self.loaded.append(tag)
                    raise RuntimeError(f"rank 1 cannot read {tag}")
                return super().load_checkpoint(folder, tag, load_module_strict)

        def stale_view(tag_dir: Path, case: str = case) -> str | None:  # e.g. a shared file system's cache
            if rank == 1 and case == "one-rank-sees-a-bad-file" and tag_dir.name == newest:
                return "it looks damaged from here"
            return verify(tag_dir)

        checkpoints.verify_checkpoint = stale_view
        try:
            step = checkpoints.resume_latest(Engine(), Path(folder))
        except StageInputError:
            step = -1
        steps = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(steps, torch.tensor([step]))
        if rank == 0:
            print(f"resume-steps {case} {[int(s) for s in steps]}", flush=True)
        distributed.barrier()


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> Path:
    from pipeline.state import checkpoints
    from tests.faults.helpers import FakeEngine

    engine = FakeEngine()
    for step in (3, 6):
        checkpoints.save_checkpoint(engine, tmp_path / "train_state", step, checkpoints.World(2, 8))
    return tmp_path / "train_state"


@pytest.mark.slow
def test_two_ranks_resume_from_one_step_or_fail_together(two_checkpoints: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, str(two_checkpoints)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    # rank 0 decides; a load that fails on one rank sends both to the older checkpoint; none at all: both raise
    expected = {"one-rank-sees-a-bad-file": [6, 6], "one-rank-fails-to-load": [3, 3],
                "nothing-loads-on-one-rank": [-1, -1]}
    for case, steps in expected.items():
        assert f"resume-steps {case} {steps}" in out, out[-4000:]


if __name__ == "__main__":
    _worker(sys.argv[1])
