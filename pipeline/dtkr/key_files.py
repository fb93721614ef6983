"""A task's learned DTKR keys on disk: one safetensors tensor (P, groups, D/groups) with the encoder
and group count it was learned with, checked on every load."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.errors import CheckpointError
from pipeline.state.artifacts import atomic_path

KEYS_TENSOR = "keys"
KEYS_FORMAT = "slm-keys-v1"


def save_keys(path: Path, keys: torch.Tensor, encoder: str, groups: int) -> None:
    with atomic_path(path) as tmp:
        save_file({KEYS_TENSOR: keys.contiguous().cpu()}, str(tmp),
                  metadata={"format": KEYS_FORMAT, "encoder": encoder, "groups": str(groups)})


def load_keys(path: Path, encoder: str, groups: int) -> torch.Tensor:
    if not Path(path).is_file():
        raise CheckpointError(f"keys file {path} is missing")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = f.get_tensor(KEYS_TENSOR)
    if meta.get("encoder") != encoder or meta.get("groups") != str(groups):
        raise CheckpointError(f"{path}: keys made with encoder {meta.get('encoder')!r} / groups "
                              f"{meta.get('groups')}, this experiment uses {encoder!r} / {groups}")
    return keys
