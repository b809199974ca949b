"""A sweep's learning curves: a dev metric against steps or examples seen, per configuration.

:func:`curve_metrics` names what is drawn (dev nDCG@10 and MRR@10, and nDCG@10 of each extra dev
collection); :func:`plot_curves` draws one of them, a configuration with several seeds as their
mean with a min-max band, and reference figures (BM25 on the same queries, see
:mod:`~colbert_lightning.evaluation.baselines`) as dashed horizontal lines.

matplotlib is imported only when plotting, so reading and tabulating a sweep stay light.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from colbert_lightning.evaluation.configurations import group_configurations
from colbert_lightning.evaluation.sweeps import (
    EXTRA_VALIDATION_PATTERN,
    Job,
    Sweep,
    extra_collections,
    job_label,
    varying_overrides,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Metrics drawn as learning curves, with the short name used in file names; each extra dev
# collection adds its val_<name>/ndcg@10 (see curve_metrics).
CURVE_METRICS = {"val/ndcg@10": "ndcg", "val/mrr@10": "mrr"}
# x axes of the learning curves: ValidationCurve attribute -> (file-name suffix, axis label).
CURVE_AXES = {"steps": ("steps", "optimizer step"), "examples_seen": ("examples", "examples seen")}
REFERENCE_LINESTYLE = "--"
"""How a reference figure (a baseline that does not train, e.g. BM25) is drawn across the plot."""


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


def plot_curves(
    sweep: Sweep, metric: str, x_axis: str, references: Mapping[str, float] | None = None
) -> Figure:
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
        references: Legend label -> value of ``metric``, each drawn as a dashed horizontal line
            (``{"BM25": 0.31}``, from :meth:`DevBaselines.lines
            <colbert_lightning.evaluation.baselines.DevBaselines.lines>`); None: none.

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
    references = references or {}
    for index, (label, value) in enumerate(references.items()):
        # Greys, apart from the configurations' colours; darker to lighter when there are several.
        grey = 0.25 + 0.4 * index / max(1, len(references) - 1)
        axes.axhline(
            value, linestyle=REFERENCE_LINESTYLE, linewidth=1.2, color=f"{grey:.2f}", label=label
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
