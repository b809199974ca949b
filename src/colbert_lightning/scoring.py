"""MaxSim late interaction, as pure functions on token embeddings.

Documents padded, grouped per query, gathered across processes, or packed without padding; and
the running top-k of a search.

Convention: a query token's contribution is the maximum similarity over the document's *scored*
tokens, kept as is when negative (colbert-ai's ``colbert_score``). PyLate's ``colbert_scores``
instead floors it at 0, because its padded tokens are zero vectors; the two agree whenever every
query token has a non-negative best match, which is typical after training but not at random init.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

Similarity = Literal["cosine", "l2"]


def check_similarity(similarity: str) -> None:
    """Raise ValueError unless ``similarity`` is ``cosine`` or ``l2``."""
    if similarity not in ("cosine", "l2"):
        raise ValueError(f"similarity must be 'cosine' or 'l2', got {similarity!r}")


def token_similarity(
    queries: torch.Tensor, documents: torch.Tensor, similarity: Similarity = "cosine"
) -> torch.Tensor:
    """Similarity of every query token with every document token, for all query-document pairs.

    Args:
        queries: (Q, Lq, dim) query token embeddings.
        documents: (D, Ld, dim) document token embeddings.
        similarity: ``cosine`` is the dot product (embeddings are unit vectors); ``l2`` is the
            negative squared Euclidean distance, ``2 * cosine - 2`` on unit vectors (so a
            query's MaxSim under ``l2`` is twice its cosine MaxSim less twice its scored tokens).

    Returns:
        (Q, D, Lq, Ld) similarities.
    """
    dots = torch.einsum("qid,pjd->qpij", queries, documents)
    if similarity == "cosine":
        return dots
    check_similarity(similarity)
    query_norms = queries.pow(2).sum(-1)[:, None, :, None]  # (Q, 1, Lq, 1)
    doc_norms = documents.pow(2).sum(-1)[None, :, None, :]  # (1, D, 1, Ld)
    return 2 * dots - query_norms - doc_norms


def maxsim(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    documents: torch.Tensor,
    document_mask: torch.Tensor,
    similarity: Similarity = "cosine",
) -> torch.Tensor:
    """ColBERT scores of every query against every document.

    ``score(q, d) = sum_i max_j sim(q_i, d_j)`` over scored query tokens ``i`` and scored
    document tokens ``j``. A negative best match counts as negative (no floor at 0).

    Args:
        queries: (Q, Lq, dim) query token embeddings.
        query_mask: (Q, Lq) True for query tokens that count.
        documents: (D, Ld, dim) document token embeddings.
        document_mask: (D, Ld) True for document tokens that can be matched.
        similarity: ``cosine`` or ``l2``.

    Returns:
        (Q, D) scores.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])           # one query, two tokens
        >>> d = torch.tensor([[[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]])
        >>> maxsim(q, torch.tensor([[True, True]]), d, torch.tensor([[True, True, True]]))
        tensor([[1.8000]])
        >>> maxsim(q, torch.tensor([[True, True]]), d, torch.tensor([[False, True, True]]))
        tensor([[1.]])
    """
    similarities = token_similarity(queries, documents, similarity)  # (Q, D, Lq, Ld)
    return _sum_of_best_matches(
        similarities, query_mask.bool()[:, None, :], document_mask.bool()[None, :, :]
    )


def maxsim_grouped(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    documents: torch.Tensor,
    document_mask: torch.Tensor,
    similarity: Similarity = "cosine",
) -> torch.Tensor:
    """ColBERT scores of each query against its own group of documents only.

    Args:
        queries: (B, Lq, dim) query token embeddings.
        query_mask: (B, Lq) True for query tokens that count.
        documents: (B, N, Ld, dim) N documents per query.
        document_mask: (B, N, Ld) True for document tokens that can be matched.
        similarity: ``cosine`` or ``l2``.

    Returns:
        (B, N) scores; ``result[b, n] == maxsim(queries[b:b+1], ..., documents[b, n:n+1], ...)``.
    """
    check_similarity(similarity)
    dots = torch.einsum("bid,bnjd->bnij", queries, documents)  # (B, N, Lq, Ld)
    if similarity == "l2":
        query_norms = queries.pow(2).sum(-1)[:, None, :, None]
        doc_norms = documents.pow(2).sum(-1)[:, :, None, :]
        dots = 2 * dots - query_norms - doc_norms
    return _sum_of_best_matches(dots, query_mask.bool()[:, None, :], document_mask.bool())


def _sum_of_best_matches(
    similarities: torch.Tensor, query_mask: torch.Tensor, document_mask: torch.Tensor
) -> torch.Tensor:
    """MaxSim's reduction: best scored document token per query token, summed over query tokens.

    Args:
        similarities: (..., Lq, Ld) token similarities.
        query_mask: broadcastable to (..., Lq).
        document_mask: broadcastable to (..., Ld).

    Returns:
        (...) scores.
    """
    similarities = similarities.masked_fill(~document_mask.unsqueeze(-2), float("-inf"))
    best = similarities.max(dim=-1).values  # (..., Lq)
    return _sum_at_least_float32(best.masked_fill(~query_mask, 0.0))


def _sum_at_least_float32(best: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension; half-precision input is summed in float32.

    Under bf16 autocast a bf16 sum of 32 best matches would keep about 2 significant digits.
    """
    if best.dtype in (torch.bfloat16, torch.float16):
        best = best.float()
    return best.sum(dim=-1)


def maxsim_gathered(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    documents: torch.Tensor,
    document_mask: torch.Tensor,
    similarity: Similarity = "cosine",
) -> torch.Tensor:
    """:func:`maxsim` with a cheap backward pass, for training: the same scores and gradients.

    MaxSim's gradient reaches only each query token's best-matching document token. The forward
    pass keeps the index of that token (``max`` with indices; no (Q, D, Lq, Ld) tensor is kept
    for backward); the backward pass gathers the chosen document tokens for the queries'
    gradient and adds the queries' tokens into the chosen rows for the documents' (``index_add_``),
    instead of two batched matrix products over every token pair. Scores equal :func:`maxsim`'s;
    gradients equal up to float rounding (``tests/test_speed.py``).

    Args:
        queries: (Q, Lq, dim) query token embeddings.
        query_mask: (Q, Lq) True for query tokens that count.
        documents: (D, Ld, dim) document token embeddings.
        document_mask: (D, Ld) True for document tokens that can be matched.
        similarity: ``cosine`` or ``l2``.

    Returns:
        (Q, D) scores.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
        >>> d = torch.tensor([[[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]])
        >>> maxsim_gathered(q, torch.tensor([[True, True]]), d, torch.tensor([[True, True, True]]))
        tensor([[1.8000]], grad_fn=<_BestMatchesBackward>)
    """
    check_similarity(similarity)
    return _BestMatches.apply(
        queries, query_mask.bool(), documents, document_mask.bool(), similarity
    )


class _BestMatches(torch.autograd.Function):
    """MaxSim whose backward routes each query token's gradient through its best match only."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        queries: torch.Tensor,
        query_mask: torch.Tensor,
        documents: torch.Tensor,
        document_mask: torch.Tensor,
        similarity: Similarity,
    ) -> torch.Tensor:
        similarities = token_similarity(queries, documents, similarity)  # (Q, D, Lq, Ld)
        similarities.masked_fill_(~document_mask[None, :, None, :], float("-inf"))
        # a document without any scored token scores -inf, as in maxsim
        best, best_token = similarities.max(dim=-1)  # (Q, D, Lq)
        del similarities
        ctx.save_for_backward(queries, query_mask, documents, best_token)
        ctx.similarity = similarity
        return _sum_at_least_float32(best.masked_fill(~query_mask[:, None, :], 0.0))

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_scores: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, None, None]:
        queries, query_mask, documents, best_token = ctx.saved_tensors
        num_queries, query_length, dim = queries.shape
        num_documents, document_length, _ = documents.shape
        # row of each best match in the documents' (D * Ld, dim) token table
        offsets = torch.arange(num_documents, device=documents.device) * document_length
        rows = (best_token + offsets[None, :, None]).reshape(-1)  # (Q * D * Lq,)
        chosen = documents.reshape(-1, dim).index_select(0, rows)
        chosen = chosen.view(num_queries, num_documents, query_length, dim)
        weights = (grad_scores[:, :, None] * query_mask[:, None, :]).to(chosen.dtype)  # (Q, D, Lq)
        l2 = ctx.similarity == "l2"  # d/dq of 2 q.d - |q|^2 - |d|^2 is 2 (d - q); d/dd 2 (q - d)
        grad_queries = grad_documents = None
        if ctx.needs_input_grad[0]:
            grad_queries = torch.einsum("qdi,qdik->qik", weights, chosen)
            if l2:
                grad_queries = 2 * grad_queries - 2 * weights.sum(dim=1)[..., None] * queries
            grad_queries = grad_queries.to(queries.dtype)
        if ctx.needs_input_grad[2]:
            to_documents = weights[..., None] * queries[:, None, :, :]  # (Q, D, Lq, dim)
            if l2:
                to_documents = 2 * (to_documents - weights[..., None] * chosen)
            grad_documents = torch.zeros_like(documents).view(-1, dim)
            grad_documents.index_add_(0, rows, to_documents.reshape(-1, dim).to(documents.dtype))
            grad_documents = grad_documents.view_as(documents)
        return grad_queries, None, grad_documents, None, None


def maxsim_in_chunks(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    documents: torch.Tensor,
    document_mask: torch.Tensor,
    similarity: Similarity = "cosine",
    chunk_size: int = 32,
) -> torch.Tensor:
    """:func:`maxsim` of ``chunk_size`` queries at a time, each chunk recomputed in backward.

    The (Q, D, Lq, Ld) similarities of :func:`maxsim` are what a large in-batch step spends its
    memory on (256 queries x 512 documents x 32 x 180 tokens is 3 GiB in float32). Here only one
    chunk's (chunk_size, D, Lq, Ld) exists at a time, in forward and in backward (activation
    checkpointing per chunk): the same scores and gradients, one more similarity pass.

    Args:
        queries: (Q, Lq, dim) query token embeddings.
        query_mask: (Q, Lq) True for query tokens that count.
        documents: (D, Ld, dim) document token embeddings.
        document_mask: (D, Ld) True for document tokens that can be matched.
        similarity: ``cosine`` or ``l2``.
        chunk_size: queries per chunk.

    Returns:
        (Q, D) scores, equal to :func:`maxsim`'s.

    Example:
        >>> q = torch.randn(5, 3, 4)
        >>> d = torch.randn(6, 7, 4)
        >>> qm, dm = torch.ones(5, 3, dtype=torch.bool), torch.ones(6, 7, dtype=torch.bool)
        >>> torch.allclose(maxsim_in_chunks(q, qm, d, dm, chunk_size=2), maxsim(q, qm, d, dm))
        True
    """
    parts = []
    for start in range(0, queries.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        parts.append(
            checkpoint(
                maxsim,
                queries[rows],
                query_mask[rows],
                documents,
                document_mask,
                similarity,
                use_reentrant=False,
            )
        )
    return torch.cat(parts)


def packed_maxsim(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    tokens: torch.Tensor,
    owner: torch.Tensor,
    documents: int,
    similarity: str = "cosine",
) -> torch.Tensor:
    """MaxSim against documents stored as one packed run of tokens (no padding to mask).

    Args:
        queries: (Q, Lq, dim) query token embeddings.
        query_mask: (Q, Lq) True for query tokens that count.
        tokens: (N, dim) the documents' scored tokens, one after another.
        owner: (N,) the document (0..documents-1) of each token; every document has one.
        documents: D, the number of documents.
        similarity: ``cosine`` or ``l2`` (as :func:`maxsim`).

    Returns:
        (Q, D) scores, equal to :func:`maxsim` on the padded form.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> d = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])   # doc 0: 1 token, doc 1: 2
        >>> packed_maxsim(q, torch.tensor([[True, True]]), d, torch.tensor([0, 1, 1]), 2)
        tensor([[1.4000, 1.0000]])
    """
    count, length, _ = queries.shape
    similarities = token_similarity(queries, tokens[None], similarity)[:, 0]  # (Q, Lq, N)
    best = torch.full((count, length, documents), float("-inf"), dtype=similarities.dtype)
    index = owner.to(similarities.device).expand(count, length, -1)
    best = best.scatter_reduce(2, index, similarities, reduce="amax")  # (Q, Lq, D)
    return best.masked_fill(~query_mask.bool()[:, :, None], 0.0).sum(dim=1)


def keep_top_k(
    best_scores: torch.Tensor,
    best_indices: torch.Tensor,
    scores: torch.Tensor,
    rows: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-``k``: the best so far merged with one more chunk's scores.

    Ties are broken by ``torch.topk``, whose order among equal scores depends on its input
    order: that is why every process replays the same merges in the same order (see
    :func:`colbert_lightning.retrieval.exact.exact_search`) rather than merging per-process
    top-``k`` lists.

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
