"""Typed records that flow from the readers to the LightningModule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from colbert_lightning.modeling.tokenization import TokenizedText


@dataclass(frozen=True)
class TrainingExample:
    """One query with its positive and its hard negatives, as texts.

    Attributes:
        query: the query text.
        positive: the relevant document's text.
        negatives: texts of non-relevant documents (at least ``nway - 1`` of them).
        source: ``file:line`` the example was read from, for error messages.
    """

    query: str
    positive: str
    negatives: tuple[str, ...]
    source: str = ""


@dataclass
class TrainingBatch:
    """A collated batch: B queries and B * nway documents, each query's positive first.

    Attributes:
        queries: (B, query_maxlen) tokenised queries.
        documents: (B * nway, L) tokenised documents; rows ``i*nway : (i+1)*nway`` belong to
            query ``i`` and row ``i*nway`` is its positive.
        nway: documents per query.
        skipped_lines: bad lines the producing worker skipped since its previous batch.
    """

    queries: TokenizedText
    documents: TokenizedText
    nway: int
    skipped_lines: int = 0

    def __len__(self) -> int:
        return len(self.queries)

    def to(self, device: torch.device | str) -> TrainingBatch:
        """Copy to a device (Lightning calls this through ``transfer_batch_to_device``)."""
        return TrainingBatch(
            self.queries.to(device), self.documents.to(device), self.nway, self.skipped_lines
        )
