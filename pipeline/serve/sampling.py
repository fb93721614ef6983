"""How one row picks its next token: greedy or sampled, after the request's penalties and cuts.

The settings are those of the OpenAI API as vLLM implements them:
- `presence_penalty` / `frequency_penalty` (OpenAI): subtract `presence * [count > 0] +
  frequency * count` from the logit of every token the answer already holds (generated tokens only).
- `repetition_penalty` (vLLM, HF): every token seen in the prompt or the answer has its logit
  divided by the penalty when positive, multiplied when negative.
- `temperature` (0: greedy, the argmax after the penalties), then `top_k` (keep the k most likely;
  0 or -1: all), `min_p` (keep tokens with at least min_p x the top probability) and `top_p`
  (the smallest set whose mass reaches top_p), then one draw from the row's own generator
  (seeded by the request's `seed` when given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # decode exactly max_tokens (benchmarks compare equal work)
    top_k: int = 0  # 0 or -1: no cut
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def pick_tokens(logits: torch.Tensor, samplings: Sequence[Sampling], seen: Sequence[tuple[list[int], list[int]]],
                gens: Sequence[torch.Generator | None]) -> torch.Tensor:
    """(B,) next token per row from logits (B, V). `seen[j]`: row j's (prompt ids, answer ids so far)."""
    out = logits.argmax(-1)
    for j, s in enumerate(samplings):
        if not (s.penalised or s.temperature > 0):
            continue  # plain greedy: the argmax above
        row = logits[j].float()
        if s.penalised:
            row = apply_penalties(row, s, *seen[j])
        out[j] = _sample(row, s, gens[j]) if s.temperature > 0 else row.argmax()
    return out


def apply_penalties(logits: torch.Tensor, s: Sampling, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """(V,) logits after the repetition, frequency and presence penalties."""
    logits = logits.clone()
    if s.repetition_penalty != 1.0 and (prompt or answer):
        ids = torch.tensor(sorted(set(prompt) | set(answer)), dtype=torch.long, device=logits.device)
        picked = logits[ids]
        logits[ids] = torch.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
    if (s.presence_penalty or s.frequency_penalty) and answer:
        counts = torch.bincount(torch.tensor(answer, device=logits.device), minlength=logits.shape[0]).float()
        logits -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).float()
    return logits


def _sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[0]:
        kth = logits.topk(s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.min_p > 0:
        probs = probs.masked_fill(probs < s.min_p * probs.max(), 0.0)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= s.top_p * sorted_p.sum()
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen)[0]


def generator(s: Sampling, device: torch.device) -> torch.Generator | None:
    """The row's own random stream (None for greedy rows): seeded by the request, else fresh."""
    if s.temperature <= 0:
        return None
    gen = torch.Generator(device=device)
    if s.seed is not None:
        gen.manual_seed(s.seed)
    else:
        gen.seed()
    return gen
