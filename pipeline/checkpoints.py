"""DeepSpeed checkpoints of one task's training: save every N steps, keep the newest few, and
resume from the newest one that loads (a corrupt newest one is skipped with a warning).

Only trainable parameters are saved (`exclude_frozen_parameters`): the frozen base is rebuilt
from its source, so a 70B base is never copied into every checkpoint.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline import distributed

TAG_PREFIX = "step-"
COMPLETE = "COMPLETE"  # written after save_checkpoint returns: a tag without it is partial


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def tag(step: int) -> str:
    return f"{TAG_PREFIX}{step:06d}"


def step_of(tag_dir: Path) -> int:
    return int(tag_dir.name[len(TAG_PREFIX):])


def list_tags(state_dir: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    if not state_dir.is_dir():
        return []
    return sorted((p for p in state_dir.glob(f"{TAG_PREFIX}*") if p.is_dir()), key=step_of, reverse=True)


def save_checkpoint(engine, state_dir: Path, step: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(state_dir), tag=tag(step), client_state={"step": step},
                           exclude_frozen_parameters=True)
    distributed.barrier()
    if distributed.is_main():
        (state_dir / tag(step) / COMPLETE).write_text(str(step))


def prune_checkpoints(state_dir: Path, keep: int) -> None:
    if not distributed.is_main():
        return
    for old in list_tags(state_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def resume_latest(engine, state_dir: Path) -> int:
    """Load the newest complete checkpoint that loads; returns its step (0: start fresh)."""
    for tag_dir in list_tags(state_dir):
        if not (tag_dir / COMPLETE).is_file():
            _warn(f"checkpoint {tag_dir} is incomplete (no {COMPLETE} marker); trying an older one")
            continue
        try:
            path, client = engine.load_checkpoint(str(state_dir), tag=tag_dir.name, load_module_strict=False)
        except Exception as e:  # a truncated or corrupt file raises from torch.load / DeepSpeed
            _warn(f"checkpoint {tag_dir} could not be loaded ({type(e).__name__}: {e}); "
                  "resuming from an older one")
            continue
        if path is None:
            _warn(f"checkpoint {tag_dir} could not be loaded; resuming from an older one")
            continue
        return int(client["step"])
    return 0
