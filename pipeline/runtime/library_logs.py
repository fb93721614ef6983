"""Library log records (DeepSpeed, bitsandbytes) -> stderr, one line each, never into stdout,
and never a flood.

DeepSpeed gives its logger its own handler on *stdout* when it is first imported, so a warning it
logs while `slm plan` is printing a table lands between two rows, and a pipe (`slm plan | less`)
gets it as data. `route_library_logs` takes every such record, before any library's own handler
sees it, and writes it to stderr as one `[library] level: message` line; stdout keeps only what
the command prints. Notices that say nothing a user can act on are demoted to INFO, shown with
--debug: DeepSpeed on a CPU machine says it found no GPU; bitsandbytes, imported by PEFT, says it
could not fetch an optional CPU kernel from the kernels-community hub repository (always, offline).

bitsandbytes' `Linear8bitLt` logs "MatMul8bitLt: inputs will be cast from torch.bfloat16 to
float16" on *every* forward of every 8-bit linear (a logger, not `warnings`, so Python never
de-duplicates it): ~9k lines per optimizer step and rank with LLaMA-2-70B int8. Such messages
(ONCE) are shown once per process, and their logger is then raised to ERROR, so later calls
return at `isEnabledFor` instead of building a record per matmul.

Two hooks, one routing: DeepSpeed logs on its "DeepSpeed" logger itself, which carries its stdout
handler, so a *filter* there (a logger's filters run before any of its handlers, and DeepSpeed's
import-time setup adds a handler but keeps the logger object and its filters) takes each record
and drops it for the library's own handlers. bitsandbytes logs on one logger per module
("bitsandbytes.autograd._functions"), whose records skip a parent's filters but reach a parent's
handlers: a *handler* on "bitsandbytes" (which stops propagation to the root's last-resort
printer) takes those. Both can be installed before the library is imported. transformers, PEFT
and datasets log to stderr through their own handlers already, and so do Python warnings.
"""

from __future__ import annotations

import logging
import sys

# logger name -> the prefix of its lines. Filtered: the library logs on this logger itself and
# gives it its own handler. Handled: the library logs on child loggers and has no handler.
FILTERED_LOGGERS: dict[str, str] = {"DeepSpeed": "deepspeed"}
HANDLED_LOGGERS: dict[str, str] = {"bitsandbytes": "bitsandbytes"}
LIBRARY_LOGGERS: dict[str, str] = {**FILTERED_LOGGERS, **HANDLED_LOGGERS}
# Parts of messages that are information, not a problem, on the machines this project runs on.
DEMOTED: tuple[str, ...] = ("Setting accelerator to CPU", "kernels-community")
# Message starts a library logs on every call: the first is shown, the rest are dropped.
ONCE: tuple[str, ...] = ("MatMul8bitLt: inputs will be cast from",)


class _LibraryFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        top = record.name.split(".")[0]
        source = LIBRARY_LOGGERS.get(record.name, LIBRARY_LOGGERS.get(top, record.name))
        return f"[{source}] {record.levelname.lower()}: {record.getMessage().strip()}"


class _Stderr(logging.Handler):
    """Writes to the sys.stderr of the moment (a test's capture, a redirected stream), not the one
    that was current when the handler was made."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # a closed stream must not turn a library warning into a crash
            self.handleError(record)


class _Router:
    """Demotes, de-duplicates and hands a library record to the stderr handler."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self.seen: set[str] = set()

    def route(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno == logging.WARNING and any(part in message for part in DEMOTED):
            record.levelno, record.levelname = logging.INFO, "INFO"
        flood = next((start for start in ONCE if message.startswith(start)), None)
        if flood is not None:
            if flood in self.seen:
                return
            self.seen.add(flood)
            # Later calls of this logger stop at isEnabledFor: no record per matmul.
            logging.getLogger(record.name).setLevel(logging.ERROR)
            _silenced.add(record.name)
        if record.levelno >= self.handler.level:
            self.handler.handle(record)


class _ToLog(logging.Filter):
    """On a library's own logger: routes its record, and drops it from the library's own handlers."""

    def __init__(self, router: _Router) -> None:
        super().__init__()
        self.router = router

    def filter(self, record: logging.LogRecord) -> bool:
        self.router.route(record)
        return False


class _FromChildren(logging.Handler):
    """On a library's top logger: routes the records its module loggers propagate up."""

    def __init__(self, router: _Router) -> None:
        super().__init__(logging.NOTSET)
        self.router = router

    def emit(self, record: logging.LogRecord) -> None:
        self.router.route(record)


_installed: dict[str, logging.Filter | logging.Handler] = {}
_silenced: set[str] = set()  # module loggers raised to ERROR after their ONCE message


def route_library_logs(debug: bool = False) -> None:
    """Send the libraries' records (WARNING and above; INFO too with `debug`) to stderr, once per process."""
    handler = _Stderr()
    handler.setFormatter(_LibraryFormatter())
    handler.setLevel(logging.INFO if debug else logging.WARNING)
    router = _Router(handler)
    for name in _silenced:  # a new routing shows each ONCE message once again
        logging.getLogger(name).setLevel(logging.NOTSET)
    _silenced.clear()
    for name in FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if isinstance(old := _installed.get(name), logging.Filter):
            logger.removeFilter(old)
        _installed[name] = _ToLog(router)
        logger.addFilter(_installed[name])
    for name in HANDLED_LOGGERS:
        logger = logging.getLogger(name)
        if isinstance(old := _installed.get(name), logging.Handler):
            logger.removeHandler(old)
        _installed[name] = _FromChildren(router)
        logger.addHandler(_installed[name])
        logger.propagate = False  # the root's last-resort handler would print every record again
        # INFO records of the module loggers must reach us for --debug; unset levels inherit this.
        logger.setLevel(logging.INFO if debug else logging.WARNING)
