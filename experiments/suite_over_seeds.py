"""Mean +- std over seeds of ``evaluate suite=...`` results, as a markdown table.

Each argument is a ``suite_<name>.json`` written by ``python -m colbert_lightning.evaluate
checkpoint=... suite=<name>`` (one per seed's best checkpoint). Rows: each collection, its
held-out-document subsets, the mean over collections; columns: the model's nDCG@10 and R@100
(mean +- sample std over the files), BM25's on the same queries, and how many seeds are below
BM25::

    python experiments/suite_over_seeds.py outputs/.../*/suite/suite_classic.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from colbert_lightning.evaluation.split import SUBSET_LABELS

METRICS = ("ndcg@10", "recall@100")


def rows_of(suite: dict) -> dict[str, tuple[int | str, dict | None, dict | None]]:
    """Row label -> (queries, model metrics, BM25 metrics) of one suite result."""
    rows = {}
    for name, result in suite["collections"].items():
        model, bm25 = result["model"], result["bm25"]
        rows[name] = (model["queries"], model["metrics"], bm25 and bm25["metrics"])
        for subset, part in (model.get("subsets") or {}).items():
            bm25_part = bm25["subsets"][subset]["metrics"] if bm25 else None
            rows[f"{name}: {SUBSET_LABELS[subset]}"] = (part["queries"], part["metrics"], bm25_part)
    rows[f"mean of {len(suite['collections'])} collections"] = (
        "",
        suite["mean"]["model"],
        suite["mean"]["bm25"],
    )
    return rows


def spread(values: Sequence[float]) -> str:
    """``mean +- sample std``, or the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def table(suites: Sequence[dict]) -> str:
    """The markdown table over seeds (see the module docstring)."""
    per_file = [rows_of(suite) for suite in suites]
    header = ["collection", "queries", *("nDCG@10" if m == "ndcg@10" else "R@100" for m in METRICS)]
    header += ["BM25 nDCG@10", "BM25 R@100", "seeds below BM25 (nDCG@10)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in per_file[0]:
        queries = {rows[label][0] for rows in per_file}
        models = [rows[label][1] for rows in per_file]
        bm25s = [rows[label][2] for rows in per_file]
        cells = [label, "/".join(str(q) for q in sorted(queries, key=str))]
        cells += [spread([m[metric] for m in models]) for metric in METRICS]
        cells += [spread([b[metric] for b in bm25s]) for metric in METRICS]
        below = sum(m["ndcg@10"] < b["ndcg@10"] for m, b in zip(models, bm25s, strict=True))
        cells.append(f"{below} of {len(models)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: the suite JSON files, one per seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "suites", nargs="+", type=Path, help="suite_<name>.json files, one per seed"
    )
    args = parser.parse_args(argv)
    suites = [json.loads(path.read_text()) for path in args.suites]
    print(f"{len(suites)} seeds: " + ", ".join(str(path) for path in args.suites))
    print(table(suites))


if __name__ == "__main__":
    main()
