"""Speed levers change the cost of a step, never its result: each is checked against the plain path.

The CUDA cases run where a GPU is present (``benchmarks/gpu_check.sh`` runs this file there).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from hydra.utils import instantiate

from colbert_lightning.data.collate import Collator
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.modeling import ColBERT
from colbert_lightning.scoring import maxsim, maxsim_gathered
from tests.helpers import TINY_OVERRIDES, compose_train

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


def embeddings(generator, count, length, dim=16):
    values = torch.randn(count, length, dim, generator=generator)
    return torch.nn.functional.normalize(values, dim=-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_gathered_maxsim_same_scores_and_gradients(similarity, device):
    generator = torch.Generator().manual_seed(0)
    queries = embeddings(generator, 3, 5).to(device).requires_grad_()
    documents = embeddings(generator, 6, 9).to(device).requires_grad_()
    query_mask = (torch.rand(3, 5, generator=generator) > 0.2).to(device)
    document_mask = torch.rand(6, 9, generator=generator) > 0.4
    document_mask[:, 0] = True
    document_mask = document_mask.to(device)
    weights = torch.randn(3, 6, generator=generator).to(device)

    results = []
    for score in (maxsim, maxsim_gathered):
        queries.grad = documents.grad = None
        scores = score(queries, query_mask, documents, document_mask, similarity)
        (scores * weights).sum().backward()
        results.append((scores.detach(), queries.grad.clone(), documents.grad.clone()))
    for expected, actual in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gathered_maxsim_under_bf16_autocast_matches_the_dense_path(device):
    generator = torch.Generator().manual_seed(2)
    queries = embeddings(generator, 4, 8, dim=32).to(device).requires_grad_()
    documents = embeddings(generator, 8, 20, dim=32).to(device).requires_grad_()
    query_mask = torch.ones(4, 8, dtype=torch.bool, device=device)
    document_mask = (torch.rand(8, 20, generator=generator) > 0.3).to(device)
    weights = torch.randn(4, 8, generator=generator).to(device)
    results = []
    for score in (maxsim, maxsim_gathered):
        queries.grad = documents.grad = None
        with torch.autocast(device, dtype=torch.bfloat16):
            scores = score(queries, query_mask, documents, document_mask)
        assert scores.dtype == torch.float32  # best matches are summed in float32
        (scores * weights).sum().backward()
        assert queries.grad.dtype == documents.grad.dtype == torch.float32
        results.append((scores.detach(), queries.grad.clone(), documents.grad.clone()))
    # both take the best of the same bf16 similarities; gradients differ by bf16 rounding
    for expected, actual in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-2)


def test_gathered_maxsim_computes_only_the_gradients_asked_for():
    generator = torch.Generator().manual_seed(3)
    queries = embeddings(generator, 2, 3).requires_grad_()
    documents = embeddings(generator, 4, 5)  # a frozen side gets no gradient
    mask = torch.ones(4, 5, dtype=torch.bool)
    maxsim_gathered(queries, torch.ones(2, 3, dtype=torch.bool), documents, mask).sum().backward()
    expected = torch.zeros_like(queries)
    for q in range(2):  # by hand: each query token's best match, summed over the documents
        for i in range(3):
            for d in range(4):
                expected[q, i] += documents[d, (documents[d] @ queries[q, i]).argmax()]
    torch.testing.assert_close(queries.grad, expected.detach())
    assert documents.grad is None


def test_gathered_maxsim_document_without_scored_tokens_scores_minus_infinity():
    generator = torch.Generator().manual_seed(1)
    queries, documents = embeddings(generator, 2, 3), embeddings(generator, 2, 4)
    query_mask = torch.ones(2, 3, dtype=torch.bool)
    document_mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    expected = maxsim(queries, query_mask, documents, document_mask)
    actual = maxsim_gathered(queries, query_mask, documents, document_mask)
    assert torch.isinf(expected[:, 1]).all() and torch.isinf(actual[:, 1]).all()
    torch.testing.assert_close(actual[:, 0], expected[:, 0])


def tiny_module(tmp_path, overrides=(), speed="plain"):
    """The tiny module and a batch; by default without the speed levers, each test adds one."""
    overrides = [*TINY_OVERRIDES, f"speed={speed}", *overrides]
    cfg = compose_train(tmp_path / "out", tmp_path / "cache", overrides)
    torch.manual_seed(0)
    model = ColBERT.from_config(instantiate(cfg.model))
    module = instantiate(cfg.module, model=model)
    words = "flow wing pressure shock layer heat jet plate mach boundary".split()
    examples = [
        TrainingExample(
            query=" ".join(words[i : i + 3]),
            positive=" ".join(words[i:] * 2),
            negatives=(" ".join(words[: i + 2]) + " ,.",),
        )
        for i in range(4)
    ]
    return module, Collator(model.tokenizer)(examples)


class TwoSteps(NamedTuple):
    optimizer: torch.optim.Optimizer
    loss: torch.Tensor  # of the first step
    gradients: dict[str, torch.Tensor]  # of the first step
    weights: dict[str, torch.Tensor]  # after the second step


def two_adamw_steps(module, batch, device):
    """Two optimiser steps on one batch, without the learning-rate schedule."""
    module.scheduler_factory = None
    module.to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    loss, gradients = loss_and_gradients(module, batch, device)
    optimizer.step()
    loss_and_gradients(module, batch, device)
    optimizer.step()
    weights = {name: p.detach().clone() for name, p in module.named_parameters()}
    return TwoSteps(optimizer, loss, gradients, weights)


def loss_and_gradients(module, batch, device, precision="32"):
    module.zero_grad(set_to_none=True)
    context = (
        torch.autocast(device, dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast(device, enabled=False)
    )
    with context:
        loss = module.batch_loss(batch.to(device)).loss
    loss.backward()
    gradients = {
        name: parameter.grad.detach().clone()
        for name, parameter in module.named_parameters()
        if parameter.grad is not None
    }
    return loss.detach(), gradients


@pytest.mark.parametrize("device", DEVICES)
def test_gathered_maxsim_option_gives_the_same_training_step(tmp_path, device):
    plain, batch = tiny_module(tmp_path)
    gathered, _ = tiny_module(tmp_path, ["module.gathered_maxsim=true"])
    assert gathered.gathered_maxsim and not plain.gathered_maxsim
    plain.to(device)
    gathered.to(device)
    expected_loss, expected = loss_and_gradients(plain, batch, device)
    loss, gradients = loss_and_gradients(gathered, batch, device)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(gradients[name], expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_step_close_to_fp32(tmp_path, device):
    module, batch = tiny_module(tmp_path)
    module.to(device)
    fp32_loss, fp32_gradients = loss_and_gradients(module, batch, device)
    bf16_loss, bf16_gradients = loss_and_gradients(module, batch, device, "bf16")
    # bf16 keeps ~3 significant digits; the loss of a random model is ~log(2 * batch)
    torch.testing.assert_close(bf16_loss, fp32_loss, rtol=2e-2, atol=2e-2)
    for name, expected in fp32_gradients.items():
        actual = bf16_gradients[name]
        assert actual.dtype == torch.float32  # master weights and their gradients stay fp32
        cosine = torch.nn.functional.cosine_similarity(
            actual.flatten().double(), expected.flatten().double(), dim=0
        )
        if expected.norm() > 1e-6:
            assert cosine > 0.95, name


@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_option_matches_the_default_update(tmp_path, device):
    results = []
    for fused in ("null", "true"):
        module, batch = tiny_module(tmp_path, [f"module.optimizer.fused={fused}"])
        steps = two_adamw_steps(module, batch, device)
        assert steps.optimizer.defaults["fused"] == (fused == "true" or None)
        results.append(steps.weights)
    for name, expected in results[0].items():
        torch.testing.assert_close(results[1][name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_with_every_lever_clips_and_trains(tmp_path, device):
    # Lightning alone refuses gradient clipping with a fused optimiser under bf16-mixed.
    from colbert_lightning.training.run import train

    clipped = []
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return original(parameters, max_norm, *args, **kwargs)

    cfg = compose_train(
        tmp_path / "out",
        tmp_path / "cache",
        [
            *TINY_OVERRIDES,
            "trainer.max_steps=3",
            f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            "trainer.precision=bf16-mixed",
            "trainer.gradient_clip_val=1.0",
            "module.optimizer.fused=true",
            "module.gathered_maxsim=true",
            "data.num_workers=0",
            "data.batch_size=4",
            "callbacks=none",
            "logger=none",
        ],
    )
    torch.nn.utils.clip_grad_norm_ = recording
    try:
        results = train(cfg)
    finally:
        torch.nn.utils.clip_grad_norm_ = original
    assert results["steps"] == 3
    assert clipped == [1.0, 1.0, 1.0]


def test_length_buckets_pad_least_of_every_way_to_cut():
    import itertools

    from colbert_lightning.modeling.colbert import length_buckets

    generator = torch.Generator().manual_seed(4)
    for count, buckets in [(1, 3), (5, 1), (6, 2), (7, 3), (8, 4), (8, 8)]:
        lengths = torch.randint(1, 50, (count,), generator=generator)
        order, groups = length_buckets(lengths, buckets)
        assert torch.equal(torch.cat(groups), order)  # every row once, in length order
        assert len(groups) <= buckets
        padded = sum(len(group) * int(lengths[group].max()) for group in groups)
        ordered = sorted(lengths.tolist())
        best = min(  # brute force over every set of cut points of the sorted lengths
            sum(
                (stop - start) * ordered[stop - 1]
                for start, stop in zip((0, *cuts), (*cuts, count), strict=True)
            )
            for size in range(min(buckets, count))
            for cuts in itertools.combinations(range(1, count), size)
        )
        assert padded == best, (lengths.tolist(), buckets)


def documents_of_varied_length(model):
    words = "flow wing pressure shock layer heat jet plate mach boundary".split()
    texts = [" ".join(words * repeat)[: 7 * repeat + 3] for repeat in (1, 9, 2, 5, 1, 8, 3)]
    return model.tokenizer.documents(texts)


@pytest.mark.parametrize("buckets", [2, 3, 7, 20])
def test_documents_in_buckets_embed_as_one_padded_batch(tmp_path, buckets):
    module, _ = tiny_module(tmp_path)
    model = module.model.eval()
    documents = documents_of_varied_length(model)
    lengths = documents.attention_mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 3  # the test needs varied lengths
    with torch.no_grad():
        expected = model.encode_documents(documents)
        actual = model.encode_documents(documents, buckets)
    assert torch.equal(actual.mask, expected.mask)
    attended = documents.attention_mask.bool()
    torch.testing.assert_close(actual.embeddings[attended], expected.embeddings[attended])
    if buckets >= len(documents):  # each document its own group: no padding encoded
        assert not actual.embeddings[~attended].any()


def test_documents_in_buckets_need_right_padding(tmp_path):
    module, _ = tiny_module(tmp_path)
    documents = documents_of_varied_length(module.model)
    flipped = documents[:, torch.arange(documents.input_ids.shape[1] - 1, -1, -1)]
    with pytest.raises(ValueError, match="right-padded"):
        module.model.encode_documents(flipped, 3)


def test_document_buckets_option_gives_the_same_training_step(tmp_path):
    plain, batch = tiny_module(tmp_path)  # the tiny model has no dropout
    bucketed, _ = tiny_module(tmp_path, ["module.document_buckets=3"])
    assert bucketed.document_buckets == 3 and plain.document_buckets == 1
    lengths = batch.documents.attention_mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 2
    expected_loss, expected = loss_and_gradients(plain, batch, "cpu")
    loss, gradients = loss_and_gradients(bucketed, batch, "cpu")
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(gradients[name], expected[name], rtol=1e-4, atol=1e-6)


def test_the_default_levers_together_give_the_plain_training_step(tmp_path):
    # speed=fast (the default: buckets, gathered MaxSim, fused AdamW) against speed=plain: the
    # loss, every gradient and the weights after two optimiser steps
    modules, steps = {}, {}
    for speed in ("plain", "fast"):
        modules[speed], batch = tiny_module(tmp_path, speed=speed)
        steps[speed] = two_adamw_steps(modules[speed], batch, "cpu")
    plain, fast = steps["plain"], steps["fast"]
    assert (modules["plain"].document_buckets, modules["plain"].gathered_maxsim) == (1, False)
    assert (modules["fast"].document_buckets, modules["fast"].gathered_maxsim) == (4, True)
    assert plain.optimizer.defaults["fused"] is None and fast.optimizer.defaults["fused"] is True
    torch.testing.assert_close(fast.loss, plain.loss, rtol=1e-5, atol=1e-6)
    for name, expected in plain.gradients.items():
        torch.testing.assert_close(fast.gradients[name], expected, rtol=1e-4, atol=1e-6)
    # Adam divides by the root of the squared gradients, so rounding in a near-zero gradient moves
    # a weight by up to ~1e-6 where a wrong gradient would move it by the step size, lr = 1e-3
    for name, expected in plain.weights.items():
        torch.testing.assert_close(fast.weights[name], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_document_buckets_must_be_a_positive_integer(tmp_path, value):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="module.document_buckets must be"):
        tiny_module(tmp_path, [f"module.document_buckets={value}"])
