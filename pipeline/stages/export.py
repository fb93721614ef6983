"""`slm export`: finished tasks as PEFT LoRA folders (or whole models) that load outside this project.

For each chosen task t (default: every DONE task) the method says what it answers with after t
(`Method.export`): JARe methods, task t's slots at equal weights as one LoRA of rank P*r; LoRA
baselines, their LoRA (o_lora / n_lora: the sum up to t); seq_ft, its saved model. Written to
`<output_dir>/<method>/export/<i>-<task>/` (adapter_config.json, adapter_model.safetensors,
slm_export.json), and with --merged also `<i>-<task>-merged/`: the base model with the adapter
merged in, a plain transformers folder with the tokenizer. See docs/export.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.peft_export import write_merged_model, write_model_copy, write_peft_adapter
from pipeline.runtime.models import resolve_model_path
from pipeline.state import validity
from pipeline.state.layout import RunLayout
from pipeline.state.validity import done_tasks

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    task: list[str] | None = None
    merged: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", action="append", metavar="NAME|I",
                   help="a task to export, by name or 0-based index (repeatable; default: every DONE task)")
    p.add_argument("--merged", action="store_true",
                   help="also write the base model with the adapter merged in (save_pretrained folder)")


def main(experiment: Experiment, args: Args) -> int:
    exp = experiment.single()
    run(exp, chosen_tasks(exp, args.task), merged=args.merged)
    return 0


def export_dir(layout: RunLayout, t: int, name: str, merged: bool = False) -> Path:
    return layout.root / "export" / f"{t}-{name}{'-merged' if merged else ''}"


def chosen_tasks(exp: Experiment, wanted: list[str] | None) -> list[int]:
    """Task indices from names or 0-based indices (default: every DONE task), each DONE."""
    cfg = exp.cfg
    n = done_tasks(exp)
    if n == 0:
        raise StageInputError(f"no task is DONE under {exp.layout.root / 'tasks'}: train first (`slm run`)")
    if not wanted:
        return [t for t in range(n) if not exp.layout.forgotten(t, cfg.tasks[t].name)]
    names = [t.name for t in cfg.tasks]
    out = []
    for item in wanted:
        t = int(item) if item.isdigit() else names.index(item) if item in names else None
        if t is None or t >= len(names):
            raise StageInputError(f"--task {item}: no such task; the experiment has {', '.join(names)} "
                                  f"(or indices 0..{len(names) - 1})")
        if t >= n:
            raise StageInputError(f"--task {item}: task {t} ({names[t]}) has not finished; {n} task(s) are DONE",
                                  hint=f"run `slm train --task {t}` (or `slm run`) first")
        if exp.layout.forgotten(t, names[t]):
            raise StageInputError(f"--task {item}: task {t} ({names[t]}) was removed by `slm forget`; there is nothing "
                                  "of it to export")
        out.append(t)
    return out


def run(exp: Experiment, tasks: list[int], merged: bool = False) -> list[Path]:
    """Export each task in `tasks`; returns the folders written."""
    cfg, layout, method = exp.cfg, exp.layout, exp.method
    validity.require_tasks(exp, max(tasks) + 1)  # DONE, intact, built from the current inputs
    written = []
    for t in tasks:
        name = cfg.tasks[t].name
        exported = method.export(exp, t)
        folder = export_dir(layout, t, name)
        info = {"experiment": cfg.name, "method": cfg.method, "task": name, "index": t,
                "base_model": cfg.model.name_or_path, "holds": exported.describes, **exported.info}
        if exported.lora is not None:
            # the modules the LoRA itself holds (a peer's official preset adapts q/v, not adapter.target_modules)
            targets = sorted({module.rsplit(".", 1)[-1] for module in exported.lora})
            write_peft_adapter(folder, exported.lora, targets, resolve_model_path(cfg.model.name_or_path), info)
            print(f"export: task {t} ({name}) -> {folder}  (PEFT LoRA, rank {exported.rank}: {exported.describes})")
        else:
            write_model_copy(folder, exported.model_dir, _tokenizer(cfg), info)
            print(f"export: task {t} ({name}) -> {folder}  ({exported.describes})")
        written.append(folder)
        if merged and exported.lora is not None:
            written.append(_merge(cfg, layout, t, folder, info))
        elif merged:
            print("export: --merged: this method's export already is a whole model")
    return written


def _merge(cfg: ExperimentConfig, layout: RunLayout, t: int, adapter_dir: Path, info: dict) -> Path:
    from pipeline.runtime.models import base_model

    folder = export_dir(layout, t, cfg.tasks[t].name, merged=True)
    write_merged_model(folder, base_model(cfg.model), adapter_dir, _tokenizer(cfg), info)
    print(f"export: task {t} ({cfg.tasks[t].name}) merged -> {folder}")
    return folder


def _tokenizer(cfg: ExperimentConfig):
    from pipeline.runtime.models import load_tokenizer

    return load_tokenizer(cfg.model.name_or_path)
