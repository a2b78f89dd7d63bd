"""Answer and retrieval metrics against hand-computed values."""

import pytest

from clara.answers import (
    answer_scores,
    char_sim,
    cover_em,
    exact_match,
    f1,
    normalize_answer,
)
from clara.eval.stats import bootstrap_ci
from clara.model.scoring import recall_at_k


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  A   cat,  an apple ", "cat apple"),
        ("Theatre of the Absurd", "theatre of absurd"),  # 'the' inside 'Theatre' is kept
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match("the Paris.", ["Paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("Lyon", ["Paris", "lyon"]) == 1.0  # best over golds
    assert exact_match("x", "x") == 1.0  # a single gold string is accepted
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_f1_hand_computed():
    # pred tokens: [paris, france, city] ; gold: [paris] -> P=1/3, R=1, F1=0.5
    assert f1("Paris France city", ["Paris"]) == pytest.approx(0.5)
    # pred [new, york, city], gold [new, york] -> P=2/3, R=1 -> 0.8
    assert f1("New York City", ["new york"]) == pytest.approx(0.8)
    # duplicates count once per match: pred [a_b, a_b], gold [a_b] -> P=1/2, R=1 -> 2/3
    assert f1("foo foo", ["foo"]) == pytest.approx(2 / 3)
    assert f1("London", ["Paris"]) == 0.0
    assert f1("London", ["Paris", "London town"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1("the", ["a"]) == 1.0  # both normalise to empty
    assert f1("the", ["Paris"]) == 0.0


def test_cover_em_contiguous_tokens():
    assert cover_em("The capital is Paris, France.", ["Paris France"]) == 1.0
    assert cover_em("France, Paris", ["Paris France"]) == 0.0  # order matters
    assert cover_em("Paris is in France", ["Paris France"]) == 0.0  # must be contiguous
    assert cover_em("a Parisian cafe", ["Paris"]) == 0.0  # whole tokens only
    assert cover_em("He was born in 1834.", ["1834"]) == 1.0
    assert cover_em("nothing", ["x", "nothing"]) == 1.0


def test_recall_at_k():
    ranked = [4, 2, 7, 0, 1]
    assert recall_at_k(ranked, 2, 1) == 0.0
    assert recall_at_k(ranked, 2, 2) == 1.0
    assert recall_at_k(ranked, [2, 0], 3) == 0.5  # two-hop: one of two golds in top-3
    assert recall_at_k(ranked, [2, 0], 4) == 1.0
    assert recall_at_k(ranked, [9], 5) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(ranked, [], 3)
    with pytest.raises(ValueError):
        recall_at_k(ranked, 2, 0)


def test_char_sim_grades_near_spellings_and_takes_the_best_gold():
    assert char_sim("Teibath", "Teisath") == pytest.approx(12 / 14)  # "tei" + "ath" match
    assert char_sim("The Teisath.", ["Kor", "teisath"]) == 1.0  # normalised, best gold
    assert char_sim("", "Teisath") == 0.0 and char_sim("1994", "1984") == pytest.approx(6 / 8)


def test_answer_scores_means():
    s = answer_scores(["Paris", "It is Lyon", "Rome"], [["paris"], ["Lyon"], ["Milan"]])
    assert s["n"] == 3
    assert s["em"] == pytest.approx(1 / 3)
    assert s["cover_em"] == pytest.approx(2 / 3)
    # f1: 1 + (pred [it, is, lyon] vs [lyon] -> P=1/3 R=1 -> 0.5) + 0
    assert s["f1"] == pytest.approx(1.5 / 3)
    # char_sim: 1 + "it is lyon" vs "lyon" (2·4/14) + "rome" vs "milan" (one "m": 2·1/9)
    assert s["char_sim"] == pytest.approx((1 + 8 / 14 + 2 / 9) / 3)
    with pytest.raises(ValueError):
        answer_scores(["a"], [])


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_items():
    import numpy as np

    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # no spread, no interval
    values = np.random.default_rng(1).normal(0.5, 1.0, size=400)
    mean, low, high = bootstrap_ci(values)
    assert mean == pytest.approx(values.mean()) and low < mean < high
    # about 2 standard errors each side (1/sqrt(400) = 0.05)
    assert high - low == pytest.approx(4 * values.std() / 20, rel=0.15)
    _, low4, high4 = bootstrap_ci(values[:100])
    assert high4 - low4 > 1.5 * (high - low)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
