"""`slm export`: what PEFT loads from an export answers exactly as the project's own model does.

The unit tests convert randomised JARe slots (U starts at zero: an export of fresh slots would
match the base model vacuously) and compare logits; the end-to-end tests train two tasks of a
tiny LLaMA per method through the real stages, export them with the CLI, and compare what PEFT
(and the merged model) computes with the method's predictor for the same task.
"""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.cli import main as slm
from pipeline.experiment import load_experiment
from pipeline.jare.inject import inject_jare
from pipeline.jare.routing import Routing
from pipeline.methods import get_method
from pipeline.peft_export import concat_loras, task_lora_weights, write_peft_adapter
from tests.tiny import randomize_slots, tiny_llama

SLOTS, RANK = 3, 4
TARGETS = ["o_proj", "q_proj"]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def peft_logits(base, folder, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(base, str(folder)).eval(), ids)


@pytest.fixture
def bank():
    model = tiny_llama(seed=0)
    bank = inject_jare(model, TARGETS, RANK, SLOTS)
    for t in range(2):
        bank.add_task(f"task{t}", seed=t)
        randomize_slots(bank, t, seed=10 + t)
    return bank


@pytest.mark.parametrize("weights", [[1 / 3] * 3, [0.6, 0.3, 0.1]])
def test_a_tasks_slots_at_given_weights_are_one_peft_lora_of_rank_p_times_r(bank, tmp_path, weights):
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    lora = task_lora_weights(bank, 1, weights)
    assert {a.shape[0] for a, _ in lora.values()} == {SLOTS * RANK}
    write_peft_adapter(tmp_path / "task1", lora, TARGETS, "tiny", {"task": "task1"})
    config = json.loads((tmp_path / "task1" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == SLOTS * RANK and config["peft_type"] == "LORA"

    routing = Routing(torch.tensor([[3, 4, 5]] * 2), torch.tensor([weights] * 2), task=1)  # task 1's slots
    with bank.routed(routing):
        ours = logits(bank.model, ids)
    exported = peft_logits(tiny_llama(seed=0), tmp_path / "task1", ids)
    base = logits(tiny_llama(seed=0), ids)
    assert (ours - base).abs().max() > 1e-2  # the slots change the answer: the comparison can fail
    torch.testing.assert_close(exported, ours, atol=1e-5, rtol=1e-5)


def test_the_saved_adapter_file_converts_like_the_live_bank(bank, tmp_path):
    from pipeline.state.artifacts import read_safetensors

    bank.save_task(0, tmp_path / "adapter.safetensors")
    from_file = task_lora_weights(read_safetensors(tmp_path / "adapter.safetensors"), 0, [1 / 3] * 3)
    live = task_lora_weights(bank, 0, [1 / 3] * 3)
    assert from_file.keys() == live.keys()
    for m in live:
        assert torch.equal(from_file[m][0], live[m][0]) and torch.equal(from_file[m][1], live[m][1])


def test_a_sum_of_loras_is_one_lora_whose_increment_is_the_sum():
    gen = torch.Generator().manual_seed(0)
    loras = [{"m": (torch.randn(4, 6, generator=gen), torch.randn(5, 4, generator=gen))} for _ in range(3)]
    a, b = concat_loras(loras)["m"]
    assert a.shape == (12, 6) and b.shape == (5, 12)
    torch.testing.assert_close(b @ a, sum(bb @ aa for aa, bb in (lora["m"] for lora in loras)))


def test_a_wrong_number_of_weights_is_refused(bank):
    with pytest.raises(ValueError, match="2 weights for the 3 slots"):
        task_lora_weights(bank, 0, [0.5, 0.5])


# ---- end to end: train two tasks per method, export with the CLI, load with PEFT --------------------

METHOD_SETTINGS = {"slm": ["methods.slm.lr=0.05"], "o_lora": ["methods.o_lora.lr=0.05"],
                   "seq_lora": ["methods.seq_lora.lr=0.05"],
                   "seq_ft": ["methods.seq_ft.lr=0.001"]}
EXPORT_RANK = {"slm": lambda cfg: cfg.methods.slm.slots_per_task * cfg.adapter.rank,  # P slots of rank r
               "o_lora": lambda cfg: 2 * cfg.adapter.rank,  # the sum of tasks 0 and 1's LoRAs
               "seq_lora": lambda cfg: cfg.adapter.rank}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("export")
    common = [f"output_dir={root / 'run'}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
              "train.max_steps=2", "train.micro_batch_size=4", "train.save_every=2", "model.max_seq_len=64"]
    assert slm(["prepare", *common]) == 0
    return {"common": common, "model": tiny_model_dir}


def trained(run_dir: dict, method: str) -> list[str]:
    overrides = [*run_dir["common"], f"method={method}", *METHOD_SETTINGS[method]]
    for t in range(2):
        assert slm(["train", "--task", str(t), *overrides]) == 0
    if get_method(method).learns_keys:
        assert slm(["index", *overrides]) == 0  # the predictor routes through the index; export needs none
    return overrides


def token_ids() -> torch.Tensor:
    return torch.randint(10, 4000, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["slm", "o_lora", "seq_lora"])
def test_slm_export_loads_in_peft_and_answers_like_the_methods_own_forward(run_dir, method):
    from pipeline.runtime.models import load_base_model

    overrides = trained(run_dir, method)
    exp = load_experiment(None, overrides)
    cfg, layout = exp.cfg, exp.layout
    assert slm(["export", *overrides, "--task", "geography", "--merged"]) == 0
    folder = layout.root / "export" / "1-geography"
    info = json.loads((folder / "slm_export.json").read_text())
    ids = token_ids()
    predictor = exp.method.predictor(exp, 1, torch.device("cpu"))
    routing = Routing.single_task(1, cfg.methods.slm.slots_per_task, len(ids)) if method == "slm" else None
    with predictor.routed(routing):
        ours = logits(predictor.model.eval(), ids)
    exported = peft_logits(load_base_model(run_dir["model"]), folder, ids)
    assert (ours - logits(load_base_model(run_dir["model"]), ids)).abs().max() > 1e-3  # trained: not the base
    torch.testing.assert_close(exported, ours, atol=1e-4, rtol=1e-4)
    merged = load_base_model(str(layout.root / "export" / "1-geography-merged"))
    torch.testing.assert_close(logits(merged, ids), ours, atol=1e-4, rtol=1e-4)
    assert info["rank"] == EXPORT_RANK[method](cfg) and info["task"] == "geography"


@pytest.mark.slow
def test_seq_ft_exports_its_saved_model_as_a_plain_transformers_folder(run_dir):
    from pipeline.runtime.models import load_base_model

    overrides = trained(run_dir, "seq_ft")
    exp = load_experiment(None, overrides)
    layout = exp.layout
    assert slm(["export", *overrides, "--task", "0"]) == 0
    ids = token_ids()
    ours = logits(exp.method.predictor(exp, 0, torch.device("cpu")).model.eval(), ids)
    exported = load_base_model(str(layout.root / "export" / "0-sentiment"))
    torch.testing.assert_close(logits(exported, ids), ours)


def test_export_refuses_an_unfinished_task_and_route_retrieved(run_dir, capsys):
    overrides = [*run_dir["common"], "method=oracle_task_id"]
    assert slm(["export", *overrides]) == 2
    assert "no task is DONE" in capsys.readouterr().err
    from pipeline.errors import ConfigError

    exp = load_experiment(None, [*overrides, "method=slm", "methods.slm.transfer=route_retrieved"])
    with pytest.raises(ConfigError, match="route_retrieved"):
        exp.method.export(exp, 0)
