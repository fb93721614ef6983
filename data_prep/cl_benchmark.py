"""O-LoRA's CL_Benchmark (cmnfriend/O-LoRA, folder CL_Benchmark): `{"sentence", "label"}` lists.

Two jobs. `read(folder)` turns one task folder (train.json, test.json, labels.json, and
instruction_config.json here or one level up) into examples: the instruction of the task's family
with its label options, as O-LoRA prompts it ("...Choose one from the option.\\nOption: A, B").
`convert_upstream(upstream, out)` lays out a clone's `CL_Benchmark/<family>/<task>/` tree as the
task folders the shipped configs read (`data_root=<out>`):

    git clone https://github.com/cmnfriend/O-LoRA
    python -m data_prep cl_benchmark O-LoRA/CL_Benchmark data/cl_benchmark
    slm run -c cl_benchmark_cpu.yaml data_root=data/cl_benchmark

Per task it copies train.json and labels.json and takes as test split test.json, else dev.json
(upstream's dev files are copies of test where both exist), else a seeded split of the
de-duplicated train.json (TEST_SHARE; no sentence is in both files). A task folder without
labels.json is skipped with a note (a classification task without its label set would be
scored as free text). Nothing is downloaded here.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from data_prep.common import DataPrepError, Example, Source, json_objects, load_json, text_field

FORMAT = "cl_benchmark"
TEST_SHARE = 0.2
SEED = 0

# Task folder -> instruction family of its instruction_config.json.
FAMILIES = {"agnews": "TC", "dbpedia": "TC", "yahoo": "TC", "amazon": "SC", "yelp": "SC", "sst-2": "SC",
            "imdb": "SC", "mnli": "NLI", "rte": "NLI", "cb": "NLI", "qqp": "QQP", "boolqa": "BoolQA",
            "boolq": "BoolQA", "multirc": "MultiRC", "wic": "WiC"}
# Used when the benchmark folder ships no instruction_config.json (the same texts as upstream's).
INSTRUCTIONS = {
    "TC": "What is the topic of the following paragraph? Choose one from the option.",
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.",
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? '
           "Choose one from the option.",
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? '
           "Choose one from the option.",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? "
               "Choose one from the option.",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? "
           "Choose one from the option.",
}
GENERIC = "Which label fits the following text? Choose one from the option."


def instruction(folder: Path, labels: list[str] | None) -> str:
    """The upstream instruction of the folder's task family, with the label options appended."""
    family = FAMILIES.get(folder.name.lower())
    text = INSTRUCTIONS.get(family or "", GENERIC)
    for cfg_file in (folder / "instruction_config.json", folder.parent / "instruction_config.json"):
        if family and cfg_file.is_file():
            config = load_json(cfg_file)
            entries = (config.get(family) if isinstance(config, dict) else None) or []
            if entries and isinstance(entries[0], dict) and entries[0].get("instruction"):
                text = entries[0]["instruction"]
            break
    text = text.strip()
    return f"{text}\nOption: {', '.join(labels)}" if labels else text


def read_labels(path: Path) -> list[str]:
    labels = load_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise DataPrepError(f"{path}: expected a non-empty JSON list of label strings, got {labels!r:.80}")
    return labels


def read(folder: Path, test_split: str | None = None) -> Source:
    """One task folder as examples; its test.json (or `test_split`) is the test split when present."""
    if not folder.is_dir():
        raise DataPrepError(f"{folder}: no such CL_Benchmark task folder (train.json, test.json and labels.json "
                            f"inside)")
    labels = read_labels(folder / "labels.json") if (folder / "labels.json").is_file() else None
    text = instruction(folder, labels)
    test_file = folder / (test_split or "test.json")
    train = _examples(folder / "train.json", text, labels)
    test = _examples(test_file, text, labels) if test_split or test_file.is_file() else None
    return Source(str(folder), train, test, labels)


def _examples(path: Path, text: str, labels: list[str] | None) -> list[Example]:
    out = []
    for row, where in json_objects(path):
        label = text_field(row, "label", where, FORMAT)
        if not label:
            raise DataPrepError(f"{where}: field 'label' is empty; every record needs its label")
        if labels is not None and label not in labels:
            raise DataPrepError(f"{where}: field 'label' is {label!r}, not one of the labels in labels.json "
                                f"{labels}; fix the record or the label list")
        out.append(Example(text, text_field(row, "sentence", where, FORMAT), label, where))
    return out


# ---- an O-LoRA clone -> task folders ------------------------------------------------------------


def is_upstream(folder: Path) -> bool:
    """A clone's CL_Benchmark folder (<family>/<task>/train.json), not one task folder."""
    return not (folder / "train.json").is_file() and bool(task_folders(folder))


def task_folders(upstream: Path) -> list[Path]:
    """Every <family>/<task>/ folder that holds a train.json."""
    return sorted(p.parent for p in upstream.glob("*/*/train.json"))


def seeded_split(records: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """De-duplicate by sentence (first label wins), then a seeded train / test split."""
    unique = list({r["sentence"]: r for r in reversed(records)}.values())[::-1]
    random.Random(seed).shuffle(unique)  # upstream folders converted so far keep this exact split
    n_test = max(1, round(share * len(unique)))
    return unique[n_test:], unique[:n_test]


def convert_task(task: Path, out: Path) -> str:
    """Write `task` into `out/<task name>/`; returns where its test split came from."""
    if not (task / "labels.json").is_file():
        return "skipped: no labels.json"
    target = out / task.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(task / "labels.json", target / "labels.json")
    for name in ("test.json", "dev.json"):
        if (task / name).is_file():
            shutil.copyfile(task / "train.json", target / "train.json")
            shutil.copyfile(task / name, target / "test.json")
            return f"test = upstream {name}"
    rows = load_json(task / "train.json")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "sentence" in r for r in rows):
        raise DataPrepError(f"{task / 'train.json'}: expected a JSON list of {{'sentence', 'label'}} records")
    train, test = seeded_split(rows, TEST_SHARE, SEED)
    (target / "train.json").write_text(json.dumps(train, ensure_ascii=False))
    (target / "test.json").write_text(json.dumps(test, ensure_ascii=False))
    return f"test = a seeded {TEST_SHARE:.0%} of the de-duplicated train.json ({len(test)} records)"


def convert_upstream(upstream: Path, out: Path) -> list[str]:
    """Every task of an O-LoRA CL_Benchmark tree into `out`; one line per task saying what it did."""
    tasks = task_folders(upstream)
    if not tasks:
        raise DataPrepError(f"{upstream}: no <family>/<task>/train.json inside; give the CL_Benchmark folder of a "
                            "clone of https://github.com/cmnfriend/O-LoRA (or one task folder)")
    out.mkdir(parents=True, exist_ok=True)
    for config in (upstream / "instruction_config.json", upstream.parent / "instruction_config.json"):
        if config.is_file():
            shutil.copyfile(config, out / "instruction_config.json")
            break
    return [f"{task.relative_to(upstream)} -> {out / task.name}: {convert_task(task, out)}" for task in tasks]
