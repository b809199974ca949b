"""Reading, preparing, streaming and batching training and evaluation data."""

from colbert_lightning.data.crops import CropSpec
from colbert_lightning.data.datamodule import (
    ColBERTDataModule,
    DevFiles,
    PrepareSpec,
    SeenQueries,
    TrainFiles,
)
from colbert_lightning.data.errors import BadLines, DataFormatError
from colbert_lightning.data.types import TrainingBatch, TrainingExample

__all__ = [
    "BadLines",
    "ColBERTDataModule",
    "CropSpec",
    "DataFormatError",
    "DevFiles",
    "PrepareSpec",
    "SeenQueries",
    "TrainFiles",
    "TrainingBatch",
    "TrainingExample",
]
