"""Helpers for training on several processes (DDP): exchanging results and gathering negatives.

Everything here also works in a single process, where the "gather" of a value is ``[value]``;
callers need no special case for ``torch.distributed`` being off.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """This process' rank and the number of processes; ``(0, 1)`` without ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_objects(value: Any) -> list[Any]:
    """Every process' ``value`` (picklable), in rank order; ``[value]`` in a single process.

    A collective: under DDP every process must call it. Tensors inside ``value`` should be on
    the CPU (a pickled CUDA tensor is unpickled onto the sender's device number).
    """
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


class TorchProcessGroup:
    """The processes of ``torch.distributed``'s default group, as a search's ``ProcessGroup``.

    Lets :func:`colbert_lightning.retrieval.exact.exact_search` and ``rerank`` split one
    evaluation over the DDP processes (see :func:`process_group`).

    Attributes:
        rank: this process' rank.
        world_size: the number of processes.
    """

    def __init__(self) -> None:
        self.rank, self.world_size = rank_and_world_size()

    def all_gather(self, value: Any) -> list[Any]:
        """Every process' ``value``, in rank order (see :func:`all_gather_objects`)."""
        return all_gather_objects(value)


def process_group() -> TorchProcessGroup | None:
    """The DDP processes to share work with, or None when this process is alone."""
    group = TorchProcessGroup()
    return group if group.world_size > 1 else None


class _AllGatherWithGradient(torch.autograd.Function):
    """Concatenate every process' tensor along dim 0; gradients go back to their owners.

    The backward pass sums, over processes, each one's gradient for the gathered tensor and
    keeps this process' rows. (With torch 2.13 over gloo,
    ``torch.distributed.nn.functional.all_gather`` returned wrong gradients to one of two
    processes in ``tests/test_distributed.py``; this function passes that test.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        world_size = dist.get_world_size()
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous()
        dist.all_reduce(gradient, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return gradient[start : start + ctx.rows]


def gather_documents(
    embeddings: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All processes' document embeddings, with gradients flowing back to their owners.

    Documents are padded to the longest length across processes before gathering. With DDP
    averaging gradients over processes, the result equals single-process training on the
    concatenated batch (``tests/test_distributed.py`` checks this).

    Args:
        embeddings: (N, L, dim) this process' document embeddings.
        mask: (N, L) their scored-token mask.

    Returns:
        (world * N, L_max, dim) embeddings, (world * N, L_max) mask, and the row of this
        process' first document.
    """
    world_size, rank = dist.get_world_size(), dist.get_rank()
    length = torch.tensor([embeddings.shape[1]], device=embeddings.device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length)
    pad = int(max(lengths).item()) - embeddings.shape[1]
    embeddings = torch.nn.functional.pad(embeddings, (0, 0, 0, pad))  # (N, L_max, dim)
    mask = torch.nn.functional.pad(mask, (0, pad), value=False)  # (N, L_max)
    gathered = _AllGatherWithGradient.apply(embeddings)
    masks = [torch.zeros_like(mask) for _ in range(world_size)]
    dist.all_gather(masks, mask.contiguous())
    return gathered, torch.cat(masks, dim=0), rank * embeddings.shape[0]


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """Every process' keys (no gradient), concatenated in rank order along dim 0."""
    gathered = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, keys.contiguous())
    return torch.cat(gathered, dim=0)
