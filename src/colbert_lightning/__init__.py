"""colbert-lightning: train ColBERT late-interaction retrievers from scratch."""

__version__ = "0.1.0"
