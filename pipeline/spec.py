"""The base of every typed section of an experiment: the generic ones (pipeline.config) and each
method's own options (pipeline.methods.*.Options), so both validate and document alike."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Frozen, strict about unknown keys; a field's docstring is its help (docs/config.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
