"""Records -> token ids: prompt masked from the loss, response learned; padding for batches.

`caps` is `model.max_seq_len` (an int: one cap) or a `TokenCaps` with separate prompt and
answer caps; `pipeline.prompts.truncation` holds the rule, shared with prepare's counts.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.prompts.templates import (
    build_prompt,
    build_response,
    history_turns,
    prompt_add_special_tokens,
    query_text,
)
from pipeline.prompts.truncation import TokenCaps, fit_prompt

IGNORE = -100


def prompts(tokenizer: Any, prompt_format: str, records: list[dict]) -> list[str]:
    return [build_prompt(tokenizer, prompt_format, r["instruction"], r["input"], history_turns(r)) for r in records]


def queries(records: list[dict]) -> list[str]:
    return [query_text(r["instruction"], r["input"]) for r in records]


def tokenize_for_training(tokenizer: Any, prompt_format: str, records: list[dict],
                          caps: int | TokenCaps) -> list[dict[str, list[int]]]:
    """input_ids + labels (prompt tokens = IGNORE). Long examples lose prompt tokens first, so
    the response, the part that is learned, survives truncation (up to its cap)."""
    caps = TokenCaps.coerce(caps)
    add_special = prompt_add_special_tokens(prompt_format)
    prompt_ids = tokenizer(prompts(tokenizer, prompt_format, records), add_special_tokens=add_special)["input_ids"]
    response_ids = tokenizer([build_response(tokenizer, r["output"]) for r in records],
                             add_special_tokens=False)["input_ids"]
    out = []
    for record, p, r in zip(records, prompt_ids, response_ids, strict=True):
        r = r[:caps.answer_cap()]
        p = fit_prompt(tokenizer, prompt_format, record, p, caps.prompt_cap(len(r)), caps)
        out.append({"input_ids": p + r, "labels": [IGNORE] * len(p) + r})
    return out


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a training micro-batch."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def encode_prompts_left_padded(tokenizer: Any, prompt_format: str, records: list[dict],
                               caps: int | TokenCaps) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation / scoring (answers start at the same column),
    cut as training cuts them."""
    caps = TokenCaps.coerce(caps)
    add_special = prompt_add_special_tokens(prompt_format)
    texts = prompts(tokenizer, prompt_format, records)
    ids = [fit_prompt(tokenizer, prompt_format, record, x, caps.prompt_cap(), caps)
           for record, x in zip(records, tokenizer(texts, add_special_tokens=add_special)["input_ids"], strict=True)]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask}
