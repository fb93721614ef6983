"""Atomic writes, DONE markers with content hashes, and the checks a later stage makes on them.

A stage writes into a temporary sibling and renames it into place (`os.replace` is atomic on
POSIX; a folder replacing a folder is swapped with renameat2 RENAME_EXCHANGE where the kernel
has it), after an fsync of everything written, so a crash or power loss leaves either the old
artifact or the new one, never half of one. Temporaries that a killed writer left behind are
removed by the next writer of the same artifact; a live writer's never are. A finished
stage then writes DONE: a JSON of the sha256 of every file it produced plus the hashes of the
inputs it consumed; a later stage calls `require_done` and refuses inputs that do not match.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import glob
import hashlib
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError, SlmError, StageInputError

DONE = "DONE"
# The code format of every DONE marker and eval row: bump it when the meaning or layout of a
# stage's outputs changes, so results of an older (or newer) slm are refused with "rerun <stage>"
# instead of being read wrongly. Markers written before the field existed are format 1.
DONE_FORMAT = 1


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


TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"
OWNER = ".owner"  # inside a temporary folder: locked by the live writer that made it
# A leftover without a lockable OWNER file (killed within microseconds of its creation, or
# written by an older version, or on a file system without locks) is removed after this long.
STALE_AGE_S = 600.0
RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100  # linux/fcntl.h: paths relative to the current directory


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success put it in place of `final`.

    Works for a file or a directory. Everything written is fsynced before the rename and the
    parent folder after it, so after a crash or power loss `final` is the old artifact or the
    whole new one. On an exception the temporary is removed and `final` is left exactly as it
    was. Leftovers of writers of `final` that were killed are removed first; a live writer's
    temporary (its OWNER file is locked) is never touched. The temporary folder's name is unique
    (mkdtemp), so two writers of one artifact never share a temporary name; the last to finish wins.
    """
    final = Path(final)
    created = [d for d in (final.parent, *final.parent.parents) if not d.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))
    except OSError:
        for folder in created:  # the folders made for it, innermost first, if still empty: nothing is left
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    owner = _lock_owner(tmp)
    target = tmp / final.name
    try:
        yield target
        fsync_tree(target)
        _install(target, final, tmp)
        fsync_dir(final.parent)
    except Exception as e:
        full = as_os_error(e, final)  # a failed write() names no file; library writers raise their own types
        if full is None or full is e:
            raise
        raise full from e
    finally:
        if owner is not None:
            os.close(owner)  # before the rmtree: on NFS an open deleted file would block it
        shutil.rmtree(tmp, ignore_errors=True)


# How writers other than Python's file objects report a failed write. torch.save's C++ zip writer
# names no errno ("[enforce fail at inline_container.cc] unexpected pos ...", "file write failed",
# "basic_ios::clear: iostream error", depending on where the space ran out);
# safetensors says "(os error 28)"; FAISS and Arrow quote strerror().
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)
_SHORT_WRITE = ("unexpected pos", "file write failed", "failed writing", "iostream error")


def as_os_error(e: BaseException, path: Path) -> OSError | None:
    """The OSError, naming `path` when it names no file, that a failed write `e` stands for; None
    when `e` is not about the file system. So a full disk reads the same whichever library wrote."""
    if isinstance(e, OSError) and e.errno is not None:
        if e.filename is None:
            e.filename = str(path)
        return e
    if isinstance(e, SlmError):  # ours already says what to do
        return None
    text = str(e)
    if found := _OS_ERROR_CODE.search(text):
        code = int(found.group(1))
    else:
        code = next((c for c in _WRITE_ERRNOS if os.strerror(c) in text), None)
    if code is None and any(s in text for s in _SHORT_WRITE):
        # A short write: the file system is full or over quota, unless this process may not grow a
        # file that large (ulimit -f).
        code = errno.EFBIG if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY else errno.ENOSPC
    if code is None:
        return None
    return OSError(code, os.strerror(code), str(path))


def _install(target: Path, final: Path, tmp: Path) -> None:
    """Move `target` to `final`. A folder over a folder is swapped in one step where the kernel
    can (renameat2 RENAME_EXCHANGE, Linux >= 3.15 on ext4, xfs, btrfs, tmpfs): `final` exists at
    every moment, so a concurrent reader sees the old or the new folder, never none. Elsewhere
    (macOS, NFS, older kernels) os.replace cannot replace a non-empty folder, so the old one is
    moved aside into our own temporary folder first: two renames, with a moment between them."""
    if target.is_dir() and final.is_dir() and not final.is_symlink():
        if exchange(target, final):
            return  # the old folder is now at `target`, removed with `tmp`
        os.replace(final, tmp / f"{final.name}{OLD_SUFFIX}")
    os.replace(target, final)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False  # kernel or file system without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(b))


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def fsync_dir(folder: Path) -> None:
    """Make the names in `folder` (a rename into it) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not openable as a folder on this platform
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # no folder fsync here
            raise
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (written files reach the disk
    before the rename that publishes them)."""
    if path.is_symlink() or not path.exists():
        return
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_tree(Path(root) / name)
        fsync_dir(Path(root))


def _lock_owner(tmp: Path) -> int | None:
    """Create and lock tmp/OWNER for as long as we write: proof to `remove_leftovers` that we live."""
    fd = os.open(tmp / OWNER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None  # no locks here: leftovers are then judged by age only
    return fd


def remove_leftovers(final: Path, min_age_s: float = STALE_AGE_S) -> list[Path]:
    """Remove the `.<name>.*.tmp` / `.<name>.*.old` siblings of `final` that killed writers left.

    A temporary folder whose OWNER file we can lock belongs to no live writer; one without a
    lockable OWNER counts as stale once it is older than `min_age_s`. Returns what was removed.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    removed = []
    for p in final.parent.glob(f".{glob.escape(final.name)}.*"):
        if p.name.endswith((TMP_SUFFIX, OLD_SUFFIX)) and _remove_if_stale(p, min_age_s):
            removed.append(p)
    return removed


def remove_leftovers_under(root: Path, min_age_s: float = STALE_AGE_S) -> list[Path]:
    """`remove_leftovers` for every artifact under `root` (a stage may call it at its start)."""
    removed: list[Path] = []
    if not Path(root).is_dir():
        return removed
    for p in sorted(Path(root).rglob(".*")):
        if p.name.endswith((TMP_SUFFIX, OLD_SUFFIX)) and p.exists() and _remove_if_stale(p, min_age_s):
            removed.append(p)
    return removed


def _remove_if_stale(p: Path, min_age_s: float) -> bool:
    fd = None
    try:
        if (p / OWNER).is_file():
            fd = os.open(p / OWNER, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live writer holds it
            except OSError:
                os.close(fd)
                fd = None
                if not _older_than(p, min_age_s):
                    return False
        elif not _older_than(p, min_age_s):
            return False
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return True
    except FileNotFoundError:
        return False  # its writer just finished and removed it
    finally:
        if fd is not None:
            os.close(fd)


def _older_than(p: Path, seconds: float) -> bool:
    return time.time() - p.lstat().st_mtime > seconds


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    # atomic_path fsyncs the file before its rename.


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_done(folder: Path, stage: str, inputs: dict[str, str] | None = None,
               files: list[str] | None = None, **extra: Any) -> dict:
    """Mark `folder` finished: the code format, hashes of its files (or of `files` only) plus the
    input hashes it was built from."""
    outputs = sha256_tree(folder) if files is None else {f: sha256_file(folder / f) for f in files}
    marker = {"stage": stage, "format": DONE_FORMAT, "outputs": outputs, "inputs": inputs or {}, **extra}
    atomic_write_json(folder / DONE, marker)
    return marker


def read_done(folder: Path) -> dict | None:
    path = folder / DONE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn or garbled marker: the stage counts as not finished
    return marker if isinstance(marker, dict) else None


def is_done(folder: Path) -> bool:
    return read_done(folder) is not None


def format_of(record: dict) -> Any:
    """The code format a DONE marker or eval row was written in (1: before the field existed)."""
    return record.get("format", 1)


def marker_digest(folder: Path) -> str:
    """One hash standing for a finished stage's outputs: what a later stage records as input."""
    marker = read_done(folder)
    return sha256_json(marker.get("outputs")) if marker else ""


def records_digest(folder: Path) -> str:
    """The identity of a prepared task's records (the `records` its DONE holds), "" when not prepared."""
    marker = read_done(folder)
    return sha256_json(marker.get("records")) if marker else ""


def read_done_checked(folder: Path, stage: str, rerun: str) -> dict:
    """The DONE marker of `folder`, refused when missing or written in another code format."""
    marker = read_done(folder)
    if marker is None:
        raise StageInputError(f"{stage} has not finished: {folder / DONE} is missing. Run `{rerun}` first.")
    if format_of(marker) != DONE_FORMAT:
        raise StageInputError(f"{folder / DONE} was written in format {format_of(marker)!r} by another version of "
                              f"slm; this one reads format {DONE_FORMAT}. Rerun `{rerun}`.")
    return marker


def verify_outputs(folder: Path, marker: dict, stage: str, rerun: str) -> None:
    """Every file the marker lists is there and hashes as recorded."""
    if not isinstance(marker.get("outputs"), dict):
        raise StageInputError(f"{folder / DONE} lists no outputs (not written by slm?). Rerun `{rerun}`.")
    for rel, digest in marker["outputs"].items():
        path = folder / rel
        if not path.is_file():
            raise StageInputError(f"{stage} output {path} is missing (listed in {folder / DONE}). "
                                  f"Rerun `{rerun}`.")
        if sha256_file(path) != digest:
            raise StageInputError(f"{stage} output {path} changed after it was written (sha256 differs "
                                  f"from {folder / DONE}). Rerun `{rerun}`.")


def require_done(folder: Path, stage: str, rerun: str, verify: bool = True) -> dict:
    """The DONE marker of `folder`, after checking its format and that its files still hash as
    recorded. `rerun` is the command that rebuilds this input; it goes into the error message.
    (Checking the marker's inputs against the current config is pipeline.state.validity's job.)
    """
    marker = read_done_checked(folder, stage, rerun)
    if verify:
        verify_outputs(folder, marker, stage, rerun)
    return marker


def read_safetensors(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file (a CheckpointError naming it when it is missing)."""
    from safetensors import safe_open  # lazy: most readers of this module never load tensors

    if not Path(path).is_file():
        raise CheckpointError(f"{path} is missing")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
