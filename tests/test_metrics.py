"""Retrieval metrics against hand-computed values, and the evaluation schedule."""

from __future__ import annotations

import math

import pytest

from colbert_lightning.evaluation.metrics import RetrievalMetrics, evaluate_rankings
from colbert_lightning.evaluation.schedule import EvaluationSchedule


def ranking(*doc_ids: str) -> list[tuple[str, float]]:
    return [(doc_id, float(len(doc_ids) - position)) for position, doc_id in enumerate(doc_ids)]


def dcg(gains: list[float]) -> float:
    return sum(gain / math.log2(position + 2) for position, gain in enumerate(gains))


def test_hand_computed_example_with_a_relevant_doc_outside_top_k() -> None:
    qrels = {
        # a: graded; "a3" is never retrieved; "a0" is judged but not relevant.
        "a": {"a1": 3, "a2": 1, "a3": 2, "a0": 0},
        # b: its only relevant doc is at rank 12, outside the top 10.
        "b": {"b1": 1},
        # c: no relevant document at all: left out of every average.
        "c": {"c1": 0},
    }
    rankings = {
        "a": ranking("x1", "a2", "a0", "a1", "x2"),
        "b": ranking(*[f"y{i}" for i in range(11)], "b1"),
        "c": ranking("c1"),
    }
    metrics = evaluate_rankings(rankings, qrels, prefix="val/")

    # MRR@10: a -> first relevant at rank 2 (1/2); b -> none in the top 10 (0).
    assert metrics["val/mrr@10"] == pytest.approx((0.5 + 0.0) / 2)
    # Recall@10: a -> 2 of its 3 relevant docs (a3 was never retrieved); b -> 0 of 1.
    assert metrics["val/recall@10"] == pytest.approx((2 / 3 + 0.0) / 2)
    # Recall@100: b's doc at rank 12 now counts.
    assert metrics["val/recall@100"] == pytest.approx((2 / 3 + 1.0) / 2)
    # nDCG@10, linear gains: a ranks gains [0, 1, 0, 3, 0]; ideal is [3, 2, 1].
    ndcg_a = dcg([0, 1, 0, 3, 0]) / dcg([3, 2, 1])
    assert metrics["val/ndcg@10"] == pytest.approx((ndcg_a + 0.0) / 2)
    assert ndcg_a == pytest.approx(
        (1 / math.log2(3) + 3 / math.log2(5)) / (3 + 2 / math.log2(3) + 0.5)
    )


def test_short_rankings_do_not_credit_missing_relevant_docs() -> None:
    # Only one document returned; the unreturned relevant doc must not land in the top 10.
    metrics = evaluate_rankings({"q": ranking("x")}, {"q": {"r": 1}})
    assert metrics == {"mrr@10": 0.0, "recall@10": 0.0, "recall@100": 0.0, "ndcg@10": 0.0}


def test_query_without_ranking_scores_zero() -> None:
    metrics = evaluate_rankings({"q1": ranking("r1")}, {"q1": {"r1": 1}, "q2": {"r2": 1}})
    assert metrics["recall@10"] == pytest.approx(0.5)
    assert metrics["ndcg@10"] == pytest.approx(0.5)


def test_perfect_ranking_and_accumulation() -> None:
    metrics = RetrievalMetrics(prefix="val/")
    metrics.update({"q1": ranking("r1", "r2")}, {"q1": {"r1": 2, "r2": 1}})
    metrics.update({"q2": ranking("r3")}, {"q2": {"r3": 1}})
    values = {key: float(value) for key, value in metrics.compute().items()}
    assert values == pytest.approx(
        {"val/mrr@10": 1.0, "val/recall@10": 1.0, "val/recall@100": 1.0, "val/ndcg@10": 1.0}
    )
    assert metrics.queries_seen == 2
    metrics.reset()
    assert metrics.queries_seen == 0


def test_no_relevant_query_is_an_error() -> None:
    with pytest.raises(ValueError, match="no query"):
        evaluate_rankings({"q": ranking("d")}, {"q": {"d": 0}})


def test_schedule_steps() -> None:
    schedule = EvaluationSchedule()
    assert schedule.steps(1000) == [0, 8, 16, 32, 64, 128, 250, 500, 750, 1000]
    assert schedule.steps(600) == [0, 8, 16, 32, 64, 128, 250, 500, 600]
    assert schedule.steps(20) == [0, 8, 16, 20]
    assert EvaluationSchedule(at_start=False).steps(5) == [5]
    for max_steps in (0, 7, 250, 613):
        expected = [s for s in range(max_steps + 1) if schedule.should_evaluate(s, max_steps)]
        assert schedule.steps(max_steps) == expected
    assert not schedule.should_evaluate(9, 1000)
    assert schedule.should_evaluate(1000, 1000)
    assert schedule.should_evaluate(1250, -1)  # no max_steps: the interval goes on


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"first": 0}, "first"), ({"growth": 1.0}, "growth"), ({"interval": 0}, "interval")],
)
def test_schedule_validation(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluationSchedule(**arguments)
