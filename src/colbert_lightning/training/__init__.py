"""Training: the LightningModule, its callbacks and learning-rate schedules."""

from colbert_lightning.schedules import warmup_then_decay
from colbert_lightning.training.callbacks import (
    AtomicCheckpointIO,
    BestDevCheckpoint,
    PreemptionCheckpoint,
    RetrievalEvaluation,
)
from colbert_lightning.training.module import ColBERTModule

__all__ = [
    "AtomicCheckpointIO",
    "BestDevCheckpoint",
    "ColBERTModule",
    "PreemptionCheckpoint",
    "RetrievalEvaluation",
    "warmup_then_decay",
]
