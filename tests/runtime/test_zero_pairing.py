"""A quantised base pairs with ZeRO-0/2 only; ZeRO-3 is refused before any work, naming both keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.experiment import load_config
from pipeline.runtime.deepspeed_config import build_ds_config


def _config(write_yaml, small_experiment, quantization: str, deepspeed: str):
    return load_config(write_yaml(small_experiment), [f"model.quantization={quantization}",
                                                      f"train.deepspeed={deepspeed}"])


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
@pytest.mark.parametrize("deepspeed", ["zero3", "zero3_offload"])
def test_a_quantized_base_with_zero3_is_a_config_error_that_suggests_zero2(
        write_yaml, small_experiment, quantization: str, deepspeed: str) -> None:
    cfg = _config(write_yaml, small_experiment, quantization, deepspeed)
    with pytest.raises(ConfigError) as err:
        build_ds_config(cfg, world_size=2)
    message = str(err.value)
    assert f"model.quantization={quantization}" in message and f"train.deepspeed={deepspeed}" in message
    assert "zero2" in message


def test_a_user_deepspeed_json_with_stage_3_is_refused_too(write_yaml, small_experiment, tmp_path: Path) -> None:
    (tmp_path / "mine.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    cfg = _config(write_yaml, small_experiment, "4bit", "mine.json")
    with pytest.raises(ConfigError, match="ZeRO stage 3"):
        build_ds_config(cfg, world_size=1)


@pytest.mark.parametrize("quantization, deepspeed", [("4bit", "zero2"), ("8bit", "zero2_offload"),
                                                     ("4bit", "zero0"), ("none", "zero3")])
def test_the_supported_pairings_build(write_yaml, small_experiment, quantization: str, deepspeed: str) -> None:
    ds = build_ds_config(_config(write_yaml, small_experiment, quantization, deepspeed), world_size=2)
    assert ds["train_batch_size"] == 8 * 1 * 2  # "auto" filled: micro 8 x accum 1 x 2 ranks


def test_slm_train_refuses_the_pairing_before_reading_data_or_writing_output(
        write_yaml, small_experiment, capsys) -> None:
    from pipeline.cli import main as slm

    path = write_yaml(small_experiment)
    # no `slm prepare` ran: had train touched the data or the model, it would fail differently
    assert slm(["train", "-c", str(path), "--task", "0", "model.quantization=4bit", "train.deepspeed=zero3"]) == 2
    err = capsys.readouterr().err
    assert "error: model.quantization=4bit cannot be used with train.deepspeed=zero3" in err
    assert not Path(small_experiment["output_dir"]).exists()
