"""Atomic writes, DONE markers with content hashes, and the checks a later stage makes on them.

A stage writes into a temporary sibling and renames it into place (`os.replace` is atomic on
POSIX), so a crash leaves either the old artifact or the new one, never half of one. A finished
stage then writes DONE: a JSON of the sha256 of every file it produced plus the hashes of the
inputs it consumed; a later stage calls `require_done` and refuses inputs that do not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import StageInputError

DONE = "DONE"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: Path, exclude: tuple[str, ...] = (DONE,)) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` (sorted, markers excluded)."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in exclude
    }


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it over `final`.

    Works for a file or a directory. On an exception the temporary is removed and `final` is
    left exactly as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = final.parent / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_done(folder: Path, stage: str, inputs: dict[str, str] | None = None,
               files: list[str] | None = None, **extra: Any) -> dict:
    """Mark `folder` finished: hashes of its files (or of `files` only) plus the input hashes it
    was built from."""
    outputs = sha256_tree(folder) if files is None else {f: sha256_file(folder / f) for f in files}
    marker = {"stage": stage, "outputs": outputs, "inputs": inputs or {}, **extra}
    atomic_write_json(folder / DONE, marker)
    return marker


def read_done(folder: Path) -> dict | None:
    path = folder / DONE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_done(folder: Path) -> bool:
    return read_done(folder) is not None


def marker_digest(folder: Path) -> str:
    """One hash standing for a finished stage's outputs: what a later stage records as input."""
    marker = read_done(folder)
    return sha256_json(marker["outputs"]) if marker else ""


def require_done(folder: Path, stage: str, rerun: str, verify: bool = True) -> dict:
    """The DONE marker of `folder`, after checking that its files still hash as recorded.

    `rerun` is the command that rebuilds this input; it goes into the error message.
    """
    marker = read_done(folder)
    if marker is None:
        raise StageInputError(f"{stage} has not finished: {folder / DONE} is missing. Run `{rerun}` first.")
    if verify:
        for rel, digest in marker["outputs"].items():
            path = folder / rel
            if not path.is_file():
                raise StageInputError(f"{stage} output {path} is missing (listed in {folder / DONE}). "
                                      f"Rerun `{rerun}`.")
            if sha256_file(path) != digest:
                raise StageInputError(f"{stage} output {path} changed after it was written (sha256 differs "
                                      f"from {folder / DONE}). Rerun `{rerun}`.")
    return marker
