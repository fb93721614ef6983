"""The paired bootstrap of an AA difference (pipeline.report.paired) on hand-made scores: what it
says for identical methods, for a constant shift, on a case computed by hand, and how the
interval moves with the number of records and with runs that share their records."""

from __future__ import annotations

import pytest

from pipeline.report.paired import aa_difference, paired_bootstrap, verdict


def test_identical_methods_differ_by_zero_and_are_level() -> None:
    runs = [{"a": [1, 0, 1, 1], "b": [0.2, 0.9, 0.4]}, {"a": [0, 0, 1, 1], "b": [0.5, 0.5, 0.5]}]
    out = paired_bootstrap(runs, runs)
    assert (out["diff"], out["low"], out["high"], out["verdict"]) == (0.0, 0.0, 0.0, "level")


def test_a_constant_shift_is_that_shift_and_above_or_below() -> None:
    b = [{"a": [0.1, 0.5, 0.3], "b": [0.0, 0.2]}]
    a = [{t: [s + 0.1 for s in scores] for t, scores in run.items()} for run in b]
    up = paired_bootstrap(a, b)
    assert up["diff"] == pytest.approx(0.1) and up["low"] == pytest.approx(0.1) and up["verdict"] == "above"
    assert paired_bootstrap(b, a)["verdict"] == "below"


def test_a_small_case_computed_by_hand() -> None:
    # one task, 4 records, A wins 3 and ties 1: a resampled mean difference is k/4 with k ~ Binomial(4, 3/4),
    # P(k <= 1) = 13/256 ~ 0.051 > 0.025 >= P(k = 0) = 1/256, so the 2.5th percentile is 1/4; P(k <= 3) ~ 0.68
    # < 0.975, so the 97.5th is 1
    out = paired_bootstrap([{"t": [1, 1, 1, 0]}], [{"t": [0, 0, 0, 0]}], n_boot=20_000)
    assert out["diff"] == 0.75 and out["low"] == 0.25 and out["high"] == 1.0 and out["verdict"] == "above"
    # AA averages the per-task means within a run, then the runs
    a = [{"x": [1, 0], "y": [1, 1, 1, 1]}, {"x": [1, 1], "y": [0, 0, 0, 0]}]
    b = [{"x": [0, 0], "y": [0, 0, 0, 1]}, {"x": [1, 0], "y": [0, 0, 0, 0]}]
    assert aa_difference(a, b) == pytest.approx(((0.5 + 0.75) / 2 + (0.5 + 0.0) / 2) / 2)


def test_the_interval_narrows_with_more_records_and_holds_the_difference() -> None:
    a, b = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1], [0, 0, 1, 0, 1, 1, 0, 0, 1, 0]
    few = paired_bootstrap([{"t": a}], [{"t": b}])
    many = paired_bootstrap([{"t": a * 9}], [{"t": b * 9}])
    assert few["diff"] == pytest.approx(many["diff"]) == pytest.approx(0.3)
    assert many["high"] - many["low"] < (few["high"] - few["low"]) / 2  # 9x the records: about 1/3 the width
    assert few["low"] < 0.3 < few["high"] and few["verdict"] == "level" and many["verdict"] == "above"


def test_runs_on_the_same_records_share_one_resample() -> None:
    a, b = {"t": [1, 0, 1, 1, 0, 1]}, {"t": [0, 0, 1, 0, 1, 0]}
    one = paired_bootstrap([a], [b], seed=3)
    shared = paired_bootstrap([a, a, a], [b, b, b], seed=3)
    apart = paired_bootstrap([a, a, a], [b, b, b], seed=3, shared_records=False)
    # the same records three times are the same evidence; drawn apart they would pass for 3x the records
    assert (shared["low"], shared["high"]) == (one["low"], one["high"])
    assert apart["high"] - apart["low"] < shared["high"] - shared["low"]


@pytest.mark.parametrize("a, b, message", [
    ([{"t": [1, 0]}], [{"t": [1]}], "2 records scored for A, 1 for B"),
    ([{"t": [1]}], [{"u": [1]}], "every run of both must score the same tasks"),
    ([{"t": [1]}], [], "1 runs of A against 0 of B"),
    ([{"t": [1]}, {"t": [1, 0]}], [{"t": [1]}, {"t": [0, 0]}], "shared_records=True needs every run"),
])
def test_unpaired_inputs_are_refused(a, b, message) -> None:
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b)


def test_the_verdict_needs_the_whole_interval_on_one_side() -> None:
    assert [verdict(0.01, 0.2), verdict(-0.2, -0.01), verdict(0.0, 0.2), verdict(-0.1, 0.1)] == \
        ["above", "below", "level", "level"]
