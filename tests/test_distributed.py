"""In-batch negatives gathered across DDP processes give the single-process gradients."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from colbert_lightning.losses import in_batch_cross_entropy
from colbert_lightning.scoring import maxsim
from colbert_lightning.training.module import gather_documents

BATCH, NWAY, QUERY_LEN, DIM, WORLD = 4, 2, 3, 8, 2


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(DIM, DIM, generator=generator)
    queries = torch.randn(BATCH, QUERY_LEN, DIM, generator=generator)
    # each process pads its documents to its own longest; the two halves differ in length
    documents = [
        torch.randn(BATCH // WORLD * NWAY, length, DIM, generator=generator) for length in (5, 7)
    ]
    return weight, queries, documents


def loss_of(weight, queries, documents, mask, offset):
    embed = lambda x: torch.nn.functional.normalize(x @ weight, dim=-1)  # noqa: E731
    query_mask = torch.ones(queries.shape[:2], dtype=torch.bool)
    scores = maxsim(embed(queries), query_mask, embed(documents), mask)
    return in_batch_cross_entropy(scores, NWAY, offset)


def single_process_gradient():
    weight, queries, documents = make_inputs()
    weight.requires_grad_(True)
    longest = max(d.shape[1] for d in documents)
    padded = [torch.nn.functional.pad(d, (0, 0, 0, longest - d.shape[1])) for d in documents]
    masks = [torch.arange(longest)[None, :].expand(d.shape[0], -1) < d.shape[1] for d in documents]
    loss_of(weight, queries, torch.cat(padded), torch.cat(masks), 0).backward()
    return weight.grad


def worker(rank, port, output):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        weight, queries, documents = make_inputs()
        weight.requires_grad_(True)
        local_queries = queries.chunk(WORLD)[rank]
        local_documents = documents[rank]
        embed = lambda x: torch.nn.functional.normalize(x @ weight, dim=-1)  # noqa: E731
        doc_mask = torch.ones(local_documents.shape[:2], dtype=torch.bool)
        gathered, gathered_mask, offset = gather_documents(embed(local_documents), doc_mask)
        query_mask = torch.ones(local_queries.shape[:2], dtype=torch.bool)
        scores = maxsim(embed(local_queries), query_mask, gathered, gathered_mask)
        in_batch_cross_entropy(scores, NWAY, offset).backward()
        gradient = weight.grad.clone()
        dist.all_reduce(gradient)  # what DDP does, before dividing by the world size
        if rank == 0:
            torch.save(gradient / WORLD, output)
    finally:
        dist.destroy_process_group()


def test_gathered_in_batch_negatives_match_single_process_gradients(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output = tmp_path / "gradient.pt"
    mp.start_processes(
        worker, args=(port, str(output)), nprocs=WORLD, join=True, start_method="spawn"
    )
    distributed = torch.load(output)
    expected = single_process_gradient()
    assert torch.allclose(distributed, expected, atol=1e-6), (distributed - expected).abs().max()
    assert expected.abs().sum() > 0
