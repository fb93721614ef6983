"""Every shipped DeepSpeed JSON trains: two steps of task 0 on the tiny LLaMA, on CPU.

The offload JSONs run the optimizer step on the host, where DeepSpeed refuses a torch optimizer;
`pipeline.runtime.deepspeed_config.make_optimizer` gives it DeepSpeedCPUAdam. A JSON added to
pipeline/ds_configs/ is picked up here by itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import main as slm
from pipeline.config import DS_CONFIGS
from pipeline.experiment import load_config
from pipeline.runtime.deepspeed_config import make_optimizer, offloads_optimizer
from pipeline.state.artifacts import read_done, sha256_file

SHIPPED = sorted(p.stem for p in DS_CONFIGS.glob("*.json"))


def _train_two_steps(out: Path, tiny_model_dir: str, deepspeed: str) -> dict[str, torch.Tensor]:
    overrides = [f"output_dir={out}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
                 "train.max_steps=2", "train.micro_batch_size=4", "model.max_seq_len=64",
                 f"train.deepspeed={deepspeed}"]
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides]) == 0
    task = next((out / "slm" / "tasks").glob("0-*"))
    done = read_done(task)
    assert done is not None and done["outputs"]["adapter.safetensors"] == sha256_file(task / "adapter.safetensors")
    return load_file(str(task / "adapter.safetensors"))


@pytest.fixture(scope="module")
def zero0_adapter(tmp_path_factory, tiny_model_dir) -> dict[str, torch.Tensor]:
    return _train_two_steps(tmp_path_factory.mktemp("zero0") / "run", tiny_model_dir, "zero0")


def test_the_shipped_jsons_include_both_offloads() -> None:
    assert {"zero0", "zero2", "zero3", "zero2_offload", "zero3_offload"} <= set(SHIPPED)


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", SHIPPED)
def test_two_steps_under_every_shipped_json_change_the_adapter_and_save_it(
        tmp_path, tiny_model_dir, zero0_adapter, deepspeed: str) -> None:
    adapter = _train_two_steps(tmp_path / "run", tiny_model_dir, deepspeed)
    u = [name for name in adapter if name.endswith(".U")]
    assert u and all(adapter[name].abs().max() > 0 for name in u)  # U starts at zero: the steps moved it
    assert adapter.keys() == zero0_adapter.keys()
    for name, value in adapter.items():  # one rank, fp32: every ZeRO stage and optimizer takes the same step
        torch.testing.assert_close(value, zero0_adapter[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("deepspeed", SHIPPED)
def test_the_optimizer_is_the_one_each_json_can_step(deepspeed: str) -> None:
    cfg = load_config(None, [f"train.deepspeed={deepspeed}"])
    ds = json.loads(cfg.deepspeed_config_path().read_text())
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0, ds)
    expected = "DeepSpeedCPUAdam" if offloads_optimizer(ds) else "AdamW"
    assert type(optimizer).__name__ == expected
    assert offloads_optimizer(ds) == deepspeed.endswith("_offload")


def test_the_documented_flag_keeps_torch_adamw_under_offload() -> None:
    ds = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
          "zero_force_ds_cpu_optimizer": False}
    assert type(make_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0, ds)) is torch.optim.AdamW
