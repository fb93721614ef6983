"""seq_ft saves its whole model under ZeRO-3 from rank 0 alone: two gloo ranks under torchrun, the
base built partitioned (zero.Init), `save()` of the method's own trainer. Rank 1 copies nothing
to the host (before: every rank copied the whole model, 8 x 26 GB for 13B on a node), and the
saved folder equals the checkpoint it was loaded from, tensor for tensor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _worker(model_dir: str, out: str) -> None:
    import torch
    from safetensors.torch import load_file

    from pipeline import distributed
    from pipeline.experiment import Experiment, load_config
    from pipeline.runtime.deepspeed_config import build_ds_config
    from pipeline.runtime.models import load_base_model, release_zero3_loading

    rank, world = distributed.setup()
    cfg = load_config(None, [f"model.name_or_path={model_dir}", "method=seq_ft", "train.deepspeed=zero3",
                             "model.dtype=float32", f"output_dir={out}"])
    exp = Experiment.of(cfg)
    ds_config = build_ds_config(cfg, world)
    cpu = torch.device("cpu")
    trainer = exp.method.trainer(exp, 0, [], cpu, lambda name=None: load_base_model(
        name or model_dir, "float32", "none", cpu, ds_config=ds_config))
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in trainer.model.parameters())  # partitioned
    copied = [0]
    original_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copied[0] += self.numel() * self.element_size()
        return original_cpu(self, *args, **kwargs)

    torch.Tensor.cpu = counting_cpu
    try:
        files = trainer.save()
    finally:
        torch.Tensor.cpu = original_cpu
    release_zero3_loading()
    print(f"seq-ft-save rank={rank} host_bytes={copied[0]} files={len(files)}", flush=True)
    if rank == 0:
        folder = exp.layout.task_dir(0, cfg.tasks[0].name) / "model"
        saved = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(str(f)).items()}
        reference = load_file(str(Path(model_dir) / "model.safetensors"))
        assert saved.keys() >= reference.keys(), sorted(reference.keys() - saved.keys())
        assert all(torch.equal(saved[k], reference[k]) for k in reference), "the saved model differs"
        params = sum(t.numel() * t.element_size() for t in reference.values())
        print(f"seq-ft-save-ok params_bytes={params}", flush=True)
    distributed.barrier()


@pytest.mark.slow
def test_seq_ft_under_zero3_saves_the_whole_model_from_rank_0_alone(tmp_path, tiny_model_dir) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, tiny_model_dir,
           str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "seq-ft-save rank=1 host_bytes=0 " in out, out[-4000:]  # rank 1 never holds the model on the host
    params = int(out.split("seq-ft-save-ok params_bytes=")[1].split()[0])
    rank0 = int(out.split("seq-ft-save rank=0 host_bytes=")[1].split()[0])
    assert params <= rank0 <= 2 * params  # rank 0: the model once (a tied embedding shares one copy)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
