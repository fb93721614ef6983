"""The method registry: the one list of continual-learning methods and where each one lives.

Adding a method = one module under pipeline/methods/ with a `Method` subclass, plus one line
here. Config validation, the CLI's `--method` choices, the README's method table and the report
all read this list. Importing this package is cheap (no torch): a method's module is imported
only when `get_method` is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.methods.base import Method

# name -> "module:Class", in the order reports list them: ours, its ceiling, then the baselines
# from the forgetting floor up to the joint-training upper bound.
REGISTRY: dict[str, str] = {
    "slm": "pipeline.methods.slm:Slm",
    "oracle_task_id": "pipeline.methods.oracle_task_id:OracleTaskId",
    "seq_ft": "pipeline.methods.seq_ft:SeqFt",
    "seq_lora": "pipeline.methods.seq_lora:SeqLora",
    "replay": "pipeline.methods.replay:Replay",
    "o_lora": "pipeline.methods.o_lora:OLora",
    "n_lora": "pipeline.methods.n_lora:NLora",
    "multitask": "pipeline.methods.multitask:Multitask",
}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHOD_NAMES)}")
    module, _, cls = REGISTRY[name].partition(":")
    method = getattr(importlib.import_module(module), cls)()
    if method.name != name:
        raise RuntimeError(f"pipeline.methods.REGISTRY maps {name!r} to a class named {method.name!r}")
    return method
