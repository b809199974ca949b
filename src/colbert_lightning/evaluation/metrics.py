"""Retrieval metrics over ranked lists: MRR@10, Recall@10, Recall@100 and nDCG@10 (torchmetrics).

Conventions, matching ``pytrec_eval`` as BEIR uses it:

- MRR and recall use binary relevance: a document is relevant when its qrels grade is > 0.
- nDCG uses graded gains with a *linear* gain (the grade itself, negatives floored at 0) and the
  ideal ranking built from every judged document of the query.
- A relevant document that the retriever did not return still counts: it is handed to torchmetrics
  below every returned document *and* below ``MAX_CUTOFF`` filler positions, so it enlarges the
  recall denominator and the ideal DCG but never earns credit at any cutoff.
- Queries whose qrels have no relevant document are left out (they have no defined recall or
  nDCG); queries with relevant documents but no ranking score 0. Rankings of queries absent from
  the qrels are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

Ranking = Sequence[tuple[str, float]]
"""Document ids with their scores, best first."""

MAX_CUTOFF = 100
"""The deepest cutoff of any metric here; filler positions push unreturned relevant docs past it."""

BINARY_METRICS = ("mrr@10", "recall@10", "recall@100")


class RetrievalMetrics(MetricCollection):
    """MRR@10, Recall@10, Recall@100 and nDCG@10, with keys ``<prefix>mrr@10`` and so on.

    Update with rankings and qrels, then ``compute()``; the members are torchmetrics retrieval
    metrics, so they synchronise across processes and can be logged as metric objects.

    Args:
        prefix: prepended to every key, for example ``val/``.
        sync_on_compute: under ``torch.distributed``, merge every process' queries before
            computing. False when every process already holds the same, complete rankings (the
            dev evaluation): merging would count each query once per process.
    """

    def __init__(self, prefix: str = "", sync_on_compute: bool = True) -> None:
        options = {"empty_target_action": "skip", "sync_on_compute": sync_on_compute}
        super().__init__(
            {
                "mrr@10": RetrievalMRR(top_k=10, **options),
                "recall@10": RetrievalRecall(top_k=10, **options),
                "recall@100": RetrievalRecall(top_k=100, **options),
                "ndcg@10": RetrievalNormalizedDCG(top_k=10, **options),
            },
            prefix=prefix,
            # Members see different targets (binary or graded): they must not share state.
            compute_groups=False,
        )
        self.queries_seen = 0

    def update(  # type: ignore[override]
        self, rankings: Mapping[str, Ranking], qrels: Mapping[str, Mapping[str, int]]
    ) -> None:
        """Add the rankings of every judged query that has at least one relevant document.

        Args:
            rankings: query id -> ``[(doc_id, score), ...]`` best first; scores are only used
                for order, which is taken as given (ties keep the list order).
            qrels: query id -> document id -> grade.

        Raises:
            ValueError: a ranking names the same document twice.
        """
        indexes: list[torch.Tensor] = []
        preds: list[torch.Tensor] = []
        grades: list[torch.Tensor] = []
        for query_id, judged in qrels.items():
            if not any(grade > 0 for grade in judged.values()):
                continue
            ranked_ids = [doc_id for doc_id, _ in rankings.get(query_id, ())]
            if len(set(ranked_ids)) != len(ranked_ids):
                raise ValueError(f"the ranking of query {query_id!r} names a document twice")
            missing = [
                doc_id for doc_id, grade in judged.items() if grade > 0 and doc_id not in ranked_ids
            ]
            filler = max(0, MAX_CUTOFF - len(ranked_ids))
            query_grades = [max(0, judged.get(doc_id, 0)) for doc_id in ranked_ids]
            query_grades += [0] * filler + [judged[doc_id] for doc_id in missing]
            size = len(query_grades)
            # Strictly decreasing predictions keep the given order (torchmetrics averages ties).
            preds.append(torch.arange(size, 0, -1, dtype=torch.float32))
            grades.append(torch.tensor(query_grades, dtype=torch.long))
            indexes.append(torch.full((size,), self.queries_seen, dtype=torch.long))
            self.queries_seen += 1
        if not preds:
            return
        all_preds = torch.cat(preds)
        all_grades = torch.cat(grades)
        all_indexes = torch.cat(indexes)
        for name, metric in self.items(keep_base=True, copy_state=False):
            target = all_grades > 0 if name in BINARY_METRICS else all_grades
            metric.update(all_preds, target, indexes=all_indexes)

    def reset(self) -> None:
        """Forget every query seen."""
        super().reset()
        self.queries_seen = 0


def evaluate_rankings(
    rankings: Mapping[str, Ranking], qrels: Mapping[str, Mapping[str, int]], prefix: str = ""
) -> dict[str, float]:
    """Score rankings against qrels in one call.

    Args:
        rankings: query id -> ``[(doc_id, score), ...]`` best first.
        qrels: query id -> document id -> grade (relevant when > 0).
        prefix: prepended to every key.

    Returns:
        ``{prefix + "mrr@10": ..., "recall@10", "recall@100", "ndcg@10"}`` as floats, averaged over
        the queries with at least one relevant document.

    Example:
        >>> qrels = {"q1": {"d1": 2, "d9": 1}}
        >>> evaluate_rankings({"q1": [("d5", 3.0), ("d1", 2.0)]}, qrels)["recall@10"]
        0.5
    """
    metrics = RetrievalMetrics(prefix=prefix)
    metrics.update(rankings, qrels)
    if metrics.queries_seen == 0:
        raise ValueError("no query in the qrels has a relevant document (grade > 0)")
    return {key: float(value) for key, value in metrics.compute().items()}
