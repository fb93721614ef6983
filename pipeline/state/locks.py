"""One writer per output folder: advisory locks held by the process that writes.

    with writer_stage(layout):  # <output_dir>/locks/<method>.lock: train, index, eval, run
        ...
    with data_lock(layout):     # <output_dir>/locks/data.lock: prepare (data is shared by every method)
        ...

A second writer fails at once with a `LockError` naming the holder (pid, host, Slurm job,
command, since when); readers (`slm status`, reading finished rows) take no lock.

Why `fcntl.flock` on a lock file that stays:
- the kernel drops the lock when its holder dies, even by SIGKILL, so there is no stale lock to
  clean up; the holder text in the file may outlive the process and is ignored unless the lock
  is actually held. A lock file is deleted only by a holder whose work failed and who created it
  (a failed first `slm prepare` leaves no `locks/` behind), and only while it still holds it; a
  waiter that then gets the lock of the deleted file sees that the path no longer names its inode
  and locks the new file instead.
- on Linux NFS clients flock is emulated with POSIX byte-range locks, which the server arbitrates
  across nodes; a lock of a crashed node is freed when its NFSv4 lease expires (about 90 s).
  A file system without lock support (ENOLCK) gets a warning and no mutual exclusion.

Locks are re-entrant within one process (`slm run` takes the writer lock and calls train, which
takes it again), and only rank 0 of a torchrun job locks: every rank of one job is one writer.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import LockError

if TYPE_CHECKING:
    from pipeline.state.layout import RunLayout

LOCKS_DIR = "locks"
DATA_LOCK = "data"
PROBE_RETRIES, PROBE_WAIT_S = 10, 0.05
DATA_LOCK_WAIT_S = 3600.0  # another method's prepare of the same data: wait for it, then reuse it
WAIT_POLL_S = 0.5


@dataclass
class _Held:
    fd: int | None  # None: the file system has no locks and we run unlocked
    count: int
    created: list[Path]  # the lock file and the folders this hold created, deepest last


_HELD: dict[str, _Held] = {}  # resolved lock path -> this process's hold on it


def lock_path(layout: RunLayout) -> Path:
    """The writer lock of one method's output folder (<output_dir>/<method>)."""
    return layout.base / LOCKS_DIR / f"{layout.method}.lock"


def data_lock_path(layout: RunLayout) -> Path:
    """The lock of the prepared data folder, shared by every method of the output_dir."""
    return layout.base / LOCKS_DIR / f"{DATA_LOCK}.lock"


@contextlib.contextmanager
def writer_lock(layout: RunLayout) -> Iterator[None]:
    """Hold the lock of `layout.root` for the block: one writing process per output folder and method."""
    with hold(lock_path(layout), f"output folder {layout.root} (method {layout.method})"):
        yield


@contextlib.contextmanager
def writer_stage(layout: RunLayout) -> Iterator[None]:
    """What a writer stage (train, index, eval, run) wraps its work in: the writer lock, and, when
    this process first takes it, the removal of temporaries that killed writers left under
    `layout.root` (a live writer's are never touched: see pipeline.state.artifacts.remove_leftovers)."""
    from pipeline.state.artifacts import remove_leftovers_under

    first = str(lock_path(layout).resolve()) not in _HELD
    with writer_lock(layout):
        if first and _is_locking_rank():
            for path in remove_leftovers_under(layout.root):
                print(f"removed {path}, left by a killed writer")
        yield


@contextlib.contextmanager
def data_lock(layout: RunLayout, wait_s: float | None = None) -> Iterator[None]:
    """Hold the lock of the shared data folder for the block (`slm prepare`).

    Unlike a method's writer lock this one waits (up to `wait_s`, default DATA_LOCK_WAIT_S): two
    methods run side by side on one output_dir both start with prepare, and the second should
    then find the data DONE.
    """
    wait = DATA_LOCK_WAIT_S if wait_s is None else wait_s
    with hold(data_lock_path(layout), f"data folder {layout.data}", wait_s=wait):
        yield


@contextlib.contextmanager
def hold(path: Path, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Lock `path` (created if missing) for the block, or raise LockError naming its holder.

    With `wait_s` > 0 a busy lock is retried for that long (saying once whom it waits for).
    """
    if not _is_locking_rank():
        yield
        return
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key].count += 1
    else:
        created = _missing_folders(path.parent)
        fd, made_file = _acquire_waiting(path, what, wait_s)
        _HELD[key] = _Held(fd, 1, [*created, *([path] if made_file else [])])
    failed = True
    try:
        yield
        failed = False
    finally:
        held = _HELD[key]
        held.count -= 1
        if held.count == 0:
            del _HELD[key]
            if failed:
                _discard_created(held)  # still holding: nobody else can be inside
            _release(held.fd)


def _missing_folders(folder: Path) -> list[Path]:
    """The folders `folder.mkdir(parents=True)` would create, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _discard_created(held: _Held) -> None:
    """After a failure: remove the lock file and the (now empty) folders this hold created, so a
    failed first run leaves no trace; a folder that holds anything else stays."""
    for path in reversed(held.created):
        try:
            path.rmdir() if path.is_dir() else path.unlink()
        except OSError:
            return  # not empty (or already gone): the folders above it stay too


def holder(path: Path) -> dict | None:
    """Who holds the lock at `path` now (pid, host, slurm_job, command, since), or None if nobody.

    For readers such as `slm status`: it never blocks and never takes the lock for long.
    """
    try:
        fd = os.open(path, os.O_RDONLY)  # read-only: a reader may lack write access to the run
    except OSError:
        return None
    try:
        try:
            # A shared lock fails only while a writer holds its exclusive one.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError:
            return None  # no locks on this file system: nobody can be shown as holding one
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(info: dict) -> str:
    """'pid 123 on host n1 (Slurm job 55_2), running `slm train --task 1` since 2024-05-01T10:00:00'."""
    if not info:
        return "a process that has not written its details yet"
    job = f" (Slurm job {info['slurm_job']})" if info.get("slurm_job") else ""
    command = f", running `{info['command']}`" if info.get("command") else ""
    since = f" since {info['since']}" if info.get("since") else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{job}{command}{since}"


# ---- internals --------------------------------------------------------------------------------


def _is_locking_rank() -> bool:
    # torchrun sets RANK before our code runs; a plain process has none and is rank 0.
    return os.environ.get("RANK", "0") == "0"


def _holder_info() -> dict:
    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": job,
            "command": " ".join(argv)[:200],
            "since": datetime.datetime.now().isoformat(timespec="seconds")}


def _acquire_waiting(path: Path, what: str, wait_s: float) -> tuple[int | None, bool]:
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return _acquire(path, what)
        except LockError as e:
            if time.monotonic() >= deadline:
                raise
            if not said:
                print(f"waiting up to {wait_s:g} s: {e}", file=sys.stderr, flush=True)
                said = True
            time.sleep(WAIT_POLL_S)


def _acquire(path: Path, what: str) -> tuple[int | None, bool]:
    """(the locked fd, whether this call created the lock file)."""
    while True:
        fd, made = _open_lock_file(path)
        locked = _lock(fd, path, what)
        if locked is None or _names_inode(path, locked):
            return locked, made
        os.close(locked)  # a failed holder deleted the file we waited on: lock the one there now


def _open_lock_file(path: Path) -> tuple[int, bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), False  # no O_TRUNC: the holder's text stays readable


def _names_inode(path: Path, fd: int) -> bool:
    try:
        now, ours = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)


def _lock(fd: int, path: Path, what: str) -> int | None:
    try:
        _flock_or_busy(fd)
    except BlockingIOError:
        info = _read_holder(fd)
        os.close(fd)
        raise LockError(f"{what} is in use by {describe(info)} (lock {path})",
                        hint=_busy_hint(info)) from None
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        print(f"warning: {path}: the file system does not support locks ({e.strerror}); a second process "
              f"writing {what} at the same time would not be detected", file=sys.stderr)
        return None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder_info()) + "\n").encode())
        os.fsync(fd)
    except OSError as e:  # a full disk: say which file, and hold no lock whose holder is unknown
        os.close(fd)
        e.filename = str(path)
        raise
    return fd


def _flock_or_busy(fd: int) -> None:
    """flock(LOCK_EX | LOCK_NB), retried for a moment while the holder has written no details:
    that is `holder()` probing the lock (a shared lock, for microseconds), or a writer that has
    just taken it."""
    for _ in range(PROBE_RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if _read_holder(fd):
                raise
            time.sleep(PROBE_WAIT_S)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _release(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)  # a file with no holder text reads as "free" even before the unlock
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def _busy_hint(info: dict) -> str:
    pid, host, job = info.get("pid"), info.get("host"), info.get("slurm_job")
    stop = f"`scancel {job}`" if job else (f"`kill {pid}` on {host}" if pid else "stop it")
    text = f"wait for it to finish, or {stop}, then run the command again; `slm status` needs no lock"
    if host and host != socket.gethostname():
        text += " (if that node crashed, the file server frees the lock within a few minutes)"
    return text
