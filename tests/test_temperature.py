"""``similarity=l2`` on unit vectors is cosine at temperature 0.5; ``module.temperature``."""

from __future__ import annotations

import math

import pytest
import torch

from colbert_lightning.data.collate import Collator
from colbert_lightning.data.types import TrainingExample
from colbert_lightning.modeling import ColBERT
from colbert_lightning.scoring import maxsim
from colbert_lightning.training import ColBERTModule
from tests.conftest import tiny_config

EXAMPLES = [
    TrainingExample("lift on wings", "wings make lift in flow", ("heat flux at walls",)),
    TrainingExample("shock waves", "a normal shock wave", ("boundary layer growth",)),
    TrainingExample("heat transfer", "heat flux at the wall", ("lift on a flat plate",)),
]


def test_l2_maxsim_is_twice_cosine_less_twice_the_scored_tokens():
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    documents = torch.nn.functional.normalize(torch.randn(3, 7, 8), dim=-1)
    query_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    doc_mask = torch.ones(3, 7, dtype=torch.bool)
    l2 = maxsim(queries, query_mask, documents, doc_mask, "l2")
    # independently: a loop over tokens with explicit distances
    for q in range(2):
        for d in range(3):
            total = 0.0
            for i in range(5):
                if query_mask[q, i]:
                    total += max(
                        -float(((queries[q, i] - documents[d, j]) ** 2).sum()) for j in range(7)
                    )
            assert l2[q, d].item() == pytest.approx(total, abs=1e-5)
    cosine = maxsim(queries, query_mask, documents, doc_mask, "cosine")
    tokens = query_mask.sum(1, keepdim=True).float()
    assert torch.allclose(l2, 2 * cosine - 2 * tokens, atol=1e-5)


def _loss(similarity: str, temperature: float) -> float:
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config(similarity=similarity)).eval()
    batch = Collator(model.tokenizer)(EXAMPLES)
    module = ColBERTModule(model, optimizer=torch.optim.AdamW, temperature=temperature)
    with torch.no_grad():
        return module.batch_loss(batch).loss.item()


def test_l2_loss_equals_cosine_loss_at_temperature_half():
    assert _loss("l2", 1.0) == pytest.approx(_loss("cosine", 0.5), abs=1e-4)
    assert _loss("l2", 1.0) != pytest.approx(_loss("cosine", 1.0), abs=1e-3)


def test_temperature_divides_the_scores():
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config()).eval()
    batch = Collator(model.tokenizer)(EXAMPLES)
    with torch.no_grad():
        queries = model.encode_queries(batch.queries)
        documents = model.encode_documents(batch.documents)
        scores = maxsim(queries.embeddings, queries.mask, documents.embeddings, documents.mask)
    temperature = 0.25
    expected = 0.0
    for row in range(3):
        logits = [value / temperature for value in scores[row].tolist()]
        top = max(logits)
        expected += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[2 * row]
    module = ColBERTModule(model, optimizer=torch.optim.AdamW, temperature=temperature)
    with torch.no_grad():
        assert module.batch_loss(batch).loss.item() == pytest.approx(expected / 3, abs=1e-4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ColBERTModule(model, optimizer=torch.optim.AdamW, temperature=0.0)
