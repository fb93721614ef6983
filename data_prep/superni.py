"""Super-NaturalInstructions task files (allenai/natural-instructions, tasks/taskNNN_*.json): one
JSON object per task with a `Definition` (a list holding the task's instruction) and `Instances`,
each `{"id", "input", "output": [reference, ...]}`.

An instance may have several correct answers, and Super-NI scores a prediction against the best
of them (ROUGE-L / exact match, max over references: Tk-Instruct's compute_metrics,
`metric_max_over_ground_truths`). So every reference is kept (`Example.references`; the pipeline
carries them to evaluation in a `references` column) and the first one is what trains. Differs:
Tk-Instruct's collator trains on a random reference each time; a fixed first one keeps the
prepared data deterministic. The record's instruction is `Definition[0]` (what Tk-Instruct's
collator prompts with after "Definition: "); positive and negative examples are not used
(zero-shot, like the task-definition-only setting).

Task files have no train/test split (Super-NI splits by task): a seeded one is cut.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.common import DataPrepError, Example, Source, load_json, text_field

FORMAT = "superni"


def read(path: Path) -> Source:
    task = load_json(path)
    if not isinstance(task, dict):
        raise DataPrepError(f"{path}: expected a Super-NaturalInstructions task object (Definition, Instances), got "
                            f"a JSON {type(task).__name__}")
    definition = task.get("Definition")
    if not isinstance(definition, list) or not definition or not isinstance(definition[0], str) \
            or not definition[0].strip():
        raise DataPrepError(f"{path}: field 'Definition' must be a list whose first entry is the task's instruction "
                            f"text, got {definition!r:.80}")
    instances = task.get("Instances")
    if not isinstance(instances, list) or not instances:
        raise DataPrepError(f"{path}: field 'Instances' must be a non-empty list of {{'input', 'output'}} objects; "
                            f"keys present: {sorted(task)}")
    instruction = definition[0].strip()
    examples, no_answer = [], 0
    for i, inst in enumerate(instances):
        where = f"{path} Instances[{i}]"
        if not isinstance(inst, dict):
            raise DataPrepError(f"{where}: expected an object with 'input' and 'output', got {type(inst).__name__}")
        refs = _references(inst, where)
        if not refs:
            no_answer += 1
            continue
        examples.append(Example(instruction, text_field(inst, "input", where, FORMAT), refs[0], where,
                                references=tuple(refs) if len(refs) > 1 else ()))
    return Source(str(path), examples, None, None, {"no non-empty reference": no_answer})


def _references(inst: dict, where: str) -> list[str]:
    """The instance's non-empty references, in file order; an output that is not a list of
    strings (or one string) is an error."""
    out = inst.get("output")
    if isinstance(out, str):
        out = [out]
    if not isinstance(out, list) or not all(isinstance(r, str) for r in out):
        raise DataPrepError(f"{where}: field 'output' must be a list of reference strings, got {out!r:.80}; keys "
                            f"present: {sorted(inst)}")
    return [r.strip() for r in out if r.strip()]
