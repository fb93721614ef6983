"""Inject JARe slots into an unchanged transformers model, and manage tasks across its layers.

`inject_jare` swaps each target nn.Linear for a JareLinear wrapping it (PEFT-style: the model
class stays the stock transformers one). The returned `JareBank` is the handle for everything
task-level: add / remove / freeze a task, the exact list of a task's parameters (what trains,
and what the "earlier tasks unchanged" test compares), routing, merge, and per-task safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pipeline.errors import CheckpointError, NoTargetModuleError
from pipeline.jare.layer import JareLinear, SlotInit
from pipeline.jare.routing import Routing, RoutingState
from pipeline.state.artifacts import atomic_path

ADAPTER_FORMAT = "slm-jare-v1"


@dataclass(frozen=True)
class JareShape:
    rank: int
    slots_per_task: int
    target_modules: tuple[str, ...]


def name_matches(name: str, targets: list[str]) -> bool:
    """The one rule that says which layers a module list names: the name itself, or its suffix
    after a dot (`o_proj`, `self_attn.q_proj`). Injection, seq_ft's selection and the plan use it."""
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of the linear layers whose name equals, or ends with '.' + , a target."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and name_matches(n, targets)]
    if not names:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise NoTargetModuleError(f"adapter.target_modules {targets} match no linear layer of "
                                  f"{type(model).__name__}; its linear layers end in: {suffixes}")
    return names


class JareBank:
    """All JARe layers of one model, addressed by task index."""

    def __init__(self, model: nn.Module, layers: dict[str, JareLinear], shape: JareShape,
                 state: RoutingState) -> None:
        self.model = model
        self.layers = layers
        self.shape = shape
        self.state = state
        self.task_names: list[str] = []

    # ---- tasks ------------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def add_task(self, name: str, seed: int = 0, init: SlotInit = "lora") -> int:
        """Allocate P fresh slots in every layer; returns the new task's index."""
        if name in self.task_names:
            raise ValueError(f"task {name!r} already has slots")
        gen = torch.Generator().manual_seed(seed)
        for layer in self.layers.values():
            layer.add_task(gen, init)
        self.task_names.append(name)
        return self.num_tasks - 1

    def copy_slots(self, t: int, sources: list[int]) -> None:
        """Task t's slots start as copies of the earlier global slots `sources` in every layer."""
        for layer in self.layers.values():
            layer.copy_slots(t, sources)

    def remove_task(self, name: str) -> None:
        t = self.task_names.index(name)
        for layer in self.layers.values():
            layer.remove_task(t)
        del self.task_names[t]

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in layer.task_parameters(t)]

    def train_only(self, t: int | None) -> list[nn.Parameter]:
        """Make task t's slots the only trainable parameters of the model; returns them."""
        self.model.requires_grad_(False)
        if t is None:
            return []
        params = self.task_parameters(t)
        for p in params:
            p.requires_grad_(True)
        return params

    def slot_range(self, t: int) -> range:
        p = self.shape.slots_per_task
        return range(t * p, (t + 1) * p)

    # ---- routing ----------------------------------------------------------------------------
    def set_routing(self, routing: Routing | None) -> None:
        self.state.routing = routing

    @contextmanager
    def routed(self, routing: Routing | None) -> Iterator[None]:
        previous = self.state.routing
        self.state.routing = routing
        try:
            yield
        finally:
            self.state.routing = previous

    @contextmanager
    def merged(self, slot_ids: torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
        """Re-parameterise one weighting into W for the duration of the block."""
        for layer in self.layers.values():
            layer.merge(slot_ids, weights)
        try:
            with self.routed(None):
                yield
        finally:
            self.unmerge()

    def merge_task(self, t: int) -> None:
        """Merge task t's slots at equal weights (one adapter of rank P*r) into every layer's W, and
        route nothing: what serving with retrieval off does for good. `unmerge` restores W."""
        one = Routing.single_task(t, self.shape.slots_per_task, 1)
        for layer in self.layers.values():
            layer.merge(one.slot_ids[0], one.weights[0])
        self.set_routing(None)

    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()

    # ---- persistence ------------------------------------------------------------------------
    def task_state_dict(self, t: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in self.layers.items():
            u, v = layer.task_parameters(t)
            out[f"{name}.U"] = u.detach().cpu().contiguous()
            out[f"{name}.V"] = v.detach().cpu().contiguous()
        return out

    def save_task(self, t: int, path: Path, extra_meta: dict | None = None,
                  state: dict[str, torch.Tensor] | None = None) -> None:
        """Write task t's slot values as safetensors, atomically. `state` overrides the tensors
        (ZeRO-3 callers pass the gathered full tensors)."""
        meta = {"format": ADAPTER_FORMAT, "task": self.task_names[t], "rank": str(self.shape.rank),
                "slots_per_task": str(self.shape.slots_per_task),
                "modules": json.dumps(sorted(self.layers)), **(extra_meta or {})}
        with atomic_path(path) as tmp:
            save_file(state if state is not None else self.task_state_dict(t), str(tmp), metadata=meta)

    def load_task(self, name: str, path: Path, expect_meta: dict | None = None) -> int:
        """Add task `name` and fill its slots from `path`, checking shapes, dtypes and metadata."""
        if not Path(path).is_file():
            raise CheckpointError(f"adapter file {path} is missing")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        self._check_meta(path, meta, expect_meta or {})
        t = self.add_task(name)
        for mod, layer in self.layers.items():
            for key, param in zip((f"{mod}.U", f"{mod}.V"), layer.task_parameters(t), strict=True):
                if key not in tensors:
                    self._rollback(name)
                    raise CheckpointError(f"{path}: tensor {key} is missing (file has {len(tensors)} tensors)")
                got = tensors.pop(key)
                if got.shape != param.shape:
                    self._rollback(name)
                    raise CheckpointError(f"{path}: {key} has shape {tuple(got.shape)}, the model expects "
                                          f"{tuple(param.shape)}")
                with torch.no_grad():
                    param.copy_(got.to(param.dtype))
        if tensors:
            self._rollback(name)
            raise CheckpointError(f"{path}: unexpected tensors {sorted(tensors)[:5]} (different target modules?)")
        return t

    def _rollback(self, name: str) -> None:
        self.remove_task(name)

    def _check_meta(self, path: Path, meta: dict, expect: dict) -> None:
        want = {"format": ADAPTER_FORMAT, "rank": str(self.shape.rank),
                "slots_per_task": str(self.shape.slots_per_task), **expect}
        for key, value in want.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{path}: {key} is {meta.get(key)!r}, this experiment expects {value!r}")


def inject_jare(model: nn.Module, target_modules: list[str], rank: int, slots_per_task: int,
                dtype: torch.dtype | None = None) -> JareBank:
    """Wrap every target linear of `model` in a JareLinear (no tasks yet). Checks run first."""
    names = find_targets(model, target_modules)
    already = [n for n, m in model.named_modules() if isinstance(m, JareLinear)]
    if already:
        raise ValueError(f"model already has JARe layers ({already[0]}, ...)")
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    state = RoutingState()
    layers: dict[str, JareLinear] = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = JareLinear(getattr(parent, child), rank, slots_per_task, state, dtype)
        setattr(parent, child, layer)
        layers[name] = layer
    return JareBank(model, layers, JareShape(rank, slots_per_task, tuple(target_modules)), state)
