"""`evaluate`: one code path for a trained checkpoint and for BM25 on a BEIR split."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.resolvers import EVALUATE_CONFIG_DIR, register_resolvers
from colbert_lightning.data.beir import find_beir_file, load_corpus, load_qrels, load_queries
from colbert_lightning.evaluate import evaluate
from colbert_lightning.modeling import ColBERT
from colbert_lightning.training.run import train
from tests.helpers import REPO, TINY_OVERRIDES, compose_train, split_cranfield
from tests.reference import naive_ranking, naive_retrieval_metrics


def compose_evaluate(tmp_path, overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(EVALUATE_CONFIG_DIR), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}", *overrides],
        )


def only_model(result):
    """The model's figures of a single-collection evaluate result."""
    (collection,) = result["collections"].values()
    return collection["model"]


def test_bm25_on_cranfield_matches_the_reference_figures(tmp_path):
    written = evaluate(compose_evaluate(tmp_path, ["model=bm25", "split=test"]))
    result = only_model(written)
    assert result["queries"] == 225 and result["documents"] == 1400
    # shared/data/README.md: BM25 (k1=0.9, b=0.4) nDCG@10 0.324, R@100 0.691 on Cranfield
    assert result["metrics"]["ndcg@10"] == pytest.approx(0.324, abs=0.01)
    assert result["metrics"]["recall@100"] == pytest.approx(0.691, abs=0.01)
    assert json.loads((tmp_path / "metrics_test.json").read_text()) == written


def test_trained_checkpoint_is_evaluated_with_exact_search(tmp_path):
    overrides = [
        *TINY_OVERRIDES,
        *_held_out(tmp_path),
        "trainer.max_steps=3",
        "data.num_workers=0",
        "data.batch_size=4",
    ]
    train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    root = f"data.root={tmp_path / 'cranfield'}"
    written = evaluate(compose_evaluate(tmp_path / "eval", [f"checkpoint={checkpoint}", root]))
    result = only_model(written)
    assert result["model"] == "colbert" and result["queries"] == 50
    assert set(result["metrics"]) == {"mrr@10", "recall@10", "recall@100", "ndcg@10"}
    # the same figures from a brute-force ranking and the textbook formulas
    rankings, qrels = _brute_force_rankings(ColBERT.load(checkpoint), tmp_path / "cranfield")
    assert len(qrels) == 50
    assert result["metrics"] == pytest.approx(naive_retrieval_metrics(rankings, qrels), abs=1e-6)


def _brute_force_rankings(model, root):
    """Every test query's top 100 by MaxSim written out, each document on its own; and qrels.

    ``score(q, d) = sum over q's scored tokens of max over d's scored tokens of q_i . d_j``.
    """
    corpus = load_corpus(find_beir_file(root, "corpus"))
    queries = load_queries(find_beir_file(root, "queries"))
    qrels = load_qrels(root / "qrels" / "test.tsv")
    with torch.inference_mode():
        encoded_queries = model.encode_queries(model.tokenizer.queries([queries[q] for q in qrels]))
        documents = model.encode_documents(model.tokenizer.documents(corpus.texts))
    rankings = {}
    for query_id, embeddings, mask in zip(
        qrels, encoded_queries.embeddings, encoded_queries.mask, strict=True
    ):
        query_tokens = embeddings[mask]  # (scored query tokens, dim)
        similarities = documents.embeddings @ query_tokens.T  # (D, Ld, scored query tokens)
        similarities[~documents.mask] = float("-inf")  # unscored document tokens never match
        scores = similarities.max(dim=1).values.sum(dim=1)  # (D,)
        rankings[query_id] = naive_ranking(scores.tolist(), corpus.ids)[:100]
    return rankings, qrels


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["checkpoint=/nonexistent.ckpt"], "evaluating a ColBERT needs its .ckpt"),
        (["model=tiny"], "evaluate takes model=bm25, model=bm25_prior or none"),
        (["model=bm25", "data.root=/nonexistent"], "no such BEIR folder"),
    ],
)
def test_bad_evaluate_arguments_are_clear(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        evaluate(compose_evaluate(tmp_path, overrides))


def _held_out(tmp_path) -> list[str]:
    """Train and dev from qrels/train.tsv of a split Cranfield; 50 test queries held out."""
    root = split_cranfield(tmp_path / "cranfield")
    return [f"data.root={root}", "data.prepare.split=train", "data.prepare.dev_queries=25"]


def test_train_evaluates_its_best_checkpoint_on_the_test_split(tmp_path):
    overrides = [
        *TINY_OVERRIDES,
        *_held_out(tmp_path),
        "trainer.max_steps=4",
        "data.num_workers=0",
        "data.batch_size=4",
        "callbacks.evaluation.schedule.first=2",
        "test_split=test",
    ]
    results = train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
    test = results["test"]
    assert test["split"] == "test" and test["queries"] == 50 and test["excluded_queries"] == 0
    assert test["checkpoint"] == results["best_checkpoint"]
    assert results["test_bm25"]["queries"] == 50 and results["test_bm25"]["model"] == "bm25"
    # the same figures as the evaluate command on that checkpoint
    alone = evaluate(
        compose_evaluate(
            tmp_path / "eval",
            [f"checkpoint={test['checkpoint']}", f"data.root={tmp_path / 'cranfield'}"],
        )
    )
    assert test["metrics"] == only_model(alone)["metrics"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"] == test
    # and the untrained model, evaluated before the first step
    assert results["test_step0"]["checkpoint"] is None
    # the same weights exactly when step 0 was best on dev
    same_weights = results["best"]["step"] == 0
    assert (results["test_step0"]["metrics"] == test["metrics"]) == same_weights


def test_test_split_without_checkpoints_evaluates_the_final_model(tmp_path):
    overrides = [
        *TINY_OVERRIDES,
        *_held_out(tmp_path),
        "trainer.max_steps=2",
        "data.num_workers=0",
        "data.batch_size=4",
        "callbacks=none",
        "+trainer.enable_checkpointing=false",
        "test_split=test",
    ]
    results = train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert results["best_checkpoint"] is None and results["test"]["checkpoint"] is None
    assert results["test"]["queries"] == 50
    assert results["test"]["metrics"] != results["test_step0"]["metrics"]


def test_test_split_without_qrels_fails_before_training(tmp_path):
    overrides = [*TINY_OVERRIDES, "test_split=validation"]
    with pytest.raises(ConfigError, match="test_split=validation: .*validation"):
        train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
