"""Test splits score only queries that were neither trained on nor used to choose the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.data import SeenQueries
from colbert_lightning.data.beir import (
    load_corpus,
    load_qrels,
    load_queries,
    normalized_text,
    text_key,
)
from colbert_lightning.evaluation.metrics import evaluate_rankings
from colbert_lightning.evaluation.split import evaluate_split, one_line_table
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.bm25 import BM25Config, BM25Retriever
from colbert_lightning.training.run import train
from tests.helpers import TINY_OVERRIDES, compose_train

CRANFIELD = Path(resource_path("cranfield"))
SCIFACT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"
QUICK = [
    *TINY_OVERRIDES,
    "data.num_workers=0",
    "data.batch_size=4",
    "logger=none",
    "trainer.max_steps=1",
    "callbacks.evaluation.schedule.at_start=false",
    "callbacks.evaluation.schedule.first=100",
]


def _keys(texts) -> frozenset[int]:
    return frozenset(text_key(normalized_text(text)) for text in texts)


def test_cranfield_checkpoint_refuses_its_own_training_split(tmp_path):
    # the default prepare draws train and dev queries from qrels/test: nothing is held out
    cfg = compose_train(tmp_path / "run", tmp_path / "cache", QUICK)
    train(cfg)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="all 225 queries of split 'test'"):
        evaluate_split(str(checkpoint), str(CRANFIELD), "test")
    with pytest.raises(ConfigError, match="none is left to test on"):
        train(compose_train(tmp_path / "run2", tmp_path / "cache", [*QUICK, "test_split=test"]))


def test_seen_queries_are_left_out_and_counted(tmp_path):
    queries = load_queries(CRANFIELD / "queries.jsonl.gz")
    qrels = load_qrels(CRANFIELD / "qrels" / "test.tsv")
    trained = sorted(qrels)[:150]
    seen = SeenQueries(_keys(queries[q].upper() + "  ?" for q in trained), frozenset())
    result = evaluate_split(BM25Config(), str(CRANFIELD), "test", seen=seen)
    assert result["queries"] == len(qrels) - 150
    assert result["excluded_queries"] == 150
    assert "(150 seen in training/dev left out)" in one_line_table(result)
    # independently: BM25 on the other queries alone
    rest = {q: qrels[q] for q in qrels if q not in trained}
    corpus = load_corpus(CRANFIELD / "corpus.jsonl.gz")
    rankings = BM25Retriever(corpus.ids, corpus.texts).search({q: queries[q] for q in rest}, k=100)
    assert result["metrics"] == pytest.approx(evaluate_rankings(rankings, rest), abs=1e-9)


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact")
def test_scifact_test_queries_that_repeat_training_queries_are_found():
    queries = load_queries(SCIFACT / "queries.jsonl")
    train_ids = load_qrels(SCIFACT / "qrels" / "train.tsv")
    seen = SeenQueries(_keys(queries[q] for q in train_ids), frozenset())
    repeated = [q for q in load_qrels(SCIFACT / "qrels" / "test.tsv") if queries[q] in seen]
    assert sorted(repeated) == ["1292", "870"]  # word for word train queries 1291 and 871
