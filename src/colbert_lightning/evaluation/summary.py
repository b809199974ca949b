"""A sweep's whole summary: seeds grouped, baseline compared, tables built, files written.

What ``python -m colbert_lightning.summarize SWEEP_DIR [--output DIR] [--baseline KEY=VALUE]``
runs, through the Python API::

    sweep = load_sweep("outputs/train/multiruns/2026-11-27_15-47-44")  # evaluation.sweeps
    rows = summary_rows(sweep)  # evaluation.tables: one row per job, best dev nDCG@10 first
    summary = summarize_sweep(sweep, baseline={"variant": "baseline"})  # + seeds, marks, BM25
    paths = write_summary(sweep, "/tmp/summary", summary)  # summary.md/.csv, curve PNGs

When a configuration (:mod:`~colbert_lightning.evaluation.configurations`) has several seeds, a
grouped table gives mean and sample standard deviation over seeds and carries the marks against
the baseline; otherwise the per-job table does.

BM25 on the dev queries the jobs followed (:mod:`~colbert_lightning.evaluation.baselines`) is
computed from the files their configs name, noted under the table, drawn as a dashed line on
the curves and written to ``bm25_dev.json``; ``bm25=False`` skips it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colbert_lightning.evaluation.baselines import DevBaselines, bm25_dev_baselines
from colbert_lightning.evaluation.configurations import (
    BaselineComparison,
    choose_baseline,
    compare_to_baseline,
    group_configurations,
)
from colbert_lightning.evaluation.curves import CURVE_AXES, curve_metrics, plot_curves, plot_probes
from colbert_lightning.evaluation.sweeps import Sweep
from colbert_lightning.evaluation.tables import markdown_table, seed_rows, summary_rows


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
        notes: Lines printed under the table that carries the marks (method, baseline, BM25).
        bm25_dev: BM25 on the jobs' dev evaluations, or None when not asked for.
    """

    rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]] | None
    comparison: BaselineComparison | None
    notes: list[str]
    bm25_dev: DevBaselines | None = None

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
    bm25: bool = True,
) -> SweepSummary:
    """Group seeds, choose the baseline, compare, build the tables, and run BM25 on the dev sets.

    Args:
        sweep: The sweep.
        baseline: Override key -> value of the baseline configuration (see
            :func:`choose_baseline`); None: the configuration whose varying override is
            ``baseline``, if exactly one is, and only when its jobs wrote per-query test files.
        metric: The per-query test metric of the comparisons and the seed intervals.
        alpha: Family-wise significance level of the marks.
        permutations: Random sign flips per paired test.
        resamples: Bootstrap samples per interval.
        bm25: Compute BM25 on the dev evaluations the jobs' configs name (once per distinct
            files; a few seconds each), for the notes, the curves and ``bm25_dev.json``.

    Returns:
        The tables, the comparison and the BM25 figures.

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
    bm25_dev = bm25_dev_baselines(sweep.jobs) if bm25 else None
    if bm25_dev is not None:
        notes.extend(bm25_dev.notes())
    return SweepSummary(
        rows=summary_rows(sweep, None if grouped else comparison),
        seed_rows=grouped_rows,
        comparison=comparison,
        notes=notes,
        bm25_dev=bm25_dev,
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
    against examples seen, with BM25's figure dashed where the summary has it;
    ``curves_probes.png`` (:func:`plot_probes`) when some job logged training probes
    (``probe/*``); and ``bm25_dev.json`` (the BM25 figures and what was skipped) when the
    summary computed BM25 and some job names dev files.

    Args:
        sweep: The sweep.
        output_dir: Folder to write into; created if missing.
        summary: The tables, from :func:`summarize_sweep` (with its options); None: computed
            with the defaults.

    Returns:
        ``"summary_markdown"``, ``"summary_csv"``, ``"seeds_markdown"`` and ``"seeds_csv"`` when
        written, ``"bm25_dev"`` and ``"curves_probes"`` when written, and
        ``"curves_<metric>_<axis>"`` -> path.
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
    bm25_dev = summary.bm25_dev
    if bm25_dev is not None and (bm25_dev.figures or bm25_dev.skipped):
        paths["bm25_dev"] = output_dir / "bm25_dev.json"
        paths["bm25_dev"].write_text(json.dumps(bm25_dev.to_json(), indent=2) + "\n")
    for metric, metric_short in curve_metrics(sweep.jobs).items():
        references = bm25_dev.lines(metric) if bm25_dev is not None else None
        for x_axis, (axis_short, _) in CURVE_AXES.items():
            name = f"curves_{metric_short}_{axis_short}"
            paths[name] = output_dir / f"{name}.png"
            plot_curves(sweep, metric, x_axis, references).savefig(paths[name], dpi=120)
    probes = plot_probes(sweep)
    if probes is not None:
        paths["curves_probes"] = output_dir / "curves_probes.png"
        probes.savefig(paths["curves_probes"], dpi=100)
    return paths
