"""A sweep's configurations (jobs that differ only in ``seed``) and their baseline comparison.

Jobs whose overrides differ only in ``seed`` form one :class:`Configuration`
(:func:`group_configurations`); its per-query test scores are averaged over the seeds
(:func:`configuration_per_query`). A baseline configuration (``--baseline``, or the one whose
varying override is literally ``baseline``: :func:`choose_baseline`) is compared with every other
one on that seed-averaged per-query test metric (:func:`compare_to_baseline`, which runs
:func:`~colbert_lightning.evaluation.significance.compare_runs`: paired randomisation test,
bootstrap interval, Holm over the arms); :func:`comparison_values` are the marks a table shows.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from colbert_lightning.evaluation.per_query import read_per_query
from colbert_lightning.evaluation.significance import (
    PairedComparison,
    QuerySetMismatchError,
    compare_runs,
    method_description,
)
from colbert_lightning.evaluation.sweeps import RESULTS_FILE, Job, varying_overrides

# The override that tells seeds of one configuration apart, and what a job without it shows.
SEED_KEY = "seed"
DEFAULT_SEED = "default"
# The value of a varying override that marks the default baseline configuration.
BASELINE_VALUE = "baseline"
# Label of the single configuration of a sweep whose jobs differ in the seed only.
ALL_JOBS_LABEL = "all jobs"


class SweepComparisonError(ValueError):
    """Seeds or configurations cannot be compared (baseline not found, per-query files differ).

    The message names the jobs (and files) involved.
    """


@dataclass(frozen=True)
class Configuration:
    """Jobs whose overrides differ only in ``seed``: one setting, run with several seeds.

    Attributes:
        label: The varying overrides other than the seed, ``"variant=dim32"`` (``"all jobs"``
            when nothing but the seed varies); unique within a sweep.
        settings: Full key -> value of those overrides (None where the jobs leave it unset).
        jobs: The jobs, in folder order.
    """

    label: str
    settings: dict[str, str | None]
    jobs: list[Job]

    @property
    def seeds(self) -> list[str]:
        """Each job's ``seed`` override, ``"default"`` for a job that does not set it."""
        return [job.overrides.get(SEED_KEY, DEFAULT_SEED) for job in self.jobs]

    @property
    def job_names(self) -> str:
        """The job folders' names, for tables and error messages: ``"0, 1, 2"``."""
        return ", ".join(job.name for job in self.jobs)


def group_configurations(jobs: Sequence[Job]) -> list[Configuration]:
    """Group jobs by all their overrides except ``seed``.

    A job without a seed override runs with the config's default seed; it joins the jobs that
    set the same other overrides, and shows as seed ``"default"``.

    Args:
        jobs: The jobs of a sweep.

    Returns:
        One configuration per distinct set of non-seed overrides, in order of the first job.
    """
    varying = {key: label for key, label in varying_overrides(jobs).items() if key != SEED_KEY}
    groups: dict[tuple[tuple[str, str], ...], list[Job]] = {}
    for job in jobs:
        key = tuple(sorted((k, v) for k, v in job.overrides.items() if k != SEED_KEY))
        groups.setdefault(key, []).append(job)
    configurations = []
    for members in groups.values():
        settings = {key: members[0].overrides.get(key) for key in varying}
        label = ", ".join(
            f"{varying[key]}={'<unset>' if value is None else value}"
            for key, value in settings.items()
        )
        configurations.append(Configuration(label or ALL_JOBS_LABEL, settings, members))
    return configurations


def configuration_per_query(
    configuration: Configuration, metric: str = "ndcg@10", entry: str = "test"
) -> dict[str, float] | None:
    """A configuration's per-query test scores, averaged over its seeds.

    Averaging per query before testing treats the seeds as repeated measurements of one
    system, so a comparison reflects the configuration rather than one lucky seed.

    Args:
        configuration: The configuration.
        metric: A column of the per-query TSVs (``ndcg@10``, ``mrr@10``, ...).
        entry: The ``results.json`` entry whose ``per_query_file`` is read.

    Returns:
        Query id -> mean over seeds; None when no job of the configuration wrote a per-query file.

    Raises:
        SweepComparisonError: Some of its jobs wrote a per-query file and others did not, the
            files lack ``metric``, or two seeds were scored on different queries.
        FileNotFoundError: A recorded per-query file is missing.
    """
    recorded = {job.name: job.per_query_path(entry) for job in configuration.jobs}
    paths = {name: path for name, path in recorded.items() if path is not None}
    without = [name for name in recorded if name not in paths]
    if not paths:
        return None
    if without:
        raise SweepComparisonError(
            f"configuration {configuration.label!r}: job(s) {', '.join(without)} have no "
            f"per-query {entry} file ({RESULTS_FILE} {entry}.per_query_file) but the other "
            f"seeds do; re-run them with the current code so that every seed is averaged"
        )
    scores: dict[str, dict[str, float]] = {}
    for name, path in paths.items():
        per_query, _subsets = read_per_query(path)
        missing = [query_id for query_id, values in per_query.items() if metric not in values]
        if missing:
            raise SweepComparisonError(f"{path}: no {metric} column (query {missing[0]!r})")
        scores[name] = {query_id: values[metric] for query_id, values in per_query.items()}
    first_name, first = next(iter(scores.items()))
    for name, other in scores.items():
        if set(other) != set(first):
            raise SweepComparisonError(
                f"configuration {configuration.label!r}: the per-query {entry} files of job "
                f"{first_name} ({paths[first_name]}) and job {name} ({paths[name]}) cover "
                f"different queries ({len(set(first) - set(other))} only in job {first_name}, "
                f"{len(set(other) - set(first))} only in job {name}); seeds can only be "
                f"averaged over the same test queries (same test_split and exclusions)"
            )
    return {
        query_id: statistics.fmean(per_job[query_id] for per_job in scores.values())
        for query_id in first
    }


def parse_baseline(selections: Sequence[str]) -> dict[str, str]:
    """Parse ``--baseline KEY=VALUE`` options into key -> value.

    >>> parse_baseline(["variant=baseline", "lr=0.0001"])
    {'variant': 'baseline', 'lr': '0.0001'}

    Raises:
        ValueError: An option without ``=``.
    """
    parsed = {}
    for selection in selections:
        key, separator, value = selection.partition("=")
        if not separator or not key:
            raise ValueError(f"--baseline takes KEY=VALUE (variant=baseline), got {selection!r}")
        parsed[key.lstrip("+")] = value
    return parsed


def choose_baseline(
    configurations: Sequence[Configuration], selection: Mapping[str, str] | None = None
) -> Configuration | None:
    """The configuration the others are compared with.

    Args:
        configurations: Output of :func:`group_configurations`.
        selection: Override key -> value the baseline sets (``{"variant": "baseline"}``); a key
            is a full override key or its short column label (``lr`` for
            ``module.optimizer.lr``). None: the one configuration whose varying override is
            literally ``baseline``, if exactly one is.

    Returns:
        The baseline, or None when ``selection`` is None and no single default exists.

    Raises:
        SweepComparisonError: ``selection`` names the seed, an override no job sets, or a value
            that matches no configuration or several; the message lists what is there.
    """
    if selection is None:
        candidates = [
            configuration
            for configuration in configurations
            if BASELINE_VALUE in configuration.settings.values()
        ]
        return candidates[0] if len(candidates) == 1 else None
    jobs = [job for configuration in configurations for job in configuration.jobs]
    varying = varying_overrides(jobs)
    known = {key for job in jobs for key in job.overrides}
    by_label = {label: key for key, label in varying.items()}
    resolved = {}
    for key, value in selection.items():
        full_key = key if key in known else by_label.get(key)
        if full_key == SEED_KEY:
            raise SweepComparisonError(
                "--baseline cannot select a seed: the seeds of a configuration are averaged; "
                "select the configuration by another override"
            )
        if full_key is None:
            raise SweepComparisonError(
                f"--baseline {key}={value}: no job sets {key!r}; the overrides that vary "
                f"between jobs are {sorted(varying)}"
            )
        resolved[full_key] = value
    matches = [
        configuration
        for configuration in configurations
        if all(configuration.jobs[0].overrides.get(k) == v for k, v in resolved.items())
    ]
    described = ", ".join(f"{key}={value}" for key, value in selection.items())
    if not matches:
        values = {
            key: sorted({job.overrides.get(key, "<unset>") for job in jobs}) for key in resolved
        }
        raise SweepComparisonError(
            f"--baseline {described} matches no configuration; the values in the sweep: {values}"
        )
    if len(matches) > 1:
        labels = [configuration.label for configuration in matches]
        raise SweepComparisonError(
            f"--baseline {described} matches {len(matches)} configurations {labels}; add "
            f"another --baseline KEY=VALUE to pick one"
        )
    return matches[0]


@dataclass(frozen=True)
class BaselineComparison:
    """Every configuration compared with one baseline on the seed-averaged per-query test metric.

    Attributes:
        baseline: The baseline configuration.
        metric: The per-query metric compared (``ndcg@10``).
        comparisons: Configuration label -> its comparison with the baseline (Holm-adjusted
            over all of them).
        not_compared: Labels of the configurations without per-query test files.
        description: One line naming the test, the interval and the correction.
    """

    baseline: Configuration
    metric: str
    comparisons: dict[str, PairedComparison]
    not_compared: list[str]
    description: str


def compare_to_baseline(
    configurations: Sequence[Configuration],
    baseline: Configuration,
    metric: str = "ndcg@10",
    alpha: float = 0.05,
    permutations: int = 10_000,
    resamples: int = 10_000,
) -> BaselineComparison:
    """Compare every other configuration with ``baseline`` (see :func:`compare_runs`).

    Each configuration's per-query test scores are averaged over its seeds
    (:func:`configuration_per_query`); the paired randomisation test, the bootstrap interval
    of the mean difference and the Holm correction across the configurations follow.

    Args:
        configurations: Output of :func:`group_configurations`.
        baseline: One of them.
        metric: The per-query metric (``ndcg@10``, ``mrr@10``, ``recall@10``, ``recall@100``).
        alpha: Family-wise significance level.
        permutations: Random sign flips per test.
        resamples: Bootstrap samples per interval.

    Returns:
        The comparisons; configurations without per-query test files are listed as not
        compared.

    Raises:
        SweepComparisonError: The baseline has no per-query test file, or a configuration was
            scored on other queries than the baseline (the message names both sets of jobs).
    """
    baseline_scores = configuration_per_query(baseline, metric)
    if baseline_scores is None:
        raise SweepComparisonError(
            f"baseline {baseline.label!r} (job(s) {baseline.job_names}) has no per-query test "
            f"file ({RESULTS_FILE} test.per_query_file): run it with test_split to compare"
        )
    others: dict[str, dict[str, float]] = {}
    not_compared = []
    for configuration in configurations:
        if configuration.label == baseline.label:
            continue
        scores = configuration_per_query(configuration, metric)
        if scores is None:
            not_compared.append(configuration.label)
        else:
            others[configuration.label] = scores
    results: list[PairedComparison] = []
    if others:
        try:
            results = compare_runs(
                baseline_scores,
                others,
                metric,
                baseline_name=baseline.label,
                alpha=alpha,
                permutations=permutations,
                resamples=resamples,
            )
        except QuerySetMismatchError as error:
            other = next(c for c in configurations if c.label == error.name)
            raise SweepComparisonError(
                f"{error} (configuration {other.label!r} is job(s) {other.job_names}, baseline "
                f"{baseline.label!r} is job(s) {baseline.job_names})"
            ) from error
    return BaselineComparison(
        baseline=baseline,
        metric=metric,
        comparisons={result.name: result for result in results},
        not_compared=not_compared,
        description=method_description(len(results), alpha, permutations, resamples),
    )


def comparison_columns(metric: str) -> tuple[str, ...]:
    """The columns a :class:`BaselineComparison` adds to a table, for ``metric``.

    ``delta_test_<metric>`` is the configuration's mean minus the baseline's over the test
    queries, ``_ci_low``/``_ci_high`` its 95% bootstrap interval, ``p_holm`` the Holm-adjusted
    p-value, and ``vs_baseline`` is ``*`` when significant, empty when not, ``baseline`` on the
    baseline's own row (None: not compared).

    >>> comparison_columns("ndcg@10")[:2]
    ('delta_test_ndcg@10', 'delta_test_ndcg@10_ci_low')
    """
    delta = f"delta_test_{metric}"
    return (delta, f"{delta}_ci_low", f"{delta}_ci_high", "p_holm", "vs_baseline")


def comparison_values(
    configuration: Configuration, comparison: BaselineComparison
) -> dict[str, Any]:
    """A configuration's marks: :func:`comparison_columns` -> value.

    Args:
        configuration: One of the configurations compared.
        comparison: Output of :func:`compare_to_baseline`.

    Returns:
        Every column None except ``vs_baseline`` (``"baseline"``) on the baseline itself; every
        column None for a configuration that was not compared.
    """
    columns = comparison_columns(comparison.metric)
    if configuration.label == comparison.baseline.label:
        return {**dict.fromkeys(columns), "vs_baseline": BASELINE_VALUE}
    result = comparison.comparisons.get(configuration.label)
    if result is None:
        return dict.fromkeys(columns)
    values = (
        result.mean_difference,
        result.interval_low,
        result.interval_high,
        result.adjusted_p_value,
        "*" if result.significant else "",
    )
    return dict(zip(columns, values, strict=True))
