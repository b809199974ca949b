"""The tables of a sweep: one row per job, one row per configuration, and their markdown.

:func:`summary_rows` gives one row per finished job (varying overrides, dev metrics, run size,
test, held-out and BM25 columns); :func:`seed_rows` one row per configuration, mean and sample
standard deviation over its seeds with a bootstrap interval of the test metric. Either takes the
marks of a :class:`~colbert_lightning.evaluation.configurations.BaselineComparison`.
:func:`markdown_table` renders both, merging mean/std and interval columns into one cell.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from colbert_lightning.evaluation.configurations import (
    BaselineComparison,
    comparison_values,
    configuration_per_query,
    group_configurations,
)
from colbert_lightning.evaluation.significance import bootstrap_interval
from colbert_lightning.evaluation.sweeps import (
    BM25_COLUMNS,
    HELD_OUT_COLUMNS,
    JOB_COLUMN,
    METRIC_COLUMNS,
    TEST_COLUMNS,
    Sweep,
    extra_collection_column,
    extra_collections,
    job_values,
    varying_overrides,
)

# Leading columns of seed_rows.
CONFIGURATION_COLUMNS = ("configuration", "seeds", "n", "jobs")


def _by_best_dev(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    # sorted() is stable, so ties keep folder order.
    return sorted(rows, key=lambda row: (row[column] is None, -(row[column] or 0.0)))


def summary_rows(
    sweep: Sweep, comparison: BaselineComparison | None = None
) -> list[dict[str, Any]]:
    """One row per finished job: varying overrides, then dev metrics and run size.

    Columns: ``job``, one per varying override (see :func:`varying_overrides`; None where a job
    does not set it), then :data:`METRIC_COLUMNS`: the best dev nDCG@10 and its step, the final
    dev nDCG@10 / MRR@10 / Recall@100, the step-0 nDCG@10, steps, examples seen and wall time in
    seconds. Then, where some job has the data:

    - ``best_val_<name>_ndcg@10`` per extra dev collection: its nDCG@10 at the step where
      ``val/ndcg@10`` was best, the checkpoint the job reports
      (:meth:`~colbert_lightning.evaluation.sweeps.Job.best_extra_metric`);
    - :data:`TEST_COLUMNS` when any job evaluated its best checkpoint on a held-out split
      (``test_split``);
    - :data:`HELD_OUT_COLUMNS`: test nDCG@10 over the queries whose relevant documents no
      training query shares, and how many those are;
    - :data:`BM25_COLUMNS`: BM25's test nDCG@10, on every query and on the held-out ones;
    - with ``comparison``, its marks
      (:func:`~colbert_lightning.evaluation.configurations.comparison_columns`).

    Metrics a job lacks (it never validated, or has no such evaluation) are None.

    Args:
        sweep: The sweep.
        comparison: Marks from
            :func:`~colbert_lightning.evaluation.configurations.compare_to_baseline`, for a
            sweep with one seed per configuration.

    Returns:
        The rows, best dev nDCG@10 first (jobs without one last, in folder order).

    Raises:
        ValueError: ``comparison`` is given but a configuration has several seeds (its marks
            belong to the grouped table, :func:`seed_rows`).
    """
    varying = varying_overrides(sweep.jobs)
    collections = extra_collections(sweep.jobs)
    values = {job.name: job_values(job, collections) for job in sweep.jobs}
    optional = [
        *(extra_collection_column(name) for name in collections),
        *HELD_OUT_COLUMNS,
        *BM25_COLUMNS,
    ]
    present = {
        column
        for column in optional
        if any(row_values[column] is not None for row_values in values.values())
    }
    with_test = any(job.results.get("test") for job in sweep.jobs)
    columns = [
        *METRIC_COLUMNS,
        *(extra_collection_column(name) for name in collections),
        *(TEST_COLUMNS if with_test else ()),
        *HELD_OUT_COLUMNS,
        *BM25_COLUMNS,
    ]
    columns = [column for column in columns if column not in optional or column in present]
    configuration_of = {}
    if comparison is not None:
        for configuration in group_configurations(sweep.jobs):
            if len(configuration.jobs) > 1:
                raise ValueError(
                    f"configuration {configuration.label!r} has {len(configuration.jobs)} seeds "
                    f"(jobs {configuration.job_names}): its marks go into seed_rows"
                )
            configuration_of[configuration.jobs[0].name] = configuration
    rows = []
    for job in sweep.jobs:
        row: dict[str, Any] = {JOB_COLUMN: job.name}
        row.update({label: job.overrides.get(key) for key, label in varying.items()})
        row.update({column: values[job.name][column] for column in columns})
        if comparison is not None:
            row.update(comparison_values(configuration_of[job.name], comparison))
        rows.append(row)
    return _by_best_dev(rows, "best_ndcg@10")


def mean_and_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values that are not None.

    >>> mean_and_std([1.0, None, 3.0])
    (2.0, 1.4142135623730951)
    >>> mean_and_std([0.5]), mean_and_std([None])
    ((0.5, None), (None, None))
    """
    present = [value for value in values if value is not None]
    if not present:
        return None, None
    mean = statistics.fmean(present)
    return mean, statistics.stdev(present) if len(present) > 1 else None


def seed_rows(
    sweep: Sweep,
    comparison: BaselineComparison | None = None,
    metric: str = "ndcg@10",
    resamples: int = 10_000,
) -> list[dict[str, Any]]:
    """One row per configuration (jobs that differ only in ``seed``), over its seeds.

    Columns: ``configuration`` (its label), ``seeds``, ``n`` (number of jobs), ``jobs``; then
    ``<column>_mean`` and ``<column>_std`` (sample standard deviation, n - 1; None for one seed)
    of ``best_ndcg@10`` and, where some job has the data, ``test_ndcg@10``,
    ``test_heldout_ndcg@10``, ``test_bm25_ndcg@10`` and each ``best_val_<name>_ndcg@10`` (see
    :func:`summary_rows`), over the seeds that have the value; ``test_<metric>_ci_low`` /
    ``_ci_high``, a 95% percentile bootstrap interval over test queries of the seed-averaged
    per-query ``metric``, where per-query files exist; with ``comparison``, its marks
    (:func:`~colbert_lightning.evaluation.configurations.comparison_columns`).

    Args:
        sweep: The sweep.
        comparison: Marks from
            :func:`~colbert_lightning.evaluation.configurations.compare_to_baseline`.
        metric: The per-query metric of the interval (the comparison's, when given).
        resamples: Bootstrap samples of the interval.

    Returns:
        The rows, best mean dev nDCG@10 first.

    Raises:
        ValueError: ``comparison`` was made on another metric than ``metric``.
        SweepComparisonError: The seeds of a configuration have mismatched per-query files.
    """
    if comparison is not None and comparison.metric != metric:
        raise ValueError(f"the comparison is on {comparison.metric}, the interval on {metric}")
    collections = extra_collections(sweep.jobs)
    quantities = [
        "best_ndcg@10",
        *(extra_collection_column(name) for name in collections),
        "test_ndcg@10",
        "test_heldout_ndcg@10",
        "test_bm25_ndcg@10",
    ]
    configurations = group_configurations(sweep.jobs)
    values = {job.name: job_values(job, collections) for job in sweep.jobs}
    quantities = [
        column
        for column in quantities
        if column == "best_ndcg@10" or any(row[column] is not None for row in values.values())
    ]
    intervals = {}
    for configuration in configurations:
        per_query = configuration_per_query(configuration, metric)
        if per_query is not None and len(per_query) >= 2:  # no interval from one query
            intervals[configuration.label] = bootstrap_interval(
                list(per_query.values()), resamples=resamples
            )
    rows = []
    for configuration in configurations:
        row: dict[str, Any] = {
            "configuration": configuration.label,
            "seeds": ", ".join(configuration.seeds),
            "n": len(configuration.jobs),
            "jobs": configuration.job_names,
        }
        low, high = intervals.get(configuration.label, (None, None))
        for column in quantities:
            mean, std = mean_and_std([values[job.name][column] for job in configuration.jobs])
            row[f"{column}_mean"], row[f"{column}_std"] = mean, std
            if intervals and column == f"test_{metric}":  # the interval next to its mean
                row[f"{column}_ci_low"], row[f"{column}_ci_high"] = low, high
        if intervals and f"test_{metric}" not in quantities:
            row[f"test_{metric}_ci_low"], row[f"test_{metric}_ci_high"] = low, high
        if comparison is not None:
            row.update(comparison_values(configuration, comparison))
        rows.append(row)
    return _by_best_dev(rows, "best_ndcg@10_mean")


def _number(value: float, column: str) -> str:
    if column == "wall_time_s":
        return f"{value:.1f}"
    return f"{value:+.4f}" if column.startswith("delta_") else f"{value:.4f}"


def _format_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _number(value, column)
    return str(value).replace("|", "\\|")


def _rendered_columns(columns: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Markdown columns: header -> the row keys it shows (1, or 2-3 merged, see markdown_table)."""
    rendered: list[tuple[str, tuple[str, ...]]] = []
    consumed: set[str] = set()
    for column in columns:
        if column in consumed:
            continue
        base = column.removesuffix("_mean")
        interval = (f"{column}_ci_low", f"{column}_ci_high")
        if column.endswith("_mean") and f"{base}_std" in columns:
            keys: tuple[str, ...] = (column, f"{base}_std")
            header = base
        elif all(key in columns for key in interval):
            keys, header = (column, *interval), f"{column} [95% CI]"
        elif column.endswith("_ci_low") and column.replace("_ci_low", "_ci_high") in columns:
            keys = (column, column.replace("_ci_low", "_ci_high"))
            header = f"{column.removesuffix('_ci_low')} 95% CI"
        else:
            keys, header = (column,), column
        consumed.update(keys)
        rendered.append((header, keys))
    return rendered


def _join_cells(keys: tuple[str, ...], cells: list[Any]) -> str:
    """One markdown cell from the values of ``keys`` (see :func:`_rendered_columns`)."""
    if len(keys) == 1:
        return _format_cell(keys[0], cells[0])
    if keys[0].endswith("_ci_low"):  # an interval alone: [low, high]
        if None in cells:
            return "-"
        return f"[{_number(cells[0], keys[0])}, {_number(cells[1], keys[0])}]"
    value, *rest = cells
    if value is None:
        return "-"
    text = _number(value, keys[0])
    if None in rest:  # one seed has no spread; a value without an interval stays bare
        return text
    if len(keys) == 2:  # mean ± std
        return f"{text} ± {rest[0]:.4f}"
    return f"{text} [{_number(rest[0], keys[0])}, {_number(rest[1], keys[0])}]"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render summary rows as a markdown table (metrics to 4 decimals, missing values ``-``).

    ``X_mean``/``X_std`` pairs (:func:`seed_rows`) render as one ``X`` column, ``m ± s``;
    ``X_ci_low``/``X_ci_high`` as an interval, ``X [95% CI]`` after ``X``'s value when ``X`` is a
    column too (``+0.0312 [+0.0101, +0.0520]``), else ``X 95% CI`` alone.

    Args:
        rows: Output of :func:`summary_rows` or :func:`seed_rows`.

    Returns:
        The table, one line per row, without a trailing newline.
    """
    if not rows:
        return ""
    rendered = _rendered_columns(list(rows[0]))
    text_columns = (JOB_COLUMN, "configuration", "seeds", "jobs", "vs_baseline")
    lines = [
        "| " + " | ".join(header for header, _ in rendered) + " |",
        "|" + "|".join("---" if header in text_columns else "---:" for header, _ in rendered) + "|",
    ]
    for row in rows:
        cells = (_join_cells(keys, [row.get(key) for key in keys]) for _, keys in rendered)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
