"""What the user sees when a command fails: one line saying what and where, one line saying what to do.

`pipeline.cli.main` sends every exception through `user_message`. Failures a user can cause (a
bad config, bad data, a missing or unwritable path, a full disk, another writer) become
(message, hint); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path
from types import TracebackType

import yaml

from pipeline.errors import ConfigError, DataError, SlmError

DEBUG_HINT = "add --debug (or set SLM_DEBUG=1) for the full traceback"
# Modules whose plain ValueErrors are about the user's settings or files, not bugs: a config
# value, or keys/an index that do not fit the encoder (`dtkr.groups`, a task added twice).
VALUE_ERROR_MODULES = ("pipeline.config", "pipeline.dtkr.keys", "pipeline.dtkr.store")
# The hint of an error that brings none of its own.
DEFAULT_HINTS: dict[type[SlmError], str] = {
    ConfigError: "fix the key named above in the YAML or the KEY=VALUE override, then run the command again",
    DataError: "fix the file or record named above, or the task's `source:` settings, then run the command again",
}


def user_message(e: BaseException) -> tuple[str, str] | None:
    """(message, hint) for a failure the user can fix; None for a bug (show the traceback)."""
    if isinstance(e, SlmError):
        default = next((h for cls, h in DEFAULT_HINTS.items() if isinstance(e, cls)), DEBUG_HINT)
        return str(e), e.hint or default
    if isinstance(e, UnicodeDecodeError):  # a subclass of ValueError: before the ValueError case
        return (f"a file is not UTF-8 text ({e.reason} at byte {e.start})",
                "save the file as UTF-8; " + DEBUG_HINT + " to see which file was being read")
    if isinstance(e, OSError):
        return os_error_message(e)
    if isinstance(e, yaml.YAMLError):
        return f"not valid YAML: {e}", "fix the YAML text (an override value may need quotes)"
    if isinstance(e, ValueError) and _raised_in(e.__traceback__, VALUE_ERROR_MODULES):
        return str(e), DEBUG_HINT
    return None


def os_error_message(e: OSError) -> tuple[str, str]:
    """Name the path and what to do about the errno."""
    path = e.filename if e.filename is not None else None
    where = f": {path}" + (f" -> {e.filename2}" if e.filename2 else "") if path is not None else ""
    what = e.strerror or str(e)
    folder = _folder_of(path)
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device (or quota exceeded){where}",
                f"free space there (`df -h {folder}`, `du -sh {folder}/*`) or choose another output_dir=...; "
                f"nothing half-written was kept")
    if code == errno.EFBIG:
        return (f"file too large: a write went past the file size limit{where}",
                f"raise the limit (`ulimit -f`, currently {_fsize_limit()}) or choose another output_dir=...; "
                f"nothing half-written was kept")
    if code == errno.EROFS:
        return f"read-only file system{where}", "choose an output_dir=... on a writable file system"
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied{where}",
                f"check the permissions (`ls -ld {folder}`), or choose another output_dir=... you can write")
    if code == errno.ENOENT:
        return (f"no such file or directory{where}",
                "check the path; relative paths in a YAML resolve from the YAML's folder (or data_root)")
    if code in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"{what}{where}", "a file stands where a folder is expected (or the other way round): move it away"
    return f"{what}{where}", DEBUG_HINT


def _fsize_limit() -> str:
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


def _folder_of(path: object) -> str:
    if path is None:
        return "."
    p = Path(os.fsdecode(path) if isinstance(path, bytes) else str(path))
    return str(p.parent if p.suffix or not p.is_dir() else p)


def _raised_in(tb: TracebackType | None, modules: tuple[str, ...]) -> bool:
    """Whether the innermost frame of `tb` belongs to one of `modules`."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and last.tb_frame.f_globals.get("__name__") in modules
