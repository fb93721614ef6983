"""Token caps: one max_seq_len cap keeps today's tokens byte for byte; separate prompt and answer
caps keep the answer and the instruction header and cut the middle of the input."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from pipeline.config import ModelSpec
from pipeline.data.build import length_stats, token_lengths
from pipeline.errors import ConfigError
from pipeline.experiment import load_config
from pipeline.prompts.batching import IGNORE, encode_prompts_left_padded, tokenize_for_training
from pipeline.prompts.templates import PROMPT_FORMATS, build_prompt, build_response, prompt_parts
from pipeline.prompts.truncation import TokenCaps, keep_middle_out

INSTRUCTION = "Classify the sentiment of the review as positive or negative."
LONG_INPUT = "BEGIN " + " ".join(f"word{i}" for i in range(300)) + " END"
LONG_ANSWER = " ".join(f"answer{i}" for i in range(100))


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from pipeline.runtime.models import load_tokenizer

    return load_tokenizer("bundled:smollm2")


def _record(input: str = LONG_INPUT, output: str = "positive") -> dict[str, str]:
    return {"instruction": INSTRUCTION, "input": input, "output": output}


def _ids(text: str, prompt_format: str) -> list[int]:
    return _tokenizer()(text, add_special_tokens=prompt_format != "chat_template")["input_ids"]


def _prompt_ids(record: dict[str, str], prompt_format: str) -> list[int]:
    return _ids(build_prompt(_tokenizer(), prompt_format, record["instruction"], record["input"]), prompt_format)


def _old_training(records: list[dict], prompt_format: str, max_len: int) -> list[dict[str, list[int]]]:
    """The single-cap rule as it was before separate caps existed, written out independently."""
    out = []
    for rec in records:
        p = _prompt_ids(rec, prompt_format)
        r = _tokenizer()(build_response(_tokenizer(), rec["output"]), add_special_tokens=False)["input_ids"]
        r = r[:max_len - 1]
        p = p[-(max_len - len(r)):]
        out.append({"input_ids": p + r, "labels": [IGNORE] * len(p) + r})
    return out


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_prompt_parts_split_the_prompt_at_the_input(prompt_format: str) -> None:
    head, body, tail = prompt_parts(_tokenizer(), prompt_format, INSTRUCTION, "the film was great")
    assert head + body + tail == build_prompt(_tokenizer(), prompt_format, INSTRUCTION, "the film was great")
    assert body == "the film was great" and INSTRUCTION in head
    # Without an input, the instruction is what a long prompt may lose.
    head, body, tail = prompt_parts(_tokenizer(), prompt_format, INSTRUCTION, "")
    assert body == INSTRUCTION


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_one_cap_keeps_todays_tokens_byte_for_byte(prompt_format: str) -> None:
    records = [_record(), _record("short input", LONG_ANSWER), _record("short", "negative")]
    for max_len in (40, 64, 400):
        old = _old_training(records, prompt_format, max_len)
        assert tokenize_for_training(_tokenizer(), prompt_format, records, max_len) == old
        caps = TokenCaps.of(ModelSpec(max_seq_len=max_len, prompt_format=prompt_format))
        assert not caps.separate
        assert tokenize_for_training(_tokenizer(), prompt_format, records, caps) == old
        enc = encode_prompts_left_padded(_tokenizer(), prompt_format, records, caps)
        for row, mask, rec in zip(enc["input_ids"], enc["attention_mask"], records, strict=True):
            assert row[mask.bool()].tolist() == _prompt_ids(rec, prompt_format)[-max_len:]


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_separate_caps_keep_the_header_and_answer_marker_and_cut_the_inputs_middle(prompt_format: str) -> None:
    caps = TokenCaps(total=128, prompt=64, answer=16)
    rec = _record(output=LONG_ANSWER)
    [ex] = tokenize_for_training(_tokenizer(), prompt_format, [rec], caps)
    n_prompt = sum(label == IGNORE for label in ex["labels"])
    prompt, answer = ex["input_ids"][:n_prompt], ex["input_ids"][n_prompt:]
    full_answer = _tokenizer()(build_response(_tokenizer(), LONG_ANSWER), add_special_tokens=False)["input_ids"]
    assert answer == full_answer[:16]
    assert len(prompt) == 64
    head, _, tail = prompt_parts(_tokenizer(), prompt_format, rec["instruction"], rec["input"])
    full = _prompt_ids(rec, prompt_format)
    text = _tokenizer().decode(prompt)
    # The header (BOS, instruction) opens the prompt, the answer marker closes it, both unchanged.
    head_ids = _ids(head, prompt_format)
    assert prompt[:len(head_ids) - 1] == full[:len(head_ids) - 1]
    assert prompt[-3:] == full[-3:]
    assert INSTRUCTION in text and "BEGIN" in text and "END" in text
    assert "word150" not in text  # the middle of the input went
    assert tail.strip() in text


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_eval_prompts_are_cut_as_training_prompts(prompt_format: str) -> None:
    caps = TokenCaps(total=128, prompt=64, answer=64)
    records = [_record(), _record("a short input")]
    train = tokenize_for_training(_tokenizer(), prompt_format, records, caps)
    enc = encode_prompts_left_padded(_tokenizer(), prompt_format, records, caps)
    for ex, row, mask in zip(train, enc["input_ids"], enc["attention_mask"], strict=True):
        n_prompt = sum(label == IGNORE for label in ex["labels"])
        assert row[mask.bool()].tolist() == ex["input_ids"][:n_prompt]
    # A prompt that fits its cap is the plain tokenization of the prompt.
    assert train[1]["input_ids"][:len(_prompt_ids(records[1], prompt_format))] == _prompt_ids(records[1], prompt_format)


def test_a_header_longer_than_the_cap_keeps_both_ends_of_the_prompt() -> None:
    rec = {"instruction": LONG_INPUT, "input": "the film was great", "output": "positive"}
    [ex] = tokenize_for_training(_tokenizer(), "llama2_chat", [rec], TokenCaps(total=64, prompt=32, answer=8))
    full = _prompt_ids(rec, "llama2_chat")
    n_prompt = sum(label == IGNORE for label in ex["labels"])
    assert ex["input_ids"][:n_prompt] == keep_middle_out(full, 32)


def test_only_an_answer_cap_leaves_the_rest_of_max_seq_len_to_the_prompt() -> None:
    caps = TokenCaps(total=100, answer=10)
    assert caps.answer_cap() == 10 and caps.prompt_cap(10) == 90 and caps.prompt_cap() == 100
    caps = TokenCaps(total=100, prompt=60)
    assert caps.answer_cap() == 40 and caps.prompt_cap(40) == 60


def test_keep_middle_out_keeps_the_ends() -> None:
    assert keep_middle_out(list(range(10)), 5) == [0, 1, 2, 8, 9]
    assert keep_middle_out(list(range(10)), 1) == [0]
    assert keep_middle_out(list(range(10)), 0) == []
    assert keep_middle_out([1, 2], 5) == [1, 2]


@pytest.mark.parametrize("caps", [TokenCaps(total=96), TokenCaps(total=96, prompt=48, answer=24),
                                  TokenCaps(total=96, answer=12)])
def test_prepare_counts_truncation_as_training_cuts(caps: TokenCaps) -> None:
    records = [_record(), _record("short", LONG_ANSWER), _record("short", "negative"),
               _record(" ".join(["word"] * 40), "positive")]
    lengths = token_lengths(_tokenizer(), "plain", records)
    examples = tokenize_for_training(_tokenizer(), "plain", records, caps)
    cut = sum(len(ex["input_ids"]) < p + r for ex, (p, r) in zip(examples, lengths, strict=True))
    assert length_stats(lengths, caps)["truncated"] == cut
    assert 0 < cut < len(records)


def test_prompt_and_answer_caps_must_fit_max_seq_len(write_yaml, small_experiment) -> None:
    path = write_yaml(small_experiment)
    cfg = load_config(path, ["model.max_seq_len=96", "model.max_prompt_len=64", "model.max_answer_len=32"])
    assert TokenCaps.of(cfg.model) == TokenCaps(96, 64, 32)
    with pytest.raises(ConfigError, match="max_prompt_len \\+ max_answer_len = 97 exceeds max_seq_len = 96"):
        load_config(path, ["model.max_seq_len=96", "model.max_prompt_len=64", "model.max_answer_len=33"])


def test_the_caps_enter_prepares_tokenizer_hash_only_when_set(write_yaml, small_experiment) -> None:
    from pipeline.data.prepared import tokenizer_hash
    from pipeline.state.artifacts import sha256_json

    path = write_yaml(small_experiment)
    plain = load_config(path)
    m = plain.model
    # Unset caps keep the hash that runs prepared before separate caps existed recorded.
    assert tokenizer_hash(plain) == sha256_json({"name": m.name_or_path, "prompt_format": m.prompt_format,
                                                 "max_seq_len": m.max_seq_len})
    assert tokenizer_hash(load_config(path, ["model.max_answer_len=16"])) != tokenizer_hash(plain)
