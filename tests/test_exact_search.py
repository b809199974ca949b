"""Exact search and rerank against brute-force MaxSim, with a fake table-lookup encoder."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from colbert_lightning.evaluation.precision import native_bf16, search_autocast
from colbert_lightning.modeling import ColBERTConfig
from colbert_lightning.modeling.tokenization import ColBERTTokenizer, TokenizedText, load_tokenizer
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.encode import tokenize_by_length
from colbert_lightning.retrieval.exact import exact_search, rerank
from colbert_lightning.scoring import maxsim
from tests.reference import naive_ranking, naive_retrieval_metrics

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


def test_exact_search_takes_the_corpus_tokenised_once(encoder: FakeEncoder) -> None:
    expected = exact_search(encoder, CORPUS, QUERIES, k=5, batch_size=3, show_progress=False)
    tokens = tokenize_by_length(encoder.tokenizer, CORPUS, 3)
    assert sorted(row for rows, _ in tokens for row in rows) == list(range(len(CORPUS)))
    for _ in range(2):  # the same tokens serve every search
        scores, indices = exact_search(
            encoder, CORPUS, QUERIES, k=5, batch_size=3, show_progress=False, corpus_tokens=tokens
        )
        assert torch.equal(scores, expected[0])
        assert torch.equal(indices, expected[1])
    with pytest.raises(ValueError, match="corpus_tokens"):
        exact_search(encoder, CORPUS[:-1], QUERIES, k=5, batch_size=3, corpus_tokens=tokens)


def test_search_autocast_precisions(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    with search_autocast(cpu, 32):
        assert not torch.is_autocast_enabled("cpu")
    with search_autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not native_bf16(cpu)
    with search_autocast(cpu, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    with search_autocast(cpu, "auto"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="32, bf16 or auto"):
        search_autocast(cpu, "16-mixed")


def test_bf16_scores_are_summed_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(3, 32, 16, generator=generator), dim=-1)
    documents = torch.nn.functional.normalize(torch.randn(5, 40, 16, generator=generator), dim=-1)
    query_mask, document_mask = torch.ones(3, 32, dtype=torch.bool), torch.ones(5, 40).bool()
    exact = maxsim(queries, query_mask, documents, document_mask)
    half = maxsim(queries.bfloat16(), query_mask, documents.bfloat16(), document_mask)
    assert half.dtype == torch.float32
    # bf16 similarities (8-bit mantissa), float32 sum: within 32 x 2^-8 of the float32 score;
    # a bf16 sum of scores near 10-20 would be off by up to 2^-4 per addition
    assert (half - exact).abs().max() < 32 * 2**-8
    # the only difference is the inputs' rounding: the same scores from bf16-rounded inputs
    rounded = maxsim(
        queries.bfloat16().float(), query_mask, documents.bfloat16().float(), document_mask
    )
    torch.testing.assert_close(half, rounded, rtol=0, atol=32 * 2**-9)


def test_dev_evaluation_tokenises_the_corpus_once(tiny_model, monkeypatch) -> None:
    from colbert_lightning.data.beir import DevSet
    from colbert_lightning.training import ColBERTModule
    from colbert_lightning.training import module as module_code

    module = ColBERTModule(tiny_model, optimizer=torch.optim.AdamW, scheduler=None)
    dev_set = DevSet(
        corpus_ids=[f"d{row}" for row in range(len(CORPUS))],
        corpus_texts=list(CORPUS),
        queries={f"q{row}": text for row, text in enumerate(QUERIES)},
        qrels={"q0": {"d5": 1}, "q1": {"d9": 2, "d1": 1}, "q2": {"d6": 1}, "q3": {"d0": 1}},
    )
    tokenized = []
    documents = tiny_model.tokenizer.documents
    monkeypatch.setattr(
        tiny_model.tokenizer,
        "documents",
        lambda texts: tokenized.append(len(texts)) or documents(texts),
    )
    first = module.evaluate_retrieval(dev_set, batch_size=4)
    assert sum(tokenized) == len(CORPUS)
    assert module.evaluate_retrieval(dev_set, batch_size=4) == first
    assert sum(tokenized) == len(CORPUS)  # the second evaluation reused the tokens
    module.evaluate_retrieval(dev_set, batch_size=3)  # another batching: tokenised again
    assert sum(tokenized) == 2 * len(CORPUS)
    # float32: the figures of a plain sort of every document's MaxSim, by the textbook formulas
    scores = tiny_model.score_texts(QUERIES, CORPUS)  # (4, 10)
    plain = {
        query_id: naive_ranking(scores[row].tolist(), dev_set.corpus_ids)
        for row, query_id in enumerate(dev_set.queries)
    }
    assert first == pytest.approx(naive_retrieval_metrics(plain, dev_set.qrels), abs=1e-6)
    # bf16 may swap near-ties, so its own ranking is checked: the textbook figures of it, every
    # document once, best first, each score the bf16 MaxSim of its document
    rankings = []
    real_exact_rankings = module_code.exact_rankings
    monkeypatch.setattr(
        module_code,
        "exact_rankings",
        lambda *args, **kwargs: (
            rankings.append(real_exact_rankings(*args, **kwargs)) or rankings[-1]
        ),
    )
    bf16 = module.evaluate_retrieval(dev_set, batch_size=3, precision="bf16")
    assert bf16 == pytest.approx(naive_retrieval_metrics(rankings[-1], dev_set.qrels), abs=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_scores = tiny_model.score_texts(QUERIES, CORPUS).float()
    for row, query_id in enumerate(dev_set.queries):
        ranking = rankings[-1][query_id]
        assert sorted(doc_id for doc_id, _ in ranking) == sorted(dev_set.corpus_ids)
        ranked_scores = [score for _, score in ranking]
        assert ranked_scores == sorted(ranked_scores, reverse=True)
        expected = [bf16_scores[row, int(doc_id[1:])].item() for doc_id, _ in ranking]
        assert ranked_scores == pytest.approx(expected, abs=2**-4)  # 16 query tokens x 2^-8


def test_exact_search_and_rerank_run_a_training_model_without_dropout() -> None:
    from colbert_lightning.modeling import ColBERT
    from colbert_lightning.retrieval.exact import exact_rankings, rerank
    from tests.conftest import TINY_ENCODER, tiny_config

    encoder = {**TINY_ENCODER, "hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3}
    torch.manual_seed(0)
    model = ColBERT.from_config(tiny_config(encoder_config=encoder)).train()
    ids = [f"d{i}" for i in range(6)]
    texts = ["lift on wings", "shock waves", "heat flux", "boundary layer", "drag", "flutter"]
    queries = {"q1": "wing lift", "q2": "heat transfer at walls"}
    first = exact_rankings(model, ids, texts, queries, k=6, show_progress=False)
    second = exact_rankings(model, ids, texts, queries, k=6, show_progress=False)
    assert model.training  # handed back in the mode it came in
    model.eval()
    with torch.no_grad():
        expected = {
            query_id: model.score_texts([text], texts)[0].tolist()
            for query_id, text in queries.items()
        }
    assert first == second
    for query_id, ranking in first.items():
        for doc_id, score in ranking:
            assert score == pytest.approx(expected[query_id][ids.index(doc_id)], abs=1e-4)
    model.train()
    candidates = {query_id: ids for query_id in queries}
    documents = dict(zip(ids, texts, strict=True))
    reranked = rerank(model, queries, candidates, documents, show_progress=False)
    assert reranked == rerank(model, queries, candidates, documents, show_progress=False)
    assert model.training
