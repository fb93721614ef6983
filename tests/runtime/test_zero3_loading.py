"""ZeRO-3 loading: the base arrives already partitioned (zero.Init), never whole on one device.

`load_base_model(..., ds_config=<ZeRO-3>)` keeps an HfDeepSpeedConfig alive, so transformers
builds the model inside deepspeed.zero.Init and rank 0 streams the checkpoint into the shards.
The worker below runs under torchrun with 2 CPU ranks (gloo) and checks, on every rank, that the
parameters are placeholders with a half-size shard, that the gathered values equal the checkpoint
byte for byte, and that releasing the config makes later loads whole again (the DTKR encoder and
the eval stage's base must not be partitioned). Training equivalence under ZeRO-3 (2 ranks vs 1)
is tests/stages/test_train.py::test_two_ranks_give_the_adapter_of_one_rank_at_the_same_global_batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _worker(folder: str) -> None:
    import deepspeed
    import torch
    from safetensors.torch import load_file
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from pipeline import distributed
    from pipeline.experiment import load_config
    from pipeline.runtime.deepspeed_config import build_ds_config
    from pipeline.runtime.models import load_base_model, release_zero3_loading

    rank, world = distributed.setup()
    cfg = load_config(None, [f"model.name_or_path={folder}", "train.deepspeed=zero3", "model.dtype=float32"])
    ds_config = build_ds_config(cfg, world)
    model = load_base_model(folder, "float32", "none", torch.device("cpu"), ds_config=ds_config)
    assert is_deepspeed_zero3_enabled()
    params = dict(model.named_parameters())
    for name, p in params.items():
        # a partitioned parameter: an empty placeholder plus this rank's 1/world shard
        assert hasattr(p, "ds_id") and p.numel() == 0, name
        assert p.ds_tensor.numel() == -(-p.ds_numel // world), (name, p.ds_tensor.numel(), p.ds_numel)
        assert not p.requires_grad, name
    checkpoint = load_file(str(Path(folder) / "model.safetensors"))
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        for name, p in params.items():
            assert torch.equal(p.data, checkpoint[name]), f"rank {rank}: {name} differs from the checkpoint"
    release_zero3_loading()
    assert not is_deepspeed_zero3_enabled()
    whole = load_base_model(folder, "float32", "none", torch.device("cpu"))
    assert all(not hasattr(p, "ds_id") and p.numel() > 0 for p in whole.parameters())
    for (name, buf), (_, ref) in zip(model.named_buffers(), whole.named_buffers(), strict=True):
        assert torch.equal(buf, ref), name  # non-persistent buffers (RoPE inv_freq) built alike
    distributed.barrier()
    print(f"zero3-load-ok rank={rank} world={world} params={len(params)}", flush=True)


@pytest.mark.slow
def test_zero3_loads_the_base_partitioned_on_every_rank_and_release_restores_whole_loads(tmp_path):
    from tests.tiny import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path / "tiny")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, folder]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert out.count("zero3-load-ok") == 2, out[-4000:]


if __name__ == "__main__":
    _worker(sys.argv[1])
