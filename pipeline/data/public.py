"""Tasks whose `source.type` names a public format that data_prep reads (trace, superni, alpaca,
gsm8k, chatdoctor): data_prep parses the files and applies the format's own rules, the pipeline
then checks the records as it checks every source.

data_prep's reader does the parsing (where each example came from, a malformed record's error)
and its exact de-duplication of each split (FOMC's train file repeats records; a repeated input
with another answer keeps its first answer); the rest is the pipeline's, as for any source: the
label set (the task's `labels`, else the format's own, TRACE's instructions.json), the seeded
split where the source has none (data.test_ratio, data.seed), caps, and the train/test overlap
policy (data.on_overlap). Several references of a record (SuperNI) travel in the `references`
column; `history` (Alpaca's `system` / `history`) in the `history` column.
"""

from __future__ import annotations

from pathlib import Path

import data_prep
from data_prep import ReadOptions
from data_prep.common import DataPrepError, dedupe
from pipeline.config import PUBLIC_FORMATS, ExperimentConfig, TaskSpec
from pipeline.data.readers import RawRows
from pipeline.data.records import Located, SourceRecords
from pipeline.data.sources import to_records
from pipeline.errors import DataError

__all__ = ["PUBLIC_FORMATS", "load_public", "public_source_files", "read_public"]

# Formats whose `path` is a folder, and whose test_split is a file name inside it.
FOLDER_FORMATS = ("trace",)


def read_options(task: TaskSpec, cfg: ExperimentConfig) -> ReadOptions:
    src = task.source
    test_split = src.test_split
    if test_split is not None and src.type not in FOLDER_FORMATS:
        test_split = str(cfg.resolve_source_path(test_split))
    instructions = str(cfg.resolve_source_path(src.instructions)) if src.instructions else None
    return ReadOptions(test_split=test_split, task=src.trace_task, instructions=instructions,
                       instruction=task.instruction)


def read_public(task: TaskSpec, cfg: ExperimentConfig) -> data_prep.Source:
    """data_prep's reading of the task's source; its errors become the pipeline's DataError."""
    path = cfg.resolve_source_path(task.source.path or "")
    try:
        return data_prep.read(task.source.type, path, read_options(task, cfg))
    except DataPrepError as e:
        raise DataError(f"{e} (task {task.name!r}, source.type {task.source.type})") from None


def load_public(task: TaskSpec, cfg: ExperimentConfig) -> SourceRecords:
    source = read_public(task, cfg)
    labels = task.labels or source.labels
    train, duplicates = _unique_records(source.train, task, labels)
    test = None
    if source.test is not None:
        test, more = _unique_records(source.test, task, labels)
        duplicates += more
    skipped = sum(source.skipped.values())
    if skipped:
        print(f"prepare: task {task.name!r}: skipped " + ", ".join(f"{n} ({why})" for why, n in source.skipped.items()
                                                                   if n) + f" in {source.origin}")
    return SourceRecords(source.origin, train, test, labels, duplicates=duplicates)


def _unique_records(examples: list[data_prep.Example], task: TaskSpec,
                    labels: list[str] | None) -> tuple[list[Located], int]:
    """The split's records after data_prep's de-duplication, checked by the pipeline's to_records."""
    kept, duplicates, conflicts = dedupe(examples)
    raw = RawRows(task.source.path or "", [e.record() for e in kept], [e.where for e in kept])
    records, _ = to_records(raw, task, labels, fields={})
    return records, duplicates + conflicts


def public_source_files(task: TaskSpec, cfg: ExperimentConfig) -> list[Path]:
    """The files a public-format source reads (for prepare's fingerprint): the data files, the
    named test file, and TRACE's instructions file (which may sit above the task's folder)."""
    src = task.source
    base = cfg.resolve_source_path(src.path or "")
    files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
    options = read_options(task, cfg)
    if options.test_split and src.type not in FOLDER_FORMATS:
        files.append(Path(options.test_split))
    if src.type == "trace" and base.is_dir():
        try:
            found = data_prep.trace.find_instructions(base, Path(options.instructions) if options.instructions
                                                      else None)
            files.append(found)
        except DataPrepError:
            pass  # prepare itself reports the missing file; the fingerprint just lacks it
    return list(dict.fromkeys(files))
