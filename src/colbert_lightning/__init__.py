"""colbert-lightning: train ColBERT late-interaction retrievers from scratch."""

__version__ = "0.1.0"


def __getattr__(name: str) -> type:
    """RAGatouille's ``RAGTrainer`` and ``RAGPretrainedModel``, imported on first use.

    ``from colbert_lightning import RAGTrainer`` (it needs Lightning) or ``RAGPretrainedModel``
    (it needs faiss): importing the package itself loads neither.
    """
    if name == "RAGTrainer":
        from colbert_lightning.compat.ragatouille import RAGTrainer

        return RAGTrainer
    if name == "RAGPretrainedModel":
        from colbert_lightning.compat.pretrained_model import RAGPretrainedModel

        return RAGPretrainedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
