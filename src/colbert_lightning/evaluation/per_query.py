"""Per-query metrics and the files that carry them: a per-query TSV and a TREC run file.

The per-query TSV is what ``compare`` and ``summarize`` read to test differences between runs::

    query_id	ndcg@10	mrr@10	recall@10	recall@100	subset
    1	0.6131471927654584	1.0	0.5	1.0	held_out_documents

``subset`` is ``held_out_documents`` (none of the query's relevant documents is relevant to a
training query), ``seen_documents`` (at least one is), or empty when the training judgments are
unknown. The TREC run file is the six-column format ``trec_eval`` and ``ir_measures`` read:
``query_id Q0 doc_id rank score tag``.

The per-query values follow the conventions of :mod:`colbert_lightning.evaluation.metrics`
(binary relevance for MRR and recall, linear-gain graded nDCG with the ideal ranking from every
judged document, queries without a relevant document left out); their mean is the aggregate
figure.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

Ranking = Sequence[tuple[str, float]]
"""Document ids with their scores, best first."""

METRIC_NAMES = ("ndcg@10", "mrr@10", "recall@10", "recall@100")
SUBSET_COLUMN = "subset"
HELD_OUT = "held_out_documents"
SEEN = "seen_documents"
SUBSETS = (HELD_OUT, SEEN)


class PerQueryFormatError(ValueError):
    """A per-query TSV that cannot be read, with its path and line number in the message."""


def per_query_metrics(
    rankings: Mapping[str, Ranking], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, float]]:
    """nDCG@10, MRR@10, Recall@10 and Recall@100 of every judged query with a relevant document.

    Args:
        rankings: query id -> ``[(doc_id, score), ...]`` best first (order taken as given).
        qrels: query id -> document id -> grade (relevant when > 0).

    Returns:
        Query id -> metric name -> value, in qrels order; a query with relevant documents and
        no ranking scores 0.

    Raises:
        ValueError: a ranking names the same document twice.

    Example:
        >>> qrels = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 0}}
        >>> scores = per_query_metrics({"q1": [("d9", 1.0), ("d1", 0.5)]}, qrels)
        >>> list(scores), scores["q1"]["mrr@10"], scores["q1"]["recall@10"]
        (['q1'], 0.5, 0.5)
        >>> round(scores["q1"]["ndcg@10"], 4)  # (2 / log2(3)) / (2 + 1 / log2(3))
        0.4796
    """
    results: dict[str, dict[str, float]] = {}
    for query_id, judged in qrels.items():
        relevant = {doc_id for doc_id, grade in judged.items() if grade > 0}
        if not relevant:
            continue
        ranked = [doc_id for doc_id, _ in rankings.get(query_id, ())]
        if len(set(ranked)) != len(ranked):
            raise ValueError(f"the ranking of query {query_id!r} names a document twice")
        first_hit = next(
            (rank for rank, doc_id in enumerate(ranked[:10]) if doc_id in relevant), None
        )
        gains = sorted((max(0, grade) for grade in judged.values()), reverse=True)[:10]
        ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))
        dcg = sum(
            max(0, judged.get(doc_id, 0)) / math.log2(rank + 2)
            for rank, doc_id in enumerate(ranked[:10])
        )
        results[query_id] = {
            "ndcg@10": dcg / ideal,
            "mrr@10": 0.0 if first_hit is None else 1.0 / (first_hit + 1),
            "recall@10": len(relevant.intersection(ranked[:10])) / len(relevant),
            "recall@100": len(relevant.intersection(ranked[:100])) / len(relevant),
        }
    return results


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over the queries of ``per_query`` (empty: no queries).

    Example:
        >>> mean_metrics({"a": {"ndcg@10": 1.0}, "b": {"ndcg@10": 0.5}})
        {'ndcg@10': 0.75}
    """
    if not per_query:
        return {}
    names = next(iter(per_query.values())).keys()
    return {name: sum(row[name] for row in per_query.values()) / len(per_query) for name in names}


def write_per_query(
    path: str | Path,
    per_query: Mapping[str, Mapping[str, float]],
    subsets: Mapping[str, str] | None = None,
) -> Path:
    """Write per-query metrics as a TSV (see the module docstring), creating the folder.

    Args:
        path: the file to write.
        per_query: query id -> metric name -> value (the names of ``METRIC_NAMES``).
        subsets: query id -> ``held_out_documents`` or ``seen_documents``; None: unknown.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["query_id", *METRIC_NAMES, SUBSET_COLUMN])
        for query_id, values in per_query.items():
            subset = (subsets or {}).get(query_id, "")
            writer.writerow(
                [query_id, *(repr(float(values[name])) for name in METRIC_NAMES), subset]
            )
    return path


def read_per_query(path: str | Path) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Read a per-query TSV written by :func:`write_per_query`.

    Returns:
        (query id -> metric name -> value, query id -> subset for the queries that have one).

    Raises:
        FileNotFoundError: no such file.
        PerQueryFormatError: a wrong header, a wrong number of columns, a value that is not a
            number, or a query id given twice; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such per-query file (evaluate writes per_query_*.tsv)")
    per_query: dict[str, dict[str, float]] = {}
    subsets: dict[str, str] = {}
    header: list[str] | None = None
    with path.open(encoding="utf-8-sig") as handle:
        lines = list(enumerate(handle, start=1))
    for line_number, line in lines:
        cells = line.rstrip("\r\n").split("\t")
        if header is None:
            header = cells
            if header[0] != "query_id" or not set(header[1:]) - {SUBSET_COLUMN}:
                raise PerQueryFormatError(
                    f"{path}, line {line_number}: the header must start with query_id and name "
                    f"metric columns, got {header}"
                )
            continue
        if not line.strip():
            continue
        if len(cells) != len(header):
            raise PerQueryFormatError(
                f"{path}, line {line_number}: {len(cells)} columns, the header has {len(header)}"
            )
        query_id = cells[0]
        if query_id in per_query:
            raise PerQueryFormatError(f"{path}, line {line_number}: query {query_id!r} again")
        values: dict[str, float] = {}
        for name, cell in zip(header[1:], cells[1:], strict=True):
            if name == SUBSET_COLUMN:
                if cell:
                    subsets[query_id] = cell
                continue
            try:
                values[name] = float(cell)
            except ValueError:
                raise PerQueryFormatError(
                    f"{path}, line {line_number}, column {name}: {cell!r} is not a number"
                ) from None
        per_query[query_id] = values
    if header is None:
        raise PerQueryFormatError(f"{path}: empty file, no header")
    return per_query, subsets


def write_trec_run(
    path: str | Path, rankings: Mapping[str, Ranking], tag: str = "colbert-lightning"
) -> Path:
    """Write rankings as a TREC run file: ``query_id Q0 doc_id rank score tag``, ranks from 1.

    Raises:
        ValueError: an id or the tag holds whitespace (the format splits on it).
    """
    if not tag or any(character.isspace() for character in tag):
        raise ValueError(f"a TREC run tag must be one word, got {tag!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for query_id, ranking in rankings.items():
            for rank, (doc_id, score) in enumerate(ranking, start=1):
                if any(character.isspace() for character in query_id + doc_id):
                    raise ValueError(
                        f"query {query_id!r} / document {doc_id!r}: ids with whitespace cannot "
                        "go into a TREC run file"
                    )
                handle.write(f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n")
    return path
