import pytest
import torch

from colbert_lightning.losses import in_batch_cross_entropy, nway_cross_entropy
from colbert_lightning.scoring import maxsim, maxsim_grouped


def naive_maxsim(query, query_mask, document, document_mask, similarity="cosine"):
    total = 0.0
    for i in range(query.shape[0]):
        if not query_mask[i]:
            continue
        best = None
        for j in range(document.shape[0]):
            if not document_mask[j]:
                continue
            if similarity == "cosine":
                value = float(query[i] @ document[j])
            else:
                value = -float(((query[i] - document[j]) ** 2).sum())
            best = value if best is None else max(best, value)
        total += best
    return total


def random_batch(generator, count, length, dim=8):
    embeddings = torch.nn.functional.normalize(
        torch.randn(count, length, dim, generator=generator), dim=-1
    )
    mask = torch.rand(count, length, generator=generator) > 0.3
    mask[:, 0] = True  # at least one scored token, as [CLS] always is
    return embeddings, mask


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_maxsim_matches_naive_loop(similarity):
    generator = torch.Generator().manual_seed(0)
    queries, query_mask = random_batch(generator, 3, 5)
    documents, document_mask = random_batch(generator, 4, 7)
    scores = maxsim(queries, query_mask, documents, document_mask, similarity)
    assert scores.shape == (3, 4)
    for q in range(3):
        for d in range(4):
            expected = naive_maxsim(
                queries[q], query_mask[q], documents[d], document_mask[d], similarity
            )
            assert scores[q, d].item() == pytest.approx(expected, abs=1e-5)


def test_maxsim_keeps_negative_best_match():
    # The only scored document token points away from the query token: the score is -1, not 0.
    query = torch.tensor([[[1.0, 0.0]]])
    document = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]])
    score = maxsim(query, torch.tensor([[True]]), document, torch.tensor([[True, False]]))
    assert score.item() == pytest.approx(-1.0)


def test_maxsim_ignores_masked_tokens_even_when_best():
    query = torch.tensor([[[1.0, 0.0]]])
    document = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    masked = maxsim(query, torch.tensor([[True]]), document, torch.tensor([[False, True]]))
    assert masked.item() == pytest.approx(0.6)


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_grouped_equals_pairwise_diagonal_blocks(similarity):
    generator = torch.Generator().manual_seed(1)
    queries, query_mask = random_batch(generator, 3, 5)
    documents, document_mask = random_batch(generator, 6, 7)
    grouped = maxsim_grouped(
        queries, query_mask, documents.view(3, 2, 7, -1), document_mask.view(3, 2, 7), similarity
    )
    full = maxsim(queries, query_mask, documents, document_mask, similarity)
    for b in range(3):
        assert torch.allclose(grouped[b], full[b, 2 * b : 2 * b + 2], atol=1e-5)


def test_losses_target_the_positive():
    scores = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0]])
    targets = torch.tensor([0, 2])
    expected = torch.nn.functional.cross_entropy(scores, targets)
    assert in_batch_cross_entropy(scores, nway=2).item() == pytest.approx(expected.item())
    own = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    assert nway_cross_entropy(own).item() == pytest.approx(
        torch.nn.functional.cross_entropy(own, torch.tensor([0, 0])).item()
    )
    # With documents gathered from two processes, process 1's first positive is column 4.
    gathered = torch.zeros(2, 8)
    gathered[0, 4] = gathered[1, 6] = 9.0
    assert in_batch_cross_entropy(gathered, nway=2, offset=4).item() < 1e-3
