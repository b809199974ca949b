"""Exhaustive MaxSim search over a small corpus, and reranking of given candidates.

Both run a torch-module encoder in eval mode (dropout off) under ``torch.inference_mode``, and
leave it in the mode it came in.

Both can split their work over several processes (a :class:`ProcessGroup`, for the dev evaluation
under DDP) and still return, on every process, exactly what one process would return.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from colbert_lightning.modeling.tokenization import TokenizedText
from colbert_lightning.retrieval.encode import (
    Encoder,
    ProcessGroup,
    TokenizedBatches,
    batches_by_length,
    check_batch_size,
    chunked,
    encode_documents_by_length,
    encode_queries,
    encoder_device,
    for_inference,
    own_share,
)
from colbert_lightning.scoring import keep_top_k, maxsim


@dataclass
class RerankedDocument:
    """One document of :func:`rerank_texts`' input, scored.

    Attributes:
        position: its index in the ``documents`` list given.
        text: the document.
        score: its MaxSim score.
        rank: 1 for the best.
    """

    position: int
    text: str
    score: float
    rank: int


def check_k(k: int) -> None:
    """Raise ValueError unless ``k``, the results wanted per query, is at least 1."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


Chunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""One encoded batch of documents: embeddings (D, Ld, dim), mask (D, Ld) and rows (D,)."""


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


@for_inference
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
    check_batch_size(batch_size)
    check_k(k)
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
        own = [batch_rows[number] for number in own_share(len(batch_rows), group)]
        if corpus_tokens is None:
            tokenized = [(rows, None) for rows in own]
        elif [rows for rows, _ in corpus_tokens] != own:
            raise ValueError(
                "corpus_tokens must be this process' share of corpus_texts "
                "(tokenize_by_length with the same batch_size and group)"
            )

    chunks: list[Chunk] = []
    for rows, encoded in encode_documents_by_length(
        encoder, corpus_texts, batch_size, device, show_progress, "encoding corpus", tokenized
    ):
        rows_tensor = torch.tensor(rows, dtype=torch.long, device=device)
        # (D, Ld, dim), (D, Ld), (D,)
        chunks.append((encoded.embeddings, encoded.mask, rows_tensor))

    all_scores, all_indices = [], []
    for start in range(0, len(queries), batch_size):
        query_embeddings, query_mask = encode_queries(
            encoder, list(queries[start : start + batch_size]), device
        )
        count = query_embeddings.shape[0]
        best_scores = torch.full((count, 0), float("-inf"), device=device)
        best_indices = torch.zeros((count, 0), dtype=torch.long, device=device)
        for rows, scores in _chunk_scores(
            query_embeddings, query_mask, chunks, similarity, group, all_rows
        ):
            best_scores, best_indices = keep_top_k(best_scores, best_indices, scores, rows, k)
        all_scores.append(best_scores.cpu())
        all_indices.append(best_indices.cpu())
    if not all_scores:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(all_scores), torch.cat(all_indices)


@for_inference
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
    check_batch_size(batch_size)
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
    own_query_batches = [query_batches[number] for number in own_share(len(query_batches), group)]
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
    for rows, encoded in encode_documents_by_length(
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
        query_embeddings, query_mask = encode_queries(
            encoder, [queries[query_id] for query_id in batch_ids], device
        )
        for row, query_id in enumerate(batch_ids):
            ranked_ids = list(dict.fromkeys(candidates[query_id]))  # drop repeats, keep order
            scores: list[float] = []
            for scored_ids in chunked(ranked_ids, batch_size):
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


def rerank_texts(
    encoder: Encoder,
    query: str,
    documents: Sequence[str],
    k: int | None = None,
    batch_size: int = 64,
) -> list[RerankedDocument]:
    """Score ``documents`` against ``query`` with exact MaxSim and sort them; no index needed.

    :func:`rerank` for one query whose candidates are texts rather than ids.

    Args:
        encoder: the model; encodes in eval mode on its own device (its mode is restored).
        query: the query text.
        documents: the texts to order.
        k: keep the best ``k`` (default: all).
        batch_size: documents per encoder call.

    Returns:
        The documents, best first (ties in input order), with their position in ``documents``.
    """
    if k is not None:
        check_k(k)
    if not documents:
        return []
    positions = [str(position) for position in range(len(documents))]
    ranked = rerank(
        encoder,
        {"query": query},
        {"query": positions},
        dict(zip(positions, documents, strict=True)),
        batch_size=batch_size,
        show_progress=False,
    )["query"]
    return [
        RerankedDocument(int(position), documents[int(position)], score, rank)
        for rank, (position, score) in enumerate(ranked[: k or len(documents)], start=1)
    ]


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
