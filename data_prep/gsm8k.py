"""GSM8K (openai/grade-school-math, grade_school_math/data/{train,test}.jsonl): one
`{"question", "answer"}` per line, the answer a worked solution that ends `#### <number>`.

The answer is kept whole (the worked solution, calculator annotations `<<48/2=24>>` included, is
what the model learns to write); what is scored is the number after `####` (the pipeline's
`final_number` metric, as GSM8K's own `extract_answer` and lm-evaluation-harness do). A record
whose answer has no `#### <number>` is an error: it could never be scored. `path` is the folder
holding train.jsonl and test.jsonl, or one JSONL file (a seeded test split is then cut, unless a
test file is named).
"""

from __future__ import annotations

import re
from pathlib import Path

from data_prep.common import DataPrepError, Example, Source, json_objects, text_field

FORMAT = "gsm8k"
INSTRUCTION = "Solve the math word problem step by step, then give the final number after '####'."
# GSM8K's own answer pattern (grade_school_math/dataset.py, ANS_RE)
FINAL = re.compile(r"#### (\-?[0-9\.\,]+)")


def read(path: Path, test_split: Path | None = None, instruction: str = INSTRUCTION) -> Source:
    if path.is_dir():
        train_file, default_test = path / "train.jsonl", path / "test.jsonl"
        test_split = test_split or (default_test if default_test.is_file() else None)
    else:
        train_file = path
    train = _examples(train_file, instruction)
    test = _examples(test_split, instruction) if test_split is not None else None
    return Source(str(path), train, test)


def _examples(path: Path, instruction: str) -> list[Example]:
    out = []
    for row, where in json_objects(path):
        question = text_field(row, "question", where, FORMAT)
        answer = text_field(row, "answer", where, FORMAT)
        if not question:
            raise DataPrepError(f"{where}: field 'question' is empty")
        if not FINAL.search(answer):
            raise DataPrepError(f"{where}: field 'answer' has no final '#### <number>' ({answer[-60:]!r}); GSM8K "
                                "answers end with it, and it is what is scored")
        out.append(Example(instruction, question, answer, where))
    return out
