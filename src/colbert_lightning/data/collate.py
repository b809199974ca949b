"""Turns a list of training examples into a tokenised ``TrainingBatch``."""

from __future__ import annotations

from colbert_lightning.data.types import TrainingBatch, TrainingExample
from colbert_lightning.modeling.tokenization import ColBERTTokenizer


class Collator:
    """Tokenises B examples into B queries and B * nway documents, each positive first.

    Documents are ordered ``[pos_0, neg_0_1, ..., pos_1, neg_1_1, ...]``.

    Args:
        tokenizer: turns query and document strings into ColBERT's token layout.
    """

    def __init__(self, tokenizer: ColBERTTokenizer) -> None:
        self.tokenizer = tokenizer

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
        return TrainingBatch(
            queries=self.tokenizer.queries([example.query for example in examples]),
            documents=self.tokenizer.documents(documents),
            nway=nway,
        )
