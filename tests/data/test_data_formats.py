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
from pipeline.prompts.templates import build_prompt, build_response, history_turns
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


# ---- which assistant turns are learned (source.train_on) ----------------------------------------------


def learned_text(tok, example: dict) -> list[str]:
    """The learned stretches of one training example, decoded (special tokens kept)."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label >= 0:
            assert label == token  # a learned token is predicted as itself
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    return [tok.decode(r) for r in [*runs, current] if r]


@pytest.mark.parametrize("prompt_format", ["chat_template", "llama2_chat", "plain"])
def test_every_assistant_turn_is_learned_with_all_turns_and_only_the_last_with_last_turn(prompt_format):
    tok = load_tokenizer("bundled:smollm2")
    record = {"task": "chat", "instruction": "And its capital, 3?", "input": "", "output": "Capital 3.",
              "history": json.dumps([{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": "Name country number 3."},
                                     {"role": "assistant", "content": "Country 3."},
                                     {"role": "user", "content": "And its population?"},
                                     {"role": "assistant", "content": "Some millions."}])}
    [last] = tokenize_for_training(tok, prompt_format, [record], TokenCaps(256))
    [every] = tokenize_for_training(tok, prompt_format, [record], TokenCaps(256), all_turns={"chat"})
    assert every["input_ids"] == last["input_ids"]  # the same sequence; only what is learned differs
    answer = build_response(tok, "Capital 3.")
    assert learned_text(tok, last) == [answer]
    # Each earlier answer with the end marker its format writes after it (the SmolLM2 tokenizer's
    # EOS is <|im_end|>, so llama2_chat's literal </s> is context; a leading space joins the word).
    earlier = {"chat_template": [f"Country 3.{tok.eos_token}", f"Some millions.{tok.eos_token}"],
               "llama2_chat": [" Country 3.", " Some millions."], "plain": ["Country 3.", "Some millions."]}
    assert learned_text(tok, every) == [*earlier[prompt_format], answer]
    counted = sum(len(tok(text, add_special_tokens=False)["input_ids"]) for text in [*earlier[prompt_format], answer])
    assert sum(x >= 0 for x in every["labels"]) == counted > sum(x >= 0 for x in last["labels"])


def test_a_cut_conversation_keeps_its_labels_aligned_with_what_is_left():
    tok = load_tokenizer("bundled:smollm2")
    history = [{"role": "user", "content": f"Question {i} " + "word " * 20} if i % 2 == 0 else
               {"role": "assistant", "content": f"Answer {i}."} for i in range(8)]
    record = {"task": "chat", "instruction": "Last question?", "input": "", "output": "Last answer.",
              "history": json.dumps(history)}
    [whole] = tokenize_for_training(tok, "chat_template", [record], TokenCaps(1024), all_turns={"chat"})
    [cut] = tokenize_for_training(tok, "chat_template", [record], TokenCaps(96), all_turns={"chat"})
    assert len(cut["input_ids"]) == len(cut["labels"]) == 96
    assert cut["input_ids"] == whole["input_ids"][-96:] and cut["labels"] == whole["labels"][-96:]


class _RewritingTemplate:
    """A tokenizer whose chat template drops earlier answers' text (as some reasoning templates do)."""

    chat_template = "x"
    eos_token = "</s>"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<{m['role']}>{'...' if m['role'] == 'assistant' else m['content']}" for m in messages)


def test_a_template_that_rewrites_earlier_answers_trains_the_final_answer_only():
    from pipeline.prompts.templates import assistant_spans

    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert assistant_spans(_RewritingTemplate(), "chat_template", "q2", "", history) is None
    tok = load_tokenizer("bundled:smollm2")
    spans = assistant_spans(tok, "chat_template", "q2", "", history)
    prompt = build_prompt(tok, "chat_template", "q2", "", history)
    assert [prompt[s:e] for s, e in spans] == [f"a1{tok.eos_token}"]


def test_train_on_defaults_to_all_turns_and_leaves_the_prepared_data_alone(write_yaml, tmp_path):
    from pipeline.data.prepared import task_prepare_inputs

    data = write_jsonl(tmp_path / "chat.jsonl", [sharegpt_row(i) for i in range(6)])
    source = {"type": "file", "path": str(data), "format": "sharegpt"}
    cfg, task = experiment(write_yaml, tmp_path, source)
    assert task.source.train_on == "all_turns"
    last, _ = experiment(write_yaml, tmp_path, {**source, "train_on": "last_turn"})
    # the records are the same; training differs
    assert task_prepare_inputs(last.tasks[0], last) == task_prepare_inputs(cfg.tasks[0], cfg)
    with pytest.raises(ConfigError, match="train_on"):
        experiment(write_yaml, tmp_path, {**source, "train_on": "every"})


# ---- Alpaca's system and history columns -------------------------------------------------------------


def alpaca_row(i: int) -> dict[str, Any]:
    return {"instruction": f"And the capital of country {i}?", "input": "", "output": f"Capital {i}.",
            "system": SYSTEM, "history": [[f"Name country number {i}.", f"Country {i}."]]}


def test_alpaca_system_and_history_become_the_earlier_turns(write_yaml, tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", [alpaca_row(i) for i in range(8)])
    cfg, task = experiment(write_yaml, tmp_path, {"type": "file", "path": str(data)})
    built = build_task(task, cfg)
    record = next(r for r in built.train + built.test if r["output"] == "Capital 3.")
    assert history_turns(record) == [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": "Name country number 3."},
                                     {"role": "assistant", "content": "Country 3."}]
    tok = load_tokenizer("bundled:smollm2")
    assert SYSTEM in prompts(tok, "chat_template", [record])[0]
    # the same conversation as ShareGPT gives the same prompt
    shared = write_jsonl(tmp_path / "chat.jsonl", [sharegpt_row(3)])
    _, chat_task = experiment(write_yaml, tmp_path, {"type": "file", "path": str(shared), "format": "sharegpt"})
    from pipeline.data.sources import load_source

    as_chat = load_source(chat_task, cfg).train[0].record
    as_chat_prompt = build_prompt(tok, "chat_template", "And the capital of country 3?", "", history_turns(as_chat))
    assert prompts(tok, "chat_template", [record])[0] == as_chat_prompt
    single = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)]
    plain = write_jsonl(tmp_path / "plain.jsonl", single)
    cfg2, plain_task = experiment(write_yaml, tmp_path, {"type": "file", "path": str(plain)})
    assert all("history" not in r for r in build_task(plain_task, cfg2).train)  # single turns: unchanged


@pytest.mark.parametrize(("history", "message"), [
    ([["only the question"]], "history[0] must be a [user, assistant] pair"),
    ([["q", " "]], "history[0] has an empty answer"),
    ("not json", "is text that is not JSON"),
    ({"q": "a"}, "must be a list of [user, assistant] pairs"),
])
def test_a_bad_alpaca_history_names_the_line_and_the_pair(write_yaml, tmp_path, history, message):
    data = write_jsonl(tmp_path / "alpaca.jsonl", [alpaca_row(0), {**alpaca_row(1), "history": history}])
    cfg, task = experiment(write_yaml, tmp_path, {"type": "file", "path": str(data)})
    with pytest.raises(DataError) as err:
        build_task(task, cfg)
    assert f"{data}:2: " in str(err.value) and message in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("train_on", ["all_turns", "last_turn"])
def test_slm_train_learns_the_turns_train_on_names(write_yaml, tmp_path, tiny_model_dir, monkeypatch, train_on):
    from pipeline.cli import main as slm
    from pipeline.stages import train

    seen: list[list[dict]] = []
    real = train.tokenize_for_training
    monkeypatch.setattr(train, "tokenize_for_training", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    data = write_jsonl(tmp_path / "chat.jsonl", [sharegpt_row(i) for i in range(10)])
    raw = {"name": "turns", "output_dir": str(tmp_path / "out"),
           "model": {"name_or_path": tiny_model_dir, "max_seq_len": 128},
           "train": {"max_steps": 1, "micro_batch_size": 2, "save_every": 1},
           "tasks": [{"name": "chat", "source": {"type": "file", "path": str(data), "format": "sharegpt",
                                                 "train_on": train_on}, "metric": "rouge_l"}]}
    path = write_yaml(raw)
    assert slm(["prepare", "-c", str(path)]) == 0
    assert slm(["train", "-c", str(path), "--task", "0"]) == 0
    [examples] = seen
    tok = load_tokenizer(tiny_model_dir)
    records = load_prepared(load_config(path), RunLayout.of(load_config(path)))["chat"]["train"]
    answers = sum(len(tok(build_response(tok, r["output"]), add_special_tokens=False)["input_ids"]) for r in records)
    earlier = sum(len(tok(f"Country {r['output'].split()[1].rstrip('.')}.{tok.eos_token}",
                          add_special_tokens=False)["input_ids"]) for r in records)
    supervised = sum(label >= 0 for e in examples for label in e["labels"])
    assert supervised == answers + (earlier if train_on == "all_turns" else 0)
