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
        query_id: the query's id, when the training file names it.
        positive_id: the positive's document id, when the training file names it.
        negative_ids: the negatives' document ids (aligned with ``negatives``), when named.
        scores: a teacher's scores of ``(positive, *negatives)``, in that order
            (``len(scores) == 1 + len(negatives)``), when the training file has them
            (distillation formats); None otherwise.
    """

    query: str
    positive: str
    negatives: tuple[str, ...]
    source: str = ""
    query_id: str | None = None
    positive_id: str | None = None
    negative_ids: tuple[str, ...] | None = None
    scores: tuple[float, ...] | None = None


@dataclass
class TrainingBatch:
    """A collated batch: B queries and B * nway documents, each query's positive first.

    Attributes:
        queries: (B, query_maxlen) tokenised queries.
        documents: (B * nway, L) tokenised documents; rows ``i*nway : (i+1)*nway`` belong to
            query ``i`` and row ``i*nway`` is its positive.
        nway: documents per query.
        skipped_lines: bad lines the producing worker skipped since its previous batch.
        query_keys: (B,) key of each query's normalised text (see ``data.beir.text_key``):
            equal keys are the same query.
        document_keys: (B * nway,) key of each document: of its id when the training file
            names ids, else of its text.
        relevant_keys: (B, R) keys of the documents known to be relevant to each query (its
            positive, and every document the training qrels judge relevant to it), padded
            with ``NO_KEY``. With the two above, this is what masks false in-batch negatives;
            None for batches built without it.
        text_tokens: tokens of the batch's texts (queries and documents), markers, [CLS],
            [SEP] and padding left out.
        unknown_tokens: how many of ``text_tokens`` are the tokenizer's unknown token
            ([UNK]): text its vocabulary cannot spell.
        continued_tokens: how many of ``text_tokens`` continue a word (WordPiece's ``##``
            pieces); 0 for other vocabularies.
        teacher_scores: (B, nway) float32 teacher scores of each query's documents, row ``i``
            in the order of rows ``i*nway : (i+1)*nway`` of ``documents`` (column 0: the
            positive), when every example of the batch has scores; None when none has.
    """

    queries: TokenizedText
    documents: TokenizedText
    nway: int
    skipped_lines: int = 0
    query_keys: torch.Tensor | None = None
    document_keys: torch.Tensor | None = None
    relevant_keys: torch.Tensor | None = None
    text_tokens: int = 0
    unknown_tokens: int = 0
    continued_tokens: int = 0
    teacher_scores: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def to(self, device: torch.device | str) -> TrainingBatch:
        """Copy to a device (Lightning calls this through ``transfer_batch_to_device``)."""
        keys = (self.query_keys, self.document_keys, self.relevant_keys)
        return TrainingBatch(
            self.queries.to(device),
            self.documents.to(device),
            self.nway,
            self.skipped_lines,
            *(None if key is None else key.to(device) for key in keys),
            self.text_tokens,
            self.unknown_tokens,
            self.continued_tokens,
            None if self.teacher_scores is None else self.teacher_scores.to(device),
        )


NO_KEY = -1
"""Padding of ``TrainingBatch.relevant_keys``: keys are 62-bit non-negative integers."""
