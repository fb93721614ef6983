"""One task's fixed splits: load, de-duplicate, seeded shuffle, split, few-shot, cap, overlap check.

Then token-length statistics of the prompt + response the model will see, so too-small token
caps show up at prepare time rather than as silently truncated answers: `cut_warnings` names each
cap (model.max_seq_len, model.max_answer_len, model.max_prompt_len, eval.max_new_tokens) that cuts
more than CUT_WARN_FRACTION of a task's references, and the length that would fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ExperimentConfig, TaskSpec
from pipeline.data.readers import BadRecords
from pipeline.data.records import Located, Record, record_key, stable_rng, stable_shuffle
from pipeline.data.sources import load_source
from pipeline.errors import ConfigError, DataError
from pipeline.metrics import check_reference, reference_words
from pipeline.prompts.templates import build_prompt, build_response, history_turns, prompt_add_special_tokens
from pipeline.prompts.truncation import TokenCaps


@dataclass
class PreparedTask:
    spec: TaskSpec
    origin: str
    train: list[Record]
    test: list[Record]
    labels: list[str] | None
    own_test_split: bool  # the source had its own test split (else a random one was cut)
    label_dropped: int  # records skipped by source.drop_labels
    duplicates_dropped: int  # repeated inputs removed before a random split
    train_per_label: dict[str, int] | None = None  # few-shot (max_train_per_label): records kept per label
    overlap_dropped: int = 0  # test records repeating a training input, dropped (data.on_overlap=drop_test)
    validation: list[Record] = field(default_factory=list)  # data.validation_ratio: held out of training
    validation_dropped: int = 0  # validation records repeating a train or test input, dropped


def build_task(task: TaskSpec, cfg: ExperimentConfig) -> PreparedTask:
    src = load_source(task, cfg)
    rng = stable_rng("split", cfg.data.seed, task.name)
    duplicates = src.duplicates
    if src.test is None:
        # Duplicates must go before a random cut, or copies would land on both sides.
        pool, more = _dedupe(src.train)
        duplicates += more
        if len(pool) < 2:
            raise DataError(f"{src.origin}: task {task.name!r} has {len(pool)} distinct record(s); "
                            f"a train/test split needs at least 2")
        pool = stable_shuffle(pool, rng)
        n_test = min(len(pool) - 1, max(1, round(len(pool) * cfg.data.test_ratio)))
        test, train = pool[:n_test], pool[n_test:]
    else:
        # Shuffle the source's own splits too: files are often sorted by label, and caps then
        # take a label-mixed sample.
        train, test = stable_shuffle(src.train, rng), stable_shuffle(src.test, rng)
    train, validation = carve_validation(task.name, train, cfg.data.validation_ratio, cfg.data.max_validation)
    per_label = None
    if task.max_train_per_label is not None:
        train, per_label = few_shot(task, src.labels, train)
    train = train[: task.max_train]
    test, overlap_dropped = resolve_overlap(task.name, train, test, task.max_test, cfg.data.on_overlap)
    validation, validation_dropped = disjoint(validation, train + test)
    if task.metric == "first_word":
        check_one_word_answers(task.name, test + validation)
    check_references(task, test + validation)
    return PreparedTask(task, src.origin, [x.record for x in train], [x.record for x in test], src.labels,
                        src.test is not None, src.dropped, duplicates, per_label, overlap_dropped,
                        [x.record for x in validation], validation_dropped)


def carve_validation(task: str, train: list[Located], ratio: float, cap: int | None
                     ) -> tuple[list[Located], list[Located]]:
    """(train, validation): the last round(ratio * n) records of the shuffled training pool (at most
    `cap`) become the validation split. From the end, because the training records are taken from
    the front (max_train): a task capped below its pool trains on the same records either way."""
    if ratio <= 0:
        return train, []
    n = min(max(1, round(ratio * len(train))), cap or len(train))
    if n >= len(train):
        raise DataError(f"task {task!r}: data.validation_ratio={ratio} would leave {len(train) - n} of its "
                        f"{len(train)} training records to train on; lower the ratio or data.max_validation")
    return train[:-n], train[-n:]


def disjoint(validation: list[Located], others: list[Located]) -> tuple[list[Located], int]:
    """The validation records whose input repeats no train or test input (a source's own test split,
    or duplicates within a training file, may): (kept, dropped)."""
    seen = {record_key(x.record) for x in others}
    kept = [v for v in validation if record_key(v.record) not in seen]
    return kept, len(validation) - len(kept)


def few_shot(task: TaskSpec, labels: list[str] | None, train: list[Located]) -> tuple[list[Located], dict[str, int]]:
    """The first k records of each label in the (already seeded-shuffled) train order, in that order.

    A label with fewer than k records keeps all of them; the counts go into the manifest.
    """
    k = task.max_train_per_label
    if not labels:
        raise ConfigError(f"task {task.name!r}: max_train_per_label={k} needs a label set, and this task has "
                          f"none (free-text outputs); give the task `labels:` or drop max_train_per_label")
    taken = dict.fromkeys(labels, 0)
    kept = []
    for item in train:
        label = item.record["output"]
        if taken.get(label, k) < k:  # outputs lie in the label set (checked on load)
            taken[label] += 1
            kept.append(item)
    return kept, taken


def check_one_word_answers(task: str, test: list[Located]) -> None:
    """first_word compares one-word answers (the reference asserts it): a longer gold answer is a
    wrong metric choice, found here rather than after training."""
    bad = BadRecords(f"the test split of task {task!r}")
    for t in test:
        words = reference_words(t.record["output"])
        if len(words) != 1:
            bad.add(f"task {task!r}: test record {t.where} has the answer {t.record['output'][:80]!r}, "
                    f"{len(words)} words after stripping punctuation; metric first_word needs one-word "
                    f"answers (labels, letters). Use exact_match, rouge_l or bertscore for this task")
    bad.raise_any()


def check_references(task: TaskSpec, test: list[Located]) -> None:
    """Every test answer can be scored by the task's metric (a GSM8K number, a choice letter):
    a wrong metric for the data is found here, not after training."""
    for t in test:
        problem = check_reference(task.metric, t.record["output"])
        if problem:
            raise DataError(f"task {task.name!r}: test record {t.where} has the answer {t.record['output'][-80:]!r}, "
                            f"which {problem}; choose the metric that fits the answers (rouge_l for free text)")


def _dedupe(items: list[Located]) -> tuple[list[Located], int]:
    seen: dict[str, Located] = {}
    for item in items:
        seen.setdefault(record_key(item.record), item)
    return list(seen.values()), len(items) - len(seen)


def resolve_overlap(task: str, train: list[Located], test: list[Located], max_test: int | None,
                    on_overlap: str) -> tuple[list[Located], int]:
    """The first `max_test` test records, none of which repeats a training example (normalised
    instruction ### input): on_overlap=error refuses a repeat among them, drop_test skips it and
    takes the next test record instead. Returns (test, records skipped). Both give the same test
    records whenever `error` passes."""
    by_key = {record_key(x.record): x for x in train}
    kept: list[Located] = []
    dropped = 0
    for t in test:
        if max_test is not None and len(kept) == max_test:
            break
        hit = by_key.get(record_key(t.record))
        if hit is None:
            kept.append(t)
        elif on_overlap == "drop_test":
            dropped += 1
        else:
            raise DataError(f"task {task!r}: test record {t.where} is also a training record ({hit.where}) "
                            f"after normalisation (lowercase, collapsed whitespace): input "
                            f"{t.record['input'][:100]!r}. Train and test must not overlap: remove it "
                            f"from one of the splits, or set data.on_overlap=drop_test to drop such test "
                            f"records (counted in the manifest as overlap_dropped)")
    return kept, dropped


def token_lengths(tokenizer: Any, prompt_format: str, records: list[Record]) -> list[tuple[int, int]]:
    """(prompt, response) tokens per record, untruncated, tokenized the way training does (batched)."""
    if not records:
        return []
    prompts = [build_prompt(tokenizer, prompt_format, r["instruction"], r["input"], history_turns(r)) for r in records]
    responses = [build_response(tokenizer, r["output"]) for r in records]
    p_ids = tokenizer(prompts, add_special_tokens=prompt_add_special_tokens(prompt_format))["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [(len(p), len(r)) for p, r in zip(p_ids, r_ids, strict=True)]


def length_stats(lengths: list[tuple[int, int]], caps: int | TokenCaps) -> dict[str, Any]:
    """min / mean / p95 (nearest rank) / max of prompt + response tokens, and how many records
    training would cut (`caps`: max_seq_len alone, or separate prompt and answer caps)."""
    if not lengths:
        return {"min": 0, "mean": 0.0, "p95": 0, "max": 0, "truncated": 0}
    caps = TokenCaps.coerce(caps)
    s = sorted(p + r for p, r in lengths)
    return {"min": s[0], "mean": round(sum(s) / len(s), 1), "p95": s[math.ceil(0.95 * len(s)) - 1],
            "max": s[-1], "truncated": sum(caps.truncates(p, r) for p, r in lengths)}


CUT_WARN_FRACTION = 0.05  # a cap that cuts more than this share of a task's records gets a warning
FIT_QUANTILE = 0.95  # the length a warning proposes: what fits this share of the records
NOT_GENERATED = ("label_choice",)  # metrics that score the labels' likelihood: eval generates nothing


def cut_warnings(task: str, metric: str, train: list[tuple[int, int]], test: list[tuple[int, int]],
                 caps: TokenCaps, max_new_tokens: int, eos: bool) -> list[str]:
    """One line per cap that cuts more than CUT_WARN_FRACTION of the task's references, naming
    the key and the length that would fit FIT_QUANTILE of them. `train`/`test`: (prompt, answer)
    tokens per record (the answer with its EOS when `eos`)."""
    found = []
    answers = [r for _, r in train]
    if not caps.separate:  # one cap: the prompt loses its start first, then the answer its end
        sequences = [p + r for p, r in train]
        found.append(_cut(task, "model.max_seq_len", caps.total, sequences, _quantile(sequences),
                          "training prompts lose their start"))
    elif caps.answer is not None:
        found.append(_cut(task, "model.max_answer_len", caps.answer_cap(), answers, _quantile(answers),
                          "training answers lose their end"))
    if caps.prompt is not None:
        prompts = [p for p, _ in train]
        found.append(_cut(task, "model.max_prompt_len", caps.prompt, prompts, _quantile(prompts),
                          "training prompts lose their middle"))
    if metric not in NOT_GENERATED:
        generated = [r - eos for _, r in test]  # generation stops at EOS: the answer's own tokens suffice
        found.append(_cut(task, "eval.max_new_tokens", max_new_tokens, generated, _quantile(generated),
                          "test answers cannot be generated whole"))
    return [line for line in found if line]


def _cut(task: str, key: str, cap: int, lengths: list[int], fit: int, what: str) -> str | None:
    cut = sum(n > cap for n in lengths)
    if not lengths or cut <= CUT_WARN_FRACTION * len(lengths):
        return None
    return (f"task {task!r}: {key}={cap} cuts {cut} of {len(lengths)} records ({100 * cut / len(lengths):.0f} %: "
            f"{what}); {key}={fit} fits {FIT_QUANTILE:.0%} of them (the longest needs {max(lengths)})")


def _quantile(lengths: list[int]) -> int:
    """The FIT_QUANTILE nearest-rank length (0 for none)."""
    s = sorted(lengths)
    return s[math.ceil(FIT_QUANTILE * len(s)) - 1] if s else 0
