"""Where the base's weights go at load (`pipeline.runtime.models.placement`), read off the arguments
`from_pretrained` receives (mocked: no checkpoint, no GPU): a rank never loads the whole 16-bit
base onto the host and then moves it; ZeRO-3 leaves placement to zero.Init; a single process that
sees several GPUs spreads an inference base over them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.runtime import models
from tests.tiny import tiny_llama

ZERO2 = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1}
ZERO3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1}


class _Recorded(torch.nn.Module):
    """What the mocked from_pretrained returns: a real tiny model that records moves of the whole model."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_llama()
        self.moved_to: list[object] = []

    def to(self, *args, **kwargs):
        self.moved_to.append(args or kwargs)
        return super().to(*args, **kwargs)


class _Loads(list):
    """The keyword arguments of each from_pretrained call; `.models`: what each returned."""

    models: list[_Recorded]


@pytest.fixture
def loads(monkeypatch) -> _Loads:
    calls = _Loads()
    calls.models = []

    def from_pretrained(name, **kwargs):
        calls.append(kwargs)
        calls.models.append(_Recorded())
        return calls.models[-1]

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    yield calls
    models.release_zero3_loading()


def test_a_zero2_rank_streams_the_base_to_its_own_gpu_instead_of_loading_it_on_the_host(loads, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "8")
    gpu = torch.device("cuda", 3)
    model = models.load_base_model("/models/Llama-2-7b-hf", "bfloat16", "none", gpu, ds_config=ZERO2)
    assert loads[0]["device_map"] == {"": gpu}
    assert loads.models[0].moved_to == []  # no host copy moved afterwards
    assert not any(p.requires_grad for p in model.parameters())


def test_a_quantized_base_is_placed_the_same_way(loads, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "8")
    gpu = torch.device("cuda", 1)
    models.load_base_model("/models/Llama-2-70b-hf", "bfloat16", "8bit", gpu, ds_config=ZERO2)
    assert loads[0]["device_map"] == {"": gpu} and loads[0]["quantization_config"].load_in_8bit


def test_zero3_leaves_placement_to_zero_init(loads) -> None:
    models.load_base_model("/models/Llama-2-70b-hf", "bfloat16", "none", torch.device("cuda", 0), ds_config=ZERO3)
    assert "device_map" not in loads[0] and loads.models[0].moved_to == []


def test_one_process_that_sees_several_gpus_spreads_an_inference_base_over_them(loads, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    models.load_base_model("/models/Llama-2-70b-hf", "bfloat16", "none", torch.device("cuda", 0))
    assert loads[0]["device_map"] == "auto"
    # under torchrun each rank keeps its own GPU, also for inference
    monkeypatch.setenv("WORLD_SIZE", "2")
    models.load_base_model("/models/Llama-2-70b-hf", "bfloat16", "none", torch.device("cuda", 1))
    assert loads[1]["device_map"] == {"": torch.device("cuda", 1)}
    # and training in one process never spreads the model DeepSpeed will wrap
    monkeypatch.delenv("WORLD_SIZE")
    models.load_base_model("/models/Llama-2-7b-hf", "bfloat16", "none", torch.device("cuda", 0), ds_config=ZERO2)
    assert loads[2]["device_map"] == {"": torch.device("cuda", 0)}


def test_a_cpu_load_goes_to_the_cpu_through_the_same_map(loads) -> None:
    models.load_base_model("/models/tiny", "float32", "none", torch.device("cpu"))
    assert loads[0]["device_map"] == {"": torch.device("cpu")} and loads[0]["dtype"] == torch.float32
