"""Contrastive losses on ColBERT scores (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nway_cross_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each query over its own n-way documents, the positive at index 0.

    Args:
        scores: (B, nway) scores; column 0 is the positive.

    Returns:
        Scalar mean loss.

    Example:
        >>> round(nway_cross_entropy(torch.tensor([[0.0, 0.0]])).item(), 4)  # log(2)
        0.6931
    """
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores, targets)


def in_batch_cross_entropy(scores: torch.Tensor, nway: int, offset: int = 0) -> torch.Tensor:
    """Cross-entropy of each query over every document in the (possibly gathered) batch.

    The documents are laid out in groups of ``nway``, positive first; query ``i``'s positive is
    column ``offset + i * nway``. Its own hard negatives and every other query's documents are
    its negatives.

    Args:
        scores: (B, N) scores against all N documents of the batch (N >= B * nway).
        nway: documents per query.
        offset: column of this process' first positive when documents were gathered across
            processes (``rank * B * nway``), else 0.

    Returns:
        Scalar mean loss.

    Example:
        >>> s = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]])
        >>> in_batch_cross_entropy(s, nway=2).item() < 0.001
        True
    """
    batch_size = scores.shape[0]
    targets = offset + torch.arange(batch_size, device=scores.device) * nway
    return F.cross_entropy(scores, targets)
