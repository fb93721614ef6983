"""The contract between `prepare` and every later stage: hashes and the checked loader.

`prepare` records three input hashes in data/DONE:
  config     the task list and the data section: what the records are. Later stages require it
             to match, so training never runs on data cut for another experiment.
  sources    content hashes of the local source files: a changed file makes prepare rebuild.
  tokenizer  model name, prompt format and max_seq_len: only the manifest's token statistics
             depend on them, so changing them re-runs prepare but does not invalidate the data.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline.config import BUILTIN_CONFIGS, ExperimentConfig, TaskSpec
from pipeline.data.sources import source_files
from pipeline.errors import StageInputError
from pipeline.state.artifacts import read_done, require_done, sha256_file, sha256_json
from pipeline.state.layout import RunLayout

STAGE = "prepare"
SPLITS: tuple[str, ...] = ("train", "test", "validation")  # validation: only with data.validation_ratio > 0
# Data options that change no record while they keep these values: left out of the config hash
# then, so data prepared before they existed still matches.
NEUTRAL_DATA = {"validation_ratio": 0.0, "max_validation": None}


def task_spec_hash(task: TaskSpec) -> str:
    return sha256_json(task.model_dump(mode="json"))


def data_config_hash(cfg: ExperimentConfig) -> str:
    """What the prepared records depend on. Paths are hashed as written, not resolved, so the
    same experiment with another data_root still matches (the source content is in `sources`)."""
    return sha256_json({"tasks": [t.model_dump(mode="json") for t in cfg.tasks], "data": data_section(cfg)})


def data_section(cfg: ExperimentConfig) -> dict[str, Any]:
    """The data section as the records depend on it (NEUTRAL_DATA left out at their neutral values)."""
    data = cfg.data.model_dump(mode="json")
    return {k: v for k, v in data.items() if not (k in NEUTRAL_DATA and v == NEUTRAL_DATA[k])}


def sources_hash(cfg: ExperimentConfig) -> str:
    # Keys are relative to the source's parent folder, so moving the data keeps the hash.
    digests: dict[str, dict[str, str]] = {}
    for task in cfg.tasks:
        files = source_files(task, cfg)
        if files:
            root = cfg.resolve_source_path(task.source.path or "").parent
            digests[task.name] = {os.path.relpath(p, root): sha256_file(p) if p.is_file() else "missing"
                                  for p in files}
    return sha256_json(digests)


def tokenizer_hash(cfg: ExperimentConfig) -> str:
    m = cfg.model
    parts: dict[str, object] = {"name": m.name_or_path, "prompt_format": m.prompt_format, "max_seq_len": m.max_seq_len}
    # The separate caps change the truncation counts; left out when unset, so older hashes hold.
    parts.update({k: v for k, v in (("max_prompt_len", m.max_prompt_len), ("max_answer_len", m.max_answer_len))
                  if v is not None})
    return sha256_json(parts)


def prepare_inputs(cfg: ExperimentConfig) -> dict[str, str]:
    return {"config": data_config_hash(cfg), "sources": sources_hash(cfg), "tokenizer": tokenizer_hash(cfg)}


def prepare_command(cfg: ExperimentConfig) -> str:
    """The command that rebuilds this experiment's data, for error messages."""
    if cfg.config_dir == str(BUILTIN_CONFIGS):
        return f"slm prepare -c {cfg.name}.yaml" if cfg.name != "default" else "slm prepare"
    return f"slm prepare -c <the YAML of experiment {cfg.name!r} in {cfg.config_dir}> (same overrides)"


def read_manifest(layout: RunLayout) -> dict[str, Any]:
    return json.loads(layout.manifest.read_text())


def load_prepared(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    """Task name -> datasets.DatasetDict("train", "test"[, "validation"]), in task order, after checking that the
    data is DONE, its files are intact and it was prepared from this experiment's tasks."""
    import datasets

    rerun = prepare_command(cfg)
    marker = require_done(layout.data, STAGE, rerun=rerun)
    if marker.get("inputs", {}).get("config") != data_config_hash(cfg):
        raise StageInputError(f"prepared data in {layout.data} was built from another task/data config "
                              f"({_what_changed(cfg, layout)}; config sha256 "
                              f"{marker.get('inputs', {}).get('config', '?')[:12]} there, "
                              f"{data_config_hash(cfg)[:12]} here). Rerun `{rerun}`.")
    return {t.name: datasets.load_from_disk(str(layout.task_data(t.name))) for t in cfg.tasks}


def _what_changed(cfg: ExperimentConfig, layout: RunLayout) -> str:
    try:
        manifest = read_manifest(layout)
        recorded = {name: t.get("spec_sha256") for name, t in manifest["tasks"].items()}
    except (OSError, ValueError, KeyError):
        return "its manifest is unreadable"
    now = {t.name: task_spec_hash(t) for t in cfg.tasks}
    parts = []
    if added := [n for n in now if n not in recorded]:
        parts.append(f"tasks not prepared: {', '.join(added)}")
    if removed := [n for n in recorded if n not in now]:
        parts.append(f"tasks no longer in the config: {', '.join(removed)}")
    if changed := [n for n in now if n in recorded and recorded[n] != now[n]]:
        parts.append(f"tasks changed: {', '.join(changed)}")
    if {k: v for k, v in (manifest.get("data") or {}).items() if not (k in NEUTRAL_DATA and v == NEUTRAL_DATA[k])} \
            != data_section(cfg):
        parts.append("the data section changed")
    return "; ".join(parts) or "the task order changed"


def prepared_up_to_date(layout: RunLayout, inputs: dict[str, str], quiet: bool = False) -> bool:
    """DONE with the same input hashes, and every file it lists still intact."""
    marker = read_done(layout.data)
    if not marker or marker.get("inputs") != inputs or not layout.manifest.is_file():
        return False
    try:
        require_done(layout.data, STAGE, rerun="slm prepare --force")
    except StageInputError as e:
        if not quiet:
            print(f"prepare: rebuilding, {e}")
        return False
    return True
