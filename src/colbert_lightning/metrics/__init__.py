"""Retrieval metrics and the evaluation schedule."""

from colbert_lightning.metrics.retrieval import RetrievalMetrics, evaluate_rankings
from colbert_lightning.metrics.schedule import EvaluationSchedule

__all__ = ["EvaluationSchedule", "RetrievalMetrics", "evaluate_rankings"]
