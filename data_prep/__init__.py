"""data_prep: public dataset formats -> the pipeline's instruction records, the stage before `slm prepare`.

One module per format; each reads its files into `Example`s and says where each came from, and
`data_prep.common` holds the rules they share (exact de-duplication, a seeded test split where
the source has none, no test input that is also a training input, counts, errors naming file,
record and field). Nothing here imports the pipeline: the pipeline calls `read` for a task whose
`source.type` names one of these formats, and `python -m data_prep` writes JSONL files for
anyone who wants them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_prep import alpaca, chatdoctor, cl_benchmark, gsm8k, superni, trace
from data_prep.common import Converted, Counts, DataPrepError, Example, Source, convert

__all__ = ["FORMATS", "Converted", "Counts", "DataPrepError", "Example", "ReadOptions", "Source", "convert", "read"]


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may need besides its path; each format reads only the fields it knows."""

    test_split: str | None = None  # a test file: a name inside the folder (cl_benchmark, trace), else a path
    task: str | None = None  # trace: the task's key in instructions.json (default: the folder's name)
    instructions: str | None = None  # trace: the instructions.json file (default: found beside the folder)
    instruction: str | None = None  # gsm8k: the instruction of every record (the data has none)


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


FORMATS: dict[str, Callable[[Path, ReadOptions], Source]] = {
    "cl_benchmark": lambda path, o: cl_benchmark.read(path, o.test_split),
    "trace": lambda path, o: trace.read(path, o.task, _path(o.instructions), o.test_split),
    "superni": lambda path, o: superni.read(path),
    "alpaca": lambda path, o: alpaca.read(path, _path(o.test_split)),
    "gsm8k": lambda path, o: gsm8k.read(path, _path(o.test_split), o.instruction or gsm8k.INSTRUCTION),
    "chatdoctor": lambda path, o: chatdoctor.read(path, _path(o.test_split)),
}
"""Format name (an experiment's `source.type`) -> its reader."""


def read(fmt: str, path: Path, options: ReadOptions | None = None) -> Source:
    """The examples of `path` in format `fmt`, checked record by record (DataPrepError otherwise)."""
    if fmt not in FORMATS:
        raise DataPrepError(f"unknown format {fmt!r}; data_prep reads {', '.join(FORMATS)}")
    if not path.exists():
        raise DataPrepError(f"{path}: no such file or folder (the {fmt} source)")
    return FORMATS[fmt](path, options or ReadOptions())
