"""The five real domains of ../shared/data/cross_domain, read as their repositories ship them:
the counts its README states (skipped when this checkout has no ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep import ReadOptions, convert, read
from data_prep.common import dedupe, example_key
from tests.conftest import SHARED

CROSS_DOMAIN = SHARED / "data" / "cross_domain"


@pytest.fixture(scope="module")
def data() -> Path:
    if not CROSS_DOMAIN.is_dir():
        pytest.skip(f"no real cross-domain data at {CROSS_DOMAIN}")
    return CROSS_DOMAIN


def test_fomc_repeats_its_train_records_and_1919_are_unique(data) -> None:
    source = read("trace", data / "finance", ReadOptions(task="FOMC"))
    assert (len(source.train), len(source.test)) == (5000, 496) and source.labels == ["A", "B", "C"]
    kept, duplicates, conflicts = dedupe(source.train)
    assert 5000 - duplicates == 1919  # the README's unique records
    assert len(kept) + conflicts == 1919  # a few sentences carry two labels: the first is kept
    result = convert(source)
    assert result.counts.overlap > 0  # FOMC's test file repeats some training sentences
    assert not {example_key(e) for e in result.train} & {example_key(e) for e in result.test}


def test_scienceqa_has_5000_and_2000_lettered_records(data) -> None:
    source = read("trace", data / "science", ReadOptions(task="ScienceQA"))
    assert (len(source.train), len(source.test)) == (5000, 2000)
    assert {e.output for e in source.train} == {"A", "B", "C", "D"}
    assert source.train[0].input.endswith("Directly output only A or B or C or D as your answer.")


def test_gsm8k_has_7473_and_1319_records_each_ending_with_its_number(data) -> None:
    source = read("gsm8k", data / "math")
    assert (len(source.train), len(source.test)) == (7473, 1319)


def test_the_sources_without_a_test_split_get_a_seeded_disjoint_one(data) -> None:
    medical = read("chatdoctor", data / "medical" / "chatdoctor5k.json")
    code = read("alpaca", data / "code" / "code_alpaca_2k.json")
    assert len(medical.train) == 5452 and medical.test is None
    assert len(code.train) + code.skipped["empty output"] == 2017 and code.test is None
    for source in (medical, code):
        result = convert(source, test_ratio=0.1, seed=0)
        assert result.counts.test == round(0.1 * (result.counts.train + result.counts.test))
        assert not {example_key(e) for e in result.train} & {example_key(e) for e in result.test}
