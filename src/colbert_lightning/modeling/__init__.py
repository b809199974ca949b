"""The ColBERT model: config, tokenisation, the encoder + projection module, folder formats.

``config`` (``ColBERTConfig``), ``tokenization`` (markers, [MASK] expansion, skiplist),
``colbert`` (the ``nn.Module``, loading any checkpoint or folder) and ``formats`` (colbert-ai,
PyLate and hf folders, read and written).
"""

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
