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

A checkpoint belongs to the world that wrote it: ZeRO saves one optimizer shard per data-parallel
rank, and the data order (each optimizer step's global batch) follows micro_batch x grad_accum x
ranks. DeepSpeed loads the module and the LR scheduler before it fails on shards of another
world, which would leave a half-restored engine (the scheduler at step N, training from step 0).
So COMPLETE records the world (`World`), and `require_same_world` refuses a resume on another
GPU count before any model is loaded. Rank 0 alone verifies the files and decides which
checkpoint every rank loads (`resume_latest`), so ranks never resume at different steps.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline import distributed
from pipeline.errors import StageInputError
from pipeline.state.artifacts import as_os_error, sha256_file

TAG_PREFIX = "step-"
COMPLETE = "COMPLETE"  # written after save_checkpoint returns: a tag without it is partial
MARKER_FORMAT = 2  # COMPLETE holds {"format", "step", "world_size", "global_batch", "sha256": {file: digest}}
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


@dataclass(frozen=True)
class World:
    """What a checkpoint's shards and data order depend on: the data-parallel ranks, and the samples
    of one optimizer step (micro_batch_size x grad_accum x ranks)."""

    size: int
    global_batch: int

    def describe(self) -> str:
        return f"{self.size} rank(s), global batch {self.global_batch}"


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


def save_checkpoint(engine, state_dir: Path, step: int, world: World) -> None:
    """Save checkpoint `step` of `world` and mark it COMPLETE. A write that fails (a full disk, a quota) is an
    OSError naming the checkpoint, and the partial checkpoint is removed: it would never be loaded
    (no COMPLETE), and the space it holds is what the next save needs. The older ones stay."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tag_dir = state_dir / tag(step)
    try:
        engine.save_checkpoint(str(state_dir), tag=tag(step), client_state={"step": step},
                               exclude_frozen_parameters=True)
        distributed.barrier()  # every rank's files are written before rank 0 hashes them
        if distributed.is_main():
            write_complete(tag_dir, step, world)
    except Exception as e:
        failed = as_os_error(e, tag_dir)  # torch.save reports a full disk as a RuntimeError
        if failed is None:
            raise
        if distributed.is_main():
            shutil.rmtree(tag_dir, ignore_errors=True)
        if failed is e:
            raise
        raise failed from e


def write_complete(tag_dir: Path, step: int, world: World) -> None:
    """Make the checkpoint private to its owner, then record its world and the sha256 of each of its files."""
    make_private(tag_dir.parent)
    make_private(tag_dir)
    digests = {str(p.relative_to(tag_dir)): sha256_file(p) for p in _files(tag_dir)}
    marker = {"format": MARKER_FORMAT, "step": step, "world_size": world.size, "global_batch": world.global_batch,
              "sha256": digests}
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


def recorded_world(tag_dir: Path) -> World | None:
    """The world a COMPLETE checkpoint records; None without a readable marker or a world in it."""
    try:
        marker = json.loads((tag_dir / COMPLETE).read_text(encoding="utf-8"))
        return World(int(marker["world_size"]), int(marker["global_batch"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def require_same_world(state_dir: Path, world: World, rerun: str) -> None:
    """Refuse to resume checkpoints of another world, before anything is loaded (see the module doc).
    A complete checkpoint that records no world (written before worlds were recorded) is refused
    the same way: it cannot be shown to match. `rerun`: the command that trains from step 0."""
    for tag_dir in list_tags(state_dir):
        if not (tag_dir / COMPLETE).is_file():
            continue  # partial: resume skips it anyway
        theirs = recorded_world(tag_dir)
        if theirs == world:
            continue
        what = f"was written by {theirs.describe()}" if theirs else "records no world size (an older slm wrote it)"
        ranks = theirs.size if theirs else "its"
        raise StageInputError(
            f"checkpoint {tag_dir} {what}; this run has {world.describe()}. DeepSpeed keeps one optimizer shard per "
            "rank and would restore the model and the LR schedule before failing on the shards, and the data "
            "order follows the global batch, so it is not resumed on another GPU count",
            hint=f"run on the GPU count that wrote it (slurm.train.nodes x gpus_per_node = {ranks} ranks, the same "
                 f"train.micro_batch_size and grad_accum), or `{rerun}` to train the task from step 0")


def _verified_tags(state_dir: Path) -> list[str]:
    """The checkpoints safe to unpickle, newest first; each one that is not is warned about."""
    safe = []
    for tag_dir in list_tags(state_dir):
        problem = verify_checkpoint(tag_dir)
        if problem:
            _warn(f"checkpoint {tag_dir} could not be loaded: {problem}; not unpickling it, trying an older one")
            continue
        safe.append(tag_dir.name)
    return safe


def _load(engine, state_dir: Path, name: str) -> str | None:
    """Load checkpoint `name` on this rank; why not (None: loaded)."""
    try:
        path, _ = engine.load_checkpoint(str(state_dir), tag=name, load_module_strict=False)
    except Exception as e:  # a file DeepSpeed cannot read raises from torch.load / DeepSpeed
        return f"{type(e).__name__}: {e}"
    return None if path is not None else "DeepSpeed found nothing to load"


def resume_latest(engine, state_dir: Path) -> int:
    """Load the newest checkpoint that verifies and that every rank loads; its step (0: start fresh).

    Rank 0 verifies the (shared) files and hands every rank the same list of safe checkpoints; a
    checkpoint counts only when all ranks loaded it, else all go on to the next older one, whose
    whole load overwrites what the failed one restored. When loads were tried and none succeeded,
    the engine may be half restored (module and LR scheduler), so this raises rather than train
    from step 0 with it.
    """
    names = distributed.from_main(lambda: _verified_tags(state_dir))
    failed = []
    for name in names:
        problem = _load(engine, state_dir, name)
        if not distributed.any_rank(problem is not None):
            return step_of(state_dir / name)
        failed.append(f"{state_dir / name} ({problem or 'it failed on another rank'})")
        distributed.log(f"warning: checkpoint {failed[-1]} could not be loaded on every rank; trying an older one")
    if failed:
        raise StageInputError(f"no checkpoint in {state_dir} loaded on every rank: {'; '.join(failed)}. A failed "
                              "load may have restored part of the engine, so training does not start over in it",
                              hint="rerun with --restart to train the task from step 0 (its checkpoints are discarded)")
    if list_tags(state_dir):
        _warn(f"no checkpoint in {state_dir} could be used; training this task from step 0")
    return 0
