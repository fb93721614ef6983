"""Your own data in the formats people have: ShareGPT and `messages` conversations, datasets folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from pipeline.data.build import build_task
from pipeline.data.prepared import load_prepared
from pipeline.data.records import record_key, records_sha256
from pipeline.errors import ConfigError, DataError
from pipeline.experiment import Experiment, load_config
from pipeline.prompts.batching import prompts, tokenize_for_training
from pipeline.prompts.templates import build_prompt, history_turns
from pipeline.prompts.truncation import TokenCaps
from pipeline.runtime.models import load_tokenizer
from pipeline.stages import prepare
from pipeline.state.layout import RunLayout

SYSTEM = "You are a terse geography tutor."


def sharegpt_row(i: int) -> dict[str, Any]:
    return {"conversations": [
        {"from": "system", "value": SYSTEM},
        {"from": "human", "value": f"Name country number {i}."},
        {"from": "gpt", "value": f"Country {i}."},
        {"from": "human", "value": f"And its capital, {i}?"},
        {"from": "gpt", "value": f"Capital {i}."},
    ]}


def messages_row(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Hello {i}"},
                         {"role": "assistant", "content": f"Hi {i}"}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def experiment(write_yaml, tmp_path: Path, source: dict[str, Any], **model: Any):
    raw = {"name": "formats", "output_dir": str(tmp_path / "out"),
           "model": {"name_or_path": "bundled:smollm2", "max_seq_len": 256, **model},
           "tasks": [{"name": "chat", "source": source}]}
    cfg = load_config(write_yaml(raw))
    return cfg, cfg.tasks[0]


# ---- ShareGPT and messages -------------------------------------------------------------------------


def test_a_sharegpt_conversation_keeps_its_history_in_the_chat_template_prompt(write_yaml, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [sharegpt_row(i) for i in range(12)])
    cfg, task = experiment(write_yaml, tmp_path, {"type": "file", "path": str(data), "format": "sharegpt"})
    built = build_task(task, cfg)
    record = next(r for r in built.train + built.test if r["output"] == "Capital 3.")
    assert record["instruction"] == "And its capital, 3?" and record["input"] == ""
    assert [t["role"] for t in history_turns(record)] == ["system", "user", "assistant"]

    tok = load_tokenizer("bundled:smollm2")
    want = tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": "Name country number 3."},
                                    {"role": "assistant", "content": "Country 3."},
                                    {"role": "user", "content": "And its capital, 3?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert prompts(tok, "chat_template", [record]) == [want]
    example = tokenize_for_training(tok, "chat_template", [record], TokenCaps(256))[0]
    learned = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label >= 0]
    assert tok.decode(learned).startswith("Capital 3.")  # only the last answer is learned


def test_a_prepared_conversation_task_saves_and_reloads_its_history(write_yaml, tmp_path):
    data = tmp_path / "chat.json"
    data.write_text(json.dumps([messages_row(i) for i in range(10)]))
    cfg, _ = experiment(write_yaml, tmp_path, {"type": "file", "path": str(data), "format": "messages"})
    layout = RunLayout.of(cfg)
    prepare.run(Experiment.of(cfg))
    split = load_prepared(cfg, layout)["chat"]["train"]
    assert split.column_names == ["task", "instruction", "input", "output", "history"]
    row = dict(split[0])
    assert history_turns(row) == [{"role": "system", "content": SYSTEM}]
    assert row["output"] == row["instruction"].replace("Hello", "Hi")


def test_history_renders_in_every_prompt_format():
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "u1"},
               {"role": "assistant", "content": "a1"}]
    assert build_prompt(None, "llama2_chat", "u2", "", history) == \
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nu1 [/INST] a1 </s><s>[INST] u2 [/INST]"
    assert build_prompt(None, "plain", "u2", "", history) == \
        "### System:\nBe brief.\n\n### User:\nu1\n\n### Assistant:\na1\n\n### Instruction:\nu2\n\n### Response:\n"
    assert build_prompt(None, "llama2_chat", "u2", "", []) == "[INST] u2 [/INST]"  # single turns unchanged


def test_history_is_part_of_a_records_identity_but_not_of_single_turn_hashes():
    one = {"task": "t", "instruction": "q", "input": "", "output": "a"}
    with_history = {**one, "history": json.dumps([{"role": "system", "content": "x"}])}
    assert record_key(one) != record_key(with_history)
    assert records_sha256([one]) == records_sha256([{**one, "history": ""}])  # old data keeps its hash


BAD_ROWS = {
    "no conversations column": ({"messages": []}, "missing field 'conversations'"),
    "unknown role": ({"conversations": [{"from": "robot", "value": "x"}]}, "conversations[0].from is 'robot'"),
    "turn without value": ({"conversations": [{"from": "human"}]}, "conversations[0] has no 'value'"),
    "empty content": ({"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "a"}]},
                      "conversations[0].value is empty"),
    "two user turns": ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
                       "conversations[1] is a user turn where an assistant turn belongs"),
    "ends with the user": ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                              {"from": "human", "value": "c"}]}, "must end with an assistant turn"),
    "not a list": ({"conversations": "hello"}, "is text that is not a JSON list"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_conversation_names_the_line_and_the_turn(write_yaml, tmp_path, case):
    row, message = BAD_ROWS[case]
    data = write_jsonl(tmp_path / "chat.jsonl", [sharegpt_row(0), row])
    cfg, task = experiment(write_yaml, tmp_path, {"type": "file", "path": str(data), "format": "sharegpt"})
    with pytest.raises(DataError) as err:
        build_task(task, cfg)
    assert f"{data}:2: " in str(err.value) and message in str(err.value)


def test_the_turns_column_can_be_renamed_and_flat_field_names_are_refused(write_yaml, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"dialog": messages_row(i)["messages"]} for i in range(6)])
    cfg, task = experiment(write_yaml, tmp_path, {"type": "file", "path": str(data), "format": "messages",
                                                  "fields": {"messages": "dialog"}})
    assert len(build_task(task, cfg).train) == 5
    with pytest.raises(ConfigError, match="unknown unified names .* valid with format messages: messages"):
        experiment(write_yaml, tmp_path, {"type": "file", "path": str(data), "format": "messages",
                                          "fields": {"output": "x"}})


# ---- hf_dataset: a save_to_disk folder ----------------------------------------------------------------


@pytest.fixture
def saved_dict(tmp_path) -> Path:
    rows = [{"instruction": f"Spell {i}", "input": "", "output": str(i)} for i in range(20)]
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:15]),
                          "validation": datasets.Dataset.from_list(rows[15:])}).save_to_disk(str(folder))
    return folder


def test_an_hf_dataset_folder_is_read_by_split_name(write_yaml, tmp_path, saved_dict):
    cfg, task = experiment(write_yaml, tmp_path, {"type": "hf_dataset", "path": str(saved_dict),
                                                  "test_split": "validation"})
    built = build_task(task, cfg)
    assert (len(built.train), len(built.test)) == (15, 5) and built.own_test_split
    assert {r["output"] for r in built.test} == {"15", "16", "17", "18", "19"}


def test_an_hf_dataset_of_messages_rows(write_yaml, tmp_path):
    folder = tmp_path / "msgs"
    datasets.Dataset.from_list([messages_row(i) for i in range(8)]).save_to_disk(str(folder))
    cfg, task = experiment(write_yaml, tmp_path, {"type": "hf_dataset", "path": str(folder), "format": "messages"})
    built = build_task(task, cfg)
    assert len(built.train) + len(built.test) == 8
    assert all(history_turns(r)[0]["content"] == SYSTEM for r in built.train)


@pytest.mark.parametrize(("source", "message"), [
    ({"split": "dev"}, "has no split 'dev' (source.split); its splits: train, validation"),
    ({"test_split": "test"}, "has no split 'test' (source.test_split)"),
])
def test_a_missing_split_lists_the_splits_there_are(write_yaml, tmp_path, saved_dict, source, message):
    cfg, task = experiment(write_yaml, tmp_path, {"type": "hf_dataset", "path": str(saved_dict), **source})
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_task(task, cfg)


def test_a_folder_that_is_no_saved_dataset_says_how_to_make_one(write_yaml, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data.jsonl").write_text("{}\n")
    cfg, task = experiment(write_yaml, tmp_path, {"type": "hf_dataset", "path": str(tmp_path / "plain")})
    with pytest.raises(DataError, match="not a saved dataset .* it holds data.jsonl.*save_to_disk"):
        build_task(task, cfg)
    cfg, task = experiment(write_yaml, tmp_path, {"type": "hf_dataset", "path": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="no such dataset folder"):
        build_task(task, cfg)


def test_one_saved_dataset_has_no_test_split_to_read(write_yaml, tmp_path):
    folder = tmp_path / "one"
    datasets.Dataset.from_list([{"instruction": "a", "input": "", "output": "b"}] * 3).save_to_disk(str(folder))
    cfg, task = experiment(write_yaml, tmp_path, {"type": "hf_dataset", "path": str(folder), "test_split": "test"})
    with pytest.raises(DataError, match="holds one Dataset, not a DatasetDict"):
        build_task(task, cfg)
