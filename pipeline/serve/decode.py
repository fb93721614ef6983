"""The decode loop of `slm generate` and `slm serve`: rows that join and leave one running batch.

HF `generate` applies one set of sampling settings and one stopping rule to a whole batch, and
takes no new rows once it started. A server batch mixes requests with their own max_tokens,
sampling and stop strings, must drop a row the moment it finishes or its client goes away, and
(continuous batching) must let a new request join at the next step instead of waiting for the
whole batch. So the loop is written out, as a `DecodeBatch`:

- `admit(rows, routing)`: prefill the new rows' left-padded prompts into their own KV cache, pick
  their first token, then merge them into the running batch: the shorter cache is left-padded
  (masked out, so it changes no attention), positions stay per row (cumsum of the mask, as HF
  counts them for left padding), and the JARe routing rows are stacked.
- `step()`: one token for every row. Finished rows leave (their KV rows, mask, routing are
  selected away) and cache columns that are padding for every remaining row are dropped.

`decode(session, rows, routing)` is one static batch: admit all rows, step until none is left.
Each row is the same computation whichever rows share its batch (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pipeline.jare.routing import Routing
from pipeline.serve.sampling import Sampling, generator, pick_tokens

__all__ = ["DecodeBatch", "Row", "Sampling", "decode", "generate_one"]
REPLACEMENT = "\ufffd"  # what decode() shows for a UTF-8 sequence whose last bytes are still to come


@dataclass
class Row:
    """One sequence of a batch: its prompt, how to sample, and where its text goes."""

    ids: list[int]
    sampling: Sampling
    emit: Callable[[str], None] | None = None  # called with each newly final piece of text
    cancelled: Callable[[], bool] = lambda: False
    # called once, the moment the row finishes: its answer goes out while the batch decodes on
    on_finish: Callable[[Row], None] | None = None
    on_error: Callable[[BaseException], None] | None = None  # the batch failed before the row finished
    tokens: list[int] = field(default_factory=list)  # generated, EOS excluded
    text: str = ""
    sent: int = 0  # characters of `text` already emitted
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "cancelled"


def decode(session, rows: list[Row], routing: Routing | None) -> None:
    """Decode `rows` together under `routing` (row i uses routing row i) as one static batch."""
    batch = DecodeBatch(session)
    try:
        batch.admit(rows, routing)
        while batch.rows:
            batch.step()
    finally:
        batch.close()


class DecodeBatch:
    """The running batch: its rows, their KV cache, mask, positions, routing and pending tokens."""

    def __init__(self, session) -> None:
        self.session = session
        self.eos = eos_token_ids(session.model, session.tokenizer)
        self.rows: list[Row] = []
        self.gens: list[torch.Generator | None] = []
        self.cache = None  # transformers DynamicCache, one batch row per live row
        self.mask = self.pos = self.next = None  # (B, S) attention mask, (B, 1) positions, (B,) tokens to feed
        self.routing: Routing | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def admit(self, rows: list[Row], routing: Routing | None) -> None:
        """Prefill `rows` (routing row i for row i) and add the ones still going to the batch."""
        from transformers import DynamicCache

        live = [i for i, r in enumerate(rows) if not _cancel(r)]
        if not live:
            return
        rows, routing = [rows[i] for i in live], _select(routing, live)
        device, model = self.session.device, self.session.model
        ids, mask = _left_pad([r.ids for r in rows], self.session.tokenizer.pad_token_id, device)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as HF generate does for left padding
        cache = DynamicCache(config=model.config)
        _set_routing(self.session, routing)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                    logits_to_keep=1)
        gens = [generator(r.sampling, device) for r in rows]
        new = _Part(rows, gens, cache, mask, pos[:, -1:], routing)
        self._merge(new.keep(self._advance_all(new.rows, new.gens, out.logits[:, -1, :])))

    @torch.no_grad()
    def step(self) -> None:
        """Feed every row its pending token and pick the next one; finished rows leave."""
        if not self.rows:
            return
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        self.pos = self.pos + 1
        _set_routing(self.session, self.routing)
        out = self.session.model(input_ids=self.next[:, None], attention_mask=self.mask, position_ids=self.pos,
                                 cache=self.cache, use_cache=True)
        part = _Part(self.rows, self.gens, self.cache, self.mask, self.pos, self.routing)
        self._take(part.keep(self._advance_all(self.rows, self.gens, out.logits[:, -1, :])))

    def close(self) -> None:
        """Forget the cache and leave the model unrouted (a static batch ends, the server stops)."""
        self._take(_Part([], [], None, None, None, None))
        _set_routing(self.session, None)

    def fail(self, error: BaseException) -> None:
        """A step raised: every row still in the batch fails with `error`, and the batch empties."""
        for row in self.rows:
            if row.on_error is not None:
                row.on_error(error)
        self.close()

    # ---- internals ------------------------------------------------------------------------------
    def _advance_all(self, rows: list[Row], gens: list, logits: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        nxt = pick_tokens(logits, [r.sampling for r in rows], [(r.ids, r.tokens) for r in rows], gens)
        tok = self.session.tokenizer
        return [j for j, r in enumerate(rows) if _advance(r, int(nxt[j]), self.eos, tok)], nxt

    def _take(self, part: _Part) -> None:
        self.rows, self.gens, self.cache, self.mask = part.rows, part.gens, part.cache, part.mask
        self.pos, self.routing, self.next = part.pos, part.routing, part.next

    def _merge(self, new: _Part) -> None:
        if not new.rows:
            return
        if not self.rows:
            self._take(new)
            return
        width = max(self.mask.shape[1], new.mask.shape[1])
        old = _Part(self.rows, self.gens, self.cache, self.mask, self.pos, self.routing, self.next)
        _pad_left(old, width)
        _pad_left(new, width)
        for mine, theirs in zip(old.cache.layers, new.cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self._take(_Part(old.rows + new.rows, old.gens + new.gens, old.cache, torch.cat([old.mask, new.mask]),
                         torch.cat([old.pos, new.pos]), _stack_routing(old.routing, new.routing),
                         torch.cat([old.next, new.next])))


@dataclass
class _Part:
    """Rows with their cache and per-row state; `keep` selects the ones that go on."""

    rows: list[Row]
    gens: list
    cache: object
    mask: torch.Tensor | None
    pos: torch.Tensor | None
    routing: Routing | None
    next: torch.Tensor | None = None

    def keep(self, picked: tuple[list[int], torch.Tensor]) -> _Part:
        keep, nxt = picked
        if not keep:
            return _Part([], [], None, None, None, None)
        if len(keep) < len(self.rows):
            sel = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(sel)
            self.mask, self.pos, nxt = self.mask[sel], self.pos[sel], nxt[sel]
            # A new object: JARe layers gather the slots of the rows that remain, once.
            self.routing = _select(self.routing, keep)
            self.rows, self.gens = [self.rows[j] for j in keep], [self.gens[j] for j in keep]
            _drop_shared_padding(self)
        self.next = nxt
        return self


def _pad_left(part: _Part, width: int) -> None:
    """Widen the cache and mask of `part` to `width` columns with masked-out padding on the left."""
    extra = width - part.mask.shape[1]
    if extra == 0:
        return
    part.mask = torch.cat([part.mask.new_zeros(len(part.rows), extra), part.mask], dim=1)
    for layer in part.cache.layers:
        if getattr(layer, "is_sliding", False):
            raise RuntimeError("continuous batching needs a full-attention KV cache (a sliding-window layer "
                               "cannot be padded); set serve.batching=static")
        pad = layer.keys.new_zeros(*layer.keys.shape[:2], extra, layer.keys.shape[-1])
        layer.keys = torch.cat([pad, layer.keys], dim=-2)
        layer.values = torch.cat([pad.new_zeros(*layer.values.shape[:2], extra, layer.values.shape[-1]),
                                  layer.values], dim=-2)


def _drop_shared_padding(part: _Part) -> None:
    """Cut the leading cache columns that are padding for every row (a long row left the batch)."""
    lead = int((part.mask.cumsum(-1) == 0).sum(-1).min())
    if lead == 0:
        return
    part.mask = part.mask[:, lead:]
    for layer in part.cache.layers:
        layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]


def _stack_routing(a: Routing | None, b: Routing | None) -> Routing | None:
    """Both batches' routing rows as one (B, k): short rows padded with their first slot at weight 0."""
    if a is None or b is None:
        if a is not b:
            raise RuntimeError("a routed and an unrouted batch cannot decode together")
        return None
    k = max(a.slot_ids.shape[1], b.slot_ids.shape[1])

    def widen(r: Routing) -> tuple[torch.Tensor, torch.Tensor]:
        extra = k - r.slot_ids.shape[1]
        return (torch.cat([r.slot_ids, r.slot_ids[:, :1].expand(-1, extra)], dim=1),
                torch.cat([r.weights, r.weights.new_zeros(r.weights.shape[0], extra)], dim=1))

    (ia, wa), (ib, wb) = widen(a), widen(b)
    task = a.task if a.task == b.task else None
    return Routing(torch.cat([ia, ib]), torch.cat([wa, wb]), task)


def _set_routing(session, routing: Routing | None) -> None:
    """The routing of the next forward pass (methods without JARe slots have no bank)."""
    bank = getattr(session, "bank", None)
    if bank is not None:
        bank.set_routing(routing)


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


def eos_token_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's generation config's EOS ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = set(ids) if isinstance(ids, list | tuple) else ({ids} if ids is not None else set())
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def generate_one(session, record: dict, max_new_tokens: int, task: str | None = None) -> tuple[str, list[dict]]:
    """Greedy answer to one {instruction, input} with its retrieved slots (or task `task`'s): what
    `slm generate` prints, and what the server answers for the same prompt."""
    ids = session.encode(record, truncate=True)
    routed = session.route([record], [task])
    row = Row(ids, Sampling(max_new_tokens))
    decode(session, [row], routed.routing)
    return row.text, routed.retrieval[0]
