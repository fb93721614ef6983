"""Scores as the field computes them: ROUGE-L is rouge-score's own, GSM8K's final number as
GSM8K / lm-evaluation-harness extract it, lettered choices, and the best of several references
(Super-NaturalInstructions), on hand-made cases."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from pipeline.metrics import (
    check_reference,
    choice_letter,
    final_number_match,
    letter_accuracy,
    predicted_number,
    record_scores,
    reference_number,
    references,
    rouge_l,
    score,
)

PAIRS = [("The patient should rest and drink fluids.", "Rest, drink plenty of fluids and see a doctor."),
         ("def add(a, b): return a + b", "def add(x, y):\n    return x + y"),
         ("running runners ran", "the runner runs"),  # stemming: run / runner
         ("", "anything"), ("Same text.", "same TEXT")]


@pytest.mark.parametrize("pred, ref", PAIRS)
def test_rouge_l_is_the_rouge_score_packages_own_f_measure(pred: str, ref: str) -> None:
    own = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l(pred, ref) == own


def test_several_references_score_the_best_one_as_super_ni_does() -> None:
    refs = ["the cat sat on the mat", "a cat was sitting"]
    assert record_scores("rouge_l", ["the cat sat"], [refs]) == [max(rouge_l("the cat sat", r) for r in refs)]
    assert record_scores("exact_match", ["Yes"], [["no", "yes"]]) == [1.0]
    assert record_scores("exact_match", ["maybe", "no"], [["no", "yes"], "no"]) == [0.0, 1.0]
    assert references({"output": "a", "references": '["a", "b"]'}) == ["a", "b"]
    assert references({"output": "a", "references": ""}) == references({"output": "a"}) == ["a"]


@pytest.mark.parametrize("pred, number", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),  # GSM8K's own form
    ("#### 1,000 and then 7", "1000"),  # the first #### wins (strict-match)
    ("She pays $18.", "18"),  # else the last number, "$" and the period ignored (flexible-extract)
    ("From 5 to 12 is 7...", "7"),
    ("It costs -3.5 dollars", "-3.5"),
    ("no number at all...", None),
])
def test_the_predicted_number_is_the_one_after_hashes_or_the_last_one(pred: str, number: str | None) -> None:
    assert predicted_number(pred) == number


def test_final_number_compares_the_reference_after_hashes_as_text() -> None:
    ref = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 1,800"
    assert reference_number(ref) == "1800"
    assert final_number_match("so she makes 1800", ref) == 1.0
    assert final_number_match("#### 1,800", ref) == 1.0
    assert final_number_match("1800 eggs, that is 9 a day", ref) == 0.0  # the last number is 9
    assert final_number_match("1800.00", ref) == 0.0  # compared as text, as GSM8K's is_correct does
    with pytest.raises(ValueError, match="has no '#### <number>'"):
        final_number_match("3", "three")


@pytest.mark.parametrize("pred, letter", [
    ("B", "B"), ("(C)", "C"), ("A. dovish", "A"), ("B) hawkish, because", "B"), ("Answer: D", "D"),
    ("I think the answer is (C), not A", "C"), ("b", "B"), ("Because of the Bank", None),
    ("the answer is a guess", None), ("", None),
])
def test_the_choice_letter_of_a_prediction(pred: str, letter: str | None) -> None:
    assert choice_letter(pred) == letter


def test_letter_accuracy_and_its_mean_over_records() -> None:
    assert letter_accuracy("C. neutral", "C") == 1.0 and letter_accuracy("hawkish", "B") == 0.0
    assert score("letter", ["A", "(B)", "Answer: A"], ["A", "C", "A"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not a choice letter"):
        letter_accuracy("A", "dovish")


def test_prepare_time_checks_name_what_a_metric_cannot_score() -> None:
    assert check_reference("final_number", "It is 4.") and check_reference("final_number", "x\n#### 4") is None
    assert check_reference("letter", "hawkish") and check_reference("letter", "B") is None
    assert check_reference("rouge_l", "anything") is None
