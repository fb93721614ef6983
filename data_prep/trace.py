"""TRACE (the LLM continual-learning benchmark, as the SAPO repository ships it): one folder per
task with train.json / test.json lists of `{"sentence", "label"}`, and one `instructions.json`
mapping each TRACE task to its instruction, answer suffix and label set:

    {"FOMC": {"instruction": "What is the monetary policy stance ...? A. dovish, B. hawkish, C. neutral. ...",
              "suffix": "Directly output only A or B or C as your answer.", "labels": ["A", "B", "C"]}}

TRACE builds a prompt as `instruction + "\\n\\nText:\\n" + sentence + "\\n\\n" + suffix`
(Eric8932/SAPO: src/uie_dataset.py, load_task). Here the instruction is the record's
instruction and `sentence + "\\n\\n" + suffix` its input, so the prompt says the same things in the
same order, and a long input loses its middle, never the suffix that says how to answer.

The task's key in instructions.json is the folder's name unless given (the shared cross-domain
data keeps FOMC in `finance/`); instructions.json is looked for in the folder and one level up
(also as `trace_instructions.json`).
"""

from __future__ import annotations

from pathlib import Path

from data_prep.common import DataPrepError, Example, Source, first_file, json_objects, load_json, text_field

FORMAT = "trace"
INSTRUCTION_FILES = ("instructions.json", "trace_instructions.json")


def find_instructions(folder: Path, given: Path | None = None) -> Path:
    if given is not None:
        if not given.is_file():
            raise DataPrepError(f"{given}: no such TRACE instructions file (a JSON object: task -> {{instruction, "
                                "suffix, labels}})")
        return given
    found = first_file(folder, INSTRUCTION_FILES) or first_file(folder.parent, INSTRUCTION_FILES)
    if found is None:
        raise DataPrepError(f"{folder}: no {' or '.join(INSTRUCTION_FILES)} in it or its parent; name TRACE's "
                            "instructions file (source.instructions, or --instructions)")
    return found


def task_entry(path: Path, task: str) -> dict:
    """The instructions.json entry of `task` (exact key, else the one key equal ignoring case)."""
    table = load_json(path)
    if not isinstance(table, dict):
        raise DataPrepError(f"{path}: expected a JSON object mapping each TRACE task to its instruction")
    key = task if task in table else next((k for k in table if k.lower() == task.lower()), None)
    if key is None:
        raise DataPrepError(f"{path}: no entry for task {task!r}; its tasks: {', '.join(sorted(table))}. Name the "
                            "task (source.trace_task, or --task)")
    entry = table[key]
    if not isinstance(entry, dict) or not isinstance(entry.get("instruction", ""), str):
        raise DataPrepError(f"{path}: entry {key!r} must be an object with a text 'instruction' (and 'suffix', "
                            f"'labels'), got {entry!r:.80}")
    labels = entry.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DataPrepError(f"{path}: entry {key!r}: 'labels' must be a list of strings, got {labels!r:.80}")
    return entry


def read(folder: Path, task: str | None = None, instructions: Path | None = None,
         test_split: str | None = None) -> Source:
    """One TRACE task folder; its test.json (or `test_split`) is the test split when present."""
    if not folder.is_dir():
        raise DataPrepError(f"{folder}: no such TRACE task folder (train.json and test.json of "
                            "{'sentence', 'label'} inside)")
    info_file = find_instructions(folder, instructions)
    entry = task_entry(info_file, task or folder.name)
    labels = list(entry.get("labels") or []) or None
    suffix = str(entry.get("suffix") or "").strip()
    train = _examples(folder / "train.json", entry["instruction"].strip(), suffix, labels, info_file)
    test_file = folder / (test_split or "test.json")
    test = _examples(test_file, entry["instruction"].strip(), suffix, labels, info_file) \
        if test_split or test_file.is_file() else None
    return Source(str(folder), train, test, labels)


def _examples(path: Path, instruction: str, suffix: str, labels: list[str] | None, info: Path) -> list[Example]:
    out = []
    for row, where in json_objects(path):
        sentence = text_field(row, "sentence", where, FORMAT)
        label = text_field(row, "label", where, FORMAT)
        empty = [key for key, value in (("sentence", sentence), ("label", label)) if not value]
        if empty:
            raise DataPrepError(f"{where}: field {empty[0]!r} is empty; a TRACE record needs a sentence and a label")
        if labels and label not in labels:
            raise DataPrepError(f"{where}: field 'label' is {label!r}, not one of the task's labels {labels} "
                                f"({info}); fix the record or the labels")
        out.append(Example(instruction, f"{sentence}\n\n{suffix}" if suffix else sentence, label, where))
    return out
