"""Metrics, defined once: continual-learning metrics of the accuracy matrix, and task metrics on strings.

Accuracy matrix (0-based): `a[j][i]` = score on task i after training task j; `b[i]` = the
untrained model's score on task i. With T = number of trained rows (docs/design.md section 3):

    AA         = mean_i a[T-1][i]
    BWT        = 1/(T-1) sum_{i<T-1} (a[T-1][i] - a[i][i])
    forgetting = 1/(T-1) sum_{i<T-1} (max_{l<T-1} a[l][i] - a[T-1][i])
    FWT        = 1/(T-1) sum_{i>=1}  (a[i-1][i] - b[i])

The forgetting max runs over every row before the last (l = 0..T-2), as docs/design.md writes it,
including rows from before task i was trained (Chaudhry et al. 2018 do the same); those rows
score an unlearned task, so they rarely raise the max.

A partial matrix (R rows of T scores, R < T: a run still in progress) is scored as the run so
far: the metrics of its leading R x R block, i.e. of the R tasks learned so far.
"""

from __future__ import annotations

import functools
import math
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import EvalSpec

from pipeline.errors import ConfigError

Matrix = Sequence[Sequence[float]]

# ---- continual-learning metrics ------------------------------------------------------------


def _check_number(value: object, where: str) -> float:
    # bool is an int subclass; a True score is a bug upstream, not a 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} is {value!r}: every score must be a finite number")
    return float(value)


def check_matrix(a: Matrix) -> tuple[int, int]:
    """(rows, tasks) of `a` after checking it is a non-empty, rectangular, rows <= tasks matrix."""
    if len(a) == 0:
        raise ValueError("the accuracy matrix has no rows: evaluate after at least one task")
    width = len(a[0])
    for j, row in enumerate(a):
        if len(row) != width:
            raise ValueError(f"ragged accuracy matrix: row {j} has {len(row)} scores, row 0 has {width}; "
                             "every row must score every task")
        for i, value in enumerate(row):
            _check_number(value, f"a[{j}][{i}]")
    if len(a) > width:
        raise ValueError(f"the accuracy matrix has {len(a)} rows but only {width} tasks: "
                         "there is one row per trained task")
    return len(a), width


def _square(a: Matrix) -> list[list[float]]:
    """The leading R x R block: the tasks learned so far (all of `a` when it is complete)."""
    rows, _ = check_matrix(a)
    return [[float(v) for v in row[:rows]] for row in a]


def average_accuracy(a: Matrix) -> float:
    """AA: mean score over the learned tasks after the last trained task."""
    m = _square(a)
    return sum(m[-1]) / len(m)


def backward_transfer(a: Matrix) -> float | None:
    """BWT: how training later tasks changed earlier ones (negative = forgetting). None for T=1."""
    m = _square(a)
    t = len(m)
    if t < 2:
        return None
    return sum(m[t - 1][i] - m[i][i] for i in range(t - 1)) / (t - 1)


def forgetting(a: Matrix) -> float | None:
    """Mean drop from each earlier task's best score (rows before the last) to its final score."""
    m = _square(a)
    t = len(m)
    if t < 2:
        return None
    drops = (max(m[row][i] for row in range(t - 1)) - m[t - 1][i] for i in range(t - 1))
    return sum(drops) / (t - 1)


def forward_transfer(a: Matrix, b: Sequence[float] | None) -> float | None:
    """FWT: score on task i just before training it, minus the untrained score. None for T=1 or no b."""
    m = _square(a)
    t = len(m)
    if b is None or t < 2:
        return None
    width = len(a[0])
    if len(b) != width:
        raise ValueError(f"the untrained row has {len(b)} scores but the matrix scores {width} tasks")
    base = [_check_number(v, f"b[{i}]") for i, v in enumerate(b)]
    return sum(m[i - 1][i] - base[i] for i in range(1, t)) / (t - 1)


def cl_metrics(a: Matrix, b: Sequence[float] | None = None) -> dict[str, float | None]:
    """AA, BWT, forgetting and FWT of `a` (FWT needs the untrained row `b`); None = undefined."""
    return {
        "AA": average_accuracy(a),
        "BWT": backward_transfer(a),
        "forgetting": forgetting(a),
        "FWT": forward_transfer(a, b),
    }


# ---- task metrics on strings ---------------------------------------------------------------

# Characters a model wraps an answer in ("positive", **positive**, (B)) that never carry meaning.
_WRAPPERS = "\"'`*“”‘’«»()[]{}<>"
# Only sentence-final punctuation is dropped at the end: a leading "-" (as in -3) is the answer.
_TRAILING = ".,;:!?"
_SPACE = re.compile(r"\s+")


def normalize_answer(s: str) -> str:
    """Lowercase, NFKC, collapse whitespace, strip wrapping quotes/brackets and a trailing period."""
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", s).lower()).strip()
    previous = None
    # Repeat: `"positive."` needs the quote stripped before the period is exposed, and vice versa.
    while text != previous:
        previous = text
        text = text.strip(_WRAPPERS + string.whitespace).rstrip(_TRAILING).strip()
    return text


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


_NOT_WORD = re.compile(r"[^\w\s]")


def reference_words(s: str) -> list[str]:
    """Words as the SLM reference's LLaMA scorer sees them: every character that is neither a
    word character nor whitespace becomes a space, then the text splits on whitespace.
    Behaviour of Pbihao/SLM: Llama2_fine_tune/score.py, `accuracy_score` (the finance and
    history/MMLU accuracy of the paper's LLaMA-2 table)."""
    return _NOT_WORD.sub(" ", s).split()


def first_word_accuracy(pred: str, ref: str) -> float:
    """The SLM reference's LLaMA metric: the prediction's first word equals the answer's.

    As in the reference, case counts ("Positive" != "positive") and nothing else is normalised;
    an empty prediction scores 0. The reference asserts one-word answers; prepare checks that
    for first_word tasks, and a longer answer here is compared by its first word.
    """
    gold = reference_words(ref)
    if not gold:
        raise ValueError(f"first_word: the reference answer {ref!r} has no word to compare")
    said = reference_words(pred)
    return float(bool(said) and said[0] == gold[0])


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:  # rouge_score ships no type hints
    from rouge_score import rouge_scorer  # lazy: only free-text tasks need it

    # Stemming as in the Super-NaturalInstructions / O-LoRA evaluation code.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (rouge-score package; it lowercases and keeps only a-z0-9 tokens)."""
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


@functools.lru_cache(maxsize=1)
def _bert_scorer(model: str, layer: int, batch_size: int) -> Any:  # bert_score ships no type hints
    from bert_score import BERTScorer  # lazy: loads torch and the encoder

    # bert-score looks a layer up by model name only for names it knows, so it is always passed;
    # it loads the model with AutoModel.from_pretrained(model) and keeps its first `layer` blocks.
    try:
        return BERTScorer(model_type=model, num_layers=layer, batch_size=batch_size)
    except AssertionError as e:  # bert-score checks the layer with assert
        raise ConfigError(f"eval.bertscore_layer={layer}: {e}") from None
    except OSError as e:
        raise ConfigError(f"eval.bertscore_model={model!r} could not be loaded ({e}); give a local model "
                          f"folder, or a hub id on a machine that can reach the hub") from None


def bertscore_f1(preds: Sequence[str], refs: Sequence[Any], settings: EvalSpec | None = None) -> list[float]:
    """BERTScore F1 per record (bert-score package), computed in batches over all records.

    No idf weighting and no baseline rescaling, as the reference's `evaluate.load("bertscore")
    .compute(lang="en")` (Pbihao/SLM: Llama2_fine_tune/score.py): raw F1, near 1.0 for close
    paraphrases and still well above 0 for unrelated English (rescaled scores would be neither
    in [0, 1] nor the reference's numbers).
    """
    from pipeline.config import EvalSpec

    s = settings or EvalSpec()
    scorer = _bert_scorer(s.bertscore_model, s.bertscore_layer, s.batch_size)
    _, _, f1 = scorer.score(list(preds), list(refs), batch_size=s.batch_size)
    return [float(x) for x in f1]


# ---- GSM8K's final number, lettered choices -------------------------------------------------------

# GSM8K's own answer pattern (openai/grade-school-math: grade_school_math/dataset.py, ANS_RE), which is
# also lm-evaluation-harness's "strict-match" filter of its gsm8k task.
_GSM8K_FINAL = re.compile(r"#### (\-?[0-9\.\,]+)")
# lm-evaluation-harness's "flexible-extract" filter (group_select -1: the last match).
_ANY_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _clean_number(text: str) -> str:
    """What lm-evaluation-harness's gsm8k exact match ignores: commas, "$" and the final period
    (here every final period, so "7..." is 7)."""
    return re.sub(r"\.+$", "", text.replace(",", "").replace("$", ""))


def reference_number(ref: str) -> str | None:
    """The number after `####` in a GSM8K reference (commas removed), or None when it has none."""
    found = _GSM8K_FINAL.search(ref)
    return _clean_number(found.group(1)) if found else None


def predicted_number(pred: str) -> str | None:
    """The number a prediction ends on: after its first `####` when it writes one (strict-match),
    else its last number (flexible-extract; a match must hold a digit, so "..." is no number)."""
    strict = _GSM8K_FINAL.search(pred)
    if strict:
        return _clean_number(strict.group(1))
    numbers = [m.group(0) for m in _ANY_NUMBER.finditer(pred) if any(c.isdigit() for c in m.group(0))]
    return _clean_number(numbers[-1]) if numbers else None


def final_number_match(pred: str, ref: str) -> float:
    """GSM8K's score: the prediction's final number equals the reference's `#### n`, compared as
    text after removing commas, "$" and a final period (GSM8K's is_correct and lm-evaluation-harness
    compare strings, so 18.00 is not 18)."""
    gold = reference_number(ref)
    if gold is None:
        raise ValueError(f"final_number: the reference {ref[-80:]!r} has no '#### <number>' to compare with")
    said = predicted_number(pred)
    return float(said is not None and said == gold)


_LETTERS = "ABCDE"
# "Answer: B", "the answer is (B)": an explicit answer wins over any earlier letter.
# The word "answer" in any case, the letter a capital ("the answer is a guess" picks nothing).
_ANSWER_IS = re.compile(r"(?i:answer)\s*(?:is|:)?\s*[:(\[]?\s*([A-E])(?![A-Za-z])")
# A standalone capital choice letter: "B", "(B)", "B.", "B) hawkish"; not the B of "Bank".
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")


def choice_letter(text: str) -> str | None:
    """The choice a text picks: an explicit "Answer: X" / "answer is (X)", else its first standalone
    capital letter A-E, else the whole text when it is one lowercase letter ("b", "(b)")."""
    explicit = _ANSWER_IS.search(text)
    if explicit:
        return explicit.group(1)
    first = _STANDALONE.search(text)
    if first:
        return first.group(1)
    bare = normalize_answer(text)
    return bare.upper() if len(bare) == 1 and bare.upper() in _LETTERS else None


def letter_accuracy(pred: str, ref: str) -> float:
    """Lettered multiple choice (TRACE's FOMC and ScienceQA): the prediction's choice letter is the
    reference's. The reference must be a letter A-E (prepare checks it)."""
    gold = choice_letter(ref)
    if gold is None:
        raise ValueError(f"letter: the reference {ref[:80]!r} is not a choice letter A-E")
    return float(choice_letter(pred) == gold)


def check_reference(metric_name: str, ref: str) -> str | None:
    """Why `ref` cannot be scored by `metric_name` (found at prepare time), or None."""
    if metric_name == "final_number" and reference_number(ref) is None:
        return "has no final '#### <number>' (metric final_number scores that number)"
    if metric_name == "letter" and normalize_answer(ref).upper() not in tuple(_LETTERS):
        return "is not one choice letter A-E (metric letter compares letters)"
    return None


# ---- scoring a task --------------------------------------------------------------------------------

# Task metric name (TaskSpec.metric) -> per-record score in [0, 1].
# label_choice: the model's chosen label is compared to the gold label by exact match.
TASK_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "label_choice": exact_match,
    "first_word": first_word_accuracy,
    "rouge_l": rouge_l,
    "final_number": final_number_match,
    "letter": letter_accuracy,
}
# Metrics that need a model and score all records at once: (preds, refs, eval settings) -> scores.
BATCH_METRICS: dict[str, Callable[[Sequence[str], Sequence[Any], EvalSpec | None], list[float]]] = {
    "bertscore": bertscore_f1,
}
Reference = str | Sequence[str]  # one answer, or every accepted answer of a record


def references(record: dict[str, Any]) -> list[str]:
    """Every accepted answer of a prepared record: its `references` column (JSON text, several
    answers: Super-NaturalInstructions) when set, else its output."""
    import json

    refs = record.get("references")
    return json.loads(refs) if refs else [record["output"]]


def record_scores(metric_name: str, preds: Sequence[str], refs: Sequence[Reference],
                  settings: EvalSpec | None = None) -> list[float]:
    """The score of every record, in order, in [0, 1]. A record with several references scores its
    best one (max over references, as Super-NaturalInstructions' ROUGE-L and exact match do).

    `settings` (the experiment's `eval` section) configures the model-based metrics; None = defaults.
    """
    if metric_name not in TASK_METRICS and metric_name not in BATCH_METRICS:
        valid = ", ".join([*TASK_METRICS, *BATCH_METRICS])
        raise ValueError(f"unknown task metric {metric_name!r}; valid: {valid}")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references: they must pair up")
    if not preds:
        raise ValueError("no records to score: the task's test split is empty")
    options = [[r] if isinstance(r, str) else list(r) for r in refs]
    if any(not o for o in options):
        raise ValueError("a record has an empty list of references")
    if metric_name in BATCH_METRICS:
        # bert-score takes a list of references per candidate and keeps the best (its multi-reference mode)
        flat = [o[0] if len(o) == 1 else o for o in options]
        return [float(x) for x in BATCH_METRICS[metric_name](preds, flat, settings)]
    fn = TASK_METRICS[metric_name]
    return [max(fn(p, r) for r in o) for p, o in zip(preds, options, strict=True)]


def score(metric_name: str, preds: Sequence[str], refs: Sequence[Reference], settings: EvalSpec | None = None) -> float:
    """Mean per-record score of `preds` against `refs` under `metric_name`, in [0, 1]."""
    scores = record_scores(metric_name, preds, refs, settings)
    return sum(scores) / len(scores)
