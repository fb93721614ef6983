"""The rules every public format shares: one example type, where each example came from, reading
JSON / JSONL with file:line errors, exact de-duplication, a seeded test split, no test input that
is also a training input, counts, and writing JSONL atomically.

Nothing here imports the pipeline (data_prep is the stage before it; the pipeline may call
data_prep, never the reverse). The identity of an example (`example_key`) is the pipeline's: the
instruction and input, lowercased with whitespace collapsed, plus the history of a conversation,
so the overlap data_prep removes is the overlap `slm prepare` would refuse.

Randomness uses only `random.Random.random()`, whose sequence Python promises to keep across
versions (`shuffle` and `sample` may change), so a seeded split is the same on every interpreter.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataPrepError(ValueError):
    """A source file or record is malformed: the message names the file, the record (index or
    line) and the field, and says what to do. The pipeline turns it into its own DataError."""


@dataclass(frozen=True)
class Example:
    """One instruction example in the pipeline's unified shape, plus where it came from."""

    instruction: str
    input: str
    output: str  # what is learned: the first reference when there are several
    where: str  # "train.jsonl:7" or "train.json record 3", for error messages
    references: tuple[str, ...] = ()  # every accepted answer (SuperNI), when there is more than one
    history: str = ""  # earlier turns, JSON text of [{"role", "content"}] (as pipeline.data.conversations)

    def record(self) -> dict[str, Any]:
        """The JSONL record the pipeline reads (`source.type: file`); extras only when present."""
        out: dict[str, Any] = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if len(self.references) > 1:
            out["references"] = list(self.references)
        if self.history:
            out["history"] = json.loads(self.history)
        return out


@dataclass
class Source:
    """What a format reader yields, before any split: the source's own test split or None."""

    origin: str
    train: list[Example]
    test: list[Example] | None = None
    labels: list[str] | None = None  # the label set the format declares (TRACE's instructions.json)
    skipped: dict[str, int] = field(default_factory=dict)  # records left out on purpose, by reason


@dataclass
class Counts:
    """What a conversion did, as `python -m data_prep` prints it."""

    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # exact repeats of an earlier example (same input and answer)
    conflicts: int = 0  # repeats of an earlier input with another answer (the first is kept)
    overlap: int = 0  # test examples whose input is also a training input
    train: int = 0
    test: int = 0

    def line(self) -> str:
        skipped = "".join(f", {n} skipped ({why})" for why, n in self.skipped.items() if n)
        return (f"read {self.read}{skipped}, {self.duplicates} duplicates removed, {self.conflicts} conflicting "
                f"repeats removed, {self.overlap} test inputs also in train removed -> train {self.train}, "
                f"test {self.test}")


# ---- reading ----------------------------------------------------------------------------------


def load_json(path: Path) -> Any:
    """A whole JSON document; a syntax error names file:line:column."""
    if not path.is_file():
        raise DataPrepError(f"{path}: no such file" + _sibling_hint(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataPrepError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except json.JSONDecodeError as e:
        hint = "; one object per line? that is JSONL" if e.msg == "Extra data" else ""
        raise DataPrepError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}){hint}") from None


def json_objects(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(object, where) for each record of a JSON list (`file record i`) or a JSONL file (`file:line`)."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _jsonl_objects(path)
        return
    data = load_json(path)
    if not isinstance(data, list):
        raise DataPrepError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataPrepError(f"{path} record {i}: expected a JSON object, got {type(row).__name__}: {row!r:.80}")
        yield row, f"{path} record {i}"


def _jsonl_objects(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    if not path.is_file():
        raise DataPrepError(f"{path}: no such file" + _sibling_hint(path))
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # a trailing newline is not a record
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataPrepError(f"{path}:{lineno}: malformed JSONL line ({e.msg} at column {e.colno}): "
                                    f"{line.strip()[:80]!r}") from None
            if not isinstance(row, dict):
                raise DataPrepError(f"{path}:{lineno}: each JSONL line must be a JSON object, got "
                                    f"{type(row).__name__}")
            yield row, f"{path}:{lineno}"


def _sibling_hint(path: Path) -> str:
    if not path.parent.is_dir():
        return f" (folder {path.parent} does not exist either)"
    near = sorted(p.name for p in path.parent.iterdir())[:8]
    return f" (files in {path.parent}: {', '.join(near) or 'none'})"


def text_field(row: dict[str, Any], key: str, where: str, fmt: str, required: bool = True) -> str:
    """row[key] as stripped text; a missing or non-text value names the record and the field."""
    if key not in row or row[key] is None:
        if not required:
            return ""
        raise DataPrepError(f"{where}: missing field {key!r} (a {fmt} record needs it); keys present: "
                            f"{sorted(row)}. Fix the record or convert the file to the {fmt} layout")
    value = row[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # a numeric label or answer is its text
    if not isinstance(value, str):
        raise DataPrepError(f"{where}: field {key!r} must be text, got {type(value).__name__}: {value!r:.60}")
    return value.strip()


def first_file(folder: Path, names: Iterable[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


# ---- the shared rules -------------------------------------------------------------------------


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def example_key(ex: Example) -> str:
    """The pipeline's identity of an example: normalised `instruction ### input` [### history]."""
    key = normalise(f"{ex.instruction} ### {ex.input}")
    return f"{key} ### {normalise(ex.history)}" if ex.history else key


def dedupe(examples: list[Example]) -> tuple[list[Example], int, int]:
    """(kept, exact duplicates, conflicting repeats). The first example of each input is kept. An
    exact duplicate repeats an earlier example, answer included (FOMC pads its train file with
    them); a conflicting repeat has an earlier example's input with an answer not seen for it
    before (the same input cannot teach two answers)."""
    first: dict[str, Example] = {}
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    duplicates = conflicts = 0
    for ex in examples:
        key = example_key(ex)
        exact = (key, ex.output, ex.references)
        if exact in seen:
            duplicates += 1
            continue
        seen.add(exact)
        if first.setdefault(key, ex) is not ex:
            conflicts += 1
    return list(first.values()), duplicates, conflicts


def stable_shuffle(items: list[Example], seed: int | str) -> list[Example]:
    """A shuffled copy (Fisher-Yates driven by `random()` only: the same on every Python)."""
    rng = random.Random(f"data_prep:{seed}")
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = min(int(rng.random() * (i + 1)), i)
        out[i], out[j] = out[j], out[i]
    return out


def split(examples: list[Example], test_ratio: float, seed: int | str) -> tuple[list[Example], list[Example]]:
    """A seeded (train, test) cut of already de-duplicated examples, for sources without a test split."""
    if not 0 < test_ratio < 1:
        raise DataPrepError(f"test ratio {test_ratio} must lie strictly between 0 and 1")
    if len(examples) < 2:
        raise DataPrepError(f"{len(examples)} distinct example(s): a train/test split needs at least 2")
    pool = stable_shuffle(examples, seed)
    n_test = min(len(pool) - 1, max(1, round(len(pool) * test_ratio)))
    return pool[n_test:], pool[:n_test]


def drop_overlap(train: list[Example], test: list[Example]) -> tuple[list[Example], int]:
    """The test examples whose input is not also a training input, and how many were dropped."""
    seen = {example_key(ex) for ex in train}
    kept = [ex for ex in test if example_key(ex) not in seen]
    return kept, len(test) - len(kept)


@dataclass
class Converted:
    train: list[Example]
    test: list[Example]
    counts: Counts


def convert(source: Source, test_ratio: float = 0.1, seed: int = 0, max_train: int | None = None,
            max_test: int | None = None) -> Converted:
    """Apply every shared rule to a source: de-duplicate each split, cut a seeded test split where
    the source has none, drop test inputs that are training inputs, then cap (after a seeded
    shuffle, so a cap takes a label-mixed sample of a file sorted by label)."""
    counts = Counts(read=len(source.train) + len(source.test or []), skipped=dict(source.skipped))
    train, dups, conflicts = dedupe(source.train)
    counts.duplicates, counts.conflicts = dups, conflicts
    if source.test is None:
        train, test = split(train, test_ratio, seed)
    else:
        test, dups, conflicts = dedupe(source.test)
        counts.duplicates += dups
        counts.conflicts += conflicts
        train, test = stable_shuffle(train, f"{seed}:train"), stable_shuffle(test, f"{seed}:test")
    train = train[:max_train]
    test, counts.overlap = drop_overlap(train, test)
    test = test[:max_test]
    if not train or not test:
        raise DataPrepError(f"{source.origin}: {len(train)} training and {len(test)} test examples are left after "
                            f"de-duplication and overlap removal ({counts.line()}); both splits need at least one")
    counts.train, counts.test = len(train), len(test)
    return Converted(train, test, counts)


# ---- writing ----------------------------------------------------------------------------------


def write_jsonl(path: Path, examples: list[Example]) -> None:
    """One record per line, written to a temporary file beside `path` and renamed over it, so a
    failure leaves the old file (or none), never half of a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex.record(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
