"""GradCache (``module.cached=true``): the uncached step's loss and gradients, chunk by chunk.

In a single process and under DDP with documents gathered across processes, wrapped in torch's
DistributedDataParallel as Lightning wraps the module: the cached step's backward must fire
DDP's gradient hooks once, with every chunk's gradient in it.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from colbert_lightning.data.collate import Collator
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.modeling import ColBERT
from colbert_lightning.training import ColBERTModule
from tests.conftest import TINY_ENCODER, tiny_config
from tests.helpers import free_port, gloo_process_group

TOPICS = ["lift", "shock", "heat", "drag", "flutter", "boundary", "nozzle", "vortex"]
EXAMPLES = [
    TrainingExample(
        f"what about {topic} {i}",
        f"{topic} is studied in wind tunnels " * (1 + i % 3),
        (f"a note on {TOPICS[(i + 1) % 8]}", f"tables of {TOPICS[(i + 3) % 8]} data"),
        "",
        f"q{i}",
        f"p{i}",
        (f"n{i}", f"m{i}"),
    )
    for i, topic in enumerate(TOPICS)
]
# q0's first negative is judged relevant to it: masked in both steps
RELEVANT = {"q0": ["n0"]}
TEACHER = torch.arange(24, dtype=torch.float32).view(8, 3).sin() * 3


def _module(dropout: float = 0.0, world_size: int = 1, **options) -> ColBERTModule:
    torch.manual_seed(0)
    encoder = dict(TINY_ENCODER, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = ColBERT.from_config(tiny_config(encoder_config=encoder)).train()
    module = ColBERTModule(model, optimizer=torch.optim.AdamW, **options)
    module._trainer = SimpleNamespace(world_size=world_size)  # only world_size is read
    return module


def _batch(module: ColBERTModule, examples=EXAMPLES, teacher=TEACHER):
    batch = Collator(module.model.tokenizer, RELEVANT)(examples)
    return replace(batch, teacher_scores=teacher)


def _step(module: ColBERTModule, batch, cached: bool) -> tuple[float, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.cached_batch_loss(batch) if cached else module.batch_loss(batch)
    loss.loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return loss.loss.item(), grads


def _assert_same(reference, candidate, tolerance: float = 1e-5) -> None:
    reference_loss, reference_grads = reference
    loss, grads = candidate
    assert loss == pytest.approx(reference_loss, abs=tolerance)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, reference_grads[name], atol=tolerance, rtol=1e-4), name


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"in_batch_negatives": False},
        {"distillation_weight": 1.0, "teacher_temperature": 2.0},
        {"contrastive_weight": 0.0, "distillation_weight": 1.0},
        {"gathered_maxsim": True, "temperature": 0.5},
    ],
    ids=["in_batch", "nway", "ce_plus_kl", "kl_only", "gathered_maxsim"],
)
@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_cached_step_gives_the_uncached_loss_and_gradients(options, chunk):
    module = _module(cache_chunk_size=chunk, **options)
    batch = _batch(module)
    uncached = _step(module, batch, cached=False)
    cached = _step(module, batch, cached=True)
    assert len(uncached[1]) > 10  # the encoder's weights, not only the projection
    _assert_same(uncached, cached)


def test_each_chunk_replays_its_own_dropout():
    """With dropout, the cached gradient is that of the loss over the chunks' first encoding."""
    module = _module(dropout=0.3, cache_chunk_size=3)
    batch = _batch(module)
    # the same forward passes in the same order as the cached step's first pass, with a graph
    torch.manual_seed(123)
    module.zero_grad(set_to_none=True)
    parts = [module._encode_chunk(batch, slice(start, min(start + 3, 8))) for start in (0, 3, 6)]
    queries = replace(
        parts[0][0],
        embeddings=torch.cat([q.embeddings for q, _ in parts]),
        mask=torch.cat([q.mask for q, _ in parts]),
    )
    documents = replace(
        parts[0][1],
        embeddings=torch.cat([d.embeddings for _, d in parts]),
        mask=torch.cat([d.mask for _, d in parts]),
    )
    loss = module.loss_of_embeddings(batch, queries, documents).loss
    loss.backward()
    reference = (loss.item(), {n: p.grad.clone() for n, p in module.named_parameters()})
    after_reference = torch.rand(3)
    torch.manual_seed(123)
    cached = _step(module, batch, cached=True)
    _assert_same(reference, cached)
    # the step leaves the random state where the first pass left it
    assert torch.equal(torch.rand(3), after_reference)
    # and dropout is on: an unseeded step differs
    assert _step(module, batch, cached=True)[0] != pytest.approx(cached[0], abs=1e-4)


def _weights_after_one_lightning_step(cached: bool) -> dict[str, torch.Tensor]:
    module = _module(cached=cached, cache_chunk_size=3, distillation_weight=0.5)
    module.optimizer_factory = functools.partial(torch.optim.SGD, lr=1.0)
    module._trainer = None
    batch = _batch(module)
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda item: item)
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_a_lightning_step_cached_makes_the_uncached_update():
    """Lightning zeroes gradients between the training step and its backward: none of the
    cached step's gradient may sit in ``.grad`` before it."""
    start = {name: p.detach().clone() for name, p in _module().named_parameters()}
    uncached = _weights_after_one_lightning_step(cached=False)
    cached = _weights_after_one_lightning_step(cached=True)
    moved = [name for name in start if not torch.allclose(start[name], uncached[name])]
    assert len(moved) > 10
    for name in start:
        assert torch.allclose(cached[name], uncached[name], atol=1e-5), name


class _Wrapper(torch.nn.Module):
    """What Lightning's DDP wrapper does: the forward pass is the module's training step."""

    def __init__(self, module: ColBERTModule, cached: bool) -> None:
        super().__init__()
        self.module, self.cached = module, cached

    def forward(self, batch) -> torch.Tensor:
        step = self.module.cached_batch_loss if self.cached else self.module.batch_loss
        return step(batch).loss


def _worker(rank: int, port: int, world: int, output: str) -> None:
    with gloo_process_group(rank, port, world):
        results = []
        for cached in (False, True):
            module = _module(
                world_size=world,
                gather_across_devices=True,
                distillation_weight=0.5,
                cache_chunk_size=3,
            )
            wrapped = torch.nn.parallel.DistributedDataParallel(_Wrapper(module, cached))
            rows = slice(rank * 4, rank * 4 + 4)
            batch = _batch(module, EXAMPLES[rows], TEACHER[rows])
            loss = wrapped(batch)
            loss.backward()  # DDP averages the gradients over the processes here
            grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
            total = loss.detach().clone()
            dist.all_reduce(total)
            results.append((total.item() / world, grads))
        if rank == 0:
            torch.save(results, output)


def test_cached_step_under_ddp_with_gathered_documents_gives_the_uncached_gradients(tmp_path):
    port = free_port()
    output = tmp_path / "results.pt"
    mp.start_processes(
        _worker, args=(port, 2, str(output)), nprocs=2, join=True, start_method="spawn"
    )
    uncached, cached = torch.load(output)
    _assert_same(uncached, cached)
    # and both equal one process on the whole batch (DDP averages what each process' loss,
    # over its own queries against all documents, gives)
    single = _module(distillation_weight=0.5)
    _assert_same(_step(single, _batch(single), cached=False), uncached)
