"""``python -m colbert_lightning.summarize SWEEP_DIR [--output DIR]``: a sweep's table and curves.

Reads what the jobs of a multirun wrote (see :mod:`colbert_lightning.evaluation.sweeps`) and
writes ``summary.md``, ``summary.csv`` and the learning-curve PNGs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from colbert_lightning.evaluation.sweeps import (
    EmptySweepError,
    load_sweep,
    markdown_table,
    summary_rows,
    write_summary,
)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m colbert_lightning.summarize SWEEP_DIR [--output DIR]``.

    Prints the markdown table, the incomplete jobs and the files written. Exits with status 2
    when ``SWEEP_DIR`` is missing or holds no job with ``results.json``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(
        prog="python -m colbert_lightning.summarize",
        description="Tabulate and plot the dev metrics of a sweep of training jobs.",
    )
    parser.add_argument("sweep_dir", type=Path, help="multirun folder (or a single run's folder)")
    parser.add_argument(
        "--output", type=Path, default=None, help="where to write the files (default: SWEEP_DIR)"
    )
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_dir)
    except (FileNotFoundError, EmptySweepError) as error:
        parser.error(str(error))
    paths = write_summary(sweep, args.output if args.output is not None else args.sweep_dir)
    print(markdown_table(summary_rows(sweep)))
    for job in sweep.incomplete:
        print(f"\nincomplete job {job.name}: {job.reason}")
    print(f"\nwrote {len(paths)} files to {paths['summary_markdown'].parent}:")
    for path in paths.values():
        print(f"  {path}")


if __name__ == "__main__":
    main()
