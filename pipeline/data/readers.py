"""Read raw rows from local files and from datasets (hub or local folders).

Every reader returns `RawRows`: the rows as plain dicts plus, for each row, where it came from
("data.jsonl:7", "train.json record 3"), so any later check can name the exact line or record.
Parse failures become `DataError`s naming the file and the line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_SHOWN = 20  # bad records listed in one error; the rest are counted


@dataclass
class BadRecords:
    """Every bad record of one source, so one prepare reports them all (up to MAX_SHOWN, then a
    count) instead of the first one per run."""

    where: str  # what holds them: a file, or "task 'x'"
    shown: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_SHOWN:
            self.shown.append(message)

    def raise_any(self) -> None:
        if self.count == 1:
            raise DataError(self.shown[0])
        if self.count:
            more = f"\n  ... and {self.count - len(self.shown)} more" if self.count > len(self.shown) else ""
            raise DataError(f"{self.count} bad records in {self.where}:\n" + "\n".join(f"  {m}" for m in self.shown)
                            + more)


@dataclass
class RawRows:
    origin: str  # the file, or "hub dataset X split Y"
    rows: list[dict[str, Any]]
    where: list[str]
    # Column -> class names for integer label columns (datasets ClassLabel), already mapped.
    class_names: dict[str, list[str]] = field(default_factory=dict)


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The file format: `fmt` when it names one, else from the suffix (conversation formats say
    what a row holds, not how the file is written)."""
    if fmt in READERS:
        return fmt
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise DataError(f"{path}: cannot tell the format from the suffix {suffix!r}; use one of "
                        f"{', '.join(SUFFIX_FORMATS)} or set source.format (jsonl, json, csv, parquet)")
    return SUFFIX_FORMATS[suffix]


def read_file(path: Path, fmt: str = "auto") -> RawRows:
    """Rows of a local JSONL / JSON (a list of objects) / CSV / Parquet file."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file" + _sibling_hint(path))
    try:
        return READERS[detect_format(path, fmt)](path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _sibling_hint(path: Path) -> str:
    if not path.parent.is_dir():
        return f" (folder {path.parent} does not exist either)"
    near = sorted(p.name for p in path.parent.iterdir() if p.is_file())[:8]
    return f" (files in {path.parent}: {', '.join(near) or 'none'})"


def _read_jsonl(path: Path) -> RawRows:
    rows, where, bad = [], [], BadRecords(str(path))
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")  # the line's own text: a column past its end names no character
            if not line.strip():
                continue  # blank lines (a trailing newline) are not records
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                bad.add(f"{path}:{lineno}: malformed JSONL line ({e.msg} at column {e.colno}): {line.strip()[:80]!r}")
                continue
            if not isinstance(row, dict):
                bad.add(f"{path}:{lineno}: each JSONL line must be a JSON object, got {type(row).__name__}")
                continue
            rows.append(row)
            where.append(f"{path}:{lineno}")
    bad.raise_any()
    return RawRows(str(path), rows, where)


def load_json(path: Path) -> Any:
    """A whole JSON document, with file:line:column on a syntax error."""
    if not path.is_file():
        raise DataError(f"{path}: no such file" + _sibling_hint(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except json.JSONDecodeError as e:
        hint = "; one object per line? name the file .jsonl" if e.msg == "Extra data" else ""
        raise DataError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}){hint}") from None


def _read_json(path: Path) -> RawRows:
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # the {"data": [...]} layout some exports use
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} record {i}: expected a JSON object, got {type(row).__name__}: {row!r:.80}")
    return RawRows(str(path), data, [f"{path} record {i}" for i in range(len(data))])


def _read_csv(path: Path) -> RawRows:
    rows, where = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                rows.append({k: v for k, v in row.items() if k is not None})
                where.append(f"{path}:{reader.line_num}")
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return RawRows(str(path), rows, where)


def _read_parquet(path: Path) -> RawRows:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    return RawRows(str(path), rows, [f"{path} record {i}" for i in range(len(rows))])


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


# ---- datasets: hub ids, save_to_disk folders, folders of data files -----------------------------


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by Dataset/DatasetDict.save_to_disk."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def read_dataset(path: str, local: Path | None, config: str | None, split: str) -> RawRows:
    """One split of a dataset: `local` (a save_to_disk folder or a folder of data files) when
    given, else the hub id `path` through `datasets.load_dataset`."""
    import datasets

    name = str(local or path)
    origin = f"dataset {name}" + (f" (config {config})" if config else "") + f" split {split!r}"
    try:
        if local is not None and is_saved_dataset(local):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{local}: saved dataset has no split {split!r}; splits: {', '.join(ds)}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except DataError:
        raise
    except Exception as e:  # offline, unknown id, bad config or split: all end here
        raise DataError(f"{origin}: could not be loaded ({type(e).__name__}: {str(e)[:300]}). Offline (a "
                        f"compute node, HF_HUB_OFFLINE=1), run `slm fetch` where the hub is reachable first (it "
                        f"loads the dataset into the cache), or save it once with Dataset.save_to_disk and give "
                        f"that folder as source.path") from None
    return _dataset_rows(ds, origin)


def read_saved_dataset(folder: Path, split: str, key: str = "split") -> RawRows:
    """One split of a `save_to_disk` folder (source type hf_dataset). A DatasetDict is read by
    split name; a single Dataset is the one split there is. `key` names the config key in errors."""
    import datasets

    if not folder.is_dir():
        raise DataError(f"{folder}: no such dataset folder (source.path of an hf_dataset source: a folder written "
                        "by Dataset.save_to_disk or DatasetDict.save_to_disk)" + _sibling_hint(folder))
    if not is_saved_dataset(folder):
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise DataError(f"{folder}: not a saved dataset (no dataset_dict.json or state.json; it holds "
                        f"{', '.join(found) or 'nothing'}). Save it with `ds.save_to_disk(folder)`, or use type: file "
                        "for a data file, or type: hub for a folder of data files")
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # a torn or foreign folder: arrow and fsspec raise several types
        raise DataError(f"{folder}: datasets.load_from_disk failed ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{folder}: the saved DatasetDict has no split {split!r} (source.{key}); its splits: "
                            f"{', '.join(ds)}")
        ds = ds[split]
    elif key == "test_split":
        raise DataError(f"{folder}: holds one Dataset, not a DatasetDict of splits, so source.test_split "
                        f"{split!r} cannot be read from it; drop test_split (a test split is cut at random) or "
                        "save a DatasetDict with both splits")
    return _dataset_rows(ds, f"dataset {folder} split {split!r}")


def _dataset_rows(ds: Any, origin: str) -> RawRows:
    import datasets

    rows = ds.to_list()
    class_names = {col: feat.names for col, feat in ds.features.items() if isinstance(feat, datasets.ClassLabel)}
    for col, names in class_names.items():
        for row in rows:
            value = row.get(col)
            if isinstance(value, int) and 0 <= value < len(names):
                row[col] = names[value]
    return RawRows(origin, rows, [f"{origin} record {i}" for i in range(len(rows))], class_names)
