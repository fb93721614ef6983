"""Load one task's source into unified records {task, instruction, input, output}.

Source types (TaskSpec.source.type): `hub` (datasets.load_dataset, or a local save_to_disk /
data-file folder), `file` (JSONL, JSON, CSV, Parquet), `hf_dataset` (a save_to_disk folder, by
split name), `cl_benchmark` (the O-LoRA CL_Benchmark folder layout), `synthetic`
(pipeline.data.synthetic), and the public formats data_prep reads (`trace`, `superni`, `alpaca`,
`gsm8k`, `chatdoctor`: pipeline.data.public). A row is flat instruction/input/output columns,
or with `source.format: sharegpt | messages` one conversation (pipeline.data.conversations); a
flat row may also carry `references` (every accepted answer) and Alpaca's `system` / `history`,
which are kept, not dropped. Every record is checked here, where its file and line are still
known: required fields present, output not empty, label inside the task's label set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep import cl_benchmark
from data_prep.alpaca import history_json
from data_prep.common import DataPrepError
from pipeline.config import ExperimentConfig, TaskSpec
from pipeline.data.conversations import CONVERSATION_FORMATS, conversation_record
from pipeline.data.readers import BadRecords, RawRows, load_json, read_dataset, read_file, read_saved_dataset
from pipeline.data.records import HISTORY, REFERENCES, Located, Record, SourceRecords
from pipeline.data.synthetic import get_generator
from pipeline.errors import DataError

UNIFIED = ("instruction", "input", "output")

# The CL_Benchmark instruction families live with the format (data_prep.cl_benchmark); these names stay.
CL_FAMILIES, CL_INSTRUCTIONS, CL_GENERIC = cl_benchmark.FAMILIES, cl_benchmark.INSTRUCTIONS, cl_benchmark.GENERIC
MULTIPLE_CHOICE_INSTRUCTION = "Answer the multiple-choice question with the letter of the correct option."


def load_source(task: TaskSpec, cfg: ExperimentConfig) -> SourceRecords:
    """The task's records (and its own test split, if the source has one), all validated."""
    from pipeline.data.public import PUBLIC_FORMATS, load_public  # it builds on to_records below

    loaders = {"synthetic": _load_synthetic, "file": _load_file, "hub": _load_hub, "hf_dataset": _load_hf_dataset,
               "cl_benchmark": _load_cl_benchmark, **dict.fromkeys(PUBLIC_FORMATS, load_public)}
    out = loaders[task.source.type](task, cfg)
    if not out.train:
        raise DataError(f"{out.origin}: task {task.name!r} has no records"
                        + (f" ({out.dropped} dropped by source.drop_labels)" if out.dropped else ""))
    if out.test is not None and not out.test:
        raise DataError(f"{out.origin}: the test split of task {task.name!r} has no records")
    return out


def source_files(task: TaskSpec, cfg: ExperimentConfig) -> list[Path]:
    """The local files a task reads (for the prepare fingerprint); [] for hub ids and synthetic."""
    from pipeline.data.public import PUBLIC_FORMATS, public_source_files

    src = task.source
    if src.type == "synthetic" or src.path is None:
        return []
    if src.type in PUBLIC_FORMATS:
        return public_source_files(task, cfg)
    base = cfg.resolve_source_path(src.path)
    if src.type == "file":
        return [base] + ([cfg.resolve_source_path(src.test_split)] if src.test_split else [])
    if src.type == "cl_benchmark":
        names = ["train.json", src.test_split or "test.json", "labels.json"]
        return [base / n for n in names] + [d / "instruction_config.json" for d in (base, base.parent)]
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


# ---- per source type -------------------------------------------------------------------------


def _load_synthetic(task: TaskSpec, cfg: ExperimentConfig) -> SourceRecords:
    gen = get_generator(task.source.generator or "")
    rows = gen.generate(cfg.data.synthetic_size, cfg.data.seed)
    origin = f"synthetic:{gen.name}"
    raw = RawRows(origin, rows, [f"{origin} record {i}" for i in range(len(rows))])
    labels = task.labels or (list(gen.labels) if gen.labels else None)
    train, dropped = to_records(raw, task, labels, default_instruction=task.instruction or gen.instruction)
    return SourceRecords(origin, train, None, labels, dropped)


def _load_file(task: TaskSpec, cfg: ExperimentConfig) -> SourceRecords:
    src = task.source
    path = cfg.resolve_source_path(src.path or "")
    train, dropped = to_records(read_file(path, src.format), task, task.labels)
    test = None
    if src.test_split:
        test, more = to_records(read_file(cfg.resolve_source_path(src.test_split), src.format), task, task.labels)
        dropped += more
    return SourceRecords(str(path), train, test, task.labels, dropped)


def _load_hub(task: TaskSpec, cfg: ExperimentConfig) -> SourceRecords:
    src = task.source
    path = src.path or ""
    resolved = cfg.resolve_source_path(path)
    local = resolved if resolved.exists() else None
    if local is None and path.startswith((".", "/", "~")):  # clearly local, so not a hub id
        raise DataError(f"{resolved}: no such local dataset folder (source.path {path!r} of task {task.name!r})")
    if local is not None and local.is_file():
        raise DataError(f"{local}: a hub source needs a dataset folder; for one data file use type: file")
    raw = read_dataset(path, local, src.config, src.split)
    labels = task.labels or raw.class_names.get(src.fields.get("output", "output"))
    train, dropped = to_records(raw, task, labels)
    test = None
    if src.test_split:
        test, more = to_records(read_dataset(path, local, src.config, src.test_split), task, labels)
        dropped += more
    return SourceRecords(raw.origin, train, test, labels, dropped)


def _load_hf_dataset(task: TaskSpec, cfg: ExperimentConfig) -> SourceRecords:
    src = task.source
    folder = cfg.resolve_source_path(src.path or "")
    raw = read_saved_dataset(folder, src.split)
    labels = task.labels or raw.class_names.get(src.fields.get("output", "output"))
    train, dropped = to_records(raw, task, labels)
    test = None
    if src.test_split:
        test, more = to_records(read_saved_dataset(folder, src.test_split, key="test_split"), task, labels)
        dropped += more
    return SourceRecords(raw.origin, train, test, labels, dropped)


def _load_cl_benchmark(task: TaskSpec, cfg: ExperimentConfig) -> SourceRecords:
    src = task.source
    folder = cfg.resolve_source_path(src.path or "")
    if not folder.is_dir():
        raise DataError(f"{folder}: no such cl_benchmark folder for task {task.name!r} (expected train.json, "
                        f"test.json and labels.json inside; is data_root right?)")
    labels = task.labels or _cl_labels(folder / "labels.json", task)
    instruction = task.instruction or cl_instruction(folder, labels)
    fields = {"input": "sentence", "output": "label", **src.fields}
    train, dropped = to_records(read_file(folder / "train.json", "json"), task, labels, instruction, fields)
    test_file = folder / (src.test_split or "test.json")
    test = None
    if src.test_split or test_file.is_file():  # no test.json: fall back to a random split
        test, more = to_records(read_file(test_file, "json"), task, labels, instruction, fields)
        dropped += more
    return SourceRecords(str(folder), train, test, labels, dropped)


# Metrics that score free text: a cl_benchmark task with one of these needs no label set.
FREE_TEXT_METRICS = ("rouge_l", "bertscore")


def _cl_labels(path: Path, task: TaskSpec) -> list[str] | None:
    if not path.is_file():
        # A missing labels.json must not silently turn a classification task into free text.
        if task.metric in FREE_TEXT_METRICS:
            return None
        raise DataError(f"{path}: no such file; task {task.name!r} (metric {task.metric}) is scored as "
                        f"classification and needs its label set. Add labels.json (a JSON list of the "
                        f"labels), give the task `labels: [...]`, or, if its answers are free text, set "
                        f"`metric: rouge_l`")
    labels = load_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings, got {labels!r:.80}")
    return labels


def cl_instruction(folder: Path, labels: list[str] | None) -> str:
    """The upstream instruction of the folder's task family, with the label options appended."""
    try:
        return cl_benchmark.instruction(folder, labels)
    except DataPrepError as e:
        raise DataError(str(e)) from None


# ---- rows -> records ---------------------------------------------------------------------------


def to_records(raw: RawRows, task: TaskSpec, labels: list[str] | None, default_instruction: str | None = None,
               fields: dict[str, str] | None = None) -> tuple[list[Located], int]:
    """Map and check every row; returns the records and how many drop_labels removed."""
    src = task.source
    fields = fields if fields is not None else dict(src.fields)
    default_instruction = default_instruction or task.instruction
    if src.converter == "multiple_choice":
        default_instruction = default_instruction or MULTIPLE_CHOICE_INSTRUCTION
    label_set = set(labels) if labels else None
    out: list[Located] = []
    dropped = 0
    bad = BadRecords(f"{raw.origin} (task {task.name!r})")
    rows = zip(raw.rows, raw.where, strict=True)
    if len(raw.rows) > 20_000:  # hub corpora (ChatDoctor: 200k rows) take a while to check
        rows = tqdm(rows, total=len(raw.rows), desc=f"{task.name}: check records", disable=None)
    for row, where in rows:
        try:
            record = _unified(row, where, task, fields, default_instruction)
        except DataError as e:
            bad.add(str(e))
            continue
        if record["output"] in src.drop_labels:
            dropped += 1
            continue
        if label_set is not None and record["output"] not in label_set:
            bad.add(f"{where}: label {record['output']!r} is not in the label set of task {task.name!r}; "
                    f"valid labels: {labels}. Fix the record, list the label in `labels:`, or skip "
                    f"such records with source.drop_labels")
            continue
        out.append(Located(record, where))
    bad.raise_any()
    return out, dropped


def _unified(row: dict[str, Any], where: str, task: TaskSpec, fields: dict[str, str],
             default_instruction: str | None) -> Record:
    """One row as a unified record (a DataError naming `where` when it cannot be one)."""
    src = task.source
    if src.format in CONVERSATION_FORMATS:
        return {"task": task.name, **conversation_record(row, where, src.format, fields.get("messages"))}
    if src.converter:
        return _map_row(CONVERTERS[src.converter](row, where), where, {}, task.name, default_instruction)
    record = _map_row(row, where, fields, task.name, default_instruction)
    record.update(row_extras(row, where, record["output"]))  # Alpaca's system / history, several references
    return record


def _map_row(row: dict[str, Any], where: str, fields: dict[str, str], task: str,
             default_instruction: str | None) -> Record:
    values: dict[str, str | None] = {}
    for unified in UNIFIED:
        col = fields.get(unified, unified)
        if col == "":  # mapped to nothing on purpose: no such column in this source
            values[unified] = None
            continue
        if col not in row:
            optional = unified == "instruction" and "instruction" not in fields and default_instruction
            if optional:
                values[unified] = None
                continue
            raise DataError(f"{where}: missing field {col!r} (the unified {unified!r} field of task {task!r}); "
                            f"keys present: {sorted(row)}. Map the right column with source.fields.{unified}"
                            + (" or give the task an `instruction:`" if unified == "instruction" else ""))
        values[unified] = None if row[col] is None else str(row[col])
    instruction = (values["instruction"] or "").strip() or default_instruction
    if not instruction:
        raise DataError(f"{where}: empty instruction and task {task!r} has no `instruction:` to fall back on")
    output = (values["output"] or "").strip()
    if not output:
        col = fields.get("output", "output")
        raise DataError(f"{where}: empty output (field {col!r}) in task {task!r}; every record needs an answer")
    record = Record(task=task, instruction=instruction, input=(values["input"] or "").strip(), output=output)
    return record


def row_extras(row: dict[str, Any], where: str, output: str) -> dict[str, str]:
    """A flat row's `references` (every accepted answer, JSON text; the output must be one of them)
    and its Alpaca `system` / `history` turns (JSON text, as conversations store them): kept, so
    they reach the prompt and the scoring instead of being dropped."""
    extras: dict[str, str] = {}
    refs = row.get(REFERENCES)
    if isinstance(refs, str):  # a CSV cell, or a column saved as JSON text; empty: none
        refs = _json_list(refs, where) if refs.strip() else None
    if refs is not None and refs != []:
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise DataError(f"{where}: field 'references' must be a list of answer strings, got {refs!r:.80}")
        refs = [r.strip() for r in refs if r.strip()]
        if output not in refs:
            raise DataError(f"{where}: the output {output[:60]!r} is not one of the record's references {refs!r:.120}; "
                            "the output is what trains, the references what is scored: list it among them")
        if len(refs) > 1:
            extras[REFERENCES] = json.dumps(refs, ensure_ascii=False)
    if row.get(HISTORY) is not None or row.get("system") is not None:
        try:
            history = history_json(row.get(HISTORY), row.get("system"), where)
        except DataPrepError as e:
            raise DataError(str(e)) from None
        if history:
            extras[HISTORY] = history
    return extras


def _json_list(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: field 'references' is text that is not a JSON list ({e.msg})") from None


# ---- converters for rows that are not flat instruction/input/output columns --------------------


def _human_assistant(row: dict[str, Any], where: str) -> dict[str, Any]:
    """'### Instruction: I ### Human: X ### Assistant: Y' in one `text` column (llama-2-finance)."""
    text = row.get("text")
    if not isinstance(text, str):
        raise DataError(f"{where}: converter human_assistant needs a string field 'text'; keys present: "
                        f"{sorted(row)}")
    if "### Assistant:" not in text:
        raise DataError(f"{where}: converter human_assistant found no '### Assistant:' marker in {text[:80]!r}")
    head, _, answer = text.partition("### Assistant:")
    m_instr = re.search(r"### Instruction:(.*?)(?:### Human:|$)", head, re.S)
    m_input = re.search(r"### Human:(.*)", head, re.S)
    answer = answer.strip().removesuffix("</s>").strip()
    return {"instruction": m_instr.group(1).strip() if m_instr else None,
            "input": m_input.group(1).strip() if m_input else head.strip(), "output": answer}


def _multiple_choice(row: dict[str, Any], where: str) -> dict[str, Any]:
    """question + choices + answer (index or letter) -> lettered options and the answer letter."""
    if "question" not in row and len(row) == 1 and isinstance(next(iter(row.values())), dict):
        row = next(iter(row.values()))  # cais/mmlu nests auxiliary_train rows one level deeper
    missing = [k for k in ("question", "choices", "answer") if k not in row]
    if missing:
        raise DataError(f"{where}: converter multiple_choice needs fields question, choices, answer; missing "
                        f"{missing}; keys present: {sorted(row)}")
    choices = list(row["choices"] or [])
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    answer = row["answer"]
    if isinstance(answer, int) and 0 <= answer < len(choices):
        answer = letters[answer]
    if answer not in letters:
        raise DataError(f"{where}: answer {row['answer']!r} does not pick one of {len(choices)} choices")
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, choices, strict=True))
    return {"instruction": None, "input": f"{str(row['question']).strip()}\n{options}", "output": answer}


CONVERTERS = {"human_assistant": _human_assistant, "multiple_choice": _multiple_choice}
