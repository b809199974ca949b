"""``python -m colbert_lightning.summarize SWEEP_DIR``: a sweep's tables, marks and curves.

Reads what the jobs of a multirun wrote (:mod:`colbert_lightning.evaluation.sweeps`) and, through
:mod:`colbert_lightning.evaluation.summary`, writes ``summary.md``, ``summary.csv`` (one row per
job), ``summary_seeds.md`` and ``summary_seeds.csv`` (one row per configuration, when jobs differ
only in ``seed``) and the learning-curve PNGs (dev nDCG@10 and MRR@10, nDCG@10 of each extra
dev collection, and ``curves_probes.png`` when the jobs logged probes: ``callbacks.probes``).

``--baseline KEY=VALUE`` picks the configuration the others are compared with on the per-query
test metric (``--metric``); without it, the configuration whose varying override is literally
``baseline`` is, if exactly one is.

BM25 on the same dev queries is computed from the files the jobs' configs name (once per
distinct files), drawn as a dashed line on each curve, noted under the table and written to
``bm25_dev.json``; files no longer there are skipped and said so. ``--no-bm25`` skips it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from colbert_lightning.evaluation.configurations import SweepComparisonError, parse_baseline
from colbert_lightning.evaluation.per_query import METRIC_NAMES, PerQueryFormatError
from colbert_lightning.evaluation.summary import summarize_sweep, write_summary
from colbert_lightning.evaluation.sweeps import EmptySweepError, load_sweep


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m colbert_lightning.summarize SWEEP_DIR [options]``.

    Prints the per-job table, the per-configuration table when some configuration has several
    seeds (each with its notes: method, baseline, BM25 on the dev queries), the incomplete jobs
    and the files written; logs each BM25 figure as it is computed. Exits with status 2 when
    ``SWEEP_DIR`` is missing or holds no job with ``results.json``, or when ``--baseline``
    cannot be compared (no such configuration, no per-query test files, different test
    queries).

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(
        prog="python -m colbert_lightning.summarize",
        description="Tabulate and plot the dev and test metrics of a sweep of training jobs.",
    )
    parser.add_argument("sweep_dir", type=Path, help="multirun folder (or a single run's folder)")
    parser.add_argument(
        "--output", type=Path, default=None, help="where to write the files (default: SWEEP_DIR)"
    )
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="KEY=VALUE",
        default=None,
        help="the configuration the others are compared with, by one of its overrides "
        "(variant=baseline); repeat to narrow it down (default: the configuration whose varying "
        "override is 'baseline', if exactly one is)",
    )
    parser.add_argument(
        "--metric",
        choices=METRIC_NAMES,
        default="ndcg@10",
        help="per-query test metric of the comparisons and intervals (default: ndcg@10)",
    )
    parser.add_argument(
        "--no-bm25",
        dest="bm25",
        action="store_false",
        help="do not compute BM25 on the jobs' dev sets (default: computed, drawn dashed on the "
        "curves and written to bm25_dev.json)",
    )
    args = parser.parse_args(argv)
    # The BM25 figures and files skipped are logged as they are computed (to stderr).
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # as conf/hydra does: a line per index
    try:
        baseline = parse_baseline(args.baseline) if args.baseline else None
    except ValueError as error:
        parser.error(str(error))
    try:
        sweep = load_sweep(args.sweep_dir)
        summary = summarize_sweep(sweep, baseline=baseline, metric=args.metric, bm25=args.bm25)
    except (FileNotFoundError, EmptySweepError, SweepComparisonError, PerQueryFormatError) as error:
        parser.error(str(error))
    paths = write_summary(
        sweep, args.output if args.output is not None else args.sweep_dir, summary
    )
    print(summary.jobs_markdown())
    seeds_markdown = summary.seeds_markdown()
    if seeds_markdown is not None:
        print(f"\nconfigurations (jobs that differ only in the seed):\n\n{seeds_markdown}")
    for job in sweep.incomplete:
        print(f"\nincomplete job {job.name}: {job.reason}")
    print(f"\nwrote {len(paths)} files to {paths['summary_markdown'].parent}:")
    for path in paths.values():
        print(f"  {path}")


if __name__ == "__main__":
    main()
