"""Each public format on small hand-made files in its upstream layout: what it reads, what it
skips and counts, and a malformed record's error (file, record, field, what to do)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import ReadOptions, convert, read
from data_prep.common import DataPrepError

FOMC = {"instruction": "What is the stance? A. dovish, B. hawkish, C. neutral.",
        "suffix": "Directly output only A or B or C as your answer.", "labels": ["A", "B", "C"]}


def _json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trace(tmp_path: Path, train: list[dict], test: list[dict]) -> Path:
    _json(tmp_path / "trace_instructions.json", {"FOMC": FOMC, "Lima": {"instruction": "", "suffix": "Answer:"}})
    _json(tmp_path / "finance" / "train.json", train)
    _json(tmp_path / "finance" / "test.json", test)
    return tmp_path / "finance"


def test_trace_puts_the_suffix_after_the_sentence_and_removes_fomc_style_repeats(tmp_path) -> None:
    rows = [{"sentence": f"Rates will {'rise' if i % 2 else 'fall'} {i}.", "label": "AB"[i % 2]} for i in range(6)]
    folder = _trace(tmp_path, rows * 3 + [{"sentence": rows[0]["sentence"], "label": "C"}],
                    [rows[1], {"sentence": "Prices are stable.", "label": "C"}])
    source = read("trace", folder, ReadOptions(task="fomc"))  # the key's case does not matter
    first = source.train[0]
    assert first.instruction == FOMC["instruction"] and first.input == f"{rows[0]['sentence']}\n\n{FOMC['suffix']}"
    assert source.labels == ["A", "B", "C"] and first.output == "A"
    c = convert(source).counts
    assert (c.read, c.duplicates, c.conflicts, c.overlap, c.train, c.test) == (21, 12, 1, 1, 6, 1)


def test_trace_refuses_a_label_outside_the_tasks_labels_and_an_unknown_task(tmp_path) -> None:
    folder = _trace(tmp_path, [{"sentence": "s", "label": "A"}, {"sentence": "t", "label": "hawkish"}], [])
    with pytest.raises(DataPrepError, match=r"finance/train\.json record 1: field 'label' is 'hawkish', not one of"):
        read("trace", folder, ReadOptions(task="FOMC"))
    with pytest.raises(DataPrepError, match=r"no entry for task 'finance'; its tasks: FOMC, Lima\. Name the task"):
        read("trace", folder)  # the folder's name is not a TRACE task


def test_superni_keeps_every_reference_and_trains_on_the_first(tmp_path) -> None:
    task = {"Definition": ["Answer the question about the passage."], "Positive Examples": [],
            "Instances": [{"id": "t-1", "input": "Q1", "output": ["yes", "Yes, it is."]},
                          {"id": "t-2", "input": "Q2", "output": ["no"]},
                          {"id": "t-3", "input": "Q3", "output": ["", " "]}]}
    source = read("superni", _json(tmp_path / "task001_x.json", task))
    assert [e.output for e in source.train] == ["yes", "no"]
    assert source.train[0].references == ("yes", "Yes, it is.") and source.train[1].references == ()
    assert source.train[0].record()["references"] == ["yes", "Yes, it is."] and source.test is None
    assert source.skipped == {"no non-empty reference": 1}
    task["Instances"][1]["output"] = "no"  # one string stands for a list of one
    assert read("superni", _json(tmp_path / "t.json", task)).train[1].output == "no"
    task["Instances"][1]["output"] = [3]
    with pytest.raises(DataPrepError, match=r"t\.json Instances\[1\]: field 'output' must be a list of reference"):
        read("superni", _json(tmp_path / "t.json", task))
    with pytest.raises(DataPrepError, match="field 'Definition' must be a list"):
        read("superni", _json(tmp_path / "t.json", {"Instances": task["Instances"]}))


def test_alpaca_skips_empty_outputs_and_carries_system_and_history(tmp_path) -> None:
    rows = [{"instruction": "Reverse the list.", "input": "[1, 2]", "output": "[2, 1]"},
            {"instruction": "What is the output?", "input": "print(1)", "output": ""},
            {"instruction": "And now?", "input": "", "output": "Two.", "system": "You are terse.",
             "history": [["Count to one.", "One."]]}]
    source = read("alpaca", _json(tmp_path / "code.json", rows))
    assert [e.output for e in source.train] == ["[2, 1]", "Two."] and source.skipped == {"empty output": 1}
    assert json.loads(source.train[1].history) == [{"role": "system", "content": "You are terse."},
                                                   {"role": "user", "content": "Count to one."},
                                                   {"role": "assistant", "content": "One."}]
    assert source.train[0].history == "" and "history" not in source.train[0].record()
    rows[2]["history"] = [["only a question"]]
    with pytest.raises(DataPrepError, match=r"code\.json record 2: history\[0\] must be a \[user, assistant\] pair"):
        read("alpaca", _json(tmp_path / "code.json", rows))
    rows[2] = {"instruction": "x", "input": 5, "output": {"a": 1}}
    with pytest.raises(DataPrepError, match=r"code\.json record 2: field 'output' must be text, got dict"):
        read("alpaca", _json(tmp_path / "code.json", rows))


def test_alpaca_reads_jsonl_and_names_a_broken_line(tmp_path) -> None:
    path = _jsonl(tmp_path / "data.jsonl", [{"instruction": "a", "output": "b"}])
    assert read("alpaca", path).train[0].input == ""
    path.write_text(path.read_text() + '{"instruction": "c", "output": \n')
    with pytest.raises(DataPrepError, match=r"data\.jsonl:2: malformed JSONL line"):
        read("alpaca", path)


def test_chatdoctor_cuts_a_seeded_test_split_and_refuses_an_empty_patient_description(tmp_path) -> None:
    instruction = "If you are a doctor, please answer the medical questions based on the patient's description."
    rows = [{"instruction": instruction, "input": f"Doctor, I have symptom {i}.", "output": f"Take rest {i}."}
            for i in range(30)]
    result = convert(read("chatdoctor", _json(tmp_path / "chatdoctor5k.json", rows)), test_ratio=0.1, seed=1)
    assert (result.counts.train, result.counts.test) == (27, 3)
    assert not {e.input for e in result.train} & {e.input for e in result.test}
    rows[4]["input"] = "  "
    with pytest.raises(DataPrepError, match=r"chatdoctor5k\.json record 4: field 'input' \(the patient's"):
        read("chatdoctor", _json(tmp_path / "chatdoctor5k.json", rows))


def test_gsm8k_keeps_the_worked_solution_and_refuses_an_answer_without_a_final_number(tmp_path) -> None:
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in range(5)]
    _jsonl(tmp_path / "math" / "train.jsonl", rows[:4])
    _jsonl(tmp_path / "math" / "test.jsonl", rows[3:])
    source = read("gsm8k", tmp_path / "math")
    assert source.train[1].output == "1 + 1 = <<1+1=2>>2\n#### 2" and source.train[1].input == "What is 1 + 1?"
    assert "####" in source.train[0].instruction
    c = convert(source).counts
    assert (c.train, c.test, c.overlap) == (4, 1, 1)  # "What is 3 + 3?" is in both files
    _jsonl(tmp_path / "bad.jsonl", [rows[0], {"question": "q", "answer": "The answer is 4."}])
    with pytest.raises(DataPrepError, match=r"bad\.jsonl:2: field 'answer' has no final '#### <number>'"):
        read("gsm8k", tmp_path / "bad.jsonl")


def test_an_unknown_format_and_a_missing_source_say_what_exists(tmp_path) -> None:
    with pytest.raises(DataPrepError, match="unknown format 'csv'; data_prep reads cl_benchmark, trace"):
        read("csv", tmp_path)
    with pytest.raises(DataPrepError, match="no such file or folder"):
        read("gsm8k", tmp_path / "nowhere")
