"""Library log records (DeepSpeed) -> stderr, one line each, never into stdout.

DeepSpeed gives its logger its own handler on *stdout* when it is first imported, so a warning it
logs while `slm plan` is printing a table lands between two rows, and a pipe (`slm plan | less`)
gets it as data. `route_library_logs` takes every such record, before any library's own handler
sees it, and writes it to stderr as one `[library] level: message` line; stdout keeps only what
the command prints. Notices that say nothing a user can act on (DeepSpeed on a CPU machine says it
found no GPU) are demoted to INFO, shown with --debug.

It works by a filter on each library's logger (a logger's filters run before any of its handlers,
and DeepSpeed's import-time setup adds a handler but keeps the logger object and its filters), so
it can be installed before the library is imported. transformers, PEFT and datasets log to stderr
through their own handlers already, and so do Python warnings.
"""

from __future__ import annotations

import logging
import sys

# logger name -> the prefix of its lines. Records of child loggers ("DeepSpeed.x") skip a parent's
# filters, but DeepSpeed logs on "DeepSpeed" itself.
LIBRARY_LOGGERS: dict[str, str] = {"DeepSpeed": "deepspeed"}
# Message starts that are information, not a problem, on the machines this project runs on.
DEMOTED: tuple[str, ...] = ("Setting accelerator to CPU",)


class _LibraryFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        source = LIBRARY_LOGGERS.get(record.name, record.name)
        return f"[{source}] {record.levelname.lower()}: {record.getMessage().strip()}"


class _Stderr(logging.Handler):
    """Writes to the sys.stderr of the moment (a test's capture, a redirected stream), not the one
    that was current when the handler was made."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # a closed stream must not turn a library warning into a crash
            self.handleError(record)


class _ToLog(logging.Filter):
    """Hands a library record to our handler, and drops it from the library's own handlers."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith(DEMOTED):
            record.levelno, record.levelname = logging.INFO, "INFO"
        if record.levelno >= self.handler.level:
            self.handler.handle(record)
        return False


_installed: dict[str, _ToLog] = {}


def route_library_logs(debug: bool = False) -> None:
    """Send the libraries' records (WARNING and above; INFO too with `debug`) to stderr, once per process."""
    handler = _Stderr()
    handler.setFormatter(_LibraryFormatter())
    handler.setLevel(logging.INFO if debug else logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if name in _installed:
            logger.removeFilter(_installed[name])
        _installed[name] = _ToLog(handler)
        logger.addFilter(_installed[name])
