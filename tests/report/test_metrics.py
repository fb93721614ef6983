"""Continual-learning metrics on hand-made matrices (expected values worked out by hand), and task metrics."""

from __future__ import annotations

import pytest

from pipeline.metrics import (
    average_accuracy,
    backward_transfer,
    check_matrix,
    cl_metrics,
    exact_match,
    first_word_accuracy,
    forgetting,
    forward_transfer,
    normalize_answer,
    reference_words,
    rouge_l,
    score,
)

# a[j][i]: score on task i after training task j.
PERFECT_RETENTION = [
    [0.9, 0.1, 0.2],
    [0.9, 0.8, 0.3],
    [0.9, 0.8, 0.7],
]
FORGETS = [
    [0.8, 0.0, 0.0],
    [0.4, 0.9, 0.1],
    [0.2, 0.5, 1.0],
]
UNTRAINED = [0.1, 0.0, 0.2]


def test_perfect_retention_has_zero_bwt_and_zero_forgetting() -> None:
    m = cl_metrics(PERFECT_RETENTION, UNTRAINED)
    assert m["AA"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert m["BWT"] == pytest.approx(0.0)
    assert m["forgetting"] == pytest.approx(0.0)
    # FWT: (a[0][1] - b[1] + a[1][2] - b[2]) / 2 = (0.1 - 0.0 + 0.3 - 0.2) / 2
    assert m["FWT"] == pytest.approx(0.1)


def test_a_forgetting_matrix_has_negative_bwt_and_positive_forgetting() -> None:
    # BWT: ((0.2 - 0.8) + (0.5 - 0.9)) / 2 = -0.5
    assert backward_transfer(FORGETS) == pytest.approx(-0.5)
    # forgetting: max over rows 0..1 minus last: task 0: 0.8 - 0.2, task 1: 0.9 - 0.5 -> (0.6 + 0.4) / 2
    assert forgetting(FORGETS) == pytest.approx(0.5)
    assert average_accuracy(FORGETS) == pytest.approx((0.2 + 0.5 + 1.0) / 3)
    # FWT: ((0.0 - 0.0) + (0.1 - 0.2)) / 2 = -0.05
    assert forward_transfer(FORGETS, UNTRAINED) == pytest.approx(-0.05)


def test_forgetting_takes_the_max_over_every_row_before_the_last() -> None:
    # Task 0 peaks in row 1 (0.9 > its diagonal 0.5); task 1 scores 0.7 in row 0, before it was
    # trained, and docs/design.md's max_{l<T} counts that row too. BWT uses the diagonal instead.
    a = [
        [0.5, 0.7, 0.0],
        [0.9, 0.6, 0.0],
        [0.3, 0.6, 0.8],
    ]
    assert forgetting(a) == pytest.approx(((0.9 - 0.3) + (0.7 - 0.6)) / 2)
    assert backward_transfer(a) == pytest.approx(((0.3 - 0.5) + (0.6 - 0.6)) / 2)


def test_a_single_task_has_aa_only_and_null_transfer_metrics() -> None:
    m = cl_metrics([[0.7]], [0.2])
    assert m == {"AA": pytest.approx(0.7), "BWT": None, "forgetting": None, "FWT": None}


def test_fwt_is_none_without_the_untrained_row() -> None:
    assert cl_metrics(FORGETS)["FWT"] is None


def test_a_partial_matrix_is_scored_on_the_tasks_learned_so_far() -> None:
    partial = FORGETS[:2]  # 2 rows of 3 tasks: a run that has learned tasks 0 and 1
    m = cl_metrics(partial, UNTRAINED)
    assert m["AA"] == pytest.approx((0.4 + 0.9) / 2)
    assert m["BWT"] == pytest.approx(0.4 - 0.8)
    assert m["forgetting"] == pytest.approx(0.8 - 0.4)
    assert m["FWT"] == pytest.approx(0.0 - 0.0)


def test_a_ragged_matrix_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="ragged.*row 1 has 2 scores"):
        check_matrix([[0.1, 0.2, 0.3], [0.1, 0.2]])


@pytest.mark.parametrize(
    ("a", "message"),
    [([], "no rows"), ([[0.1], [0.2]], "2 rows but only 1 tasks"), ([[0.1, None]], "finite number"),
     ([[float("nan")]], "finite number")],
)
def test_malformed_matrices_are_rejected(a: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cl_metrics(a)


def test_an_untrained_row_of_the_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="untrained row has 2 scores"):
        forward_transfer(FORGETS, [0.0, 0.0])


# ---- task metrics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("  Positive.  ", "positive"),
        ('"Paris"', "paris"),
        ("'negative'.", "negative"),
        ('positive."', "positive"),
        ("**Yes**", "yes"),
        ("New   York\n City", "new york city"),
        ("-3", "-3"),  # a leading minus is the answer, not punctuation
        ("3.5", "3.5"),
        ("", ""),
    ],
)
def test_normalize_answer_strips_case_space_quotes_and_a_trailing_period(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_exact_match_compares_normalised_answers() -> None:
    assert exact_match(" Positive.", "positive") == 1.0
    assert exact_match("-3", "3") == 0.0
    assert exact_match("positive sentiment", "positive") == 0.0


def test_first_word_accuracy_strips_punctuation_as_the_reference_does() -> None:
    # Pbihao/SLM Llama2_fine_tune/score.py: non-word, non-space characters become spaces, the
    # first whitespace-separated words are compared, case included.
    assert first_word_accuracy("positive, because the review is glowing.", "positive") == 1.0
    assert first_word_accuracy('"Paris" is the capital', "Paris.") == 1.0
    assert first_word_accuracy("(B) 1848", "B") == 1.0
    assert first_word_accuracy("don't know", "don") == 1.0  # the apostrophe splits the word
    assert first_word_accuracy("Positive", "positive") == 0.0  # no case folding in the reference
    assert first_word_accuracy("negative", "positive") == 0.0
    assert first_word_accuracy("", "positive") == 0.0
    assert first_word_accuracy("...", "positive") == 0.0
    assert reference_words("well-known_fact: yes!") == ["well", "known_fact", "yes"]
    with pytest.raises(ValueError, match="reference answer '!!' has no word"):
        first_word_accuracy("yes", "!!")


def test_rouge_l_matches_hand_computed_values() -> None:
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 tokens each way -> F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS = 1 ("a"), precision 1/2, recall 1/4 -> F = 2 * 1/2 * 1/4 / (3/4) = 1/3.
    assert rouge_l("a b", "a c d e") == pytest.approx(1 / 3)
    assert rouge_l("dog", "cat") == 0.0


def test_score_averages_the_chosen_metric_over_records() -> None:
    preds, refs = ["Positive.", "negative", "neutral"], ["positive", "positive", "neutral"]
    assert score("exact_match", preds, refs) == pytest.approx(2 / 3)
    assert score("label_choice", preds, refs) == pytest.approx(2 / 3)
    assert score("first_word", ["Paris is big", "rome"], ["Paris", "Milan"]) == pytest.approx(0.5)
    assert score("rouge_l", ["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("name", "preds", "refs", "message"),
    [("bleu", ["a"], ["a"], "unknown task metric 'bleu'"), ("exact_match", ["a"], [], "1 predictions for 0"),
     ("exact_match", [], [], "no records")],
)
def test_score_rejects_bad_input_with_a_clear_message(name: str, preds: list, refs: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score(name, preds, refs)
