"""DDP on two gloo CPU processes gives single-process results.

In-batch negatives gathered across processes give the single-process gradients; the dev
evaluation, shared by the processes, gives every one of them the single-process rankings and
metrics; a resumed run gives each process back its own random state.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from colbert_lightning.data.beir import DevSet
from colbert_lightning.evaluation.precision import search_autocast
from colbert_lightning.losses import in_batch_cross_entropy
from colbert_lightning.modeling import ColBERT
from colbert_lightning.retrieval.exact import exact_rankings, rerank
from colbert_lightning.scoring import maxsim
from colbert_lightning.training import ColBERTModule
from colbert_lightning.training.distributed import TorchProcessGroup, gather_documents
from tests.conftest import tiny_config
from tests.helpers import free_port, gloo_process_group

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
    with gloo_process_group(rank, port, WORLD):
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


def test_gathered_in_batch_negatives_match_single_process_gradients(tmp_path):
    output = tmp_path / "gradient.pt"
    mp.start_processes(
        worker, args=(free_port(), str(output)), nprocs=WORLD, join=True, start_method="spawn"
    )
    distributed = torch.load(output)
    expected = single_process_gradient()
    assert torch.allclose(distributed, expected, atol=1e-6), (distributed - expected).abs().max()
    assert expected.abs().sum() > 0


# ---- dev evaluation and random states under DDP --------------------------------------------
#
# One spawn of two gloo processes serves the tests below (starting processes is the slow part):
# each process evaluates the same weights on the same dev set and saves what it saw.

DEV_BATCH, DEV_K = 4, 10  # k below the corpus size: which tied documents make the cut matters
WORDS = (
    "wing lift drag shock boundary layer laminar turbulent flow plate heat transfer pressure "
    "supersonic hypersonic cylinder shell buckling nozzle jet wake vortex"
).split()


def make_dev_set() -> DevSet:
    """48 documents (12 batches of 4, the last 8 repeating the first 8: tied scores), 16 queries."""
    generator = random.Random(0)
    texts = [" ".join(generator.choices(WORDS, k=generator.randint(2, 24))) for _ in range(40)]
    texts += texts[:8]
    corpus_ids = [f"d{row}" for row in range(len(texts))]
    queries = {
        f"q{row}": " ".join(generator.choices(WORDS, k=generator.randint(2, 5)))
        for row in range(16)
    }
    qrels, candidates = {}, {}
    for query_id in queries:
        judged = generator.sample(corpus_ids, 4)
        qrels[query_id] = {doc_id: generator.randint(0, 2) for doc_id in judged}
        qrels[query_id][judged[0]] = 1
        candidates[query_id] = judged + generator.sample(corpus_ids, 8)
    return DevSet(corpus_ids, texts, queries, qrels, candidates)


def make_model(weights: str) -> ColBERT:
    model = ColBERT.from_config(tiny_config())
    model.load_state_dict(torch.load(weights))
    return model.eval()


def evaluation_runs(model: ColBERT, group: TorchProcessGroup | None) -> dict[str, Any]:
    """What a process computes on the dev set: metrics, rankings, and what it encoded."""
    dev_set = make_dev_set()
    encoded = {"documents": 0, "queries": 0}
    encode_documents, encode_queries = model.encode_documents, model.encode_queries

    def counting_documents(tokens):
        encoded["documents"] += tokens.input_ids.shape[0]
        return encode_documents(tokens)

    def counting_queries(tokens):
        encoded["queries"] += tokens.input_ids.shape[0]
        return encode_queries(tokens)

    model.encode_documents, model.encode_queries = counting_documents, counting_queries
    module = ColBERTModule(model, optimizer=torch.optim.AdamW)
    runs: dict[str, Any] = {}
    for mode, precision in [("exact", "bf16"), ("exact", "32"), ("rerank", "bf16")]:
        encoded.update(documents=0, queries=0)
        metrics = module.evaluate_retrieval(dev_set, mode, DEV_BATCH, DEV_K, precision)
        runs[f"{mode}-{precision}"] = {"metrics": metrics, "encoded": dict(encoded)}
    with torch.inference_mode(), search_autocast(torch.device("cpu"), "bf16"):
        runs["exact rankings"] = exact_rankings(
            model,
            dev_set.corpus_ids,
            dev_set.corpus_texts,
            dev_set.queries,
            k=DEV_K,
            batch_size=DEV_BATCH,
            show_progress=False,
            group=group,
        )
        documents = dict(zip(dev_set.corpus_ids, dev_set.corpus_texts, strict=True))
        runs["rerank rankings"] = rerank(
            model,
            dev_set.queries,
            dev_set.candidates,
            documents,
            batch_size=DEV_BATCH,
            show_progress=False,
            group=group,
        )
    model.encode_documents, model.encode_queries = encode_documents, encode_queries
    return runs


def draws() -> list[float]:
    """A few numbers from each random generator a training step may use."""
    return [*torch.rand(3).tolist(), random.random(), float(np.random.rand())]


def save_and_resume(module: ColBERTModule, rank: int, checkpoint_path: str) -> dict[str, Any]:
    """Save a checkpoint as Lightning does (hook on every process, rank 0 writes), then resume."""
    for seed in (torch.manual_seed, random.seed, np.random.seed):
        seed(1000 + rank)  # the processes' generators differ, as after rank-dependent draws
    checkpoint: dict[str, Any] = {}
    module.on_save_checkpoint(checkpoint)
    at_save = draws()
    if rank == 0:
        torch.save(checkpoint, checkpoint_path)
    dist.barrier()
    for seed in (torch.manual_seed, random.seed, np.random.seed):
        seed(0)  # a fresh run seeds every process alike
    resumed = ColBERTModule(module.model, optimizer=torch.optim.AdamW)
    resumed.on_load_checkpoint(torch.load(checkpoint_path, weights_only=True))  # as Lightning
    resumed.on_train_batch_start(None, 0)
    return {"at_save": at_save, "after_resume": draws()}


def evaluation_worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    with gloo_process_group(rank, port, WORLD):
        model = make_model(f"{folder}/weights.pt")
        results = evaluation_runs(model, TorchProcessGroup())
        module = ColBERTModule(model, optimizer=torch.optim.AdamW)
        results["random states"] = save_and_resume(module, rank, f"{folder}/checkpoint.ckpt")
        torch.save(results, f"{folder}/rank{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict[str, Any]:
    """The results of two gloo processes and of one process, for the same weights."""
    folder = tmp_path_factory.mktemp("ddp_evaluation")
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config()).eval()
    torch.save(model.state_dict(), folder / "weights.pt")
    mp.start_processes(
        evaluation_worker,
        args=(free_port(), str(folder)),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same kernels, the same rounding
    try:
        single = evaluation_runs(make_model(str(folder / "weights.pt")), group=None)
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    return {"single": single, "ranks": ranks}


@pytest.mark.parametrize("run", ["exact-bf16", "exact-32", "rerank-bf16"])
def test_every_process_reports_the_single_process_dev_metrics(two_processes, run):
    expected = two_processes["single"][run]["metrics"]
    assert 0 < expected["ndcg@10"] < 1, expected
    for rank, results in enumerate(two_processes["ranks"]):
        metrics = results[run]["metrics"]
        assert metrics.keys() == expected.keys()
        for name, value in expected.items():
            assert abs(metrics[name] - value) <= 1e-6, (rank, name, metrics[name], value)


def test_distributed_rankings_equal_single_process_rankings_ties_included(two_processes):
    single = two_processes["single"]
    tied = sum(
        a[1] == b[1]
        for ranked in single["exact rankings"].values()
        for a, b in itertools.pairwise(ranked)
    )
    assert tied > 0  # bf16 scores tie often: their order must match too
    for results in two_processes["ranks"]:
        assert results["exact rankings"] == single["exact rankings"]
        assert results["rerank rankings"] == single["rerank rankings"]


def test_each_process_encodes_its_share_of_the_work(two_processes):
    corpus_size, query_count = 48, 16
    single = two_processes["single"]
    assert single["exact-bf16"]["encoded"] == {"documents": corpus_size, "queries": query_count}
    for results in two_processes["ranks"]:
        # exact: half the corpus (6 of its 12 batches); the few short queries, all
        assert results["exact-bf16"]["encoded"]["documents"] == corpus_size // WORLD
        assert results["exact-32"]["encoded"]["documents"] == corpus_size // WORLD
        # rerank: half the queries (2 of their 4 batches)
        assert results["rerank-bf16"]["encoded"]["queries"] == query_count // WORLD


def test_each_process_resumes_with_its_own_random_state(two_processes):
    states = [results["random states"] for results in two_processes["ranks"]]
    assert states[0]["at_save"] != states[1]["at_save"]  # the processes' generators differed
    for rank, state in enumerate(states):
        assert state["after_resume"] == state["at_save"], rank


def test_resume_with_another_number_of_processes_takes_rank_zeros_state(tiny_model, caplog):
    module = ColBERTModule(tiny_model, optimizer=torch.optim.AdamW)
    per_rank = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        checkpoint: dict[str, Any] = {}
        module.on_save_checkpoint(checkpoint)
        assert len(checkpoint["colbert_rng"]) == 1  # one process: a list of one
        per_rank.append((checkpoint["colbert_rng"][0], draws()))
    two_process_checkpoint = {"colbert_rng": [states for states, _ in per_rank]}
    with caplog.at_level(logging.WARNING):
        module.on_load_checkpoint(two_process_checkpoint)
    assert "random states of 2 processes, this run has 1" in caplog.text
    module.on_train_batch_start(None, 0)
    assert draws() == per_rank[0][1]
    # a checkpoint from before per-process states: its single state is restored
    module.on_load_checkpoint({"colbert_rng": per_rank[1][0]})
    module.on_train_batch_start(None, 0)
    assert draws() == per_rank[1][1]
