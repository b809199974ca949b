"""Summarise a sweep of training jobs: tables of dev and test metrics, seeds, and learning curves.

A Hydra multirun (``python -m colbert_lightning.train -m ...``) writes one numbered folder per job
under its sweep folder. Each finished job holds ``results.json`` (step-0, final and best dev
metrics; with ``test_split``, the test metrics of the best checkpoint, of BM25 and of the step-0
model, each with an optional per-query TSV), ``csv/metrics.csv`` (every validation, from
Lightning's CSVLogger, including extra dev collections logged as ``val_<name>/...``) and
``.hydra/overrides.yaml`` (the job's command-line overrides). This module reads them back::

    sweep = load_sweep("outputs/train/multiruns/2026-11-27_15-47-44")
    rows = summary_rows(sweep)  # one row per job, best dev nDCG@10 first
    summary = summarize_sweep(sweep, baseline={"variant": "baseline"})  # + seeds and marks
    paths = write_summary(sweep, "/tmp/summary", summary)  # summary.md/.csv, curve PNGs

or from the shell (:mod:`colbert_lightning.summarize`)::

    python -m colbert_lightning.summarize SWEEP_DIR [--output DIR] [--baseline KEY=VALUE]

Jobs whose overrides differ only in ``seed`` form one :class:`Configuration`; when one has
several seeds, a grouped table gives mean and sample standard deviation over seeds. A baseline
configuration (``--baseline``, or the one whose varying override is literally ``baseline``) is
compared with every other one on the seed-averaged per-query test metric
(:func:`~colbert_lightning.evaluation.significance.compare_runs`: paired randomisation test,
bootstrap interval, Holm over the arms).

matplotlib is imported only when plotting, so reading and tabulating stay light.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from colbert_lightning.evaluation.per_query import HELD_OUT, read_per_query
from colbert_lightning.evaluation.significance import (
    PairedComparison,
    QuerySetMismatchError,
    bootstrap_interval,
    compare_runs,
    method_description,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VALIDATION_PREFIX = "val/"
# Extra dev collections followed during training log as val_<name>/<metric> (val_med/ndcg@10).
EXTRA_VALIDATION_PATTERN = re.compile(r"^val_(?P<collection>[^/]+)/")
EXAMPLES_SEEN_COLUMN = "trainer/examples_seen"
RESULTS_FILE = "results.json"
METRICS_CSV = Path("csv") / "metrics.csv"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"

# The override that tells seeds of one configuration apart, and what a job without it shows.
SEED_KEY = "seed"
DEFAULT_SEED = "default"
# The value of a varying override that marks the default baseline configuration.
BASELINE_VALUE = "baseline"
# Label of the single configuration of a sweep whose jobs differ in the seed only.
ALL_JOBS_LABEL = "all jobs"

# Metrics drawn as learning curves, with the short name used in file names; each extra dev
# collection adds its val_<name>/ndcg@10 (see curve_metrics).
CURVE_METRICS = {"val/ndcg@10": "ndcg", "val/mrr@10": "mrr"}
# x axes of the learning curves: ValidationCurve attribute -> (file-name suffix, axis label).
CURVE_AXES = {"steps": ("steps", "optimizer step"), "examples_seen": ("examples", "examples seen")}

# Columns of summary_rows after the varying overrides; an override never takes one of these names.
METRIC_COLUMNS = (
    "best_ndcg@10",
    "best_step",
    "final_ndcg@10",
    "final_mrr@10",
    "final_recall@100",
    "step0_ndcg@10",
    "steps",
    "examples_seen",
    "wall_time_s",
)
# Columns added when a job evaluated its best checkpoint on a held-out split (test_split=...).
TEST_COLUMNS = ("test_ndcg@10", "test_recall@100")
# Columns added where some job has the data: the held-out-document subset of the test split
# (queries none of whose relevant documents a training query shares), and BM25 on the split.
HELD_OUT_COLUMNS = ("test_heldout_ndcg@10", "test_heldout_queries")
BM25_COLUMNS = ("test_bm25_ndcg@10", "test_bm25_heldout_ndcg@10")
JOB_COLUMN = "job"
# Leading columns of seed_rows.
CONFIGURATION_COLUMNS = ("configuration", "seeds", "n", "jobs")
# The test-split entries of results.json: the best checkpoint, BM25, and the untrained model.
TEST_ENTRIES = ("test", "test_bm25", "test_step0")


class EmptySweepError(ValueError):
    """Raised when a sweep folder holds no job with a ``results.json``."""


class SweepComparisonError(ValueError):
    """Seeds or configurations cannot be compared (baseline not found, per-query files differ).

    The message names the jobs (and files) involved.
    """


@dataclass(frozen=True)
class ValidationCurve:
    """The validation rows of a job's ``metrics.csv``, as columns sorted by step.

    Attributes:
        steps: Optimizer step of each validation.
        examples_seen: Training examples seen at each validation (``nan`` where not logged).
        metrics: Metric name (``val/ndcg@10``, ...) -> one value per validation (``nan`` if absent).
    """

    steps: list[int]
    examples_seen: list[float]
    metrics: dict[str, list[float]]

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Job:
    """One finished job of a sweep.

    Attributes:
        name: The job folder's name (``"0"``, ``"1"``, ... in a multirun).
        folder: The job folder.
        overrides: Command-line overrides, key -> value as written (``{"module.optimizer.lr":
            "0.0001"}``); empty when the job has no ``.hydra/overrides.yaml``.
        results: The parsed ``results.json``.
        curve: The validation rows of ``csv/metrics.csv`` (empty when the file is missing).
    """

    name: str
    folder: Path
    overrides: dict[str, str]
    results: dict[str, Any]
    curve: ValidationCurve

    def metric(self, checkpoint: str, metric: str) -> float | None:
        """A metric from ``results.json``.

        Args:
            checkpoint: ``"step0"``, ``"final"`` or ``"best"``.
            metric: A key of that entry, e.g. ``"val/ndcg@10"`` or ``"step"``.

        Returns:
            The value, or None when the entry is null (the job never validated) or lacks the key.
        """
        entry = self.results.get(checkpoint)
        if not entry:
            return None
        return entry.get(metric)

    def test_metric(self, entry: str, metric: str, subset: str | None = None) -> float | None:
        """A metric of a test-split evaluation in ``results.json``.

        Args:
            entry: ``"test"`` (the best checkpoint), ``"test_bm25"`` or ``"test_step0"``.
            metric: ``"ndcg@10"``, ``"mrr@10"``, ``"recall@10"`` or ``"recall@100"``.
            subset: None for every query of the split, or a subset of the entry's ``subsets``
                (``"held_out_documents"``, ``"seen_documents"``).

        Returns:
            The value, or None when the job has no such evaluation, subset or metric.
        """
        evaluation = self.results.get(entry) or {}
        if subset is not None:
            evaluation = (evaluation.get("subsets") or {}).get(subset) or {}
        return (evaluation.get("metrics") or {}).get(metric)

    def test_queries(self, entry: str, subset: str | None = None) -> int | None:
        """How many queries a test-split evaluation (or one of its subsets) scored; None: absent."""
        evaluation = self.results.get(entry) or {}
        if subset is not None:
            evaluation = (evaluation.get("subsets") or {}).get(subset) or {}
        return evaluation.get("queries")

    def best_extra_metric(self, collection: str, metric: str = "ndcg@10") -> float | None:
        """An extra dev collection's metric at the step where ``val/ndcg@10`` was best.

        That step is the checkpoint the job reports (and tests), so the value says how that
        checkpoint does on the other collection, not how well the collection could have done.

        Args:
            collection: The collection's name, ``med`` for ``val_med/ndcg@10``.
            metric: The metric logged for it.

        Returns:
            The value from ``results.json``'s ``best`` entry or, where that lacks the key, from
            the ``metrics.csv`` row of the best step; None when neither has it.
        """
        column = f"val_{collection}/{metric}"
        value = self.metric("best", column)
        if value is not None:
            return value
        best_step = self.metric("best", "step")
        values = self.curve.metrics.get(column)
        if best_step is None or values is None or best_step not in self.curve.steps:
            return None
        found = values[self.curve.steps.index(best_step)]
        return None if math.isnan(found) else found

    def per_query_path(self, entry: str = "test") -> Path | None:
        """The per-query TSV of a test-split evaluation, or None when the job wrote none.

        Args:
            entry: ``"test"``, ``"test_bm25"`` or ``"test_step0"``.

        Returns:
            The ``per_query_file`` of that entry, resolved against the job folder (older jobs
            did not record one).
        """
        name = (self.results.get(entry) or {}).get("per_query_file")
        return None if not name else self.folder / name


@dataclass(frozen=True)
class IncompleteJob:
    """A job folder without usable results: the job failed, or is still running."""

    name: str
    folder: Path
    reason: str


@dataclass(frozen=True)
class Sweep:
    """The jobs of one sweep folder.

    Attributes:
        folder: The sweep folder (or a single run's folder).
        jobs: Finished jobs, in folder order (numerically for numbered folders).
        incomplete: Job folders without usable ``results.json``, each with the reason.
    """

    folder: Path
    jobs: list[Job]
    incomplete: list[IncompleteJob]


def parse_override(override: str) -> tuple[str, str]:
    """Split one Hydra command-line override into key and value.

    Args:
        override: ``key=value``, possibly prefixed by ``+``/``++`` (add) or ``~`` (delete).

    Returns:
        The key without prefix, and the value as written (``"<deleted>"`` for ``~key``).

    >>> parse_override("module.optimizer.lr=0.0001")
    ('module.optimizer.lr', '0.0001')
    >>> parse_override("+trainer.limit_val_batches=2")
    ('trainer.limit_val_batches', '2')
    >>> parse_override("~callbacks.early_stopping")
    ('callbacks.early_stopping', '<deleted>')
    """
    key, _, value = override.partition("=")
    if key.startswith("~"):
        return key.lstrip("~"), value or "<deleted>"
    return key.lstrip("+"), value


def _is_job_folder(folder: Path) -> bool:
    return any(
        (folder / marker).exists() for marker in (RESULTS_FILE, ".hydra", "csv", "train.log")
    )


def _folder_order(folder: Path) -> tuple[int, int, str]:
    # Numbered job folders sort numerically (2 before 10); anything else after them, by name.
    if folder.name.isdigit():
        return 0, int(folder.name), folder.name
    return 1, 0, folder.name


def _read_overrides(job_folder: Path) -> dict[str, str]:
    path = job_folder / OVERRIDES_FILE
    if not path.exists():
        return {}
    entries = yaml.safe_load(path.read_text()) or []
    return dict(parse_override(str(entry)) for entry in entries)


def _to_float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def read_validation_curve(metrics_csv: Path) -> ValidationCurve:
    """Read the validation rows of a Lightning CSVLogger ``metrics.csv``.

    Validation rows are those with at least one ``val/*`` or ``val_<collection>/*`` value (an
    extra dev collection); training rows leave them empty.

    Args:
        metrics_csv: Path of the file.

    Returns:
        The rows as columns, sorted by step (the logger may write them out of order).
    """
    with metrics_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        metric_names = [
            name
            for name in reader.fieldnames or []
            if name.startswith(VALIDATION_PREFIX) or EXTRA_VALIDATION_PATTERN.match(name)
        ]
        rows = [row for row in reader if any(row.get(name) for name in metric_names)]
    rows.sort(key=lambda row: int(float(row["step"])))
    return ValidationCurve(
        steps=[int(float(row["step"])) for row in rows],
        examples_seen=[_to_float(row.get(EXAMPLES_SEEN_COLUMN)) for row in rows],
        metrics={name: [_to_float(row.get(name)) for row in rows] for name in metric_names},
    )


def _load_job(folder: Path) -> Job | IncompleteJob:
    results_path = folder / RESULTS_FILE
    if not results_path.exists():
        return IncompleteJob(
            folder.name, folder, f"no {RESULTS_FILE} (the job failed or is still running)"
        )
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as error:
        return IncompleteJob(folder.name, folder, f"{RESULTS_FILE} is not valid JSON: {error}")
    metrics_csv = folder / METRICS_CSV
    curve = (
        read_validation_curve(metrics_csv)
        if metrics_csv.exists()
        else ValidationCurve(steps=[], examples_seen=[], metrics={})
    )
    return Job(
        name=folder.name,
        folder=folder,
        overrides=_read_overrides(folder),
        results=results,
        curve=curve,
    )


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read every job of a sweep folder.

    Args:
        sweep_dir: A multirun folder (jobs in subfolders ``0``, ``1``, ...), or a single run's
            folder, which then counts as a sweep of one job.

    Returns:
        The finished jobs, and the job folders without usable ``results.json`` with the reason.

    Raises:
        FileNotFoundError: ``sweep_dir`` is not a folder.
        EmptySweepError: No job in ``sweep_dir`` has a readable ``results.json``.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist or is not a folder")
    if (sweep_dir / RESULTS_FILE).exists() or (sweep_dir / ".hydra").is_dir():
        job_folders = [sweep_dir]
    else:
        job_folders = sorted(
            (
                child
                for child in sweep_dir.iterdir()
                if child.is_dir() and not child.name.startswith(".") and _is_job_folder(child)
            ),
            key=_folder_order,
        )
    loaded = [_load_job(folder) for folder in job_folders]
    jobs = [job for job in loaded if isinstance(job, Job)]
    incomplete = [job for job in loaded if isinstance(job, IncompleteJob)]
    if not jobs:
        details = "".join(f"\n  {job.name}: {job.reason}" for job in incomplete)
        raise EmptySweepError(f"no job with {RESULTS_FILE} in {sweep_dir}{details}")
    return Sweep(folder=sweep_dir, jobs=jobs, incomplete=incomplete)


def varying_overrides(jobs: Sequence[Job]) -> dict[str, str]:
    """The override keys whose value differs between jobs, with a short column label for each.

    A key set in some jobs only counts as varying. The label is the key's last dotted component
    (``module.optimizer.lr`` -> ``lr``) unless another varying key or a summary column has the
    same last component; then it is the full key.

    Args:
        jobs: The jobs to compare.

    Returns:
        Full key -> label, in order of first appearance.
    """
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    varying = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]
    last_components = [key.rsplit(".", 1)[-1] for key in varying]
    reserved = {JOB_COLUMN, *METRIC_COLUMNS, *TEST_COLUMNS, *HELD_OUT_COLUMNS, *BM25_COLUMNS}
    return {
        key: short
        if last_components.count(short) == 1 and short not in reserved and short != key
        else key
        for key, short in zip(varying, last_components, strict=True)
    }


def job_label(job: Job, varying: dict[str, str]) -> str:
    """A legend label for a job: its name and varying overrides, e.g. ``"0: lr=0.0001"``.

    Args:
        job: The job.
        varying: Output of :func:`varying_overrides` for the sweep.

    Returns:
        The label.
    """
    settings = ", ".join(
        f"{label}={job.overrides.get(key, '<unset>')}" for key, label in varying.items()
    )
    return f"{job.name}: {settings}" if settings else job.name


def extra_collections(jobs: Sequence[Job]) -> list[str]:
    """Names of the extra dev collections any job logged (``med`` for ``val_med/ndcg@10``).

    Args:
        jobs: The jobs; their ``metrics.csv`` columns and ``results.json`` best rows are read.

    Returns:
        The names, sorted.
    """
    names: set[str] = set()
    for job in jobs:
        for column in [*job.curve.metrics, *(job.results.get("best") or {})]:
            match = EXTRA_VALIDATION_PATTERN.match(column)
            if match:
                names.add(match["collection"])
    return sorted(names)


def extra_collection_column(collection: str) -> str:
    """The summary column of an extra dev collection's nDCG@10 at the dev-best step.

    >>> extra_collection_column("med")
    'best_val_med_ndcg@10'
    """
    return f"best_val_{collection}_ndcg@10"


def _job_values(job: Job, collections: Sequence[str]) -> dict[str, Any]:
    """Every metric column a job can fill, None where it lacks the data."""
    values: dict[str, Any] = {
        "best_ndcg@10": job.metric("best", "val/ndcg@10"),
        "best_step": job.metric("best", "step"),
        "final_ndcg@10": job.metric("final", "val/ndcg@10"),
        "final_mrr@10": job.metric("final", "val/mrr@10"),
        "final_recall@100": job.metric("final", "val/recall@100"),
        "step0_ndcg@10": job.metric("step0", "val/ndcg@10"),
        "steps": job.results.get("steps"),
        "examples_seen": job.results.get("examples_seen"),
        "wall_time_s": job.results.get("wall_time_s"),
    }
    values.update(
        {extra_collection_column(name): job.best_extra_metric(name) for name in collections}
    )
    values.update(
        {column: job.test_metric("test", column.removeprefix("test_")) for column in TEST_COLUMNS}
    )
    values.update(
        {
            "test_heldout_ndcg@10": job.test_metric("test", "ndcg@10", HELD_OUT),
            "test_heldout_queries": job.test_queries("test", HELD_OUT),
            "test_bm25_ndcg@10": job.test_metric("test_bm25", "ndcg@10"),
            "test_bm25_heldout_ndcg@10": job.test_metric("test_bm25", "ndcg@10", HELD_OUT),
        }
    )
    return values


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


def _comparison_values(
    configuration: Configuration, comparison: BaselineComparison
) -> dict[str, Any]:
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
      ``val/ndcg@10`` was best, the checkpoint the job reports (:meth:`Job.best_extra_metric`);
    - :data:`TEST_COLUMNS` when any job evaluated its best checkpoint on a held-out split
      (``test_split``);
    - :data:`HELD_OUT_COLUMNS`: test nDCG@10 over the queries whose relevant documents no
      training query shares, and how many those are;
    - :data:`BM25_COLUMNS`: BM25's test nDCG@10, on every query and on the held-out ones;
    - with ``comparison``, :func:`comparison_columns`.

    Metrics a job lacks (it never validated, or has no such evaluation) are None.

    Args:
        sweep: The sweep.
        comparison: Marks from :func:`compare_to_baseline`, for a sweep with one seed per
            configuration.

    Returns:
        The rows, best dev nDCG@10 first (jobs without one last, in folder order).

    Raises:
        ValueError: ``comparison`` is given but a configuration has several seeds (its marks
            belong to the grouped table, :func:`seed_rows`).
    """
    varying = varying_overrides(sweep.jobs)
    collections = extra_collections(sweep.jobs)
    values = {job.name: _job_values(job, collections) for job in sweep.jobs}
    optional = [
        *(extra_collection_column(name) for name in collections),
        *HELD_OUT_COLUMNS,
        *BM25_COLUMNS,
    ]
    present = {
        column
        for column in optional
        if any(job_values[column] is not None for job_values in values.values())
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
            row.update(_comparison_values(configuration_of[job.name], comparison))
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
    per-query ``metric``, where per-query files exist; with ``comparison``,
    :func:`comparison_columns`.

    Args:
        sweep: The sweep.
        comparison: Marks from :func:`compare_to_baseline`.
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
    values = {job.name: _job_values(job, collections) for job in sweep.jobs}
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
            row.update(_comparison_values(configuration, comparison))
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


def _round_ticks(linear_up_to: float, right: float) -> list[float]:
    # 0, the end of the linear part, then 1-2-5 steps (powers of ten alone past two decades).
    multipliers = (1, 2, 5) if right / linear_up_to <= 100 else (1,)
    ticks = [0.0, linear_up_to]
    power = 10 ** math.floor(math.log10(linear_up_to))
    while power <= right:
        ticks += [power * m for m in multipliers if linear_up_to * 1.5 < power * m <= right]
        power *= 10
    return ticks


def _short_number(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def curve_metrics(jobs: Sequence[Job]) -> dict[str, str]:
    """The metrics drawn as learning curves, with the short name used in their file names.

    :data:`CURVE_METRICS` (dev nDCG@10 and MRR@10, always drawn), then ``val_<name>/ndcg@10``
    for each extra dev collection found in some job's ``metrics.csv``, named ``<name>_ndcg``.

    Args:
        jobs: The jobs of a sweep.

    Returns:
        Metric column -> short name.
    """
    metrics = dict(CURVE_METRICS)
    logged = {column for job in jobs for column in job.curve.metrics}
    for name in extra_collections(jobs):
        column = f"val_{name}/ndcg@10"
        if column in logged:
            # The collection name goes into a file name: keep it to safe characters.
            metrics[column] = re.sub(r"[^A-Za-z0-9_-]", "_", name) + "_ndcg"
    return metrics


def _curve_title(metric: str, axis_name: str) -> str:
    """``val/ndcg@10 on the dev split against optimizer step``, naming extra collections."""
    match = EXTRA_VALIDATION_PATTERN.match(metric)
    collection = f"the extra dev collection {match['collection']!r}" if match else "the dev split"
    return f"{metric} on {collection} against {axis_name}"


def _curve_points(job: Job, metric: str, x_axis: str) -> list[tuple[float, float]]:
    values = job.curve.metrics.get(metric)
    if values is None:
        return []
    return [
        (x, y)
        for x, y in zip(getattr(job.curve, x_axis), values, strict=True)
        if not (math.isnan(x) or math.isnan(y))
    ]


def plot_curves(sweep: Sweep, metric: str, x_axis: str) -> Figure:
    """Draw one dev metric against steps or examples seen, one line per configuration.

    A configuration run with one seed is one job's line; one run with several seeds is their
    mean with a band from the lowest to the highest seed, so that a multi-seed ablation stays
    readable. At each x the mean and band take the seeds that validated there (a seed stopped
    early leaves the later points to the others).

    The x axis is symlog: linear from 0 up to the first positive validation point, log beyond,
    so that the early phase spreads out and step 0 stays on the plot.

    Args:
        sweep: The sweep.
        metric: A validation metric column, e.g. ``"val/ndcg@10"`` or ``"val_med/ndcg@10"``.
        x_axis: ``"steps"`` or ``"examples_seen"``.

    Returns:
        A matplotlib figure with an Agg canvas attached (no pyplot, no global backend change).

    Raises:
        ValueError: Unknown ``x_axis``.
    """
    if x_axis not in CURVE_AXES:
        raise ValueError(f"x_axis must be one of {sorted(CURVE_AXES)}, got {x_axis!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    varying = varying_overrides(sweep.jobs)
    smallest_positive_x = math.inf
    for configuration in group_configurations(sweep.jobs):
        curves = [
            (job, points)
            for job in configuration.jobs
            if (points := _curve_points(job, metric, x_axis))
        ]
        for _job, points in curves:
            smallest_positive_x = min([smallest_positive_x, *(x for x, _ in points if x > 0)])
        if len(curves) == 1:
            job, points = curves[0]
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", markersize=3, label=job_label(job, varying))
        elif curves:
            by_x: dict[float, list[float]] = {}
            for _job, points in curves:
                for x, y in points:
                    by_x.setdefault(x, []).append(y)
            xs = sorted(by_x)
            (line,) = axes.plot(
                xs,
                [statistics.fmean(by_x[x]) for x in xs],
                marker="o",
                markersize=3,
                label=f"{configuration.label} (mean of {len(curves)} seeds, band min-max)",
            )
            axes.fill_between(
                xs,
                [min(by_x[x]) for x in xs],
                [max(by_x[x]) for x in xs],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    linear_up_to = smallest_positive_x if math.isfinite(smallest_positive_x) else 1.0
    axes.set_xscale("symlog", linthresh=linear_up_to)
    # Symlog's own ticks fall inside the linear part or skip short ranges; label round numbers.
    right = max(axes.get_xlim()[1], linear_up_to)
    axes.set_xticks(_round_ticks(linear_up_to, right), minor=False)
    axes.set_xticks([], minor=True)
    axes.xaxis.set_major_formatter(lambda value, _position: _short_number(value))
    # A small margin left of 0 so that step-0 markers are drawn whole.
    axes.set_xlim(-0.05 * linear_up_to, right)
    axis_name = CURVE_AXES[x_axis][1]
    axes.set_xlabel(f"{axis_name} (symlog: linear up to {linear_up_to:g}, log above)")
    axes.set_ylabel(metric)
    axes.set_title(_curve_title(metric, axis_name))
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return figure


@dataclass(frozen=True)
class SweepSummary:
    """The tables of a sweep, computed once for writing and printing.

    Attributes:
        rows: One row per job (:func:`summary_rows`), with the marks when every configuration
            has one seed.
        seed_rows: One row per configuration (:func:`seed_rows`) when some configuration has
            several seeds, else None.
        comparison: The comparison with the baseline, or None (no baseline, or no per-query
            files for the default one).
        notes: Lines printed under the table that carries the marks (method, baseline).
    """

    rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]] | None
    comparison: BaselineComparison | None
    notes: list[str]

    def jobs_markdown(self) -> str:
        """The per-job table, with the notes when it carries the marks."""
        notes = self.notes if self.seed_rows is None else []
        return "\n\n".join([markdown_table(self.rows), *notes])

    def seeds_markdown(self) -> str | None:
        """The per-configuration table and its notes; None when every configuration has 1 seed."""
        if self.seed_rows is None:
            return None
        return "\n\n".join([markdown_table(self.seed_rows), *self.notes])


def summarize_sweep(
    sweep: Sweep,
    baseline: Mapping[str, str] | None = None,
    metric: str = "ndcg@10",
    alpha: float = 0.05,
    permutations: int = 10_000,
    resamples: int = 10_000,
) -> SweepSummary:
    """Group seeds, choose the baseline, compare, and build the tables.

    Args:
        sweep: The sweep.
        baseline: Override key -> value of the baseline configuration (see
            :func:`choose_baseline`); None: the configuration whose varying override is
            ``baseline``, if exactly one is, and only when its jobs wrote per-query test files.
        metric: The per-query test metric of the comparisons and the seed intervals.
        alpha: Family-wise significance level of the marks.
        permutations: Random sign flips per paired test.
        resamples: Bootstrap samples per interval.

    Returns:
        The tables and the comparison.

    Raises:
        SweepComparisonError: ``baseline`` matches no single configuration or has no per-query
            files, or per-query files cover different queries (the message names the jobs).
    """
    configurations = group_configurations(sweep.jobs)
    chosen = choose_baseline(configurations, baseline)
    comparison = None
    # A default baseline from an older sweep (no per-query files) just means no marks; an
    # explicit one the user asked for must be comparable, so compare_to_baseline says why not.
    has_files = chosen is not None and any(job.per_query_path() for job in chosen.jobs)
    if chosen is not None and len(configurations) > 1 and (baseline is not None or has_files):
        comparison = compare_to_baseline(
            configurations, chosen, metric, alpha, permutations, resamples
        )
    grouped = any(len(configuration.jobs) > 1 for configuration in configurations)
    grouped_rows = seed_rows(sweep, comparison, metric, resamples) if grouped else None
    notes = []
    if grouped_rows is not None:
        interval = (
            f"; test_{metric} 95% CI: percentile bootstrap over test queries of the "
            f"seed-averaged per-query {metric} ({resamples} resamples)"
            if f"test_{metric}_ci_low" in grouped_rows[0]
            else ""
        )
        notes.append(
            "Metrics: mean ± sample standard deviation (n - 1) over the seeds of each "
            f"configuration{interval}."
        )
    if comparison is not None:
        averaged = ", averaged over seeds" if grouped else ""
        notes.append(
            f"Marks: test {metric} per query{averaged}, against the baseline "
            f"{comparison.baseline.label!r} (job(s) {comparison.baseline.job_names}). "
            f"{comparison.description}"
        )
        if comparison.not_compared:
            notes.append(
                "Not compared (no per-query test file): " + "; ".join(comparison.not_compared)
            )
    return SweepSummary(
        rows=summary_rows(sweep, None if grouped else comparison),
        seed_rows=grouped_rows,
        comparison=comparison,
        notes=notes,
    )


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_summary(
    sweep: Sweep, output_dir: str | Path, summary: SweepSummary | None = None
) -> dict[str, Path]:
    """Write the summary tables (markdown and CSV) and the learning-curve plots.

    Files: ``summary.md`` and ``summary.csv`` (one row per job); ``summary_seeds.md`` and
    ``summary_seeds.csv`` (one row per configuration) when a configuration has several seeds;
    ``curves_<metric>_{steps,examples}.png`` for each of :func:`curve_metrics` (``ndcg``,
    ``mrr``, then ``<name>_ndcg`` per extra dev collection) against optimizer steps and
    against examples seen.

    Args:
        sweep: The sweep.
        output_dir: Folder to write into; created if missing.
        summary: The tables, from :func:`summarize_sweep` (with its options); None: computed
            with the defaults.

    Returns:
        ``"summary_markdown"``, ``"summary_csv"``, ``"seeds_markdown"`` and ``"seeds_csv"`` when
        written, and ``"curves_<metric>_<axis>"`` -> path.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if summary is None:
        summary = summarize_sweep(sweep)
    paths = {
        "summary_markdown": output_dir / "summary.md",
        "summary_csv": output_dir / "summary.csv",
    }
    paths["summary_markdown"].write_text(summary.jobs_markdown() + "\n")
    _write_csv(paths["summary_csv"], summary.rows)
    seeds_markdown = summary.seeds_markdown()
    if summary.seed_rows is not None and seeds_markdown is not None:
        paths["seeds_markdown"] = output_dir / "summary_seeds.md"
        paths["seeds_csv"] = output_dir / "summary_seeds.csv"
        paths["seeds_markdown"].write_text(seeds_markdown + "\n")
        _write_csv(paths["seeds_csv"], summary.seed_rows)
    for metric, metric_short in curve_metrics(sweep.jobs).items():
        for x_axis, (axis_short, _) in CURVE_AXES.items():
            name = f"curves_{metric_short}_{axis_short}"
            paths[name] = output_dir / f"{name}.png"
            plot_curves(sweep, metric, x_axis).savefig(paths[name], dpi=120)
    return paths
