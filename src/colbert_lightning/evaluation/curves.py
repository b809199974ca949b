"""A sweep's learning curves: a dev metric against steps or examples seen, per configuration.

:func:`curve_metrics` names what is drawn (dev nDCG@10 and MRR@10, and nDCG@10 of each extra dev
collection); :func:`plot_curves` draws one of them, a configuration with several seeds as their
mean with a min-max band, and reference figures (BM25 on the same queries, see
:mod:`~colbert_lightning.evaluation.baselines`) as dashed horizontal lines.

:func:`plot_probes` draws the training probes (``probe/*``, logged by
:class:`~colbert_lightning.training.probes.TrainingProbes`) against steps: a panel per probe, a
line per job.

matplotlib is imported only when plotting, so reading and tabulating a sweep stay light.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from colbert_lightning.evaluation.configurations import group_configurations
from colbert_lightning.evaluation.sweeps import (
    EXTRA_VALIDATION_PATTERN,
    METRICS_CSV,
    Job,
    Sweep,
    extra_collections,
    job_label,
    varying_overrides,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Metrics drawn as learning curves, with the short name used in file names; each extra dev
# collection adds its val_<name>/ndcg@10 (see curve_metrics).
CURVE_METRICS = {"val/ndcg@10": "ndcg", "val/mrr@10": "mrr"}
# x axes of the learning curves: ValidationCurve attribute -> (file-name suffix, axis label).
CURVE_AXES = {"steps": ("steps", "optimizer step"), "examples_seen": ("examples", "examples seen")}
REFERENCE_LINESTYLE = "--"
"""How a reference figure (a baseline that does not train, e.g. BM25) is drawn across the plot."""
PROBE_PREFIX = "probe/"
"""Training probes log as ``probe/<name>``, gradient norms as ``probe/grad_norm/<layer>``."""
GRADIENT_NORM_PREFIX = f"{PROBE_PREFIX}grad_norm/"


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


def _symlog_x_axis(axes: Axes, linear_up_to: float, right: float | None = None) -> None:
    """Linear from 0 up to ``linear_up_to`` (the first positive x), log beyond, round ticks.

    ``right``: the axis' end (panels that share it); None: where the data ends.
    """
    axes.set_xscale("symlog", linthresh=linear_up_to)
    # Symlog's own ticks fall inside the linear part or skip short ranges; label round numbers.
    right = max(axes.get_xlim()[1] if right is None else right, linear_up_to)
    axes.set_xticks(_round_ticks(linear_up_to, right), minor=False)
    axes.set_xticks([], minor=True)
    axes.xaxis.set_major_formatter(lambda value, _position: _short_number(value))
    # A small margin left of 0 so that step-0 markers are drawn whole.
    axes.set_xlim(-0.05 * linear_up_to, right)


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
    _symlog_x_axis(axes, linear_up_to)
    axis_name = CURVE_AXES[x_axis][1]
    axes.set_xlabel(f"{axis_name} (symlog: linear up to {linear_up_to:g}, log above)")
    axes.set_ylabel(metric)
    axes.set_title(_curve_title(metric, axis_name))
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return figure


def read_probe_curves(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """The ``probe/*`` columns of a Lightning CSVLogger ``metrics.csv``.

    The probes are logged in rows of their own (no ``val/*`` value), so
    :func:`~colbert_lightning.evaluation.sweeps.read_validation_curve` leaves them out.

    Args:
        metrics_csv: Path of the file.

    Returns:
        Probe name -> ``(step, value)`` sorted by step, one per step (the last row's, should a
        step be logged twice); empty when the file has no probe.
    """
    with metrics_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        names = [name for name in reader.fieldnames or [] if name.startswith(PROBE_PREFIX)]
        by_step: dict[str, dict[int, float]] = {name: {} for name in names}
        for row in reader:
            for name in names:
                if row.get(name) not in (None, ""):
                    by_step[name][int(float(row["step"]))] = float(row[name])
    return {name: sorted(values.items()) for name, values in by_step.items() if values}


def _layer_order(name: str) -> tuple[int, int, str]:
    # embeddings, layer_0, layer_1, ..., layer_10 (numerically), projection, anything else, total
    group = name.removeprefix(GRADIENT_NORM_PREFIX)
    layer = re.fullmatch(r"layer_(\d+)", group)
    if group == "embeddings":
        return 0, 0, group
    if layer:
        return 1, int(layer[1]), group
    ranks = {"projection": 2, "total": 4}
    return ranks.get(group, 3), 0, group


# Panels of the probe figure: title -> (y label, the probes drawn, y on a log scale). A panel
# with several probes draws each job's first solid and the others dashed, except the margin's:
# its median, with a band from its 10% to its 90% quantile (PROBE_BANDS).
PROBE_PANELS = {
    "anisotropy": ("mean cosine of two doc tokens", ["probe/anisotropy"], False),
    "effective rank": ("doc token embeddings", ["probe/effective_rank"], False),
    "margin: positive - hardest negative": (
        "MaxSim margin (median, band q10-q90)",
        ["probe/margin_q50"],
        False,
    ),
    "positive vs hardest negative (dashed)": (
        "mean MaxSim",
        ["probe/positive_mean", "probe/hardest_negative_mean"],
        False,
    ),
    "exact-match share": (
        "query tokens matching the same token",
        ["probe/exact_match_share"],
        False,
    ),
}
PROBE_BANDS = {"probe/margin_q50": ("probe/margin_q10", "probe/margin_q90")}
_PANEL_LINESTYLES = ("-", "--")


def plot_probes(sweep: Sweep) -> Figure | None:
    """Draw the training probes against optimizer steps: a panel per probe, a line per job.

    Panels: anisotropy, effective rank, the margin (median, with a band from its 10% to its
    90% quantile), positive and hardest-negative means, exact-match share, then the gradient
    norm of each layer group and the total (log scale). The x axis is symlog, as in
    :func:`plot_curves`. A job's colour is the same in every panel.

    Args:
        sweep: The sweep; each job's ``csv/metrics.csv`` is read (:func:`read_probe_curves`).

    Returns:
        A matplotlib figure with an Agg canvas attached, or None when no job logged a probe.
    """
    curves = {
        job.name: read_probe_curves(job.folder / METRICS_CSV)
        for job in sweep.jobs
        if (job.folder / METRICS_CSV).is_file()
    }
    logged = {name for probes in curves.values() for name in probes}
    if not logged:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (title, ylabel, names, log_scale)
        for title, (ylabel, names, log_scale) in PROBE_PANELS.items()
        if names[0] in logged
    ]
    gradient_names = sorted(
        (name for name in logged if name.startswith(GRADIENT_NORM_PREFIX)), key=_layer_order
    )
    panels += [
        (f"gradient norm: {name.removeprefix(GRADIENT_NORM_PREFIX)}", "L2 norm", [name], True)
        for name in gradient_names
    ]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.2 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    steps = [step for probes in curves.values() for points in probes.values() for step, _ in points]
    linear_up_to = min((step for step in steps if step > 0), default=1.0)
    last_step = max(steps) * 1.05  # every panel to the last step probed, gradients included
    handles = {}  # job name -> a line of its colour, for the legend
    for index, (title, ylabel, names, log_scale) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        for job_index, job in enumerate(sweep.jobs):
            probes = curves.get(job.name, {})
            colour = f"C{job_index % 10}"
            for name, linestyle in zip(names, _PANEL_LINESTYLES, strict=False):
                if name in PROBE_BANDS:
                    low, high = PROBE_BANDS[name]
                    _band(axes, probes.get(low, []), probes.get(high, []), colour)
                points = probes.get(name, [])
                if log_scale:
                    points = [(step, value) for step, value in points if value > 0]
                if points:
                    steps, values = zip(*points, strict=True)
                    (line,) = axes.plot(
                        steps, values, marker="o", markersize=3, color=colour, linestyle=linestyle
                    )
                    handles.setdefault(job.name, line)
        if log_scale:
            axes.set_yscale("log")
            # plain numbers: a narrow log range is labelled by its minor ticks, as 1.5x10^1
            axes.yaxis.set_major_formatter(lambda value, _position: f"{value:.3g}")
            axes.yaxis.set_minor_formatter(lambda value, _position: f"{value:.3g}")
        _symlog_x_axis(axes, linear_up_to, last_step)
        axes.set_title(title, fontsize="medium")
        axes.set_ylabel(ylabel, fontsize="small")
        axes.set_xlabel("optimizer step", fontsize="small")
        axes.grid(True, which="both", alpha=0.3)
    varying = varying_overrides(sweep.jobs)
    labels = {job.name: job_label(job, varying) for job in sweep.jobs}
    figure.legend(
        list(handles.values()),
        [labels[name] for name in handles],
        loc="outside lower center",
        ncols=min(4, len(handles)),
        fontsize="small",
    )
    figure.suptitle("training probes on the fixed dev sample, against optimizer step")
    return figure


def _band(
    axes: Axes, low: list[tuple[int, float]], high: list[tuple[int, float]], colour: str
) -> None:
    """Shade between two curves at the steps both have."""
    lows, highs = dict(low), dict(high)
    steps = sorted(set(lows) & set(highs))
    if steps:
        axes.fill_between(
            steps,
            [lows[step] for step in steps],
            [highs[step] for step in steps],
            color=colour,
            alpha=0.2,
            linewidth=0,
        )
