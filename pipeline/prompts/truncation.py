"""How a prompt and an answer fit the token caps: one rule for training, eval and prepare's counts.

One cap (`model.max_seq_len` alone, the default): the answer keeps up to max_seq_len - 1 tokens
and the prompt loses its start.

Separate caps (`model.max_prompt_len` / `model.max_answer_len`, the SLM reference's 512 + 512):
the answer keeps its first max_answer_len tokens; a prompt over its cap loses the middle of its
cuttable part (the input, or the instruction when there is no input; see
`pipeline.prompts.templates.prompt_parts`), so the instruction header and the tokens where the answer
starts survive. The reference instead tokenizes with `truncation=True`, which cuts the prompt's
tail, `[/INST]` included (Pbihao/SLM: SLM-llama/dataset/dataset.py, `Preprocess`).

Pure Python on token id lists (no torch), so `prepare` counts truncation exactly as training does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import ModelSpec
from pipeline.errors import ConfigError
from pipeline.prompts.templates import history_turns, prompt_add_special_tokens, prompt_parts


@dataclass(frozen=True)
class TokenCaps:
    """Token budgets of one sequence; `prompt` and `answer` None = the single `total` cap."""

    total: int
    prompt: int | None = None
    answer: int | None = None

    @classmethod
    def of(cls, model: ModelSpec) -> TokenCaps:
        return cls(model.max_seq_len, model.max_prompt_len, model.max_answer_len)

    @classmethod
    def coerce(cls, caps: int | TokenCaps) -> TokenCaps:
        """A bare int is the single cap (the callers that predate separate caps)."""
        return caps if isinstance(caps, TokenCaps) else cls(caps)

    @property
    def separate(self) -> bool:
        return self.prompt is not None or self.answer is not None

    def answer_cap(self) -> int:
        # At least one prompt token stays (the one the first answer token is predicted from).
        room = self.total - (self.prompt or 1)
        return min(self.answer, self.total - 1) if self.answer is not None else room

    def prompt_cap(self, answer_len: int = 0) -> int:
        """Prompt tokens allowed beside an answer of `answer_len` kept tokens (0: generation)."""
        room = self.total - answer_len
        return min(self.prompt, room) if self.prompt is not None else room

    def truncates(self, prompt_len: int, answer_len: int) -> bool:
        kept = min(answer_len, self.answer_cap())
        return kept < answer_len or prompt_len > self.prompt_cap(kept)


def keep_middle_out(ids: list[int], n: int) -> list[int]:
    """`n` tokens of `ids`: its first ceil(n/2) and last floor(n/2) (the middle is dropped)."""
    if len(ids) <= n:
        return list(ids)
    tail = n // 2
    return ids[: n - tail] + (ids[len(ids) - tail:] if tail else [])


def _body_range(offsets: list[tuple[int, int]], lo: int, hi: int) -> tuple[int, int] | None:
    """First and one-past-last token lying wholly inside characters [lo, hi); None if none does."""
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and lo <= s and e <= hi]
    return (inside[0], inside[-1] + 1) if inside else None


def fit_prompt(tokenizer: Any, prompt_format: str, record: dict, ids: list[int], cap: int,
               caps: TokenCaps) -> list[int]:
    """`ids` (the record's whole prompt) cut to at most `cap` tokens under `caps`' rule."""
    return [ids[i] for i in kept_positions(tokenizer, prompt_format, record, len(ids), cap, caps)]


def kept_positions(tokenizer: Any, prompt_format: str, record: dict, n: int, cap: int,
                   caps: TokenCaps) -> list[int]:
    """Which of the record's `n` prompt tokens survive a cut to `cap` (in order): one rule for the
    ids and for anything aligned with them (the labels of supervised earlier turns)."""
    if n <= cap:
        return list(range(n))
    if not caps.separate:
        return list(range(n - cap, n))
    head, body, tail = prompt_parts(tokenizer, prompt_format, record["instruction"], record["input"],
                                    history_turns(record))
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("model.max_prompt_len / max_answer_len cut the prompt by character offsets, which "
                          f"needs a fast tokenizer; {getattr(tokenizer, 'name_or_path', '?')!r} is not one")
    offsets = tokenizer(head + body + tail, add_special_tokens=prompt_add_special_tokens(prompt_format),
                        return_offsets_mapping=True)["offset_mapping"]
    positions = list(range(len(offsets)))
    span = _body_range(offsets, len(head), len(head) + len(body))
    if len(offsets) != n or span is None or n - (span[1] - span[0]) > cap:
        # Header and answer marker alone exceed the cap: keep both ends of the whole prompt.
        return keep_middle_out(list(range(n)), cap)
    b0, b1 = span
    keep = cap - (n - (b1 - b0))
    return positions[:b0] + keep_middle_out(positions[b0:b1], keep) + positions[b1:]
