"""Turns a list of training examples into a tokenised ``TrainingBatch``."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from colbert_lightning.data.beir import normalized_text, text_key
from colbert_lightning.data.types import NO_KEY, TrainingBatch, TrainingExample
from colbert_lightning.modeling.tokenization import ColBERTTokenizer


def document_key(document_id: str | None, text: str) -> int:
    """The key that identifies a document in a batch: of its id when known, else of its text."""
    return text_key(f"id:{document_id}" if document_id is not None else f"text:{text}")


class Collator:
    """Tokenises B examples into B queries and B * nway documents, each positive first.

    Documents are ordered ``[pos_0, neg_0_1, ..., pos_1, neg_1_1, ...]``. The batch also carries
    the keys that let the loss mask false negatives (see ``TrainingBatch``).

    Args:
        tokenizer: turns query and document strings into ColBERT's token layout.
        relevant: query id -> ids of the documents judged relevant to it (the training qrels),
            or None when only each example's own positive is known to be relevant.
    """

    def __init__(
        self, tokenizer: ColBERTTokenizer, relevant: Mapping[str, Collection[str]] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        # keyed once here, not per batch: qrels can name many documents per query
        self.relevant_keys = {
            query_id: [document_key(doc_id, "") for doc_id in doc_ids]
            for query_id, doc_ids in (relevant or {}).items()
        }

    def __call__(self, examples: list[TrainingExample]) -> TrainingBatch:
        """Collate ``examples``; ``skipped_lines`` is left at 0 for the stream to fill in.

        Raises:
            ValueError: no examples, or examples with different numbers of negatives.
        """
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        nway = 1 + len(examples[0].negatives)
        for example in examples:
            if 1 + len(example.negatives) != nway:
                raise ValueError(
                    f"every example in a batch needs the same number of negatives: "
                    f"{examples[0].source or 'the first'} has {nway - 1}, "
                    f"{example.source or 'another'} has {len(example.negatives)}"
                )
        documents = [
            text for example in examples for text in (example.positive, *example.negatives)
        ]
        document_keys = [_document_keys(example) for example in examples]
        return TrainingBatch(
            queries=self.tokenizer.queries([example.query for example in examples]),
            documents=self.tokenizer.documents(documents),
            nway=nway,
            query_keys=torch.tensor([text_key(normalized_text(e.query)) for e in examples]),
            document_keys=torch.tensor([key for keys in document_keys for key in keys]),
            relevant_keys=self._relevant_keys(examples, [keys[0] for keys in document_keys]),
        )

    def _relevant_keys(self, examples: list[TrainingExample], positives: list[int]) -> torch.Tensor:
        """(B, R): each example's positive (its key given) and its query's judged documents."""
        rows = [
            [positive, *self.relevant_keys.get(example.query_id, ())]
            for example, positive in zip(examples, positives, strict=True)
        ]
        width = max(len(row) for row in rows)
        return torch.tensor([row + [NO_KEY] * (width - len(row)) for row in rows])


def _document_keys(example: TrainingExample) -> list[int]:
    negative_ids = example.negative_ids or (None,) * len(example.negatives)
    return [
        document_key(example.positive_id, example.positive),
        *(document_key(i, text) for i, text in zip(negative_ids, example.negatives, strict=True)),
    ]
