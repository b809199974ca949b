"""Contrastive and distillation losses on ColBERT scores (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def false_negative_mask(
    document_keys: torch.Tensor, relevant_keys: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Which scored documents are relevant to a query without being its target.

    Such a document is no negative: training a query away from it teaches the model to rank a
    relevant document low, and a copy of the target itself caps the target's probability.

    Args:
        document_keys: (N,) a key per scored document, or (B, N) a row of keys per query
            (for n-way groups); equal keys are the same document.
        relevant_keys: (B, R) keys of the documents relevant to each query, padded with a key no
            document has.
        targets: (B,) the column of each query's target, never masked.

    Returns:
        (B, N) boolean: True where the column must not count as a negative.

    Example:
        >>> documents = torch.tensor([10, 11, 12, 10])  # column 3 is column 0's document again
        >>> relevant = torch.tensor([[10, 12], [12, -1]])
        >>> false_negative_mask(documents, relevant, torch.tensor([0, 2])).int().tolist()
        [[0, 0, 1, 1], [0, 0, 0, 0]]
    """
    if document_keys.dim() == 1:
        document_keys = document_keys.unsqueeze(0).expand(relevant_keys.shape[0], -1)
    mask = (document_keys.unsqueeze(2) == relevant_keys.unsqueeze(1)).any(dim=2)  # (B, N)
    mask[torch.arange(len(targets), device=mask.device), targets] = False
    return mask


def _masked(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return scores if mask is None else scores.masked_fill(mask, float("-inf"))


def nway_cross_entropy(
    scores: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of each query over its own n-way documents, the positive at index 0.

    Args:
        scores: (B, nway) scores; column 0 is the positive.
        temperature: scores are divided by it before the softmax.
        mask: (B, nway) True for documents left out of the softmax (false negatives).

    Returns:
        Scalar mean loss.

    Example:
        >>> round(nway_cross_entropy(torch.tensor([[0.0, 0.0]])).item(), 4)  # log(2)
        0.6931
    """
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(_masked(scores / temperature, mask), targets)


def in_batch_targets(batch_size: int, nway: int, offset: int, device: torch.device) -> torch.Tensor:
    """(B,) the column of each query's positive: ``offset + i * nway``."""
    return offset + torch.arange(batch_size, device=device) * nway


def in_batch_cross_entropy(
    scores: torch.Tensor,
    nway: int,
    offset: int = 0,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each query over every document in the (possibly gathered) batch.

    The documents are laid out in groups of ``nway``, positive first; query ``i``'s positive is
    column ``offset + i * nway``. Its own hard negatives and every other query's documents are
    its negatives, except those ``mask`` leaves out.

    Args:
        scores: (B, N) scores against all N documents of the batch (N >= B * nway).
        nway: documents per query.
        offset: column of this process' first positive when documents were gathered across
            processes (``rank * B * nway``), else 0.
        temperature: scores are divided by it before the softmax.
        mask: (B, N) True for documents left out of the softmax (false negatives).

    Returns:
        Scalar mean loss.

    Example:
        >>> s = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]])
        >>> in_batch_cross_entropy(s, nway=2).item() < 0.001
        True
    """
    targets = in_batch_targets(scores.shape[0], nway, offset, scores.device)
    return F.cross_entropy(_masked(scores / temperature, mask), targets)


def group_scores(scores: torch.Tensor, nway: int, offset: int = 0) -> torch.Tensor:
    """Each query's scores for its own n-way documents, out of the in-batch score matrix.

    Args:
        scores: (B, N) scores against every document of the (possibly gathered) batch, laid out
            as in :func:`in_batch_cross_entropy`.
        nway: documents per query.
        offset: column of this process' first positive (see :func:`in_batch_cross_entropy`).

    Returns:
        (B, nway) scores; column 0 is each query's positive.

    Example:
        >>> s = torch.arange(12.0).view(2, 6)  # 2 queries, 3 groups of 2 documents
        >>> group_scores(s, nway=2, offset=2).tolist()
        [[2.0, 3.0], [10.0, 11.0]]
    """
    first = in_batch_targets(scores.shape[0], nway, offset, scores.device)  # (B,)
    columns = first.unsqueeze(1) + torch.arange(nway, device=scores.device)  # (B, nway)
    return scores.gather(1, columns)


def distillation_kl(
    scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> torch.Tensor:
    """KL divergence from the teacher's softmax to the student's, over each query's n-way list.

    ``KL(p_teacher || p_student)`` averaged over queries, where ``p = softmax(scores / T)``
    over a query's documents: ColBERTv2's distillation loss (colbert-ai divides the teacher's
    scores by ``1 / distillation_alpha``, the teacher temperature here).

    Args:
        scores: (B, nway) the student's scores.
        teacher_scores: (B, nway) the teacher's scores for the same documents.
        temperature: the student's scores are divided by it.
        teacher_temperature: the teacher's scores are divided by it.

    Returns:
        Scalar mean loss (0 when the two distributions are equal).

    Example:
        >>> teacher = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
        >>> student = torch.tensor([[torch.log(torch.tensor(3.0)).item(), 0.0]])  # (3/4, 1/4)
        >>> round(distillation_kl(student, teacher).item(), 4)  # 1/2 ln(2/3) + 1/2 ln 2
        0.1438
    """
    student = F.log_softmax(scores / temperature, dim=-1)
    teacher = F.log_softmax(teacher_scores.to(scores.dtype) / teacher_temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True)
