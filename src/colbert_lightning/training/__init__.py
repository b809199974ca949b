"""Training: one run from a config, the LightningModule, its callbacks, distributed helpers.

``run`` (``train(cfg)``: data, model, trainer, test evaluation, ``results.json``), ``module``
(``ColBERTModule``: loss, dev evaluation), ``callbacks`` (evaluation schedule, best dev
checkpoint, atomic and pre-emption checkpoints), ``probes`` (anisotropy, effective rank,
margins, exact matches and gradient norms on the evaluation's schedule), ``distributed``
(gathers, the dev evaluation's process group) and ``threads`` (the run's fixed CPU thread count).
"""

from colbert_lightning.training.callbacks import (
    AtomicCheckpointIO,
    BestDevCheckpoint,
    PreemptionCheckpoint,
    RetrievalEvaluation,
)
from colbert_lightning.training.module import ColBERTModule
from colbert_lightning.training.probes import TrainingProbes

__all__ = [
    "AtomicCheckpointIO",
    "BestDevCheckpoint",
    "ColBERTModule",
    "PreemptionCheckpoint",
    "RetrievalEvaluation",
    "TrainingProbes",
]
