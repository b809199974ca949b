"""Summarise a sweep of training jobs: a table of dev metrics and learning curves.

A Hydra multirun (``python -m colbert_lightning.train -m ...``) writes one numbered folder per job
under its sweep folder. Each finished job holds ``results.json`` (step-0, final and best dev
metrics), ``csv/metrics.csv`` (every validation, from Lightning's CSVLogger) and
``.hydra/overrides.yaml`` (the job's command-line overrides). This module reads them back::

    sweep = load_sweep("outputs/train/multiruns/2026-11-27_15-47-44")
    rows = summary_rows(sweep)  # one row per job, best dev nDCG@10 first
    paths = write_summary(sweep, "/tmp/summary")  # summary.md, summary.csv, curve PNGs

or from the shell (:mod:`colbert_lightning.summarize`)::

    python -m colbert_lightning.summarize SWEEP_DIR [--output DIR]

matplotlib is imported only when plotting, so reading and tabulating stay light.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VALIDATION_PREFIX = "val/"
EXAMPLES_SEEN_COLUMN = "trainer/examples_seen"
RESULTS_FILE = "results.json"
METRICS_CSV = Path("csv") / "metrics.csv"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"

# Metrics drawn as learning curves, with the short name used in file names.
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
JOB_COLUMN = "job"


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

    Validation rows are those with at least one ``val/*`` value; training rows leave them empty.

    Args:
        metrics_csv: Path of the file.

    Returns:
        The rows as columns, sorted by step (the logger may write them out of order).
    """
    with metrics_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        metric_names = [
            name for name in reader.fieldnames or [] if name.startswith(VALIDATION_PREFIX)
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
    reserved = {JOB_COLUMN, *METRIC_COLUMNS, *TEST_COLUMNS}
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


def summary_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per finished job: varying overrides, then dev metrics and run size.

    Columns: ``job``, one per varying override (see :func:`varying_overrides`; None where a job
    does not set it), then :data:`METRIC_COLUMNS`: the best dev nDCG@10 and its step, the final
    dev nDCG@10 / MRR@10 / Recall@100, the step-0 nDCG@10, steps, examples seen and wall time in
    seconds; then, when any job evaluated its best checkpoint on a held-out split (``test_split``),
    :data:`TEST_COLUMNS`. Metrics of a job that never validated are None.

    Args:
        sweep: The sweep.

    Returns:
        The rows, best dev nDCG@10 first (jobs without one last, in folder order).
    """
    varying = varying_overrides(sweep.jobs)
    with_test = any(job.results.get("test") for job in sweep.jobs)
    rows = []
    for job in sweep.jobs:
        row: dict[str, Any] = {JOB_COLUMN: job.name}
        row.update({label: job.overrides.get(key) for key, label in varying.items()})
        row.update(
            {
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
        )
        if with_test:
            test_metrics = (job.results.get("test") or {}).get("metrics", {})
            row.update(
                {column: test_metrics.get(column.removeprefix("test_")) for column in TEST_COLUMNS}
            )
        rows.append(row)
    # sorted() is stable, so ties keep folder order.
    return sorted(
        rows,
        key=lambda row: (row["best_ndcg@10"] is None, -(row["best_ndcg@10"] or 0.0)),
    )


def _format_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "wall_time_s" else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render summary rows as a markdown table (metrics to 4 decimals, missing values ``-``).

    Args:
        rows: Output of :func:`summary_rows`.

    Returns:
        The table, one line per row, without a trailing newline.
    """
    if not rows:
        return ""
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if column in (JOB_COLUMN,) else "---:" for column in columns) + "|",
    ]
    for row in rows:
        cells = (_format_cell(column, row.get(column)) for column in columns)
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


def plot_curves(sweep: Sweep, metric: str, x_axis: str) -> Figure:
    """Draw one dev metric against steps or examples seen, one line per job.

    The x axis is symlog: linear from 0 up to the first positive validation point, log beyond,
    so that the early phase spreads out and step 0 stays on the plot.

    Args:
        sweep: The sweep.
        metric: A validation metric column, e.g. ``"val/ndcg@10"``.
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
    for job in sweep.jobs:
        values = job.curve.metrics.get(metric)
        if values is None:
            continue
        points = [
            (x, y)
            for x, y in zip(getattr(job.curve, x_axis), values, strict=True)
            if not (math.isnan(x) or math.isnan(y))
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        smallest_positive_x = min([smallest_positive_x, *(x for x in xs if x > 0)])
        axes.plot(xs, ys, marker="o", markersize=3, label=job_label(job, varying))
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
    axes.set_title(f"{metric} on the dev split against {axis_name}")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return figure


def write_summary(sweep: Sweep, output_dir: str | Path) -> dict[str, Path]:
    """Write the summary table (markdown and CSV) and the learning-curve plots.

    Files: ``summary.md``, ``summary.csv``, and ``curves_{ndcg,mrr}_{steps,examples}.png``
    (dev nDCG@10 / MRR@10 against optimizer steps and against examples seen).

    Args:
        sweep: The sweep.
        output_dir: Folder to write into; created if missing.

    Returns:
        ``"summary_markdown"``, ``"summary_csv"`` and ``"curves_<metric>_<axis>"`` -> path.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(sweep)
    paths = {
        "summary_markdown": output_dir / "summary.md",
        "summary_csv": output_dir / "summary.csv",
    }
    paths["summary_markdown"].write_text(markdown_table(rows) + "\n")
    with paths["summary_csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for metric, metric_short in CURVE_METRICS.items():
        for x_axis, (axis_short, _) in CURVE_AXES.items():
            name = f"curves_{metric_short}_{axis_short}"
            paths[name] = output_dir / f"{name}.png"
            plot_curves(sweep, metric, x_axis).savefig(paths[name], dpi=120)
    return paths
