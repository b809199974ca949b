"""Paired significance tests between retrieval runs scored on the same queries.

Two runs evaluated on the same queries give paired per-query scores (see
:mod:`colbert_lightning.evaluation.per_query`); the question is whether the mean of the
per-query differences is distinguishable from zero. Three pure-numpy pieces answer it:

- :func:`paired_permutation_test`: a two-sided paired randomisation test (Monte-Carlo sign flips
  of the per-query differences), the test Smucker, Allan and Carterette (CIKM 2007) recommend
  for IR evaluation;
- :func:`bootstrap_interval`: a percentile bootstrap interval of the mean difference;
- :func:`holm_adjust`: Holm-Bonferroni adjusted p-values when one baseline is compared with
  several runs at once.

:func:`compare_runs` puts them together for one baseline and several other runs, and
:func:`comparison_table` renders the result as markdown (``python -m colbert_lightning.compare``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CHUNK_ELEMENTS = 1 << 21
"""Random draws held in memory at once (16 MiB of float64): 10,000 permutations of 7,000
queries are drawn in chunks of ~300 rows instead of one 560 MB matrix."""

EXAMPLE_IDS = 5
"""How many query ids an error about mismatched query sets shows."""


def _chunk_rows(queries: int, total_rows: int) -> list[int]:
    """Row counts of the chunks that draw ``total_rows`` rows of ``queries`` values each."""
    rows_per_chunk = max(1, CHUNK_ELEMENTS // queries)
    full, rest = divmod(total_rows, rows_per_chunk)
    return [rows_per_chunk] * full + ([rest] if rest else [])


def _finite_scores(values: Sequence[float], what: str) -> np.ndarray:
    """``values`` as a 1-D float64 array; ValueError when one is NaN or infinite."""
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(
            f"{what} must be one score per query, got an array of shape {scores.shape}"
        )
    if not np.all(np.isfinite(scores)):
        position = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"{what}: query number {position} has the score {scores[position]}")
    return scores


def paired_permutation_test(
    baseline: Sequence[float],
    other: Sequence[float],
    permutations: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided paired randomisation test of the mean per-query difference ``other - baseline``.

    Under the null hypothesis the two runs are exchangeable on every query, so each per-query
    difference is as likely to have either sign. The test flips the signs at random
    ``permutations`` times and counts the flipped means at least as far from zero as the
    observed one. The count includes the observed labelling itself (the ``1 +``), which keeps
    the p-value valid for a Monte-Carlo sample: ``p = (1 + hits) / (1 + permutations)``, never
    below ``1 / (1 + permutations)``.

    Args:
        baseline: the baseline's score on each query, shape (queries,).
        other: the other run's score on the same queries in the same order, shape (queries,).
        permutations: how many random sign flips to draw.
        seed: seed of the random generator; the same inputs and seed give the same p-value.

    Returns:
        The p-value, in ``(0, 1]``; exactly 1.0 when the runs agree on every query.

    Raises:
        ValueError: the runs differ in length, hold fewer than 2 queries, or hold a NaN or
            infinite score, or ``permutations`` is below 1.

    Example:
        >>> paired_permutation_test([0.2, 0.5, 0.7], [0.2, 0.5, 0.7])
        1.0
        >>> # all 20 queries better: only the observed signs (and their mirror) are as extreme
        >>> paired_permutation_test([0.0] * 20, [0.1] * 20, permutations=999) < 0.01
        True
    """
    baseline_scores = _finite_scores(baseline, "baseline")
    other_scores = _finite_scores(other, "other")
    if len(baseline_scores) != len(other_scores):
        raise ValueError(
            f"paired scores need the same queries: baseline has {len(baseline_scores)} scores, "
            f"other has {len(other_scores)}"
        )
    if len(baseline_scores) < 2:
        raise ValueError(f"a paired test needs at least 2 queries, got {len(baseline_scores)}")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    differences = other_scores - baseline_scores
    if not np.any(differences):
        # every flipped mean is 0, as extreme as the observed 0: no need to draw them
        return 1.0
    queries = len(differences)
    observed = abs(differences.sum()) / queries
    # Sums of the same magnitudes in another order differ in the last bits; without the
    # tolerance the flip that reproduces the observed signs (or their mirror) could count as
    # less extreme than the observation itself.
    tolerance = 1e-9 * np.abs(differences).mean()
    generator = np.random.default_rng(seed)
    hits = 0
    for rows in _chunk_rows(queries, permutations):
        signs = np.where(generator.random((rows, queries)) < 0.5, -1.0, 1.0)  # (rows, queries)
        flipped_means = np.abs(signs @ differences) / queries  # (rows,)
        hits += int(np.count_nonzero(flipped_means >= observed - tolerance))
    return (1 + hits) / (1 + permutations)


def bootstrap_interval(
    differences: Sequence[float],
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-query ``differences``.

    Draws ``resamples`` samples of the queries with replacement, takes each sample's mean, and
    returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means
    (linear interpolation, as :func:`numpy.quantile` and ``scipy.stats.bootstrap`` do).

    Args:
        differences: one value per query, shape (queries,), usually ``other - baseline``.
        resamples: how many bootstrap samples to draw.
        confidence: the interval's coverage, strictly between 0 and 1.
        seed: seed of the random generator.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: fewer than 2 values, a NaN or infinite value, ``resamples`` below 1, or
            ``confidence`` outside (0, 1).

    Example:
        >>> bootstrap_interval([0.25, 0.25, 0.25])  # no spread, no uncertainty
        (0.25, 0.25)
        >>> low, high = bootstrap_interval([0.0, 1.0] * 50)
        >>> bool(0.39 < low < 0.5 < high < 0.61)
        True
    """
    values = _finite_scores(differences, "differences")
    if len(values) < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 queries, got {len(values)}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    queries = len(values)
    generator = np.random.default_rng(seed)
    means = np.concatenate(
        [
            values[generator.integers(0, queries, size=(rows, queries))].mean(axis=1)  # (rows,)
            for rows in _chunk_rows(queries, resamples)
        ]
    )
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    With the ``m`` p-values sorted ascending, the ``i``-th smallest (from 0) is multiplied by
    ``m - i``, a running maximum keeps the adjusted values in the same order as the raw ones
    (step-down), and values are capped at 1. Rejecting every hypothesis whose adjusted p-value
    is at most ``alpha`` keeps the family-wise error rate at ``alpha``.

    Args:
        p_values: one p-value per hypothesis of the family, each in [0, 1].

    Returns:
        The adjusted p-values, position for position with ``p_values``.

    Raises:
        ValueError: a value is NaN or outside [0, 1].

    Example:
        >>> holm_adjust([0.01, 0.04, 0.03])  # 3 * 0.01, max(2 * 0.03, 0.03), max(1 * 0.04, 0.06)
        [0.03, 0.06, 0.06]
    """
    raw = np.asarray(p_values, dtype=np.float64)
    if raw.size and not np.all((raw >= 0.0) & (raw <= 1.0)):  # False for NaN as well
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)}")
    count = raw.size
    order = np.argsort(raw, kind="stable")
    scaled = raw[order] * (count - np.arange(count))
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted = np.empty(count, dtype=np.float64)
    adjusted[order] = adjusted_sorted
    return [float(value) for value in adjusted]


@dataclass(frozen=True)
class PairedComparison:
    """One run against the baseline on one metric, over the queries both were scored on.

    Attributes:
        name: the run compared with the baseline.
        baseline_name: the baseline run.
        metric: the per-query metric compared, e.g. ``ndcg@10``.
        queries: how many queries the means and the tests use.
        baseline_mean: the baseline's mean over those queries.
        mean: this run's mean over those queries.
        mean_difference: ``mean - baseline_mean`` (the mean per-query difference).
        interval_low: lower end of the percentile bootstrap interval of ``mean_difference``.
        interval_high: upper end of that interval.
        p_value: two-sided paired randomisation test p-value, uncorrected.
        adjusted_p_value: ``p_value`` after the Holm correction over the call's comparisons.
        significant: ``adjusted_p_value <= alpha``.
    """

    name: str
    baseline_name: str
    metric: str
    queries: int
    baseline_mean: float
    mean: float
    mean_difference: float
    interval_low: float
    interval_high: float
    p_value: float
    adjusted_p_value: float
    significant: bool


class QuerySetMismatchError(ValueError):
    """A run was scored on other queries than the baseline; :attr:`name` says which run."""

    def __init__(self, message: str, name: str) -> None:
        """Keep the run's name so that a caller can point at the run's file."""
        super().__init__(message)
        self.name = name


def _examples(query_ids: set[str]) -> str:
    shown = sorted(query_ids)[:EXAMPLE_IDS]
    more = f", ... ({len(query_ids) - len(shown)} more)" if len(query_ids) > len(shown) else ""
    return ", ".join(repr(query_id) for query_id in shown) + more


def _check_same_queries(
    baseline: Mapping[str, float], other: Mapping[str, float], name: str, baseline_name: str
) -> None:
    """QuerySetMismatchError when ``other`` was scored on other queries than ``baseline``."""
    only_baseline = set(baseline) - set(other)
    only_other = set(other) - set(baseline)
    if not only_baseline and not only_other:
        return
    parts = [
        f"run {name!r} has {len(other)} queries and baseline {baseline_name!r} has "
        f"{len(baseline)}; a paired test needs the same queries"
    ]
    if only_other:
        parts.append(f"{len(only_other)} only in {name!r}: {_examples(only_other)}")
    if only_baseline:
        parts.append(f"{len(only_baseline)} only in {baseline_name!r}: {_examples(only_baseline)}")
    parts.append("evaluate both runs on the same split (and the same --subset, if any)")
    raise QuerySetMismatchError("; ".join(parts), name)


def compare_runs(
    baseline: Mapping[str, float],
    others: Mapping[str, Mapping[str, float]],
    metric: str,
    baseline_name: str = "baseline",
    alpha: float = 0.05,
    permutations: int = 10_000,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[PairedComparison]:
    """Compare each run of ``others`` with ``baseline``, Holm-corrected over ``others``.

    Queries are paired by id and taken in sorted id order, so the result does not depend on
    the order of the files' rows. Every comparison uses the same ``seed`` (the same sign flips
    and resamples), so a run's p-value does not depend on which other runs share the call;
    only the Holm adjustment does.

    Args:
        baseline: query id -> the baseline's score on ``metric``.
        others: run name -> query id -> that run's score, on exactly the baseline's queries.
        metric: the metric's name, recorded in the results.
        baseline_name: the baseline's name, recorded in the results and used in errors.
        alpha: family-wise significance level of the Holm-corrected tests.
        permutations: random sign flips per permutation test.
        resamples: bootstrap samples per interval (95% intervals, whatever ``alpha``).
        seed: seed of every test and interval.

    Returns:
        One :class:`PairedComparison` per run of ``others``, in their order.

    Raises:
        QuerySetMismatchError: a run's query ids differ from the baseline's (no silent
            intersection); the message gives the counts and a few ids on each side.
        ValueError: no other run, fewer than 2 queries, ``alpha`` outside (0, 1), or a NaN or
            infinite score.

    Example:
        >>> baseline = {"q1": 0.5, "q2": 0.25, "q3": 1.0}
        >>> [result] = compare_runs(baseline, {"better": {"q1": 0.75, "q2": 0.5, "q3": 1.0}},
        ...                         "ndcg@10", permutations=999, resamples=999)
        >>> result.queries, round(result.mean_difference, 4), result.significant
        (3, 0.1667, False)
    """
    if not others:
        raise ValueError("compare_runs needs at least one run besides the baseline")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")
    for name, scores in others.items():
        _check_same_queries(baseline, scores, name, baseline_name)
    query_ids = sorted(baseline)
    baseline_scores = _finite_scores(
        [baseline[query_id] for query_id in query_ids], f"run {baseline_name!r} ({metric})"
    )
    raw: list[dict[str, float]] = []
    for name, scores in others.items():
        other_scores = _finite_scores(
            [scores[query_id] for query_id in query_ids], f"run {name!r} ({metric})"
        )
        low, high = bootstrap_interval(other_scores - baseline_scores, resamples, seed=seed)
        raw.append(
            {
                "mean": float(other_scores.mean()),
                "low": low,
                "high": high,
                "p": paired_permutation_test(baseline_scores, other_scores, permutations, seed),
            }
        )
    adjusted = holm_adjust([row["p"] for row in raw])
    baseline_mean = float(baseline_scores.mean())
    return [
        PairedComparison(
            name=name,
            baseline_name=baseline_name,
            metric=metric,
            queries=len(query_ids),
            baseline_mean=baseline_mean,
            mean=row["mean"],
            mean_difference=row["mean"] - baseline_mean,
            interval_low=row["low"],
            interval_high=row["high"],
            p_value=row["p"],
            adjusted_p_value=adjusted_p,
            significant=adjusted_p <= alpha,
        )
        for name, row, adjusted_p in zip(others, raw, adjusted, strict=True)
    ]


def _p_text(p_value: float) -> str:
    # 4 decimals hide nothing at 10,000 permutations (p >= 1 / 10,001, printed 0.0001); more
    # permutations can go lower, where 0.0000 would read as an impossible p of 0
    text = f"{p_value:.4f}"
    return text if text != "0.0000" else f"{p_value:.1e}"


def comparison_table(comparisons: Sequence[PairedComparison]) -> str:
    """The comparisons as a markdown table, numbers to 4 decimals.

    Columns: run, queries, mean, baseline mean, difference (``mean - baseline mean``), 95% CI
    (bootstrap interval of the difference), p, p (Holm), and ``*`` when significant.

    Example:
        >>> row = PairedComparison("colbert", "bm25", "ndcg@10", 200, 0.3, 0.35, 0.05, 0.02,
        ...                        0.08, 0.0001, 0.0002, True)
        >>> print(comparison_table([row]))
        | run | queries | mean | baseline mean | difference | 95% CI | p | p (Holm) | sig. |
        |---|---:|---:|---:|---:|---|---:|---:|:-:|
        | colbert | 200 | 0.3500 | 0.3000 | +0.0500 | [+0.0200, +0.0800] | 0.0001 | 0.0002 | * |
    """
    lines = [
        "| run | queries | mean | baseline mean | difference | 95% CI | p | p (Holm) | sig. |",
        "|---|---:|---:|---:|---:|---|---:|---:|:-:|",
    ]
    for row in comparisons:
        lines.append(
            f"| {row.name} | {row.queries} | {row.mean:.4f} | {row.baseline_mean:.4f} "
            f"| {row.mean_difference:+.4f} | [{row.interval_low:+.4f}, {row.interval_high:+.4f}] "
            f"| {_p_text(row.p_value)} | {_p_text(row.adjusted_p_value)} "
            f"| {'*' if row.significant else ''} |"
        )
    return "\n".join(lines)


def method_description(comparisons: int, alpha: float, permutations: int, resamples: int) -> str:
    """One line naming the test, the interval and the correction, for under the table.

    Example:
        >>> method_description(2, 0.05, 10_000, 10_000)  # doctest: +NORMALIZE_WHITESPACE
        'Two-sided paired randomisation test (10000 random sign flips); 95% CI: percentile
        bootstrap (10000 resamples); Holm over 2 comparisons; * = p (Holm) <= 0.05.'
    """
    plural = "" if comparisons == 1 else "s"
    return (
        f"Two-sided paired randomisation test ({permutations} random sign flips); 95% CI: "
        f"percentile bootstrap ({resamples} resamples); Holm over {comparisons} "
        f"comparison{plural}; * = p (Holm) <= {alpha:g}."
    )
