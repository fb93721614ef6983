"""The method registry: the one list of continual-learning methods and where each one lives.

Adding a method = one module under pipeline/methods/ with a `Method` subclass (its `Options`, its
trainer and predictor, its memory load for `slm plan`, the option a learning-rate sweep turns),
plus one line here. Config validation (`methods_spec`: each method's options section), the CLI's
`--method` choices, `slm plan`, the benches, the README's method table and the report all read
this list. Importing this package is cheap (no torch); a method's module is imported when its
options or the method itself are first asked for.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.methods.base import Method
    from pipeline.spec import Spec

# name -> "module:Class", in the order reports list them: ours, its ceiling, then the baselines
# from the forgetting floor up to the joint-training upper bound.
REGISTRY: dict[str, str] = {
    "slm": "pipeline.methods.jare.slm:Slm",
    "oracle_task_id": "pipeline.methods.jare.oracle_task_id:OracleTaskId",
    "seq_ft": "pipeline.methods.seq_ft:SeqFt",
    "seq_lora": "pipeline.methods.lora.seq_lora:SeqLora",
    "replay": "pipeline.methods.lora.replay:Replay",
    "o_lora": "pipeline.methods.lora.o_lora:OLora",
    "n_lora": "pipeline.methods.lora.n_lora:NLora",
    "gainlora": "pipeline.methods.lora.gainlora:GainLora",
    "multitask": "pipeline.methods.lora.multitask:Multitask",
}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)


@functools.cache
def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHOD_NAMES)}")
    module, _, cls = REGISTRY[name].partition(":")
    method = getattr(importlib.import_module(module), cls)()
    if method.name != name:
        raise RuntimeError(f"pipeline.methods.REGISTRY maps {name!r} to a class named {method.name!r}")
    return method


@functools.cache
def registered() -> dict[str, Method]:
    """Every registered method by name, in registry order: what lists of all methods read (the
    README's methods table, the report's roles, `slm plan --method`)."""
    return {name: get_method(name) for name in METHOD_NAMES}


@functools.cache
def methods_spec() -> type[Spec]:
    """The `methods:` section of an experiment: one field per options section, typed by the Options
    its method declares (a method may read another's section: oracle_task_id reads slm's)."""
    from pydantic import create_model

    from pipeline.spec import Spec

    fields = {}
    for method in registered().values():
        fields.setdefault(method.section, (method.Options, method.Options()))
    return create_model("MethodsSpec", __base__=Spec, __doc__="Each method's own options.", **fields)
