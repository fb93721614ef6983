"""DeepSpeed checkpoints of one task's training: save every N steps, keep the newest few, and
resume from the newest one that verifies and loads (others are skipped with a warning).

Only trainable parameters are saved (`exclude_frozen_parameters`): the frozen base is rebuilt
from its source, so a 70B base is never copied into every checkpoint.

DeepSpeed reads `*.pt` files with torch.load(weights_only=False), i.e. it unpickles them, and
unpickling runs code. So a checkpoint is loaded only if (1) its COMPLETE marker lists the sha256
of every file in it, written by us right after the save, and every file still matches; (2) the
folders and files are owned by the current user and writable by nobody else (save makes them
so), so no other account can swap a file and its marker. A checkpoint that fails either check is
never opened: resume warns and falls back to an older one, or starts the task afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

from pipeline import distributed
from pipeline.state.artifacts import as_os_error, sha256_file

TAG_PREFIX = "step-"
COMPLETE = "COMPLETE"  # written after save_checkpoint returns: a tag without it is partial
MARKER_FORMAT = 1  # COMPLETE holds {"format", "step", "sha256": {file: digest}}
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


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
    """Save checkpoint `step` and mark it COMPLETE. A write that fails (a full disk, a quota) is an
    OSError naming the checkpoint, and the partial checkpoint is removed: it would never be loaded
    (no COMPLETE), and the space it holds is what the next save needs. The older ones stay."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tag_dir = state_dir / tag(step)
    try:
        engine.save_checkpoint(str(state_dir), tag=tag(step), client_state={"step": step},
                               exclude_frozen_parameters=True)
        distributed.barrier()  # every rank's files are written before rank 0 hashes them
        if distributed.is_main():
            write_complete(tag_dir, step)
    except Exception as e:
        failed = as_os_error(e, tag_dir)  # torch.save reports a full disk as a RuntimeError
        if failed is None:
            raise
        if distributed.is_main():
            shutil.rmtree(tag_dir, ignore_errors=True)
        if failed is e:
            raise
        raise failed from e


def write_complete(tag_dir: Path, step: int) -> None:
    """Make the checkpoint private to its owner, then record the sha256 of each of its files."""
    make_private(tag_dir.parent)
    make_private(tag_dir)
    digests = {str(p.relative_to(tag_dir)): sha256_file(p) for p in _files(tag_dir)}
    marker = {"format": MARKER_FORMAT, "step": step, "sha256": digests}
    tmp = tag_dir / f".{COMPLETE}.tmp"
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.chmod(tmp, PRIVATE_FILE)
    os.replace(tmp, tag_dir / COMPLETE)  # present means whole


def make_private(folder: Path) -> None:
    """chmod the folder 0700 and the files directly and below it 0600 (a umask of 002 would leave
    them group-writable)."""
    os.chmod(folder, PRIVATE_DIR)
    for p in folder.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, PRIVATE_DIR if p.is_dir() else PRIVATE_FILE)


def _files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != COMPLETE and not p.name.startswith("."))


def verify_checkpoint(tag_dir: Path) -> str | None:
    """Why the checkpoint in `tag_dir` must not be unpickled, or None when it is safe to load."""
    marker_path = tag_dir / COMPLETE
    if not marker_path.is_file():
        return f"it is incomplete (no {COMPLETE} marker)"
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        marker = None
    if not isinstance(marker, dict) or not isinstance(marker.get("sha256"), dict):
        return (f"{marker_path} records no file hashes (written by an older version, or damaged), so its "
                f"files cannot be verified")
    if problem := _unsafe_owner_or_mode([tag_dir.parent, tag_dir, *_files(tag_dir)]):
        return problem
    recorded: dict[str, str] = marker["sha256"]
    present = {str(p.relative_to(tag_dir)) for p in _files(tag_dir)}
    if extra := sorted(present - set(recorded)):
        return f"it holds files that {marker_path} does not list: {', '.join(extra)}"
    for rel, digest in recorded.items():
        path = tag_dir / rel
        if not path.is_file():
            return f"{path} is missing (listed in {marker_path})"
        if sha256_file(path) != digest:
            return f"{path} does not match the sha256 in {marker_path} (corrupt or modified)"
    return None


def _unsafe_owner_or_mode(paths: list[Path]) -> str | None:
    uid = os.getuid()
    for p in paths:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            return f"{p} is a symbolic link"
        if st.st_uid != uid:
            return f"{p} belongs to uid {st.st_uid}, not to you (uid {uid})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (f"{p} is writable by other users (mode {stat.filemode(st.st_mode)}); if you trust its "
                    f"content, `chmod -R go-w {paths[0]}` and run again")
    return None


def prune_checkpoints(state_dir: Path, keep: int) -> None:
    if not distributed.is_main():
        return
    for old in list_tags(state_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def resume_latest(engine, state_dir: Path) -> int:
    """Load the newest checkpoint that verifies and loads; returns its step (0: start fresh)."""
    tags = list_tags(state_dir)
    for tag_dir in tags:
        problem = verify_checkpoint(tag_dir)
        if problem:
            _warn(f"checkpoint {tag_dir} could not be loaded: {problem}; not unpickling it, trying an older one")
            continue
        try:
            path, client = engine.load_checkpoint(str(state_dir), tag=tag_dir.name, load_module_strict=False)
        except Exception as e:  # a file DeepSpeed cannot read raises from torch.load / DeepSpeed
            _warn(f"checkpoint {tag_dir} could not be loaded ({type(e).__name__}: {e}); "
                  "resuming from an older one")
            continue
        if path is None:
            _warn(f"checkpoint {tag_dir} could not be loaded; resuming from an older one")
            continue
        return int(client["step"])
    if tags:
        _warn(f"no checkpoint in {state_dir} could be used; training this task from step 0")
    return 0
