"""JARe with one slot, top-1 routing and the LoRA init is a PEFT LoRA of the same rank (alpha = rank),
on the same module, trained on the same data: the same adapter and the same logits.

The equivalence fails if a scale (alpha / r, the routing weight), the init (V vs PEFT's A), a
weight path (U^T vs B) or a gradient path differs. U and B start at zero, so the adapters are
compared after training, never on fresh slots (which would agree vacuously)."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import DtkrSpec, ExperimentConfig
from pipeline.dtkr.router import Router
from pipeline.experiment import validate
from pipeline.jare.inject import inject_jare
from pipeline.methods import get_method
from pipeline.methods.lora.model import LoraSettings, lora_config
from tests.tiny import tiny_llama

RANK, STEPS, LR = 4, 6, 5e-3


def experiment(rank: int) -> ExperimentConfig:
    return validate({
        "adapter": {"rank": rank, "target_modules": ["o_proj"]},
        "methods": {"slm": {"slots_per_task": 1, "init": "lora"}},
        "dtkr": {"top_k": 1, "groups": 4},
        "tasks": [{"name": "a", "source": {"type": "synthetic", "generator": "sentiment"}}]})


def one_slot_routing(cfg: ExperimentConfig, batch: int):
    """What training routes with: DTKR over the task's one slot, top-1 (weight 1 by normalisation)."""
    keys = torch.nn.functional.normalize(torch.randn(1, 4, 8), dim=-1)
    router = Router.from_keys([("a", keys)], None, DtkrSpec(top_k=1, groups=4), slots_per_task=1)
    return router.route_embeddings(torch.randn(batch, 32), tasks=["a"])


def train(model, params, forward, batches) -> None:
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    for inp in batches:
        loss = forward(inp)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_one_slot_top1_jare_trains_to_the_same_adapter_and_logits_as_a_peft_lora() -> None:
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    cfg = experiment(RANK)
    opts = get_method("slm").options(cfg)
    base = tiny_llama()
    jare_model, peft_base = base, copy.deepcopy(base)
    bank = inject_jare(jare_model, cfg.adapter.target_modules, cfg.adapter.rank, opts.slots_per_task)
    bank.add_task("a", seed=3, init=opts.init)
    peft_model = get_peft_model(peft_base, lora_config(LoraSettings.of_adapter(cfg)))
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules()
                   if isinstance(m, LoraLayer)}
    assert peft_layers.keys() == bank.layers.keys()
    with torch.no_grad():  # one starting point: PEFT's A drawn by PEFT, B = U = 0 in both
        for name, layer in bank.layers.items():
            u, v = layer.task_parameters(0)
            assert not u.any() and not peft_layers[name].lora_B["default"].weight.any()
            v[0].copy_(peft_layers[name].lora_A["default"].weight)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, 100, (4, 10), generator=gen) for _ in range(STEPS)]
    routing = one_slot_routing(cfg, 4)
    assert torch.equal(routing.weights, torch.ones(4, 1))

    def jare_forward(inp):
        with bank.routed(routing):
            return jare_model(inp, labels=inp).loss

    train(jare_model, bank.train_only(0), jare_forward, batches)
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]
    train(peft_model, peft_params, lambda inp: peft_model(inp, labels=inp).loss, batches)

    for name, layer in bank.layers.items():
        u, v = layer.task_parameters(0)
        a, b = peft_layers[name].lora_A["default"].weight, peft_layers[name].lora_B["default"].weight
        assert b.abs().max() > 1e-3  # trained, not the zero init
        torch.testing.assert_close(u[0].T, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(v[0], a, rtol=1e-4, atol=1e-6)
    probe = torch.randint(3, 100, (2, 12), generator=gen)
    with torch.no_grad(), bank.routed(one_slot_routing(cfg, 2)):
        jare_logits = jare_model(probe).logits
    with torch.no_grad():
        peft_logits = peft_model(probe).logits
    torch.testing.assert_close(jare_logits, peft_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d_in", [64, 576])
def test_the_lora_init_draws_v_as_peft_draws_a_and_the_paper_init_is_n01(d_in: int) -> None:
    from peft.tuners.lora import LoraLayer  # noqa: F401  (PEFT's init: kaiming_uniform_(a=sqrt(5)) on A)
    from torch import nn

    from pipeline.jare.layer import JareLinear
    from pipeline.jare.routing import RoutingState

    rank = 32
    layer = JareLinear(nn.Linear(d_in, 16, bias=False), rank, 2, RoutingState())
    layer.add_task(torch.Generator().manual_seed(0), init="lora")
    layer.add_task(torch.Generator().manual_seed(0), init="paper")
    lora_v, paper_v = layer.task_parameters(0)[1], layer.task_parameters(1)[1]
    peft_a = torch.empty(rank, d_in)
    nn.init.kaiming_uniform_(peft_a, a=5 ** 0.5, generator=torch.Generator().manual_seed(1))
    bound = 1 / d_in ** 0.5
    assert lora_v.abs().max() <= bound and peft_a.abs().max() <= bound
    assert abs(lora_v.std() / peft_a.std() - 1) < 0.05  # uniform on +-1/sqrt(d_in): std 1/sqrt(3 d_in)
    assert abs(paper_v.std() - 1) < 0.05
    assert not layer.task_parameters(0)[0].any() and not layer.task_parameters(1)[0].any()  # U = 0
