"""A tiny random LLaMA (GQA, 2 layers) built in-process: no download, loads in milliseconds."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 32, vocab: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


def randomize_slots(bank, t: int, seed: int = 1) -> None:
    """U starts at zero, which makes every equivalence test pass vacuously: fill it first."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.task_parameters(t):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def save_tiny_checkpoint(folder, seed: int = 0) -> str:
    """A tiny random LLaMA with SmolLM2's real tokenizer (and chat template), saved as a normal
    local model folder: the pipeline loads it through the same from_pretrained path as a hub
    model, and a training step takes milliseconds."""
    from pipeline.runtime.models import load_tokenizer

    tok = load_tokenizer("bundled:smollm2")
    model = tiny_llama(seed=seed, vocab=len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def tiny_overrides(out, model: str, steps: int = 3, save_every: int | None = None, eval_records: int = 4,
                   new_tokens: int = 3) -> list[str]:
    """CLI overrides that run the embedded default's tasks on a tiny model in seconds, into `out`."""
    return [f"output_dir={out}", f"model.name_or_path={model}", "data.synthetic_size=40",
            f"train.max_steps={steps}", "train.micro_batch_size=4", f"train.save_every={save_every or steps}",
            f"eval.max_records_per_task={eval_records}", f"eval.max_new_tokens={new_tokens}", "model.max_seq_len=64"]


def finish_tasks(overrides: list[str], tasks: int = 3) -> list[str]:
    """Prepare, train every task and index, through the CLI; returns `overrides`."""
    from pipeline.cli import main as slm

    assert slm(["prepare", *overrides]) == 0
    for t in range(tasks):
        assert slm(["train", "--task", str(t), *overrides]) == 0
    assert slm(["index", *overrides]) == 0
    return overrides

