"""Metrics on a BEIR split: of a model or BM25 (``evaluate_split``), of an index (``search_split``).

A checkpoint, a model in memory and BM25 all go through exact search over the whole corpus and
the same query selection and metric code.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from colbert_lightning.config.checks import ConfigError, check_beir_root
from colbert_lightning.data import SeenQueries
from colbert_lightning.data.beir import (
    find_beir_file,
    load_corpus,
    load_qrels,
    load_queries,
    qrels_path,
)
from colbert_lightning.evaluation.metrics import evaluate_rankings
from colbert_lightning.modeling import ColBERT, default_device
from colbert_lightning.modeling.checkpoints import read_checkpoint
from colbert_lightning.retrieval.bm25 import BM25Config, BM25Retriever
from colbert_lightning.retrieval.exact import exact_rankings
from colbert_lightning.retrieval.ivf import Retriever

log = logging.getLogger(__name__)
METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def evaluate_split(
    model: str | ColBERT | BM25Config,
    root: str | None,
    split: str,
    k: int = 100,
    batch_size: int = 64,
    device: str | None = None,
    seen: SeenQueries | None = None,
) -> dict[str, Any]:
    """Metrics of a checkpoint (its path), a model in memory or BM25 on a BEIR split's qrels.

    All go through the same corpus loading, query selection and metric code. A model in memory is
    evaluated on its own device and left in the train/eval mode it came in.

    Queries the model was trained on or chosen with (same normalised text) are left out and
    counted: ``seen``, or what a training checkpoint recorded. An exported folder records
    nothing: its result says the overlap is unknown.

    Raises:
        ConfigError: no such folder, or every query of the split was seen in training or dev.
        CheckpointError: a checkpoint file that is damaged, truncated or not a checkpoint.
        ValueError: no document of the corpus has text the model (or BM25) can use.
    """
    check_beir_root(root)
    corpus = load_corpus(find_beir_file(root, "corpus"))
    all_queries = load_queries(find_beir_file(root, "queries"))
    qrels = load_qrels(qrels_path(root, split), set(all_queries), set(corpus.ids))
    checkpoint = None  # a training checkpoint's contents, read once for its queries and weights
    if isinstance(model, str) and Path(model).is_file():
        checkpoint = read_checkpoint(model, weights_only=False)
        if seen is None:
            seen = SeenQueries.of_checkpoint(checkpoint)
    overlap_known = seen is not None or isinstance(model, BM25Config)
    held_out = [q for q in qrels if seen is None or all_queries[q] not in seen]
    if not held_out:
        raise ConfigError(
            f"all {len(qrels)} queries of split {split!r} under {root} were trained on or "
            "chose the checkpoint (same text as a training or dev query): none is left to "
            "test on. Evaluate on a split that training did not draw from (the dev figures "
            "are in results.json)"
        )
    if not overlap_known:
        log.warning(
            "%s records no training queries: the %d %s queries may overlap training",
            model if isinstance(model, str) else "the model",
            len(qrels),
            split,
        )
    excluded = len(qrels) - len(held_out)
    if excluded:
        log.warning(
            "left out %d of the %d %s queries: seen in training or dev", excluded, len(qrels), split
        )
    qrels = {query_id: qrels[query_id] for query_id in held_out}
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    if isinstance(model, BM25Config):
        rankings = BM25Retriever(corpus.ids, corpus.texts, k1=model.k1, b=model.b).search(
            queries, k=k
        )
    else:
        if isinstance(model, ColBERT):
            colbert, was_training = model, model.training
        else:
            if checkpoint is not None:
                colbert = ColBERT.from_checkpoint_contents(checkpoint, model)
            else:  # a colbert-ai / PyLate / exported folder
                colbert = ColBERT.load(model)
            colbert, was_training = colbert.to(default_device(device)), False
        corpus.require_text(colbert.tokenizer.is_empty)
        colbert.eval()
        with torch.inference_mode():
            rankings = exact_rankings(
                colbert, corpus.ids, corpus.texts, queries, k=k, batch_size=batch_size
            )
        colbert.train(was_training)
    return {
        "model": "bm25" if isinstance(model, BM25Config) else "colbert",
        "checkpoint": model if isinstance(model, str) else None,
        "root": str(root),
        "split": split,
        "queries": len(queries),
        # queries of the split left out as seen in training or dev; None: unknown
        "excluded_queries": excluded if overlap_known else None,
        "documents": len(corpus),
        "metrics": evaluate_rankings(rankings, qrels),
    }


def search_split(
    retriever: Retriever, root: str | None, split: str, k: int = 100
) -> dict[str, Any]:
    """An index's rankings and metrics for every judged query of a BEIR split, and its speed.

    Args:
        retriever: the index to search (its documents are the corpus).
        root: the BEIR folder holding ``queries`` and ``qrels/<split>.tsv``.
        split: the qrels split.
        k: documents ranked per query (100 or more for recall@100).

    Returns:
        ``split``, ``queries``, ``queries_per_second``, ``metrics`` and ``rankings``.

    Raises:
        ConfigError: ``root`` is not a folder.
    """
    check_beir_root(root)
    all_queries = load_queries(find_beir_file(root, "queries"))
    qrels = load_qrels(qrels_path(root, split), set(all_queries), set(retriever.doc_ids))
    query_ids = list(qrels)
    started = time.perf_counter()
    results = retriever.search_batch(
        [all_queries[query_id] for query_id in query_ids], k=k, show_progress=True
    )
    seconds = time.perf_counter() - started
    rankings = {
        query_id: [(hit.doc_id, hit.score) for hit in hits]
        for query_id, hits in zip(query_ids, results, strict=True)
    }
    return {
        "split": split,
        "queries": len(query_ids),
        "queries_per_second": len(query_ids) / seconds,
        "metrics": evaluate_rankings(rankings, qrels),
        "rankings": rankings,
    }


def one_line_table(result: dict[str, Any]) -> str:
    """A markdown header and one row: model, split, queries and the four metrics.

    The queries cell says how many were left out as seen in training or dev, or that the
    overlap is unknown.
    """
    header = "| model | split | queries | " + " | ".join(METRICS) + " |"
    cells = " | ".join(f"{result['metrics'][name]:.4f}" for name in METRICS)
    excluded = result.get("excluded_queries")
    queries = f"{result['queries']}"
    if excluded is None:
        queries += " (overlap with training unknown)"
    elif excluded:
        queries += f" ({excluded} seen in training/dev left out)"
    row = f"| {result['model']} | {result['split']} | {queries} | {cells} |"
    return f"{header}\n{row}"
