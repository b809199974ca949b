"""Exhaustive MaxSim search over a small corpus, and reranking of given candidates.

Both run a torch-module encoder in eval mode (dropout off) under ``torch.inference_mode``, and
leave it in the mode it came in.

Both can split their work over several processes (a :class:`ProcessGroup`, for the dev evaluation
under DDP) and still return, on every process, exactly what one process would return.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from colbert_lightning.modeling.colbert import inference
from colbert_lightning.modeling.tokenization import TokenizedText
from colbert_lightning.scoring import maxsim

Result = TypeVar("Result")


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


EvaluationPrecision = Literal["32", "bf16", "auto"]
EVALUATION_PRECISIONS: tuple[str, ...] = ("32", "bf16", "auto")


def _for_inference(function: Callable[..., Result]) -> Callable[..., Result]:
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


def batches_by_length(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Positions of ``texts`` sorted by character count, cut into batches of ``batch_size``.

    Texts of similar length share a batch, which cuts padding. The sort is stable, so every
    process that cuts the same texts gets the same batches.

    Example:
        >>> batches_by_length(["a long one", "a", "abc"], 2)
        [[1, 2], [0]]
    """
    _check_batch_size(batch_size)
    by_length = sorted(range(len(texts)), key=lambda position: len(texts[position]))
    return list(_batches(by_length, batch_size))


def _own_share(count: int, group: ProcessGroup | None) -> list[int]:
    """The numbers, below ``count``, of the batches this process handles: every world_size-th.

    Interleaving (rather than cutting contiguous ranges) gives every process batches of every
    length, so the processes finish at about the same time.
    """
    if group is None:
        return list(range(count))
    return list(range(group.rank, count, group.world_size))


def _check_batch_size(batch_size: int) -> None:
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
        for number in _own_share(len(batches), group)
    ]


def _encode_documents_by_length(
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


def _encode_queries(
    encoder: Encoder, queries: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = encoder.encode_queries(encoder.tokenizer.queries(queries).to(device))
    return encoded.embeddings, encoded.mask  # (Q, Lq, dim), (Q, Lq)


Chunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""One encoded batch of documents: embeddings (D, Ld, dim), mask (D, Ld) and rows (D,)."""


def _keep_top_k(
    best_scores: torch.Tensor,
    best_indices: torch.Tensor,
    scores: torch.Tensor,
    rows: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-``k``: the best so far merged with one more chunk's scores.

    Ties are broken by ``torch.topk``, whose order among equal scores depends on its input
    order: that is why every process replays the same merges in the same order (see
    :func:`exact_search`) rather than merging per-process top-``k`` lists.

    Args:
        best_scores: (Qb, kept) the best scores so far, best first.
        best_indices: (Qb, kept) their corpus rows.
        scores: (Qb, D) the queries' scores for one chunk.
        rows: (D,) the chunk's corpus rows.
        k: how many to keep.

    Returns:
        The new ``(best_scores, best_indices)``, (Qb, min(k, kept + D)) each.
    """
    merged_scores = torch.cat([best_scores, scores.float()], dim=1)  # (Qb, kept + D)
    merged_indices = torch.cat([best_indices, rows.expand(scores.shape[0], -1)], dim=1)
    keep = min(k, merged_scores.shape[1])
    best_scores, positions = merged_scores.topk(keep, dim=1)
    return best_scores, merged_indices.gather(1, positions)


def _chunk_scores(
    query_embeddings: torch.Tensor,
    query_mask: torch.Tensor,
    chunks: list[Chunk],
    similarity: str,
    group: ProcessGroup | None,
    all_rows: list[torch.Tensor],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch of the corpus' rows (D,) and MaxSim scores (Qb, D), in batch order.

    Alone, ``chunks`` are every batch of the corpus. In a group they are this process' share
    (every ``world_size``-th of the batches whose rows are ``all_rows``): each process scores
    its own, the scores are exchanged, and every process gets every batch's scores, bit for bit
    what one process computes (the same query batch against the same chunk).
    """
    if group is None:
        for embeddings, mask, rows in chunks:
            yield rows, maxsim(query_embeddings, query_mask, embeddings, mask, similarity)
        return
    own = [
        maxsim(query_embeddings, query_mask, embeddings, mask, similarity).float().cpu()
        for embeddings, mask, _ in chunks
    ]  # CPU: a pickled CUDA tensor would unpickle onto the sender's device number
    shares = group.all_gather(own)
    for number, rows in enumerate(all_rows):
        scores = shares[number % group.world_size][number // group.world_size]
        yield rows, scores.to(query_embeddings.device)


@_for_inference
def exact_search(
    encoder: Encoder,
    corpus_texts: list[str],
    queries: list[str],
    k: int = 100,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    corpus_tokens: TokenizedBatches | None = None,
    group: ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` documents of every query by MaxSim over the whole corpus.

    The corpus is encoded once, in batches of similar length (sorted by character count, to cut
    padding); each batch stays a chunk of embeddings, and every batch of queries is scored
    against each chunk in turn, keeping a running top-``k``.

    With a ``group``, each process encodes and scores only every ``world_size``-th batch (the
    cost that dominates); the processes then exchange the (Qb, D) score matrices of each query
    batch, and every process replays the running top-``k`` over all chunks in the order one
    process would. The result is bit for bit the single-process one, ties included (frequent
    under bf16), on every process. The exchange carries queries x corpus floats in all.

    Args:
        encoder: the model (see ``Encoder``).
        corpus_texts: document texts; results index into this list.
        queries: query texts.
        k: results per query (capped at the corpus size).
        batch_size: texts per encoder call, and queries per scoring pass.
        device: where to encode and score; defaults to the encoder's parameters' device.
        show_progress: show a tqdm bar while encoding the corpus.
        corpus_tokens: the corpus already tokenised by :func:`tokenize_by_length` (same texts,
            same ``batch_size``, same ``group``); tokenised here when None.
        group: processes sharing the search; every one of them must call this with the same
            arguments. None: this process does it all.

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
    all_rows: list[torch.Tensor] = []  # in a group: every batch's rows, this process' or not
    tokenized: Sequence[tuple[list[int], TokenizedText | None]] | None = corpus_tokens
    if group is None:
        if corpus_tokens is not None and sum(len(rows) for rows, _ in corpus_tokens) != len(
            corpus_texts
        ):
            raise ValueError(
                "corpus_tokens must tokenise exactly corpus_texts (tokenize_by_length)"
            )
    else:
        batch_rows = batches_by_length(corpus_texts, batch_size)
        all_rows = [torch.tensor(rows, dtype=torch.long, device=device) for rows in batch_rows]
        own = [batch_rows[number] for number in _own_share(len(batch_rows), group)]
        if corpus_tokens is None:
            tokenized = [(rows, None) for rows in own]
        elif [rows for rows, _ in corpus_tokens] != own:
            raise ValueError(
                "corpus_tokens must be this process' share of corpus_texts "
                "(tokenize_by_length with the same batch_size and group)"
            )

    chunks: list[Chunk] = []
    for rows, encoded in _encode_documents_by_length(
        encoder, corpus_texts, batch_size, device, show_progress, "encoding corpus", tokenized
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
        for rows, scores in _chunk_scores(
            query_embeddings, query_mask, chunks, similarity, group, all_rows
        ):
            best_scores, best_indices = _keep_top_k(best_scores, best_indices, scores, rows, k)
        all_scores.append(best_scores.cpu())
        all_indices.append(best_indices.cpu())
    if not all_scores:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(all_scores), torch.cat(all_indices)


@_for_inference
def rerank(
    encoder: Encoder,
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    documents: Mapping[str, str],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    group: ProcessGroup | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Score only each query's candidate documents with MaxSim, and sort them.

    Each distinct candidate is encoded once. With a ``group``, each process ranks every
    ``world_size``-th batch of queries and encodes only the batches of candidates those queries
    need; the rankings are then exchanged. The batches are the ones a single process cuts, so
    every process returns bit for bit the single-process rankings.

    Args:
        encoder: the model (see ``Encoder``).
        queries: query id -> text; only the queries in ``candidates`` are scored.
        candidates: query id -> candidate document ids (for example BM25's top 100).
        documents: document id -> text; must hold every candidate.
        batch_size: texts per encoder call, and candidates per scoring pass.
        device: where to encode and score; defaults to the encoder's parameters' device.
        show_progress: show a tqdm bar while encoding the candidates.
        group: processes sharing the work; every one of them must call this with the same
            arguments. None: this process does it all.

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

    query_ids = list(candidates)
    query_batches = [
        query_ids[start : start + batch_size] for start in range(0, len(query_ids), batch_size)
    ]
    own_query_batches = [query_batches[number] for number in _own_share(len(query_batches), group)]
    texts = [documents[doc_id] for doc_id in doc_ids]
    document_batches = batches_by_length(texts, batch_size)
    if group is not None:
        needed = {
            doc_id
            for batch_ids in own_query_batches
            for query_id in batch_ids
            for doc_id in candidates[query_id]
        }
        document_batches = [
            rows for rows in document_batches if any(doc_ids[row] in needed for row in rows)
        ]

    embedding_of: dict[str, torch.Tensor] = {}  # (Ld_batch, dim); padding is masked
    mask_of: dict[str, torch.Tensor] = {}  # (Ld_batch,)
    for rows, encoded in _encode_documents_by_length(
        encoder,
        texts,
        batch_size,
        device,
        show_progress,
        "encoding candidates",
        [(rows, None) for rows in document_batches],
    ):
        for row, position in enumerate(rows):
            embedding_of[doc_ids[position]] = encoded.embeddings[row]
            mask_of[doc_ids[position]] = encoded.mask[row].bool()

    rankings: dict[str, list[tuple[str, float]]] = {}
    for batch_ids in own_query_batches:
        query_embeddings, query_mask = _encode_queries(
            encoder, [queries[query_id] for query_id in batch_ids], device
        )
        for row, query_id in enumerate(batch_ids):
            ranked_ids = list(dict.fromkeys(candidates[query_id]))  # drop repeats, keep order
            scores: list[float] = []
            for scored_ids in _batches(ranked_ids, batch_size):
                doc_embeddings = pad_sequence(
                    [embedding_of[d] for d in scored_ids], batch_first=True
                )
                doc_mask = pad_sequence([mask_of[d] for d in scored_ids], batch_first=True)
                scored = maxsim(
                    query_embeddings[row : row + 1],
                    query_mask[row : row + 1],
                    doc_embeddings,
                    doc_mask,
                    similarity,
                )  # (1, len(scored_ids))
                scores.extend(scored[0].float().cpu().tolist())
            order = sorted(range(len(ranked_ids)), key=lambda i: -scores[i])
            rankings[query_id] = [(ranked_ids[i], scores[i]) for i in order]
    if group is None:
        return rankings
    for share in group.all_gather(rankings):
        rankings.update(share)
    return {query_id: rankings[query_id] for query_id in query_ids}


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
    group: ProcessGroup | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """:func:`exact_search` with ids: query id -> ``[(doc_id, score), ...]``, best first.

    Args:
        encoder: the model (run in eval mode, whatever mode it is in).
        corpus_ids: document ids, aligned with ``corpus_texts``.
        corpus_texts: document texts.
        queries: query id -> text.
        k: documents kept per query.
        batch_size: texts per encoder call.
        device: where to run; defaults to the encoder's device.
        show_progress: show a bar while encoding the corpus.
        corpus_tokens: see :func:`exact_search`.
        group: see :func:`exact_search`.
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
        group=group,
    )
    return {
        query_id: [
            (corpus_ids[index], score) for index, score in zip(row_indices, row_scores, strict=True)
        ]
        for query_id, row_indices, row_scores in zip(
            query_ids, indices.tolist(), scores.tolist(), strict=True
        )
    }
