"""Load an experiment: the YAML file and its overrides, validated once into (config, method).

The generic sections are `pipeline.config`'s; each method's options (`methods.<name>`) are what
its module declares, found through the method registry (`pipeline.methods.methods_spec`), so the
schema of the experiment grows with the registry and `pipeline.config` knows no method. Every
problem, generic or a method's, is reported in one `ConfigError` naming the file and each dotted key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipeline.config import ExperimentConfig, error_lines, format_problems, moved_keys, read_raw
from pipeline.errors import ConfigError
from pipeline.methods import METHOD_NAMES, get_method, methods_spec

if TYPE_CHECKING:
    from pipeline.methods.base import Method


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, override and validate an experiment. No path means the embedded default."""
    source, raw = read_raw(path, overrides or [])
    return validate(raw, str(source))


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[ExperimentConfig,
                                                                                               Method]:
    """The experiment and its method, resolved once for the stages."""
    cfg = load_config(path, overrides)
    return cfg, get_method(cfg.method)


def validate(raw: dict[str, Any], source: str = "experiment") -> ExperimentConfig:
    """The generic sections, the method's name and every method's options, checked together."""
    problems, raw = moved_keys(raw)  # each method's options now live with it, under `methods:`
    methods = None
    try:
        methods = methods_spec().model_validate(raw.get("methods") or {})
    except ValidationError as e:
        problems += error_lines(e, methods_spec(), ("methods",))
    method = raw.get("method", ExperimentConfig.model_fields["method"].default)
    if method not in METHOD_NAMES:
        close = difflib.get_close_matches(str(method), METHOD_NAMES, n=1)
        mean = f"; did you mean {close[0]!r}?" if close else ";"
        problems.append(f"  method: unknown method {method!r}{mean} valid: {', '.join(METHOD_NAMES)}")
    cfg = None
    try:
        cfg = ExperimentConfig.model_validate({**raw, "methods": None})
    except ValidationError as e:
        problems += error_lines(e)
    if cfg is not None and methods is not None and cfg.method in METHOD_NAMES:
        cfg = cfg.model_copy(update={"methods": methods})
        problems += [f"  {line}" for line in get_method(cfg.method).config_problems(cfg)]
    if problems:
        raise ConfigError(format_problems(problems, source))
    return cfg
