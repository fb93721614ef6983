"""One batched decode loop for `slm generate` and `slm serve`: each row its own slots and sampling.

HF `generate` applies one set of sampling settings and one stopping rule to a whole batch; a
server batch mixes requests with their own max_tokens, temperature, top_p and stop strings, and
must drop a row the moment it finishes or its client goes away. So the loop is written out:
prefill the left-padded prompts once, then one token per step with the KV cache, positions
counted as HF counts them for left padding (cumsum of the mask). Finished rows leave the batch
(KV cache, mask and routing rows are selected away), so they cost nothing afterwards.

Greedy rows take the argmax; sampling rows draw from softmax(logits / temperature) cut to top_p,
with their own torch.Generator (seeded by the request's `seed` when given).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pipeline.jare.routing import Routing

REPLACEMENT = "\ufffd"  # what decode() shows for a UTF-8 sequence whose last bytes are still to come


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # decode exactly max_tokens (benchmarks compare equal work)


@dataclass
class Row:
    """One sequence of a batch: its prompt, how to sample, and where its text goes."""

    ids: list[int]
    sampling: Sampling
    emit: Callable[[str], None] | None = None  # called with each newly final piece of text
    cancelled: Callable[[], bool] = lambda: False
    # called once, the moment the row finishes: its answer goes out while the batch decodes on
    on_finish: Callable[[Row], None] | None = None
    tokens: list[int] = field(default_factory=list)  # generated, EOS excluded
    text: str = ""
    sent: int = 0  # characters of `text` already emitted
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "cancelled"


@torch.no_grad()
def decode(session, rows: list[Row], routing: Routing | None) -> None:
    """Decode `rows` together under `routing` (row i uses routing row i); fills each Row."""
    model, tok, device = session.model, session.tokenizer, session.device
    eos = eos_token_ids(model, tok)
    live = [i for i, r in enumerate(rows) if not _cancel(r)]
    if not live:
        return
    if len(live) < len(rows):
        routing = _select(routing, live)
    ids, mask = _left_pad([rows[i].ids for i in live], tok.pad_token_id, device)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as HF generate does for left padding
    gens = {i: _generator(rows[i].sampling, device) for i in live}
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with session.bank.routed(routing):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                    logits_to_keep=1)
        pos = pos[:, -1:]
        while True:
            logits = out.logits[:, -1, :]  # (B, V)
            nxt = pick_tokens(logits, [rows[i].sampling for i in live], [gens[i] for i in live])
            keep = [j for j, i in enumerate(live) if _advance(rows[i], int(nxt[j]), eos, tok)]
            if not keep:
                return
            if len(keep) < len(live):
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, pos, nxt = mask[sel], pos[sel], nxt[sel]
                routing = _select(routing, keep)
                session.bank.set_routing(routing)  # a new object: the layers gather afresh, once
                live = [live[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            pos = pos + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)


def pick_tokens(logits: torch.Tensor, samplings: list[Sampling], gens: list) -> torch.Tensor:
    """(B,) next token per row: argmax for greedy rows, a top-p draw for the others."""
    out = logits.argmax(-1)
    for j, s in enumerate(samplings):
        if s.temperature > 0:
            out[j] = _sample(logits[j].float(), s, gens[j])
    return out


def _sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= s.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen)[0]


def _advance(row: Row, token: int, eos: set[int], tokenizer) -> bool:
    """Take one token; False when the row is finished (EOS, a stop string, max_tokens, cancelled)."""
    if _cancel(row):
        return False
    if token in eos and not row.sampling.ignore_eos:
        return _finish(row, "stop")
    row.tokens.append(token)
    row.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
    cut = min((i for i in (row.text.find(s) for s in row.sampling.stop) if i >= 0), default=-1)
    if cut >= 0:
        row.text = row.text[:cut]
        return _finish(row, "stop")
    if len(row.tokens) >= row.sampling.max_tokens:
        return _finish(row, "length")
    _emit(row, _final_end(row.text, row.sampling.stop))
    return True


def _finish(row: Row, reason: str) -> bool:
    row.finish_reason = reason
    if reason != "cancelled":
        _emit(row, len(row.text))
    if row.on_finish is not None:
        row.on_finish(row)
    return False


def _cancel(row: Row) -> bool:
    if row.cancelled():
        _finish(row, "cancelled")
        return True
    return False


def _emit(row: Row, end: int) -> None:
    if row.emit is not None and end > row.sent:
        row.emit(row.text[row.sent:end])
    row.sent = max(row.sent, end)


def _final_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can no longer change: not an unfinished UTF-8 character, and not a
    tail that may turn out to be the start of a stop string."""
    base = len(text.rstrip(REPLACEMENT))
    end = base
    for s in stops:
        held = next((n for n in range(min(len(s) - 1, base), 0, -1) if text.endswith(s[:n], 0, base)), 0)
        end = min(end, base - held)
    return end


def _left_pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long, device=device)
    return ids, mask


def _select(routing: Routing | None, rows: list[int]) -> Routing | None:
    if routing is None:
        return None
    idx = torch.tensor(rows, dtype=torch.long)
    return Routing(routing.slot_ids[idx], routing.weights[idx], routing.task)


def _generator(s: Sampling, device) -> torch.Generator | None:
    if s.temperature <= 0:
        return None
    gen = torch.Generator(device=device)
    if s.seed is not None:
        gen.manual_seed(s.seed)
    else:
        gen.seed()
    return gen


def eos_token_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's generation config's EOS ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = set(ids) if isinstance(ids, list | tuple) else ({ids} if ids is not None else set())
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def generate_one(session, record: dict, max_new_tokens: int) -> tuple[str, list[dict]]:
    """Greedy answer to one {instruction, input} with its retrieved slots: what `slm generate`
    prints, and what the server answers for the same prompt."""
    ids = session.encode(record, truncate=True)
    routed = session.route([record], [None])
    row = Row(ids, Sampling(max_new_tokens))
    decode(session, [row], routed.routing)
    return row.text, routed.retrieval[0]
