"""Read a sweep of training jobs back: each job's overrides, results and validation curve.

A Hydra multirun (``python -m colbert_lightning.train -m ...``) writes one numbered folder per job
under its sweep folder. Each finished job holds ``results.json`` (step-0, final and best dev
metrics; with ``test_split``, the test metrics of the best checkpoint, of BM25 and of the step-0
model, each with an optional per-query TSV), ``csv/metrics.csv`` (every validation, from
Lightning's CSVLogger, including extra dev collections logged as ``val_<name>/...``) and
``.hydra/overrides.yaml`` (the job's command-line overrides). This module reads them back::

    sweep = load_sweep("outputs/train/multiruns/2026-11-27_15-47-44")
    sweep.jobs[0].metric("best", "val/ndcg@10")

and says which overrides vary between jobs (:func:`varying_overrides`) and what each job
reports as summary columns (:func:`job_values`). The rest of a sweep's summary builds on it, one
concern a module: :mod:`~colbert_lightning.evaluation.configurations` (jobs that differ only in
``seed``; the comparison with a baseline), :mod:`~colbert_lightning.evaluation.tables` (one row
per job or per configuration; markdown), :mod:`~colbert_lightning.evaluation.curves` (learning
curves) and :mod:`~colbert_lightning.evaluation.summary` (all of them, and the files that
``python -m colbert_lightning.summarize`` writes).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from colbert_lightning.evaluation.per_query import HELD_OUT

VALIDATION_PREFIX = "val/"
# Extra dev collections followed during training log as val_<name>/<metric> (val_med/ndcg@10).
EXTRA_VALIDATION_PATTERN = re.compile(r"^val_(?P<collection>[^/]+)/")
EXAMPLES_SEEN_COLUMN = "trainer/examples_seen"
RESULTS_FILE = "results.json"
METRICS_CSV = Path("csv") / "metrics.csv"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
# Overrides of where a job reads and writes, left out of its overrides (``_read_overrides``).
LOCATION_KEYS = "paths."

# Columns of the per-job table after the varying overrides (job_values,
# tables.summary_rows); an override never takes one of these names.
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
# The test-split entries of results.json: the best checkpoint, BM25, and the untrained model.
TEST_ENTRIES = ("test", "test_bm25", "test_step0")


class EmptySweepError(ValueError):
    """Raised when a sweep folder holds no job with a ``results.json``."""


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
    overrides = dict(parse_override(str(entry)) for entry in entries)
    # paths.* say where a job read and wrote (a cache folder, a run folder), not what it
    # trained: jobs run from another checkout are the same configuration
    return {key: value for key, value in overrides.items() if not key.startswith(LOCATION_KEYS)}


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


def job_values(job: Job, collections: Sequence[str]) -> dict[str, Any]:
    """Every metric column a job can fill, None where it lacks the data.

    Args:
        job: The job.
        collections: Extra dev collections to report (:func:`extra_collections` of the sweep),
            one ``best_val_<name>_ndcg@10`` column each.

    Returns:
        :data:`METRIC_COLUMNS`, the extra collections' columns, :data:`TEST_COLUMNS`,
        :data:`HELD_OUT_COLUMNS` and :data:`BM25_COLUMNS` -> value, in that order.
    """
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
