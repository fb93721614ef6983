"""Load an experiment: the YAML file and its overrides, validated once and resolved into an
`Experiment` (config, method, layout, the selected runs) that every stage is handed.

The generic sections are `pipeline.config`'s; each method's options (`methods.<name>`) are what
its module declares, found through the method registry (`pipeline.methods.methods_spec`), so the
schema of the experiment grows with the registry and `pipeline.config` knows no method. Every
problem, generic or a method's, is reported in one `ConfigError` naming the file and each dotted key.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config import BUILTIN_CONFIGS, DEFAULT_CONFIG, ExperimentConfig, shipped_configs
from pipeline.errors import ConfigError
from pipeline.methods import METHOD_NAMES, get_method, methods_spec
from pipeline.state.layout import RunLayout
from pipeline.state.orders import order_runs, select_run

if TYPE_CHECKING:
    from pipeline.methods.base import Method


# Where the keys of earlier versions live now (`moved_keys` names them, each as one problem).
MOVED_JARE = {"target_modules": "adapter.target_modules", "rank": "adapter.rank", "top_k": "dtkr.top_k"}
MOVED_TRAIN = {"lr": "methods.<method>.lr (slm, oracle_task_id: methods.slm.lr)",
               "lora_lr": ("methods.<method>.lr of each LoRA method (seq_lora, replay, o_lora, n_lora, gainlora, "
                           "multitask)"),
               "lora_rank": "adapter.rank (every adapter method has the same rank)",
               "replay_ratio": "methods.replay.ratio", "ft_lr": "methods.seq_ft.lr",
               "ft_modules": "methods.seq_ft.modules",
               "o_lora_lambda1": "methods.o_lora.lambda1 (and methods.gainlora.lambda1)",
               "o_lora_lambda2": "methods.o_lora.lambda2 (and methods.gainlora.lambda2)",
               "n_lora_lambda": "methods.n_lora.sparsity"}


def moved_keys(raw: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Problems for the keys of earlier versions in `raw` (each named with where it lives now), and
    `raw` without them, so the rest is still validated and every problem reported at once."""
    lines, raw = [], copy.deepcopy(raw)
    jare = raw.pop("jare", None)
    if jare is not None:
        found = sorted(jare) if isinstance(jare, dict) else []
        lines += [f"  jare.{k}: moved to {MOVED_JARE.get(k, 'methods.slm.' + k)}" for k in found] or [
            "  jare: moved to adapter (target_modules, rank) and methods.slm (slots_per_task, init, transfer, lr)"]
    train = raw.get("train")
    if isinstance(train, dict):
        for key in [k for k in train if k in MOVED_TRAIN]:
            lines.append(f"  train.{key}: moved to {MOVED_TRAIN[key]}")
            del train[key]
    return lines, raw


# ---- overrides and problems ---------------------------------------------------------------------


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML, so `3`, `true`, `[a, b]` work).

    A numeric path part indexes a list: `tasks.0.max_train=50`.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=10)",
                              hint="give config overrides as dotted KEY=VALUE after the command's options; "
                                   "`slm <command> --help` shows the options")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote it, "
                              f"e.g. {key}='\"...\"'") from None
        node: Any = out
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[:i]) or 'root'} is a list; "
                                      f"use an index below {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is not a section")
    return out


def _section_model(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    """The Spec class of the section that holds the field at `loc` (None: not a known section)."""
    model: Any = root or ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _spec_class(field.annotation)
        if model is None:
            return None
    return model


def _spec_class(annotation: Any) -> type[BaseModel] | None:
    """The Spec class inside `annotation` (`ModelSpec`, `list[TaskSpec]`, `list[OrderSpec] | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _spec_class(arg)
        if found is not None:
            return found
    return None


def _valid_keys(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> str:
    """A "did you mean" for the unknown key at `loc`, then the keys valid beside it: scalars with
    their default, sections by name only (their defaults are a wall of reprs; docs/config.md has them)."""
    model = _section_model(loc, root)
    if model is None:
        return ""
    names = [n for n in model.model_fields if n != "config_dir"]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    items = []
    for name in names:
        f = model.model_fields[name]
        if f.is_required():
            items.append(f"{name} (required)")
        elif _spec_class(f.annotation) is not None:
            items.append(name)
        else:
            items.append(f"{name} (default {f.get_default(call_default_factory=True)!r})")
    mean = f"; did you mean {close[0]!r}?" if close else ";"
    return f"{mean} valid keys here: " + ", ".join(items)


def error_lines(err: ValidationError, root: type[BaseModel] | None = None, prefix: tuple[str, ...] = ()) -> list[str]:
    """One line per problem, named by its dotted key (`prefix` first: `methods` for a method's options)."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in (*prefix, *e["loc"])) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key{_valid_keys(e['loc'], root)}")
        elif e["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        else:
            got = "" if e["type"].startswith("value_error") else f" (got {e.get('input')!r})"
            lines.append(f"  {where}: {e['msg']}{got}")
    return lines


def format_problems(lines: list[str], source: str) -> str:
    return f"{source}: {len(lines)} problem(s) in the experiment config:\n" + "\n".join(lines)


BASE_KEY = "base"  # `base: NAME.yaml`: the experiment this one inherits from


def read_raw(path: str | Path | None, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """The experiment file (no path: the embedded default; a bare name: a shipped config) as a
    mapping, its `base:` chain merged in, with the overrides applied and `config_dir` set."""
    path = experiment_path(path)
    raw = apply_overrides(read_inherited(path), overrides)
    raw["config_dir"] = str(path.resolve().parent)
    return path, raw


def experiment_path(path: str | Path | None) -> Path:
    """The file `-c` names: a path (from the current folder), else a shipped config's file name."""
    path = Path(path) if path else DEFAULT_CONFIG
    if path.is_file():
        return path
    if (BUILTIN_CONFIGS / path.name).is_file() and len(path.parts) == 1:
        return BUILTIN_CONFIGS / path.name  # a shipped config named by its file name
    raise ConfigError(f"{path}: no such experiment file (shipped configs: {', '.join(shipped_configs())})",
                      hint="check the path after -c (relative to the current folder), or name a shipped config by "
                           "its file name, e.g. -c cl_benchmark.yaml; `slm configs` lists them, `slm configs copy "
                           "NAME DEST` writes one to edit")


def read_inherited(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of `path` over the one its `base:` names, recursively: mappings merge key by key
    (the child's value wins), anything else, lists included (`tasks`, `orders`), is replaced."""
    raw = read_yaml_mapping(path)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    here = (*seen, path.resolve())
    base_path = base_file(base, path)
    if base_path.resolve() in here:
        chain = " -> ".join(str(p) for p in (*here, base_path.resolve()))
        raise ConfigError(f"{path}: `base: {base}` makes a cycle ({chain})",
                          hint="an experiment cannot inherit from itself; point `base:` at a file outside the chain")
    return merge_mappings(read_inherited(base_path, here), raw)


def base_file(base: Any, path: Path) -> Path:
    """The file `base:` names in the experiment `path`: relative to that file's folder, or, for a
    bare file name found nowhere there, a shipped config."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base must be the file name of an experiment YAML, got {base!r}",
                          hint="write e.g. `base: llama2_7b.yaml` (a shipped config) or `base: ../common.yaml`")
    found = (path.resolve().parent / Path(base).expanduser()).resolve()
    if found.is_file():
        return found
    if len(Path(base).parts) == 1 and (BUILTIN_CONFIGS / base).is_file():
        return BUILTIN_CONFIGS / base
    raise ConfigError(f"{path}: base {base!r} is neither a file beside it ({found}) nor a shipped config "
                      f"({', '.join(shipped_configs())})",
                      hint="name a shipped config by its file name (`slm configs` lists them), or give a path "
                           "relative to this YAML's folder")


def merge_mappings(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`: nested mappings merge, every other value of `child` replaces `base`'s."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """One experiment file as a mapping; a ConfigError naming the file for bad YAML or encoding."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}", hint="fix the YAML syntax at the line and column "
                                                                "named above") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})",
                          hint="save the file as UTF-8, then run the command again") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}",
                          hint="an experiment YAML is `key: value` lines (name:, tasks:, train:, ...); see "
                               "pipeline/configs/default.yaml")
    return raw


# ---- loading ----------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, override and validate an experiment. No path means the embedded default."""
    source, raw = read_raw(path, overrides or [])
    return validate(raw, str(source))


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None,
                    order: str | None = None) -> Experiment:
    """The experiment resolved once: its config, method, layout and the runs `order` selects
    (None: every order x seed run). What `slm` hands to every stage."""
    experiment = Experiment.of(load_config(path, overrides), order)
    experiment.runs()  # an unknown --order is a ConfigError now, before any stage starts
    return experiment


@dataclass(frozen=True)
class Experiment:
    """One resolved experiment: the validated config, the method it names (looked up once, here),
    every path it writes, and which of its order x seed runs a command works on.

    An experiment without `orders:`/`seeds:` is its own single run. With them, `runs()` gives one
    Experiment per selected run (tasks reordered, output_dir <output_dir>/<run>), each a plain
    single-order experiment every stage runs unchanged (pipeline.state.orders).
    """

    cfg: ExperimentConfig
    method: Method
    layout: RunLayout
    run_name: str = ""  # the run's name inside its experiment ("" for an experiment of one run)
    order: str | None = None  # the run `--order` selects; None: all of them

    @classmethod
    def of(cls, cfg: ExperimentConfig, order: str | None = None, run_name: str = "") -> Experiment:
        return cls(cfg, get_method(cfg.method), RunLayout.of(cfg), run_name, order)

    def runs(self) -> list[Experiment]:
        """Every order x seed run, or only the one `order` names: what prepare, run, status, plan,
        report and submit work through."""
        if self.order is None:
            return [self._run(name, cfg) for name, cfg in order_runs(self.cfg)]
        return [self._run(self.order, select_run(self.cfg, self.order))]

    def single(self) -> Experiment:
        """The one run a per-run stage (train, index, eval, generate, serve, export) works on: the
        run `order` names, or the experiment itself when it has one run (else a ConfigError)."""
        cfg = select_run(self.cfg, self.order)
        return self._run(self.order or "", cfg)

    def _run(self, name: str, cfg: ExperimentConfig) -> Experiment:
        return self if cfg is self.cfg else Experiment(cfg, self.method, RunLayout.of(cfg), name, None)

    @property
    def has_runs(self) -> bool:
        """The experiment lists several orders or seeds (each run into its own folder)."""
        return len(order_runs(self.cfg)) > 1

    def with_config(self, cfg: ExperimentConfig) -> Experiment:
        """The same run with another config of the same method (a check of a variant: `slm plan`)."""
        return Experiment.of(cfg, self.order, self.run_name)


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
