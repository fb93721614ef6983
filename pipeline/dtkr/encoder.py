"""The frozen DTKR sentence encoder: transformer + attention-masked mean pooling.

transformers directly rather than sentence-transformers: mean pooling is four lines, and the
grouped, per-group normalisation DTKR needs happens afterwards anyway (keys.group_normalize),
so sentence-transformers' own Normalize module would be wrong here.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from pipeline.runtime.models import resolve_encoder_path


class SentenceEncoder:
    def __init__(self, name: str, device: torch.device | str = "cpu", max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        path = resolve_encoder_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """(N, dim) float32 mean-pooled embeddings, on CPU, in the order of `texts`.

        Texts are batched by token length (longest first), so a batch pads to its own longest
        text instead of the longest of a random mix: on real task data (a few long passages
        among short inputs) this halves the encoder's work. Masked mean pooling makes the
        result independent of the batching up to float rounding.
        """
        if not texts:
            return torch.empty(0, self.dim)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        out = torch.empty(len(texts), self.dim)
        steps = range(0, len(texts), batch_size)
        for i in tqdm(steps, desc="encode queries", disable=not progress, leave=False):
            rows = order[i:i + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[r] for r in rows]}, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (b, L, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            out[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)).float().cpu()
        return out
