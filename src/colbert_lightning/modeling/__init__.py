"""The ColBERT model: config, tokenisation and the encoder + projection module."""

from colbert_lightning.modeling.colbert import (
    ColBERT,
    InitSummary,
    TokenEmbeddings,
    default_device,
    inference,
)
from colbert_lightning.modeling.config import ColBERTConfig
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, TokenizedText

__all__ = [
    "ColBERT",
    "ColBERTConfig",
    "ColBERTTokenizer",
    "InitSummary",
    "TokenEmbeddings",
    "TokenizedText",
    "default_device",
    "inference",
]
