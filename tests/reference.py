"""Naive reference computations for tests: the textbook formulas as plain Python loops.

Written independently of ``colbert_lightning`` (no torch, no torchmetrics), so that a test
comparing the package against them fails when the package's arithmetic is wrong, not only when
its output leaves a plausible range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def naive_retrieval_metrics(
    rankings: Mapping[str, Sequence[tuple[str, float]]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """MRR@10, Recall@10, Recall@100 and nDCG@10 (linear gains), averaged over queries.

    Queries without a relevant document (grade > 0) are left out; a judged query without a
    ranking scores 0. The ideal DCG is built from every relevant judgment of the query.
    """
    totals = {"mrr@10": 0.0, "recall@10": 0.0, "recall@100": 0.0, "ndcg@10": 0.0}
    counted = 0
    for query_id, judged in qrels.items():
        relevant = {doc_id for doc_id, grade in judged.items() if grade > 0}
        if not relevant:
            continue
        counted += 1
        ranked = [doc_id for doc_id, _ in rankings.get(query_id, ())]
        for rank, doc_id in enumerate(ranked[:10], start=1):
            if doc_id in relevant:
                totals["mrr@10"] += 1.0 / rank
                break
        totals["recall@10"] += len(set(ranked[:10]) & relevant) / len(relevant)
        totals["recall@100"] += len(set(ranked[:100]) & relevant) / len(relevant)
        dcg = sum(
            max(0, judged.get(doc_id, 0)) / math.log2(rank + 1)
            for rank, doc_id in enumerate(ranked[:10], start=1)
        )
        ideal_gains = sorted((grade for grade in judged.values() if grade > 0), reverse=True)
        ideal = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal_gains[:10], 1))
        totals["ndcg@10"] += dcg / ideal
    return {name: total / counted for name, total in totals.items()}


def naive_cross_entropy(rows: Sequence[Sequence[float]], targets: Sequence[int]) -> float:
    """Mean over rows of ``-log(exp(s_target) / sum_j exp(s_j))``, one exponential at a time.

    ``-inf`` entries (masked documents) contribute ``exp(-inf) = 0`` to the sum.
    """
    losses = []
    for row, target in zip(rows, targets, strict=True):
        denominator = sum(math.exp(score) for score in row)
        losses.append(-math.log(math.exp(row[target]) / denominator))
    return sum(losses) / len(losses)


def naive_ranking(scores: Sequence[float], ids: Sequence[str]) -> list[tuple[str, float]]:
    """``(id, score)`` pairs by decreasing score: a plain sort, ties in input order."""
    order = sorted(range(len(ids)), key=lambda position: -scores[position])
    return [(ids[position], scores[position]) for position in order]
