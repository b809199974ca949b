"""colbert-lightning: train ColBERT late-interaction retrievers from scratch."""

__version__ = "0.1.0"


def __getattr__(name: str) -> type:
    """``from colbert_lightning import RAGTrainer``, imported on first use (it needs Lightning)."""
    if name == "RAGTrainer":
        from colbert_lightning.compat.ragatouille import RAGTrainer

        return RAGTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
