import math

import pytest
import torch

from colbert_lightning.losses import in_batch_cross_entropy, nway_cross_entropy
from colbert_lightning.scoring import maxsim, maxsim_grouped
from tests.reference import naive_cross_entropy


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


# Two queries, nway 2: query 0's documents are columns 0 (positive) and 1, query 1's 2 and 3.
IN_BATCH_SCORES = [[2.0, 1.0, 0.5, -1.0], [0.3, 1.5, 0.7, 2.5]]


def test_in_batch_loss_is_minus_log_softmax_of_each_positive():
    scores = torch.tensor(IN_BATCH_SCORES, requires_grad=True)
    loss = in_batch_cross_entropy(scores, nway=2)
    # by hand, query 0: -log(e^2 / (e^2 + e^1 + e^0.5 + e^-1)) = 0.4952...
    assert naive_cross_entropy(IN_BATCH_SCORES[:1], [0]) == pytest.approx(0.495182, abs=1e-6)
    assert loss.item() == pytest.approx(naive_cross_entropy(IN_BATCH_SCORES, [0, 2]), rel=1e-6)
    # the gradient of the mean is (softmax - one-hot) / B, written out
    loss.backward()
    for row, target in enumerate([0, 2]):
        total = sum(math.exp(score) for score in IN_BATCH_SCORES[row])
        expected = [
            (math.exp(score) / total - (column == target)) / 2
            for column, score in enumerate(IN_BATCH_SCORES[row])
        ]
        assert scores.grad[row].tolist() == pytest.approx(expected, abs=1e-6)


def test_in_batch_loss_with_gathered_documents_temperature_and_mask():
    # gathered from two processes: this process' positives are columns 4 and 6 (offset 4)
    gathered = [
        [0.1, 0.9, -0.2, 0.4, 1.2, 0.3, 0.8, -0.5],
        [0.6, -0.1, 0.2, 1.1, 0.0, 0.7, 1.4, 0.2],
    ]
    loss = in_batch_cross_entropy(torch.tensor(gathered), nway=2, offset=4)
    assert loss.item() == pytest.approx(naive_cross_entropy(gathered, [4, 6]), rel=1e-6)
    halved = [[score / 0.5 for score in row] for row in IN_BATCH_SCORES]
    loss = in_batch_cross_entropy(torch.tensor(IN_BATCH_SCORES), nway=2, temperature=0.5)
    assert loss.item() == pytest.approx(naive_cross_entropy(halved, [0, 2]), rel=1e-6)
    # a masked (false negative) document leaves the denominator
    mask = torch.tensor([[False, False, True, False], [False, False, False, False]])
    loss = in_batch_cross_entropy(torch.tensor(IN_BATCH_SCORES), nway=2, mask=mask)
    without = [[2.0, 1.0, float("-inf"), -1.0], IN_BATCH_SCORES[1]]
    assert loss.item() == pytest.approx(naive_cross_entropy(without, [0, 2]), rel=1e-6)


def test_nway_loss_is_minus_log_softmax_of_column_zero():
    own = [[2.0, 1.0, -0.5], [0.2, 1.7, 0.4]]
    # by hand, query 1: -log(e^0.2 / (e^0.2 + e^1.7 + e^0.4)) = 1.9026...
    assert naive_cross_entropy(own[1:], [0]) == pytest.approx(1.902569, abs=1e-6)
    loss = nway_cross_entropy(torch.tensor(own))
    assert loss.item() == pytest.approx(naive_cross_entropy(own, [0, 0]), rel=1e-6)
    halved = [[score / 0.5 for score in row] for row in own]
    loss = nway_cross_entropy(torch.tensor(own), temperature=0.5)
    assert loss.item() == pytest.approx(naive_cross_entropy(halved, [0, 0]), rel=1e-6)
