"""Measuring generalisation: per-query metrics and run files, held-out-document subsets, the
BM25 + training-prior baseline, suites of collections, and extra collections during training."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.collections import collection_root
from colbert_lightning.config.resolvers import EVALUATE_CONFIG_DIR, register_resolvers
from colbert_lightning.data.beir import load_qrels, write_qrels
from colbert_lightning.evaluate import evaluate
from colbert_lightning.evaluation.metrics import evaluate_rankings
from colbert_lightning.evaluation.per_query import (
    PerQueryFormatError,
    mean_metrics,
    per_query_metrics,
    read_per_query,
    write_per_query,
    write_trec_run,
)
from colbert_lightning.evaluation.split import evaluate_split
from colbert_lightning.evaluation.suite import evaluate_collection
from colbert_lightning.resources import resource_path
from colbert_lightning.retrieval.bm25 import BM25Config, BM25PriorConfig, BM25Retriever
from colbert_lightning.training.run import train
from tests.helpers import REPO, TINY_OVERRIDES, compose_train, split_cranfield
from tests.reference import naive_retrieval_metrics

SHARED_DATA = REPO / ".." / "shared" / "data"


def compose_evaluate(output_dir: Path, overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(EVALUATE_CONFIG_DIR), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={output_dir}", *overrides],
        )


def read_trec_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run file read with nothing but ``split``: query -> [(doc, score)] by rank."""
    rows: dict[str, list[tuple[int, str, float]]] = {}
    for line in path.read_text().splitlines():
        query_id, q0, doc_id, rank, score, tag = line.split()
        assert q0 == "Q0" and tag
        rows.setdefault(query_id, []).append((int(rank), doc_id, float(score)))
    rankings = {}
    for query_id, ranked in rows.items():
        assert [rank for rank, _, _ in ranked] == list(range(1, len(ranked) + 1))
        rankings[query_id] = [(doc_id, score) for _, doc_id, score in ranked]
    return rankings


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# ---- per-query metrics and files -----------------------------------------------------------


def test_per_query_metrics_average_to_the_torchmetrics_figures():
    generator = random.Random(7)
    documents = [f"d{i}" for i in range(150)]
    qrels, rankings = {}, {}
    for query in range(60):
        judged = generator.sample(documents, generator.randint(1, 12))
        # graded, some judged non-relevant, one query with no relevant document
        qrels[f"q{query}"] = {d: (0 if query == 5 else generator.randint(0, 3)) for d in judged}
        if query % 9 != 3:  # a few queries without any ranking
            ranked = generator.sample(documents, generator.randint(5, 120))
            rankings[f"q{query}"] = [(d, float(-rank)) for rank, d in enumerate(ranked)]
    per_query = per_query_metrics(rankings, qrels)
    assert "q5" not in per_query and "q3" in per_query
    expected = evaluate_rankings(rankings, qrels)  # torchmetrics
    assert mean_metrics(per_query) == pytest.approx(expected, abs=1e-6)
    assert mean_metrics(per_query) == pytest.approx(
        naive_retrieval_metrics(rankings, qrels), abs=1e-9
    )


def test_per_query_tsv_round_trips_and_names_bad_lines(tmp_path):
    per_query = {"a": {"ndcg@10": 0.25, "mrr@10": 1.0, "recall@10": 0.5, "recall@100": 1.0}}
    per_query["b"] = {"ndcg@10": 1 / 3, "mrr@10": 0.0, "recall@10": 0.0, "recall@100": 0.1}
    path = write_per_query(tmp_path / "x" / "per_query.tsv", per_query, {"a": "held_out_documents"})
    assert read_per_query(path) == (per_query, {"a": "held_out_documents"})
    bad = tmp_path / "bad.tsv"
    bad.write_text("query_id\tndcg@10\na\t0.5\nb\tlots\n")
    with pytest.raises(PerQueryFormatError, match=r"bad.tsv, line 3, column ndcg@10: 'lots'"):
        read_per_query(bad)
    bad.write_text("query_id\tndcg@10\na\t0.5\na\t0.7\n")
    with pytest.raises(PerQueryFormatError, match=r"line 3: query 'a' again"):
        read_per_query(bad)
    bad.write_text("qid\tndcg@10\n")
    with pytest.raises(PerQueryFormatError, match="line 1: the header must start with query_id"):
        read_per_query(bad)


def test_trec_run_files_hold_every_ranking_in_order(tmp_path):
    rankings = {"1": [("d2", 3.5), ("d1", -0.25)], "7": [("d9", 1.0)]}
    path = write_trec_run(tmp_path / "run.trec", rankings, tag="mine")
    assert path.read_text().splitlines()[0] == "1 Q0 d2 1 3.500000 mine"
    assert read_trec_run(path) == rankings
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(tmp_path / "bad.trec", {"1": [("a b", 1.0)]})
    with pytest.raises(ValueError, match="one word"):
        write_trec_run(tmp_path / "bad.trec", rankings, tag="two words")


# ---- held-out-document subsets and the BM25 + prior baseline -------------------------------


def small_collection(folder: Path) -> Path:
    """Six documents; training judges d1 and d2 relevant; four test queries."""
    (folder / "qrels").mkdir(parents=True)
    texts = {
        "d1": "wing lift at high speed",
        "d2": "boundary layer transition on a flat plate",
        "d3": "heat transfer in hypersonic flow",
        "d4": "lift of a slender wing",
        "d5": "buckling of thin cylindrical shells",
        "d6": "shell vibration and buckling loads",
    }
    with (folder / "corpus.jsonl").open("w") as handle:
        for doc_id, text in texts.items():
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    queries = {
        "t1": "wing lift",
        "t2": "hypersonic heat transfer",
        "t3": "buckling of shells",
        "t4": "boundary layer on a plate",
        "r1": "training query one",
        "r2": "training query two",
    }
    with (folder / "queries.jsonl").open("w") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    write_qrels(folder / "qrels" / "train.tsv", {"r1": {"d1": 1, "d5": 0}, "r2": {"d2": 1}})
    test = {
        "t1": {"d1": 1, "d4": 1},  # one of its documents relevant in training: seen
        "t2": {"d3": 1, "d1": 0},  # held out: d1, relevant in training, is not relevant to t2
        "t3": {"d5": 1, "d6": 1},  # d5 was judged in training, but not relevant: held out
        "t4": {"d2": 1},  # seen
    }
    write_qrels(folder / "qrels" / "test.tsv", test)
    return folder


def test_subsets_split_test_queries_by_documents_relevant_in_training(tmp_path):
    root = small_collection(tmp_path / "c")
    result = evaluate_collection(BM25Config(), root, "test", tmp_path / "out")["model"]
    subsets = result["subsets"]
    assert subsets["held_out_documents"]["queries"] == 2  # t2, t3
    assert subsets["seen_documents"]["queries"] == 2  # t1, t4
    rows = read_tsv(tmp_path / "out" / "per_query_test.tsv")
    assert {row["query_id"]: row["subset"] for row in rows} == {
        "t1": "seen_documents",
        "t2": "held_out_documents",
        "t3": "held_out_documents",
        "t4": "seen_documents",
    }
    # each subset's figures: the textbook formulas over the run file, on its queries only
    run = read_trec_run(tmp_path / "out" / "run_test.trec")
    qrels = load_qrels(root / "qrels" / "test.tsv")
    for subset, members in (("held_out_documents", ["t2", "t3"]), ("seen_documents", ["t1", "t4"])):
        expected = naive_retrieval_metrics(run, {q: qrels[q] for q in members})
        assert subsets[subset]["metrics"] == pytest.approx(expected, abs=1e-9)
    assert result["metrics"] == pytest.approx(naive_retrieval_metrics(run, qrels), abs=1e-9)


def test_bm25_prior_adds_the_training_bonus_to_relative_bm25_scores(tmp_path):
    root = small_collection(tmp_path / "c")
    prior = BM25PriorConfig(weight=0.5)
    result = evaluate_collection(prior, root, "test", tmp_path / "out")["model"]
    assert result["model"] == "bm25_prior"
    run = read_trec_run(tmp_path / "out" / "run_test.trec")
    ids = ["d1", "d2", "d3", "d4", "d5", "d6"]
    texts = [line["text"] for line in map(json.loads, (root / "corpus.jsonl").open())]
    bm25 = BM25Retriever(ids, texts, show_progress=False)
    queries = {
        line["_id"]: line["text"] for line in map(json.loads, (root / "queries.jsonl").open())
    }
    for query_id in ("t1", "t2", "t3", "t4"):
        raw = bm25.score_all(queries[query_id])
        expected = {
            d: raw[i] / raw.max() + (0.5 if d in ("d1", "d2") else 0.0) for i, d in enumerate(ids)
        }
        for doc_id, score in run[query_id]:
            assert score == pytest.approx(expected[doc_id], abs=1e-5)
        assert [d for d, _ in run[query_id]] == sorted(ids, key=lambda d: -expected[d])
    # t2 (heat transfer) is held out: the prior pushes d1 and d2 above documents that match it
    assert [d for d, _ in run["t2"][:3]] == ["d3", "d1", "d2"]
    with pytest.raises(ConfigError, match="bm25_prior needs the training judgments"):
        evaluate_split(prior, resource_path("cranfield"), "test")


def test_bm25_beside_a_model_ranks_the_very_same_queries(tmp_path, tiny_model):
    """A model that left out queries seen in training: BM25 beside it leaves out the same."""
    root = split_cranfield(tmp_path / "cranfield", test_queries=40)
    model = tiny_model
    # a checkpoint's recorded queries are what evaluate leaves out; here we ask for a subset
    some = sorted(load_qrels(root / "qrels" / "test.tsv"), key=int)[:25]
    result = evaluate_split(model, root, "test", seen_documents=set(), query_ids=some)
    assert sorted(result["per_query"]) == sorted(some)
    written = evaluate_collection(model, root, "test", tmp_path / "out", bm25=BM25Config())
    model_rows = read_tsv(tmp_path / "out" / "per_query_test.tsv")
    bm25_rows = read_tsv(tmp_path / "out" / "per_query_test_bm25.tsv")
    assert [r["query_id"] for r in model_rows] == [r["query_id"] for r in bm25_rows]
    assert len(model_rows) == written["model"]["queries"] == written["bm25"]["queries"] == 40
    assert written["training_qrels"] == str(root / "qrels" / "train.tsv")


# ---- suites ----------------------------------------------------------------------------------


def test_suite_evaluates_every_collection_and_the_mean(tmp_path):
    small = small_collection(tmp_path / "small")
    overrides = ["model=bm25", "suite=classic", f"suite.collections=[{small},cranfield]"]
    written = evaluate(compose_evaluate(tmp_path / "out", overrides))
    collections = written["collections"]
    assert list(collections) == ["small", "cranfield"]
    cranfield = collections["cranfield"]["model"]
    # shared/data/README.md: BM25 on Cranfield, nDCG@10 0.324, R@100 0.691
    assert cranfield["metrics"]["ndcg@10"] == pytest.approx(0.324, abs=0.01)
    assert "subsets" not in cranfield  # Cranfield has no training judgments
    assert collections["small"]["model"]["subsets"]["held_out_documents"]["queries"] == 2
    for metric in ("ndcg@10", "recall@100"):
        values = [c["model"]["metrics"][metric] for c in collections.values()]
        assert written["mean"]["model"][metric] == pytest.approx(sum(values) / 2)
    output = tmp_path / "out" / "suite_classic.json"
    assert json.loads(output.read_text()) == written
    table = output.with_suffix(".md").read_text()
    assert "| mean of 2 collections |" in table
    assert "held out of training | 2 |" in table
    assert (tmp_path / "out" / "cranfield" / "per_query_test.tsv").is_file()
    assert (tmp_path / "out" / "cranfield" / "run_test.trec").is_file()


def test_collections_are_data_configs_or_folders(tmp_path):
    paths = OmegaConf.create({"root_dir": str(REPO)})
    assert collection_root("cranfield", paths) == resource_path("cranfield")
    assert collection_root("med", paths) == f"{REPO}/../shared/data/med"
    assert collection_root(str(tmp_path), paths) == str(tmp_path)
    with pytest.raises(ConfigError, match=r"'nonesuch' is neither a data config \(one of \["):
        collection_root("nonesuch", paths)


@pytest.mark.skipif(not (SHARED_DATA / "med").is_dir(), reason="needs ../shared/data")
def test_the_classic_collections_are_there_with_bm25_as_recorded(tmp_path):
    written = evaluate(compose_evaluate(tmp_path, ["model=bm25", "suite=classic"]))
    ndcg = {name: c["model"]["metrics"]["ndcg@10"] for name, c in written["collections"].items()}
    # shared/data/README.md: the project's BM25 gives med 0.664, cacm 0.413, lisa 0.411
    assert ndcg["med"] == pytest.approx(0.664, abs=0.001)
    assert ndcg["cacm"] == pytest.approx(0.413, abs=0.001)
    assert ndcg["lisa"] == pytest.approx(0.411, abs=0.001)
    scifact = written["collections"]["scifact"]["model"]["subsets"]
    # shared/data/README.md: 104 SciFact test queries have no training-relevant document
    assert scifact["held_out_documents"]["queries"] == 104
    assert scifact["seen_documents"]["queries"] == 196
    assert scifact["held_out_documents"]["metrics"]["ndcg@10"] == pytest.approx(0.676, abs=0.001)


# ---- during training ------------------------------------------------------------------------


def test_training_follows_extra_collections_and_reports_subsets(tmp_path):
    root = split_cranfield(tmp_path / "cranfield")
    extra = tmp_path / "extra"  # another collection: Cranfield's last 50 queries only
    split_cranfield(extra)
    overrides = [
        *TINY_OVERRIDES,
        f"data.root={root}",
        "data.prepare.split=train",
        "data.prepare.dev_queries=25",
        "trainer.max_steps=4",
        "data.num_workers=0",
        "data.batch_size=4",
        "callbacks.evaluation.schedule.first=2",
        "callbacks.evaluation.precision='32'",
        f"callbacks.evaluation.extra=[{extra}]",
        "test_split=test",
    ]
    results = train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
    key = "val_extra/ndcg@10"
    steps = [row["step"] for row in results["step0"] and [results["step0"]]]
    assert steps == [0] and key in results["step0"] and key in results["best"]
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/ndcg@10")]
    assert [int(row["step"]) for row in rows] == [0, 2, 4]
    assert all(row[key] for row in rows)
    # the logged figure at the best step is what the best checkpoint scores on that collection
    best = results["best"]
    alone = evaluate_split(results["best_checkpoint"], str(extra), "test")
    assert best[key] == pytest.approx(alone["metrics"]["ndcg@10"], abs=1e-6)
    # the test split: subsets by the training and dev judgments, per-query files, BM25 + prior
    test = results["test"]
    subsets = test["subsets"]
    assert subsets["held_out_documents"]["queries"] + subsets["seen_documents"]["queries"] == 50
    per_query, query_subsets = read_per_query(tmp_path / "run" / test["per_query_file"])
    assert len(per_query) == 50 and len(query_subsets) == 50
    assert mean_metrics(per_query) == pytest.approx(test["metrics"], abs=1e-6)
    for name in ("test_bm25", "test_bm25_prior", "test_step0"):
        assert (tmp_path / "run" / results[name]["per_query_file"]).is_file()
        assert (tmp_path / "run" / results[name]["run_file"]).is_file()
    assert results["test_bm25_prior"]["model"] == "bm25_prior"
    # on a split holding the training queries too, the checkpoint leaves those out (it records
    # them), and BM25 beside it leaves out the very same ones
    write_qrels(
        root / "qrels" / "all.tsv", load_qrels(resource_path("cranfield") + "/qrels/test.tsv")
    )
    both = evaluate_collection(
        results["best_checkpoint"], root, "all", tmp_path / "all", bm25=BM25Config()
    )
    assert both["model"]["queries"] == both["bm25"]["queries"] == 50
    assert both["model"]["excluded_queries"] == both["bm25"]["excluded_queries"] == 175
    model_ids = [row["query_id"] for row in read_tsv(tmp_path / "all" / "per_query_all.tsv")]
    bm25_ids = [row["query_id"] for row in read_tsv(tmp_path / "all" / "per_query_all_bm25.tsv")]
    assert model_ids == bm25_ids


def test_an_unknown_extra_collection_fails_before_training(tmp_path):
    overrides = [*TINY_OVERRIDES, "callbacks.evaluation.extra=[nonesuch]"]
    with pytest.raises(ConfigError, match="'nonesuch' is neither a data config"):
        train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
    empty = tmp_path / "empty"
    empty.mkdir()
    overrides = [*TINY_OVERRIDES, f"callbacks.evaluation.extra=[{empty}]"]
    with pytest.raises(ConfigError, match=r"callbacks.evaluation.extra \(empty\): .*corpus"):
        train(compose_train(tmp_path / "run", tmp_path / "cache", overrides))
