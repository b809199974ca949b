"""Exhaustive MaxSim search over a small corpus, and reranking of given candidates.

Both encode with whatever weights the encoder has; putting it in eval mode is the caller's job.
Everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, Protocol

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from colbert_lightning.modeling.tokenization import TokenizedText
from colbert_lightning.scoring import maxsim


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


EvaluationPrecision = Literal["32", "bf16", "auto"]
EVALUATION_PRECISIONS: tuple[str, ...] = ("32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16, AVX512-BF16 or AMX).

    Elsewhere bf16 autocast is emulated, and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # private helpers of torch.cpu; absent ones count as "no"
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def search_autocast(
    device: torch.device, precision: EvaluationPrecision | int
) -> contextlib.AbstractContextManager:
    """The context to encode and score in: float32, bfloat16 autocast, or either.

    ``32`` is float32, ``bf16`` bfloat16 autocast, and ``auto`` bf16 where :func:`native_bf16`
    says the device has it, else float32. Under bf16 the token embeddings and similarities are
    bfloat16 (about 3 significant digits); MaxSim still sums the best matches in float32.
    """
    precision = str(precision)
    if precision not in EVALUATION_PRECISIONS:
        raise ValueError(f"precision must be 32, bf16 or auto, got {precision!r}")
    if precision == "32" or (precision == "auto" and not native_bf16(device)):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def encoder_device(encoder: Encoder) -> torch.device:
    """The device of the encoder's first parameter, or the CPU when it has none."""
    parameters = getattr(encoder, "parameters", None)
    if parameters is None:
        return torch.device("cpu")
    first = next(iter(parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _batches(rows: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(rows), batch_size):
        yield list(rows[start : start + batch_size])


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


TokenizedBatches = list[tuple[list[int], TokenizedText]]


def tokenize_by_length(
    tokenizer: TextTokenizer, texts: list[str], batch_size: int
) -> TokenizedBatches:
    """``texts`` in batches of similar length (less padding), tokenised as documents.

    This is what :func:`exact_search` encodes. Tokens do not change while a model trains, so a
    caller that searches the same corpus again (the dev evaluation during training) can keep
    this and pass it back as ``corpus_tokens``.

    Returns:
        For each batch, the positions of its texts in ``texts`` and their tokens (on the CPU).
    """
    _check_batch_size(batch_size)
    by_length = sorted(range(len(texts)), key=lambda position: len(texts[position]))
    return [
        (rows, tokenizer.documents([texts[row] for row in rows]))
        for rows in _batches(by_length, batch_size)
    ]


def _encode_documents_by_length(
    encoder: Encoder,
    texts: list[str],
    batch_size: int,
    device: torch.device,
    show_progress: bool,
    description: str,
    tokenized: TokenizedBatches | None = None,
) -> Iterator[tuple[list[int], EncodedTokens]]:
    """Encode ``texts`` in batches of similar length (less padding), with a progress bar.

    ``tokenized`` is ``tokenize_by_length(encoder.tokenizer, texts, batch_size)`` when the
    caller kept it; otherwise each batch is tokenised here.

    Yields:
        The positions in ``texts`` of one batch, and their encoding.
    """
    if tokenized is None:
        by_length = sorted(range(len(texts)), key=lambda position: len(texts[position]))
        batches: Sequence[tuple[list[int], TokenizedText | None]] = [
            (rows, None) for rows in _batches(by_length, batch_size)
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


def _encode_queries(
    encoder: Encoder, queries: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = encoder.encode_queries(encoder.tokenizer.queries(queries).to(device))
    return encoded.embeddings, encoded.mask  # (Q, Lq, dim), (Q, Lq)


@torch.inference_mode()
def exact_search(
    encoder: Encoder,
    corpus_texts: list[str],
    queries: list[str],
    k: int = 100,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    corpus_tokens: TokenizedBatches | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` documents of every query by MaxSim over the whole corpus.

    The corpus is encoded once, in batches of similar length (sorted by character count, to cut
    padding); each batch stays a chunk of embeddings, and every batch of queries is scored
    against each chunk in turn, keeping a running top-``k``.

    Args:
        encoder: the model (see ``Encoder``).
        corpus_texts: document texts; results index into this list.
        queries: query texts.
        k: results per query (capped at the corpus size).
        batch_size: texts per encoder call, and queries per scoring pass.
        device: where to encode and score; defaults to the encoder's parameters' device.
        show_progress: show a tqdm bar while encoding the corpus.
        corpus_tokens: the corpus already tokenised by :func:`tokenize_by_length` (same texts,
            same ``batch_size``); tokenised here when None.

    Returns:
        ``(scores, indices)``, both (Q, k) on the CPU, best first; ``indices`` are rows of
        ``corpus_texts``.
    """
    _check_batch_size(batch_size)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not corpus_texts:
        raise ValueError("exact_search needs a non-empty corpus")
    device = torch.device(device) if device is not None else encoder_device(encoder)
    similarity = encoder.config.similarity
    k = min(k, len(corpus_texts))
    if corpus_tokens is not None and sum(len(rows) for rows, _ in corpus_tokens) != len(
        corpus_texts
    ):
        raise ValueError("corpus_tokens must tokenise exactly corpus_texts (tokenize_by_length)")

    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for rows, encoded in _encode_documents_by_length(
        encoder, corpus_texts, batch_size, device, show_progress, "encoding corpus", corpus_tokens
    ):
        rows_tensor = torch.tensor(rows, dtype=torch.long, device=device)
        # (D, Ld, dim), (D, Ld), (D,)
        chunks.append((encoded.embeddings, encoded.mask, rows_tensor))

    all_scores, all_indices = [], []
    for start in range(0, len(queries), batch_size):
        query_embeddings, query_mask = _encode_queries(
            encoder, list(queries[start : start + batch_size]), device
        )
        count = query_embeddings.shape[0]
        best_scores = torch.full((count, 0), float("-inf"), device=device)
        best_indices = torch.zeros((count, 0), dtype=torch.long, device=device)
        for doc_embeddings, doc_mask, rows_tensor in chunks:
            scores = maxsim(query_embeddings, query_mask, doc_embeddings, doc_mask, similarity)
            merged_scores = torch.cat([best_scores, scores.float()], dim=1)  # (Qb, kept + D)
            merged_indices = torch.cat([best_indices, rows_tensor.expand(count, -1)], dim=1)
            keep = min(k, merged_scores.shape[1])
            best_scores, positions = merged_scores.topk(keep, dim=1)
            best_indices = merged_indices.gather(1, positions)
        all_scores.append(best_scores.cpu())
        all_indices.append(best_indices.cpu())
    if not all_scores:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(all_scores), torch.cat(all_indices)


@torch.inference_mode()
def rerank(
    encoder: Encoder,
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    documents: Mapping[str, str],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> dict[str, list[tuple[str, float]]]:
    """Score only each query's candidate documents with MaxSim, and sort them.

    Each distinct candidate is encoded once.

    Args:
        encoder: the model (see ``Encoder``).
        queries: query id -> text; only the queries in ``candidates`` are scored.
        candidates: query id -> candidate document ids (for example BM25's top 100).
        documents: document id -> text; must hold every candidate.
        batch_size: texts per encoder call, and candidates per scoring pass.
        device: where to encode and score; defaults to the encoder's parameters' device.
        show_progress: show a tqdm bar while encoding the candidates.

    Returns:
        Query id -> ``[(doc_id, score), ...]`` best first.

    Raises:
        KeyError: a candidate query or document has no text.
    """
    _check_batch_size(batch_size)
    device = torch.device(device) if device is not None else encoder_device(encoder)
    similarity = encoder.config.similarity
    missing_queries = [query_id for query_id in candidates if query_id not in queries]
    if missing_queries:
        raise KeyError(f"candidates name queries with no text: {missing_queries[:5]}")
    doc_ids = sorted({doc_id for ranked in candidates.values() for doc_id in ranked})
    missing_docs = [doc_id for doc_id in doc_ids if doc_id not in documents]
    if missing_docs:
        raise KeyError(f"candidates name documents with no text: {missing_docs[:5]}")

    embedding_of: dict[str, torch.Tensor] = {}  # (Ld_batch, dim); padding is masked
    mask_of: dict[str, torch.Tensor] = {}  # (Ld_batch,)
    texts = [documents[doc_id] for doc_id in doc_ids]
    for rows, encoded in _encode_documents_by_length(
        encoder, texts, batch_size, device, show_progress, "encoding candidates"
    ):
        for row, position in enumerate(rows):
            embedding_of[doc_ids[position]] = encoded.embeddings[row]
            mask_of[doc_ids[position]] = encoded.mask[row].bool()

    rankings: dict[str, list[tuple[str, float]]] = {}
    query_ids = list(candidates)
    for start in range(0, len(query_ids), batch_size):
        batch_ids = query_ids[start : start + batch_size]
        query_embeddings, query_mask = _encode_queries(
            encoder, [queries[query_id] for query_id in batch_ids], device
        )
        for row, query_id in enumerate(batch_ids):
            ranked_ids = list(dict.fromkeys(candidates[query_id]))  # drop repeats, keep order
            scores: list[float] = []
            for group in _batches(ranked_ids, batch_size):
                doc_embeddings = pad_sequence([embedding_of[d] for d in group], batch_first=True)
                doc_mask = pad_sequence([mask_of[d] for d in group], batch_first=True)
                group_scores = maxsim(
                    query_embeddings[row : row + 1],
                    query_mask[row : row + 1],
                    doc_embeddings,
                    doc_mask,
                    similarity,
                )  # (1, len(group))
                scores.extend(group_scores[0].float().cpu().tolist())
            order = sorted(range(len(ranked_ids)), key=lambda i: -scores[i])
            rankings[query_id] = [(ranked_ids[i], scores[i]) for i in order]
    return rankings


def exact_rankings(
    encoder: Encoder,
    corpus_ids: Sequence[str],
    corpus_texts: list[str],
    queries: dict[str, str],
    k: int = 100,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    corpus_tokens: TokenizedBatches | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """:func:`exact_search` with ids: query id -> ``[(doc_id, score), ...]``, best first.

    Args:
        encoder: the model (in eval mode; the caller's job).
        corpus_ids: document ids, aligned with ``corpus_texts``.
        corpus_texts: document texts.
        queries: query id -> text.
        k: documents kept per query.
        batch_size: texts per encoder call.
        device: where to run; defaults to the encoder's device.
        show_progress: show a bar while encoding the corpus.
        corpus_tokens: see :func:`exact_search`.
    """
    query_ids = list(queries)
    scores, indices = exact_search(
        encoder,
        corpus_texts,
        [queries[query_id] for query_id in query_ids],
        k=k,
        batch_size=batch_size,
        device=device,
        show_progress=show_progress,
        corpus_tokens=corpus_tokens,
    )
    return {
        query_id: [
            (corpus_ids[index], score) for index, score in zip(row_indices, row_scores, strict=True)
        ]
        for query_id, row_indices, row_scores in zip(
            query_ids, indices.tolist(), scores.tolist(), strict=True
        )
    }
