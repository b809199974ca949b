"""Paired significance tests against independent references.

References: an exhaustive enumeration of all 2^n sign flips in exact rational arithmetic,
``scipy.stats.permutation_test`` and ``scipy.stats.bootstrap`` (scipy is a test-only
dependency), a hand-worked Holm example, a naive Holm loop, and ``statsmodels`` when installed.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from colbert_lightning.evaluation import significance
from colbert_lightning.evaluation.significance import (
    PairedComparison,
    QuerySetMismatchError,
    bootstrap_interval,
    compare_runs,
    comparison_table,
    holm_adjust,
    paired_permutation_test,
)


def _scores(queries: int = 200, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, queries)


def _clearly_better(baseline: np.ndarray, seed: int = 2) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 0.02, len(baseline))
    return np.clip(baseline + 0.1 + noise, 0.0, 1.0)


def _noise_only(baseline: np.ndarray, seed: int = 3) -> np.ndarray:
    """Per-query differences that are exactly symmetric around 0: +e and -e, shuffled."""
    generator = np.random.default_rng(seed)
    half = generator.normal(0.0, 0.05, len(baseline) // 2)
    return baseline + generator.permutation(np.concatenate([half, -half]))


def _exact_p(differences: list[Fraction]) -> float:
    """Two-sided p over all 2^n sign flips, in exact arithmetic (no ties lost to rounding)."""
    observed = abs(sum(differences))
    hits = sum(
        abs(sum(sign * value for sign, value in zip(signs, differences, strict=True))) >= observed
        for signs in itertools.product((1, -1), repeat=len(differences))
    )
    return hits / 2 ** len(differences)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(y - x, axis=axis)


# --- the permutation test ---------------------------------------------------------------------


def test_identical_runs_give_p_exactly_one():
    baseline = _scores()
    assert paired_permutation_test(baseline, baseline.copy()) == 1.0
    assert paired_permutation_test([0.5, 0.5], [0.5, 0.5], permutations=1) == 1.0


def test_a_clearly_better_run_gives_a_small_p():
    baseline = _scores()
    p_value = paired_permutation_test(baseline, _clearly_better(baseline))
    assert p_value < 0.01
    assert p_value == pytest.approx(1 / 10_001)  # no flip comes near the observed mean
    # two-sided: a clearly worse run is as significant
    assert paired_permutation_test(_clearly_better(baseline), baseline) == p_value


def test_a_run_that_differs_only_by_symmetric_noise_gives_a_large_p():
    baseline = _scores()
    assert paired_permutation_test(baseline, _noise_only(baseline)) > 0.9
    # noise that is symmetric only in distribution: still far from significant for this seed
    noisy = baseline + np.random.default_rng(4).normal(0.0, 0.05, len(baseline))
    assert paired_permutation_test(baseline, noisy) > 0.2


def test_matches_an_exhaustive_enumeration_of_all_sign_flips():
    differences = [0.3, 0.1, 0.25, -0.05, 0.2, 0.15, -0.1, 0.05, -0.3, 0.12]
    exact = _exact_p([Fraction(value).limit_denominator(1000) for value in differences])
    assert 0.05 < exact < 0.5  # a p-value where Monte-Carlo error shows
    estimate = paired_permutation_test([0.0] * 10, differences, permutations=200_000, seed=7)
    assert estimate == pytest.approx(exact, abs=0.005)  # ~ 6 standard errors


def test_counts_flips_that_tie_the_observed_mean_despite_rounding():
    # reciprocal ranks (mrr@10): many flips reach exactly the observed |sum|, which floating
    # point sums in another order can miss by an ulp
    ranks_baseline = [1, 2, 3, 1, 7, 5, 1, 3, 9, 2]
    ranks_other = [2, 1, 1, 3, 3, 1, 6, 1, 3, 7]
    exact = _exact_p(
        [
            Fraction(1, other) - Fraction(1, base)
            for base, other in zip(ranks_baseline, ranks_other, strict=True)
        ]
    )
    baseline = [1 / rank for rank in ranks_baseline]
    other = [1 / rank for rank in ranks_other]
    estimate = paired_permutation_test(baseline, other, permutations=200_000, seed=11)
    assert estimate == pytest.approx(exact, abs=0.005)
    # every flip ties when all differences have the same magnitude
    assert paired_permutation_test([0.0] * 6, [1 / 3, -1 / 3] * 3, permutations=1_000) == 1.0
    assert paired_permutation_test([1 / 7] * 9, [2 / 7] * 9, permutations=1_000) == pytest.approx(
        2 / 512, abs=0.004
    )
    thirds_and_sevenths = [Fraction(1, 3)] * 5 + [Fraction(-1, 3)] * 2 + [Fraction(1, 7)] * 3
    estimate = paired_permutation_test(
        [0.0] * 10, [float(value) for value in thirds_and_sevenths], permutations=200_000, seed=12
    )
    assert estimate == pytest.approx(_exact_p(thirds_and_sevenths), abs=0.005)


def test_matches_scipy_exact_on_ten_queries():
    generator = np.random.default_rng(5)
    baseline = generator.uniform(0.0, 1.0, 10)
    other = baseline + generator.normal(0.08, 0.15, 10)
    reference = stats.permutation_test(
        (baseline, other),
        _mean_difference,
        permutation_type="samples",
        alternative="two-sided",
        vectorized=True,
        n_resamples=np.inf,  # exact: all 2^10 pairings
    ).pvalue
    ours = paired_permutation_test(baseline, other, permutations=200_000, seed=3)
    assert ours == pytest.approx(reference, abs=0.005)


@pytest.mark.parametrize("shift", [0.0, 0.01, 0.02])
def test_matches_scipy_monte_carlo_on_three_hundred_queries(shift):
    generator = np.random.default_rng(6)
    baseline = generator.uniform(0.0, 1.0, 300)
    other = np.clip(baseline + shift + generator.normal(0.0, 0.15, 300), 0.0, 1.0)
    reference = stats.permutation_test(
        (baseline, other),
        _mean_difference,
        permutation_type="samples",
        alternative="two-sided",
        vectorized=True,
        n_resamples=50_000,
        batch=5_000,
        rng=np.random.default_rng(8),
    ).pvalue
    ours = paired_permutation_test(baseline, other, permutations=50_000, seed=9)
    assert ours == pytest.approx(reference, abs=0.015)


def test_is_reproducible_and_independent_of_the_chunk_size(monkeypatch):
    baseline = _scores(57)
    other = baseline + np.random.default_rng(12).normal(0.02, 0.1, 57)
    expected = paired_permutation_test(baseline, other, permutations=3_001, seed=4)
    assert paired_permutation_test(baseline, other, permutations=3_001, seed=4) == expected
    assert paired_permutation_test(baseline, other, permutations=3_001, seed=5) != expected
    monkeypatch.setattr(significance, "CHUNK_ELEMENTS", 100)  # 1 row of 57 per chunk
    assert paired_permutation_test(baseline, other, permutations=3_001, seed=4) == expected
    monkeypatch.setattr(significance, "CHUNK_ELEMENTS", 57 * 400)  # 7 full chunks and a rest
    assert paired_permutation_test(baseline, other, permutations=3_001, seed=4) == expected


def test_draws_at_most_a_chunk_of_random_numbers_at_once(monkeypatch):
    largest: list[int] = []
    default_rng = np.random.default_rng

    class RecordingGenerator:
        def __init__(self, seed: int) -> None:
            self.generator = default_rng(seed)

        def random(self, size: tuple[int, int]) -> np.ndarray:
            largest.append(size[0] * size[1])
            return self.generator.random(size)

        def integers(self, low: int, high: int, size: tuple[int, int]) -> np.ndarray:
            largest.append(size[0] * size[1])
            return self.generator.integers(low, high, size=size)

    scores = _scores(7_000)
    monkeypatch.setattr(significance.np.random, "default_rng", RecordingGenerator)
    monkeypatch.setattr(significance, "CHUNK_ELEMENTS", 7_000 * 10)
    paired_permutation_test(scores, scores + 0.01 * (scores - 0.5), permutations=1_000)
    bootstrap_interval(scores, resamples=1_000)
    assert max(largest) <= 7_000 * 10
    assert sum(largest) == 2 * 1_000 * 7_000


@pytest.mark.parametrize(
    ("baseline", "other", "message"),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2], "baseline has 3 scores, other has 2"),
        ([0.1], [0.2], "at least 2 queries"),
        ([], [], "at least 2 queries"),
        ([0.1, float("nan")], [0.2, 0.3], "nan"),
        ([0.1, 0.2], [0.2, float("inf")], "inf"),
    ],
)
def test_refuses_unpaired_or_too_few_or_non_finite_scores(baseline, other, message):
    with pytest.raises(ValueError, match=message):
        paired_permutation_test(baseline, other)


def test_refuses_no_permutations():
    with pytest.raises(ValueError, match="permutations must be at least 1"):
        paired_permutation_test([0.1, 0.2], [0.2, 0.3], permutations=0)


# --- the bootstrap interval -------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_bootstrap_interval_matches_scipy_percentile(confidence):
    differences = np.random.default_rng(13).normal(0.03, 0.1, 200)
    reference = stats.bootstrap(
        (differences,),
        np.mean,
        method="percentile",
        confidence_level=confidence,
        n_resamples=20_000,
        batch=2_000,
        rng=np.random.default_rng(14),
    ).confidence_interval
    low, high = bootstrap_interval(differences, resamples=20_000, confidence=confidence, seed=15)
    standard_error = differences.std(ddof=1) / np.sqrt(len(differences))  # ~0.007
    assert low == pytest.approx(reference.low, abs=0.1 * standard_error)
    assert high == pytest.approx(reference.high, abs=0.1 * standard_error)
    assert low < differences.mean() < high


def test_bootstrap_interval_is_independent_of_the_chunk_size(monkeypatch):
    differences = np.random.default_rng(16).normal(0.0, 0.1, 31)
    expected = bootstrap_interval(differences, resamples=2_001, seed=2)
    monkeypatch.setattr(significance, "CHUNK_ELEMENTS", 31 * 300)
    assert bootstrap_interval(differences, resamples=2_001, seed=2) == expected


@pytest.mark.parametrize(
    ("differences", "resamples", "confidence", "message"),
    [
        ([0.1], 100, 0.95, "at least 2 queries"),
        ([0.1, 0.2], 0, 0.95, "resamples must be at least 1"),
        ([0.1, 0.2], 100, 1.0, "confidence must be strictly between 0 and 1"),
        ([0.1, 0.2], 100, 0.0, "confidence must be strictly between 0 and 1"),
    ],
)
def test_bootstrap_interval_refuses_bad_settings(differences, resamples, confidence, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(differences, resamples=resamples, confidence=confidence)


# --- Holm -------------------------------------------------------------------------------------


def _naive_holm(p_values: list[float]) -> list[float]:
    """Holm by its definition: the largest step-down bound over the hypotheses ranked up to it."""
    count = len(p_values)
    ranked = sorted(range(count), key=lambda index: p_values[index])
    adjusted = [0.0] * count
    for position, index in enumerate(ranked):
        adjusted[index] = min(
            1.0,
            max((count - earlier) * p_values[ranked[earlier]] for earlier in range(position + 1)),
        )
    return adjusted


def test_holm_on_a_hand_worked_example():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> max 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.3, 0.5]) == pytest.approx([0.6, 0.6])
    assert holm_adjust([0.6, 0.9]) == [1.0, 1.0]  # capped
    assert holm_adjust([0.02, 0.02]) == pytest.approx([0.04, 0.04])  # ties
    assert holm_adjust([0.2]) == [0.2]
    assert holm_adjust([]) == []


def test_holm_matches_a_naive_loop():
    generator = np.random.default_rng(17)
    for count in (2, 3, 7, 20):
        p_values = list(generator.uniform(0.0, 0.2, count) ** 2)
        assert holm_adjust(p_values) == pytest.approx(_naive_holm(p_values))


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p_values = [0.01, 0.04, 0.03, 0.005, 0.2, 0.0001]
    _, reference, _, _ = multitest.multipletests(p_values, method="holm")
    assert holm_adjust(p_values) == pytest.approx(list(reference))


@pytest.mark.parametrize("p_values", [[0.1, 1.5], [-0.1], [float("nan"), 0.2]])
def test_holm_refuses_values_that_are_not_p_values(p_values):
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        holm_adjust(p_values)


# --- compare_runs -----------------------------------------------------------------------------


def _as_run(scores: np.ndarray) -> dict[str, float]:
    return {f"q{number}": float(score) for number, score in enumerate(scores)}


def test_compare_runs_reports_means_tests_and_holm():
    baseline = _scores()
    better = _clearly_better(baseline)
    noisy = _noise_only(baseline)
    results = compare_runs(
        _as_run(baseline),
        {"better": _as_run(better), "noisy": _as_run(noisy)},
        "ndcg@10",
        baseline_name="bm25",
        permutations=2_000,
        resamples=2_000,
    )
    assert [result.name for result in results] == ["better", "noisy"]
    first, second = results
    assert isinstance(first, PairedComparison)
    assert (first.baseline_name, first.metric, first.queries) == ("bm25", "ndcg@10", 200)
    assert first.baseline_mean == pytest.approx(baseline.mean())
    assert first.mean == pytest.approx(better.mean())
    assert first.mean_difference == pytest.approx(np.mean(better - baseline))
    assert first.interval_low < first.mean_difference < first.interval_high
    assert first.interval_low > 0.0
    assert first.p_value == paired_permutation_test(baseline, better, permutations=2_000, seed=0)
    assert [first.adjusted_p_value, second.adjusted_p_value] == holm_adjust(
        [first.p_value, second.p_value]
    )
    assert first.significant and not second.significant
    assert second.interval_low < 0.0 < second.interval_high


def test_compare_runs_pairs_by_query_id_not_by_order():
    baseline = _as_run(_scores(50))
    other = _as_run(_scores(50, seed=9))
    shuffled = dict(reversed(list(other.items())))
    [in_order] = compare_runs(baseline, {"other": other}, "mrr@10", permutations=500, resamples=500)
    [reversed_rows] = compare_runs(
        baseline, {"other": shuffled}, "mrr@10", permutations=500, resamples=500
    )
    assert in_order == reversed_rows


def test_a_runs_p_value_does_not_depend_on_the_other_runs_of_the_call():
    baseline = _as_run(_scores(80))
    first = _as_run(_scores(80, seed=21))
    second = _as_run(_scores(80, seed=22))
    [alone] = compare_runs(baseline, {"a": first}, "ndcg@10", permutations=500, resamples=500)
    together, _ = compare_runs(
        baseline, {"a": first, "b": second}, "ndcg@10", permutations=500, resamples=500
    )
    assert (together.p_value, together.interval_low) == (alone.p_value, alone.interval_low)
    assert together.adjusted_p_value >= alone.adjusted_p_value


def test_compare_runs_refuses_different_query_sets():
    baseline = {f"q{number}": 0.5 for number in range(10)}
    other = {f"q{number}": 0.6 for number in range(3, 12)}
    with pytest.raises(QuerySetMismatchError) as caught:
        compare_runs(baseline, {"same": dict(baseline), "colbert": other}, "ndcg@10")
    message = str(caught.value)
    assert caught.value.name == "colbert"
    assert "run 'colbert' has 9 queries and baseline 'baseline' has 10" in message
    assert "2 only in 'colbert': 'q10', 'q11'" in message
    assert "3 only in 'baseline': 'q0', 'q1', 'q2'" in message


def test_the_mismatch_error_shows_only_a_few_ids():
    baseline = {f"q{number:03d}": 0.5 for number in range(100)}
    other = {"q000": 0.5, "q001": 0.5}
    with pytest.raises(ValueError, match=r"98 only in 'bm25': 'q002', .*\(93 more\)") as caught:
        compare_runs(baseline, {"colbert": other}, "ndcg@10", baseline_name="bm25")
    assert "q099" not in str(caught.value)


def test_a_subset_of_the_baselines_queries_is_refused_too():
    baseline = {"q1": 0.1, "q2": 0.2, "q3": 0.3}
    with pytest.raises(ValueError, match="1 only in 'baseline': 'q3'"):
        compare_runs(baseline, {"other": {"q1": 0.2, "q2": 0.3}}, "ndcg@10")


@pytest.mark.parametrize(
    ("others", "alpha", "message"),
    [
        ({}, 0.05, "at least one run"),
        ({"other": {"q1": 0.2, "q2": 0.3}}, 0.0, "alpha must be strictly between 0 and 1"),
        ({"other": {"q1": 0.2, "q2": float("nan")}}, 0.05, "run 'other' \\(ndcg@10\\)"),
    ],
)
def test_compare_runs_refuses_bad_input(others, alpha, message):
    with pytest.raises(ValueError, match=message):
        compare_runs({"q1": 0.1, "q2": 0.2}, others, "ndcg@10", alpha=alpha)


def test_significance_follows_the_holm_adjusted_p_value():
    baseline = _scores()
    others = {"better": _as_run(_clearly_better(baseline)), "noisy": _as_run(_noise_only(baseline))}
    first, _ = compare_runs(_as_run(baseline), others, "ndcg@10", permutations=999, resamples=99)
    assert (first.p_value, first.adjusted_p_value) == (1 / 1000, 2 / 1000)
    # alpha between the raw and the adjusted p-value: significant before Holm, not after
    between, _ = compare_runs(
        _as_run(baseline), others, "ndcg@10", alpha=0.0015, permutations=999, resamples=99
    )
    assert not between.significant
    at_alpha, _ = compare_runs(
        _as_run(baseline), others, "ndcg@10", alpha=0.002, permutations=999, resamples=99
    )
    assert at_alpha.significant  # p (Holm) <= alpha counts


def test_the_table_prints_small_p_values_without_reading_as_zero():
    def row(p_value: float) -> PairedComparison:
        return PairedComparison(
            "a", "b", "ndcg@10", 9, 0.5, 0.6, 0.1, 0.05, 0.15, p_value, 1.0, False
        )

    assert "| 0.0001 | 1.0000 |" in comparison_table([row(1 / 10_001)])
    assert "| 1.0e-05 | 1.0000 |" in comparison_table([row(1 / 100_001)])
