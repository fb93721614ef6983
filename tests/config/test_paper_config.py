"""The paper configs follow the SLM reference protocol, and experiments may list task orders."""

from __future__ import annotations

import pytest

from pipeline import cli
from pipeline.errors import ConfigError
from pipeline.experiment import load_config
from pipeline.planning.shapes import encoder_size

PAPER_CONFIGS = ["paper_llama2_7b.yaml", "llama2_7b.yaml", "llama2_13b.yaml", "llama2_70b.yaml"]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_a_paper_config_follows_the_reference_protocol(name: str) -> None:
    cfg = load_config(name)
    assert cfg.dtkr.encoder == "sentence-transformers/nli-roberta-base-v2"
    assert encoder_size(cfg.dtkr.encoder)[1] // cfg.dtkr.groups == 128  # 768-d, 6 groups of 128
    assert {t.name: t.metric for t in cfg.tasks} == {"finance": "first_word", "mmlu": "first_word",
                                                     "medical": "bertscore"}
    assert (cfg.eval.bertscore_model, cfg.eval.bertscore_layer) == ("roberta-large", 17)
    assert (cfg.train.epochs, cfg.train.weight_decay, cfg.train.warmup_ratio) == (3, 0.01, 0.03)
    assert (cfg.model.max_prompt_len, cfg.model.max_answer_len) == (512, 512)
    assert cfg.model.max_seq_len >= 1024
    paper, reverse = cfg.orders
    assert (paper.name, paper.tasks) == ("paper", ["finance", "mmlu", "medical"])
    assert (reverse.name, reverse.tasks) == ("reverse", paper.tasks[::-1])


def test_the_size_variants_keep_the_paper_configs_tasks_in_step() -> None:
    tasks = {name: load_config(name).model_dump(include={"tasks", "orders", "dtkr", "data"}) for name in PAPER_CONFIGS}
    first = tasks.pop(PAPER_CONFIGS[0])
    assert all(other == first for other in tasks.values())


def test_the_paper_encoder_is_planned_offline_at_its_real_size() -> None:
    assert encoder_size("sentence-transformers/nli-roberta-base-v2") == (124_645_632, 768)  # roberta-base
    assert cli.main(["plan", "-c", "llama2_7b.yaml"]) == 0


def _with_orders(small_experiment: dict, orders: list[dict]) -> dict:
    return {**small_experiment, "orders": orders}


def test_orders_default_to_none_and_accept_permutations(write_yaml, small_experiment) -> None:
    assert load_config(write_yaml(small_experiment)).orders is None
    orders = [{"name": "a", "tasks": ["sentiment", "arithmetic"]}, {"name": "b", "tasks": ["arithmetic", "sentiment"]}]
    cfg = load_config(write_yaml(_with_orders(small_experiment, orders)))
    assert [o.tasks for o in cfg.orders] == [["sentiment", "arithmetic"], ["arithmetic", "sentiment"]]


@pytest.mark.parametrize(("orders", "message"), [
    ([{"name": "a", "tasks": ["sentiment", "arithmetic"]}, {"name": "a", "tasks": ["arithmetic", "sentiment"]}],
     "duplicate order names \\['a'\\]"),
    ([{"name": "a", "tasks": ["sentiment"]}],
     "order 'a' must list every task exactly once.*missing \\['arithmetic'\\]"),
    ([{"name": "a", "tasks": ["sentiment", "sentiment"]}], "missing \\['arithmetic'\\].*repeated \\['sentiment'\\]"),
    ([{"name": "a", "tasks": ["sentiment", "arithmetic", "poetry"]}], "unknown \\['poetry'\\]"),
    ([{"name": "a b", "tasks": ["sentiment", "arithmetic"]}], "orders.0.name"),
])
def test_a_bad_order_is_a_config_error(write_yaml, small_experiment, orders: list[dict], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_yaml(_with_orders(small_experiment, orders)))
