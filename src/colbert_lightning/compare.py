"""``python -m colbert_lightning.compare BASELINE OTHER [OTHER ...]``: paired significance tests.

Each argument is a per-query TSV (see :mod:`colbert_lightning.evaluation.per_query`) that
``evaluate`` or a training run wrote, e.g. ``per_query_test.tsv``. Every other run is compared
with the baseline on one metric: a two-sided paired randomisation test, a percentile bootstrap
interval of the mean difference, and the Holm correction over the comparisons (see
:mod:`colbert_lightning.evaluation.significance`). Prints a markdown table; ``--output`` also
writes it, with a JSON of the same numbers beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from colbert_lightning.evaluation.per_query import SUBSETS, PerQueryFormatError, read_per_query
from colbert_lightning.evaluation.significance import (
    PairedComparison,
    QuerySetMismatchError,
    compare_runs,
    comparison_table,
    method_description,
)


def default_run_names(paths: Sequence[Path]) -> list[str]:
    """Short names that tell the files apart: the parent folder's name, else the stem, else more.

    One scheme for all files, the first under which every name differs: the parent folders'
    names (``runs/colbert/per_query_test.tsv`` -> ``colbert``); then the last 1, 2, ... parts of
    the path without its suffix (``results/bm25.tsv`` -> ``bm25``); then the paths as given;
    then, for a file given twice, the path with its position (``x.tsv#1``, ``x.tsv#2``).

    Example:
        >>> default_run_names([Path("runs/bm25/test.tsv"), Path("runs/colbert/test.tsv")])
        ['bm25', 'colbert']
        >>> default_run_names([Path("out/bm25.tsv"), Path("out/colbert.tsv")])
        ['bm25', 'colbert']
        >>> default_run_names([Path("a/run/test.tsv"), Path("b/run/test.tsv")])
        ['a/run/test', 'b/run/test']
    """
    # abspath, not resolve: a symlinked run folder keeps the name it was given
    absolute = [Path(os.path.abspath(path)) for path in paths]
    candidates = [[path.parent.name for path in absolute]]
    deepest = max(len(path.parts) for path in absolute)
    for count in range(1, deepest + 1):
        candidates.append(["/".join(path.with_suffix("").parts[-count:]) for path in absolute])
    candidates.append([str(path) for path in paths])
    for names in candidates:
        if all(names) and len(set(names)) == len(names):
            return names
    return [f"{path}#{position}" for position, path in enumerate(paths, start=1)]


def load_scores(path: Path, metric: str, subset: str | None = None) -> dict[str, float]:
    """Query id -> ``metric`` from a per-query TSV, optionally only the queries of ``subset``.

    Args:
        path: a per-query TSV.
        metric: a metric column of the file, e.g. ``ndcg@10``.
        subset: keep only the queries whose subset column holds this value; None: every query.

    Returns:
        Query id -> score, in the file's order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed file (:class:`PerQueryFormatError`), no column ``metric``, a
            NaN or infinite score, no queries, no subset column values when ``subset`` is
            given, or no query in ``subset``; every message starts with the path.
    """
    per_query, subsets = read_per_query(path)
    if not per_query:
        raise ValueError(f"{path}: no queries, only a header")
    columns = next(iter(per_query.values())).keys()
    if metric not in columns:
        raise ValueError(f"{path}: no metric {metric!r}; the file has {', '.join(columns)}")
    if subset is not None:
        if not subsets:
            raise ValueError(
                f"{path}: --subset {subset} needs the subset column, which is empty here (the "
                "run did not know the training judgments)"
            )
        per_query = {
            query_id: values
            for query_id, values in per_query.items()
            if subsets.get(query_id) == subset
        }
        if not per_query:
            raise ValueError(f"{path}: no query in subset {subset!r}")
    scores = {query_id: values[metric] for query_id, values in per_query.items()}
    for query_id, score in scores.items():
        if not math.isfinite(score):
            raise ValueError(f"{path}: query {query_id!r} has {metric} = {score}")
    return scores


def compare_files(
    paths: Sequence[Path],
    names: Sequence[str],
    metric: str,
    subset: str | None = None,
    alpha: float = 0.05,
    permutations: int = 10_000,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[PairedComparison]:
    """Compare the runs of ``paths[1:]`` with the baseline ``paths[0]`` (see ``compare_runs``).

    Args:
        paths: per-query TSVs, the baseline first.
        names: one name per path, in the same order.
        metric: the metric column to compare.
        subset: compare only the queries of this subset; None: every query.
        alpha: family-wise significance level (Holm).
        permutations: random sign flips per test.
        resamples: bootstrap samples per interval.
        seed: seed of every test and interval.

    Returns:
        One comparison per path after the first.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: a file that cannot be compared (see :func:`load_scores`), files scored on
            different queries (the message names both files), or a bad setting.
    """
    if len(paths) < 2:
        raise ValueError(f"need a baseline and at least one other run, got {len(paths)} file(s)")
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} files")
    scores = [load_scores(path, metric, subset) for path in paths]
    path_of = dict(zip(names, paths, strict=True))
    try:
        return compare_runs(
            scores[0],
            dict(zip(names[1:], scores[1:], strict=True)),
            metric,
            baseline_name=names[0],
            alpha=alpha,
            permutations=permutations,
            resamples=resamples,
            seed=seed,
        )
    except QuerySetMismatchError as error:
        raise ValueError(f"{path_of[error.name]} vs baseline {paths[0]}: {error}") from None


def _run_names(parser: argparse.ArgumentParser, names: str | None, paths: list[Path]) -> list[str]:
    if names is None:
        return default_run_names(paths)
    given = [name.strip() for name in names.split(",")]
    if len(given) != len(paths) or not all(given) or len(set(given)) != len(given):
        parser.error(
            f"--names needs {len(paths)} distinct non-empty names separated by commas (the "
            f"baseline's first), got {names!r}"
        )
    return given


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m colbert_lightning.compare BASELINE OTHER [OTHER ...]``.

    Prints the markdown table and the line naming the test. Exits with status 2, naming the
    file, when a file is missing or malformed, lacks the metric or the subset column, or was
    scored on other queries than the baseline.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(
        prog="python -m colbert_lightning.compare",
        description=(
            "Paired significance tests of runs against a baseline on the same queries, from "
            "per-query TSVs (per_query_*.tsv)."
        ),
    )
    parser.add_argument("baseline", type=Path, help="the baseline's per-query TSV")
    parser.add_argument("others", type=Path, nargs="+", help="per-query TSVs of the other runs")
    parser.add_argument("--metric", default="ndcg@10", help="metric column (default: ndcg@10)")
    parser.add_argument(
        "--subset", choices=SUBSETS, default=None, help="compare only the queries of this subset"
    )
    parser.add_argument(
        "--names", default=None, help="comma-separated run names, the baseline's first"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="family-wise level after Holm (default: 0.05)"
    )
    parser.add_argument(
        "--permutations", type=int, default=10_000, help="random sign flips per test"
    )
    parser.add_argument(
        "--resamples", type=int, default=10_000, help="bootstrap samples per interval"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the tests and intervals")
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the table here, and a .json beside"
    )
    args = parser.parse_args(argv)
    paths = [args.baseline, *args.others]
    names = _run_names(parser, args.names, paths)
    if args.output is not None and args.output.suffix == ".json":
        parser.error(f"--output {args.output}: the JSON goes beside the table; name a .md file")
    try:
        comparisons = compare_files(
            paths,
            names,
            args.metric,
            subset=args.subset,
            alpha=args.alpha,
            permutations=args.permutations,
            resamples=args.resamples,
            seed=args.seed,
        )
    except (FileNotFoundError, PerQueryFormatError, ValueError) as error:
        parser.error(str(error))
    subset_text = f"subset {args.subset}" if args.subset else "all queries"
    heading = f"{args.metric} against baseline {names[0]} ({args.baseline}), {subset_text}"
    description = method_description(
        len(comparisons), args.alpha, args.permutations, args.resamples
    )
    report = f"{heading}\n\n{comparison_table(comparisons)}\n\n{description}\n"
    print(report, end="")
    if args.output is None:
        return
    summary = {
        "metric": args.metric,
        "subset": args.subset,
        "baseline": {"name": names[0], "path": str(args.baseline)},
        "alpha": args.alpha,
        "permutations": args.permutations,
        "resamples": args.resamples,
        "confidence": 0.95,
        "seed": args.seed,
        "test": description,
        "comparisons": [
            {**dataclasses.asdict(comparison), "path": str(path)}
            for comparison, path in zip(comparisons, args.others, strict=True)
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    json_path = args.output.with_suffix(".json")
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output} and {json_path}")


if __name__ == "__main__":
    main()
