"""The unified record, its normalised identity, and seeded randomness that never changes.

Every source becomes records {task, instruction, input, output}, plus `history` (earlier turns as
JSON text) for conversations (pipeline.data.conversations) and `references` (every accepted
answer as JSON text, the output first) for records with several (Super-NaturalInstructions).
Two records are "the same example" when their normalised `instruction ### input` (and history)
match (lowercase, whitespace collapsed); that key drives de-duplication and the train/test
overlap check.

Randomness uses only `random.Random.random()`, the one method whose sequence Python promises to
keep across versions (`choice`, `shuffle`, `sample` may change), so splits and synthetic tasks
are identical on every interpreter.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import NotRequired, TypedDict, TypeVar

from pipeline.prompts.templates import query_text

T = TypeVar("T")
COLUMNS: tuple[str, ...] = ("task", "instruction", "input", "output")
HISTORY = "history"  # the extra column of conversation tasks
REFERENCES = "references"  # the extra column of tasks whose records have several accepted answers


class Record(TypedDict):
    task: str
    instruction: str
    input: str
    output: str
    history: NotRequired[str]  # earlier turns of a conversation, JSON text; absent or "" for single turns
    references: NotRequired[str]  # every accepted answer, JSON text of a list; absent or "": the output alone


@dataclass
class Located:
    """A record plus where it came from ("train.jsonl:7"), for error messages."""

    record: Record
    where: str


@dataclass
class SourceRecords:
    """What a source yields before splitting. `test` is None when it has no own test split."""

    origin: str
    train: list[Located]
    test: list[Located] | None = None
    labels: list[str] | None = None
    dropped: int = 0  # records skipped because their label is in source.drop_labels
    duplicates: int = 0  # repeated records the source's reader removed already (data_prep formats)


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def record_key(record: Record) -> str:
    """The identity of an example for overlap checks: normalised instruction ### input [### history]."""
    key = normalise_text(query_text(record["instruction"], record["input"]))
    history = record.get(HISTORY)
    return f"{key} ### {normalise_text(history)}" if history else key


def stable_rng(*parts: object) -> random.Random:
    """A generator seeded from a string (sha512 seeding, stable across Python versions)."""
    return random.Random(":".join(str(p) for p in parts))


def randbelow(rng: random.Random, n: int) -> int:
    return min(int(rng.random() * n), n - 1)


def stable_shuffle(items: list[T], rng: random.Random) -> list[T]:
    """A shuffled copy (Fisher-Yates driven by `random()` only)."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = randbelow(rng, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def stable_sample(items: list[T], n: int, rng: random.Random) -> list[T]:
    """`n` distinct items in random order (a partial Fisher-Yates: O(n) draws)."""
    pool = list(items)
    n = min(n, len(pool))
    for i in range(n):
        j = i + randbelow(rng, len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:n]


def records_sha256(records: list[Record]) -> str:
    """Content hash of an ordered record list (independent of how it is stored on disk)."""
    h = hashlib.sha256()
    for r in records:
        # History and references only when there are some, so the hashes of other data never change.
        fields = [r[c] for c in COLUMNS] + [r[k] for k in (HISTORY, REFERENCES) if r.get(k)]
        h.update(json.dumps(fields, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()
