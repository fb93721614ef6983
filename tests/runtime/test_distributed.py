"""Rank-local devices: each rank binds its own GPU before the first collective, and its FAISS
index goes there too.

On CPU the process group is gloo (torchrun, two ranks, real collectives); the NCCL path is
checked by its order of calls: `torch.cuda.set_device(LOCAL_RANK)` strictly before the process
group exists, so NCCL's communicator, barriers and every later tensor land on the rank's GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pipeline import distributed

REPO = Path(__file__).resolve().parents[2]


def test_a_gpu_rank_binds_its_local_gpu_before_the_process_group_starts(monkeypatch) -> None:
    import deepspeed

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(deepspeed, "init_distributed",
                        lambda dist_backend, **kw: calls.append(("init_distributed", dist_backend)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "get_rank", lambda: 5)
    monkeypatch.setattr(dist, "get_world_size", lambda: 8)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "node-1")
    assert distributed.setup() == (5, 8)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init_distributed", "nccl")]
    assert distributed.local_device() == torch.device("cuda", 1)


def _worker() -> None:
    import faiss

    from pipeline.dtkr import store

    rank, world = distributed.setup()
    local = int(os.environ["LOCAL_RANK"])
    assert dist.get_backend() == "gloo" and distributed.local_device() == torch.device("cpu")
    assert distributed.any_rank(rank == 1)  # a collective that only works once the group is up
    # With two GPUs visible to FAISS, each rank's index copy would go to its own one.
    faiss.get_num_gpus = lambda: 2
    assert store.rank_gpu() == local, (rank, store.rank_gpu())
    keys = store.KeyStore(12, 3, 2, "test")
    gen = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        keys.add_task(name, torch.randn(2, 3, 4, generator=gen))
    _, ids = keys.search(torch.randn(4, 12, generator=gen), 2)
    gathered = [torch.zeros(4, 2, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(gathered, torch.from_numpy(ids))
    assert all(torch.equal(g, gathered[0]) for g in gathered)  # every rank routes alike
    distributed.barrier()
    print(f"rank-local-ok rank={rank} local={local} world={world}", flush=True)


@pytest.mark.slow
def test_two_cpu_ranks_under_torchrun_start_gloo_and_pick_their_own_device() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "rank-local-ok rank=0 local=0 world=2" in out and "rank-local-ok rank=1 local=1 world=2" in out


if __name__ == "__main__":
    _worker()
