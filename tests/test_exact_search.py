"""Exact search and rerank against brute-force MaxSim, with a fake table-lookup encoder."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from colbert_lightning.modeling import ColBERTConfig
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, TokenizedText, load_tokenizer
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.exact import exact_search, rerank
from colbert_lightning.scoring import maxsim

CORPUS = [
    "the wing in a propeller slipstream",
    "boundary layer transition on a flat plate at high speed",
    "",
    "heat transfer to a hypersonic blunt body",
    "shock waves",
    "aeroelastic models of heated aircraft structures and their similarity laws",
    "buckling of thin cylindrical shells under axial compression",
    "a very long document " * 20,
    "laminar flow",
    "turbulent skin friction measurements in supersonic flow over a flat plate",
]
QUERIES = ["similarity laws for aeroelastic models", "flat plate skin friction", "shells", "wing"]


@dataclass
class FakeEmbeddings:
    embeddings: torch.Tensor
    mask: torch.Tensor


@dataclass
class FakeConfig:
    similarity: str = "cosine"


class FakeEncoder:
    """Each token id maps to a fixed random unit vector; no context, fully deterministic."""

    def __init__(self, similarity: str = "cosine") -> None:
        config = ColBERTConfig(
            tokenizer=resource_path("tokenizer/bert-base-uncased"),
            encoder_config={"model_type": "bert"},
            query_maxlen=12,
            doc_maxlen=24,
        )
        self.tokenizer = ColBERTTokenizer(load_tokenizer(config), config)
        self.config = FakeConfig(similarity)
        generator = torch.Generator().manual_seed(0)
        table = torch.randn(len(self.tokenizer.tokenizer), 8, generator=generator)
        self.table = torch.nn.functional.normalize(table, dim=-1)

    def encode_queries(self, queries: TokenizedText) -> FakeEmbeddings:
        return FakeEmbeddings(self.table[queries.input_ids], queries.scored_mask.bool())

    def encode_documents(self, documents: TokenizedText) -> FakeEmbeddings:
        return FakeEmbeddings(self.table[documents.input_ids], documents.scored_mask.bool())


def brute_force(encoder: FakeEncoder, queries: list[str], documents: list[str]) -> torch.Tensor:
    encoded_queries = encoder.encode_queries(encoder.tokenizer.queries(queries))
    encoded_documents = encoder.encode_documents(encoder.tokenizer.documents(documents))
    return maxsim(
        encoded_queries.embeddings,
        encoded_queries.mask,
        encoded_documents.embeddings,
        encoded_documents.mask,
        encoder.config.similarity,
    )  # (Q, D)


@pytest.fixture(scope="module")
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_exact_search_equals_brute_force(encoder: FakeEncoder, batch_size: int) -> None:
    expected = brute_force(encoder, QUERIES, CORPUS)
    expected_scores, expected_indices = expected.topk(5, dim=1)
    scores, indices = exact_search(
        encoder, CORPUS, QUERIES, k=5, batch_size=batch_size, show_progress=False
    )
    assert scores.shape == indices.shape == (len(QUERIES), 5)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(indices, expected_indices)
    # Scores of the returned rows are the brute-force scores of those rows.
    torch.testing.assert_close(scores, expected.gather(1, indices), rtol=1e-5, atol=1e-5)


def test_exact_search_l2_and_k_capped() -> None:
    encoder = FakeEncoder(similarity="l2")
    expected = brute_force(encoder, QUERIES, CORPUS)
    scores, indices = exact_search(
        encoder, CORPUS, QUERIES, k=100, batch_size=4, show_progress=False
    )
    assert scores.shape == (len(QUERIES), len(CORPUS))
    torch.testing.assert_close(scores, expected.sort(dim=1, descending=True).values)
    torch.testing.assert_close(scores, expected.gather(1, indices))


def test_rerank_scores_the_given_pairs(encoder: FakeEncoder) -> None:
    documents = {f"d{row}": text for row, text in enumerate(CORPUS)}
    candidates = {
        "q0": ["d5", "d0", "d2", "d7"],
        "q1": ["d9"],
        "q3": ["d1", "d0", "d9", "d3", "d4"],
    }
    queries = {f"q{row}": text for row, text in enumerate(QUERIES)}
    rankings = rerank(encoder, queries, candidates, documents, batch_size=2, show_progress=False)
    assert set(rankings) == set(candidates)
    all_scores = brute_force(encoder, QUERIES, CORPUS)
    for query_id, ranked in rankings.items():
        assert sorted(doc_id for doc_id, _ in ranked) == sorted(candidates[query_id])
        returned = [score for _, score in ranked]
        assert returned == sorted(returned, reverse=True)
        for doc_id, score in ranked:
            expected = all_scores[int(query_id[1:]), int(doc_id[1:])].item()
            assert score == pytest.approx(expected, abs=1e-5)


def test_rerank_unknown_document(encoder: FakeEncoder) -> None:
    with pytest.raises(KeyError, match="no text"):
        rerank(encoder, {"q": "wing"}, {"q": ["missing"]}, {"d": "wing"}, show_progress=False)
