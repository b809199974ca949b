"""Encoding texts for search: the encoder interface, batches of similar length, tokenising once.

Shared by exact search (:mod:`colbert_lightning.retrieval.exact`), the on-disk index
(:mod:`colbert_lightning.retrieval.ivf`) and the dev evaluation during training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from colbert_lightning.modeling.colbert import inference
from colbert_lightning.modeling.tokenization import TokenizedText

Result = TypeVar("Result")
Item = TypeVar("Item")


class EncodedTokens(Protocol):
    """What the encoder returns: ``embeddings`` (B, L, dim) and ``mask`` (B, L), True if scored."""

    embeddings: torch.Tensor
    mask: torch.Tensor


class TextTokenizer(Protocol):
    """Turns query and document strings into ``TokenizedText`` (``ColBERTTokenizer``)."""

    def queries(self, queries: list[str]) -> TokenizedText:
        """Tokenise queries."""
        ...

    def documents(self, documents: list[str]) -> TokenizedText:
        """Tokenise documents."""
        ...


class SimilarityConfig(Protocol):
    """The part of the model config search needs: ``cosine`` or ``l2``."""

    similarity: str


class Encoder(Protocol):
    """What search needs from a ColBERT model (``colbert_lightning.modeling.ColBERT`` fits)."""

    tokenizer: TextTokenizer
    config: SimilarityConfig

    def encode_queries(self, queries: TokenizedText) -> EncodedTokens:
        """Embed tokenised queries."""
        ...

    def encode_documents(self, documents: TokenizedText) -> EncodedTokens:
        """Embed tokenised documents."""
        ...


class ProcessGroup(Protocol):
    """Processes that share one search, each doing a part of it.

    ``colbert_lightning.training.distributed.TorchProcessGroup`` fits. Every process of the group
    must make the same search call with the same arguments.

    Attributes:
        rank: this process' number, from 0 to ``world_size - 1``.
        world_size: how many processes share the search.
    """

    rank: int
    world_size: int

    def all_gather(self, value: Any) -> list[Any]:
        """Every process' ``value`` (picklable), in rank order; every process must call it."""
        ...


def for_inference(function: Callable[..., Result]) -> Callable[..., Result]:
    """Run ``function(encoder, ...)`` in eval and inference mode, restoring the encoder's mode.

    A model handed over in train mode would encode with dropout: noisy scores. Encoders that
    are not torch modules (test doubles) only get inference mode.
    """

    @functools.wraps(function)
    def wrapper(encoder: Encoder, *args: Any, **kwargs: Any) -> Result:
        scope = inference(encoder) if isinstance(encoder, nn.Module) else torch.inference_mode()
        with scope:
            return function(encoder, *args, **kwargs)

    return wrapper


def encoder_device(encoder: Encoder) -> torch.device:
    """The device of the encoder's first parameter, or the CPU when it has none."""
    parameters = getattr(encoder, "parameters", None)
    if parameters is None:
        return torch.device("cpu")
    first = next(iter(parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def chunked(items: Sequence[Item], batch_size: int) -> Iterator[list[Item]]:
    """``items`` in consecutive lists of ``batch_size`` (the last may be shorter)."""
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])


def batches_by_length(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Positions of ``texts`` sorted by character count, cut into batches of ``batch_size``.

    Texts of similar length share a batch, which cuts padding. The sort is stable, so every
    process that cuts the same texts gets the same batches.

    Example:
        >>> batches_by_length(["a long one", "a", "abc"], 2)
        [[1, 2], [0]]
    """
    check_batch_size(batch_size)
    by_length = sorted(range(len(texts)), key=lambda position: len(texts[position]))
    return list(chunked(by_length, batch_size))


def own_share(count: int, group: ProcessGroup | None) -> list[int]:
    """The numbers, below ``count``, of the batches this process handles: every world_size-th.

    Interleaving (rather than cutting contiguous ranges) gives every process batches of every
    length, so the processes finish at about the same time.
    """
    if group is None:
        return list(range(count))
    return list(range(group.rank, count, group.world_size))


def check_batch_size(batch_size: int) -> None:
    """Raise ValueError unless ``batch_size`` is at least 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


TokenizedBatches = list[tuple[list[int], TokenizedText]]


def tokenize_by_length(
    tokenizer: TextTokenizer,
    texts: list[str],
    batch_size: int,
    group: ProcessGroup | None = None,
) -> TokenizedBatches:
    """``texts`` in batches of similar length (less padding), tokenised as documents.

    This is what :func:`exact_search` encodes. Tokens do not change while a model trains, so a
    caller that searches the same corpus again (the dev evaluation during training) can keep
    this and pass it back as ``corpus_tokens`` (with the same ``group``).

    Args:
        tokenizer: tokenises documents.
        texts: the corpus.
        batch_size: texts per batch.
        group: when given, only the batches this process encodes in a search shared by the
            group (every ``world_size``-th of :func:`batches_by_length`).

    Returns:
        For each batch, the positions of its texts in ``texts`` and their tokens (on the CPU).
    """
    batches = batches_by_length(texts, batch_size)
    return [
        (batches[number], tokenizer.documents([texts[row] for row in batches[number]]))
        for number in own_share(len(batches), group)
    ]


def encode_documents_by_length(
    encoder: Encoder,
    texts: list[str],
    batch_size: int,
    device: torch.device,
    show_progress: bool,
    description: str,
    tokenized: Sequence[tuple[list[int], TokenizedText | None]] | None = None,
) -> Iterator[tuple[list[int], EncodedTokens]]:
    """Encode ``texts`` in batches of similar length (less padding), with a progress bar.

    ``tokenized`` is ``tokenize_by_length(encoder.tokenizer, texts, batch_size)`` when the
    caller kept it, or the batches to encode with None for tokens not made yet; otherwise
    every batch of :func:`batches_by_length` is tokenised here.

    Yields:
        The positions in ``texts`` of one batch, and their encoding.
    """
    if tokenized is None:
        batches: Sequence[tuple[list[int], TokenizedText | None]] = [
            (rows, None) for rows in batches_by_length(texts, batch_size)
        ]
    else:
        batches = tokenized
    for rows, tokens in tqdm(
        batches,
        desc=description,
        unit="batch",
        disable=not show_progress,
        leave=False,  # during training it would interleave with the trainer's bar
    ):
        if tokens is None:
            tokens = encoder.tokenizer.documents([texts[row] for row in rows])
        yield rows, encoder.encode_documents(tokens.to(device))


def encode_queries(
    encoder: Encoder, queries: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise and encode ``queries`` on ``device``: embeddings (Q, Lq, dim), mask (Q, Lq)."""
    encoded = encoder.encode_queries(encoder.tokenizer.queries(queries).to(device))
    return encoded.embeddings, encoded.mask  # (Q, Lq, dim), (Q, Lq)
