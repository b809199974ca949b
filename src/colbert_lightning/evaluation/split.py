"""Metrics on a BEIR split: of a model or BM25 (``evaluate_split``), of an index (``search_split``).

A checkpoint, a model in memory and BM25 all go through exact search over the whole corpus and
the same query selection and metric code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch

from colbert_lightning.config.checks import ConfigError, check_beir_root
from colbert_lightning.data import SeenQueries
from colbert_lightning.data.beir import (
    Qrels,
    find_beir_file,
    load_corpus,
    load_qrels,
    load_queries,
    qrels_path,
)
from colbert_lightning.evaluation.metrics import evaluate_rankings
from colbert_lightning.evaluation.per_query import (
    HELD_OUT,
    SEEN,
    SUBSETS,
    mean_metrics,
    per_query_metrics,
    write_per_query,
    write_trec_run,
)
from colbert_lightning.modeling import ColBERT, default_device
from colbert_lightning.modeling.checkpoints import read_checkpoint
from colbert_lightning.retrieval.bm25 import BM25Config, BM25PriorConfig, BM25Retriever
from colbert_lightning.retrieval.exact import exact_rankings
from colbert_lightning.retrieval.ivf import Retriever

log = logging.getLogger(__name__)
METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


Baseline = BM25Config | BM25PriorConfig
"""The models evaluate takes besides a ColBERT: ``model=bm25`` and ``model=bm25_prior``."""


def relevant_documents(qrels_files: Sequence[str | Path]) -> frozenset[str]:
    """The ids of the documents judged relevant (grade > 0) in any of ``qrels_files``.

    Example: the documents relevant to a training query, from ``qrels/train.tsv``.
    """
    documents: set[str] = set()
    for path in qrels_files:
        for judged in load_qrels(path).values():
            documents.update(doc_id for doc_id, grade in judged.items() if grade > 0)
    return frozenset(documents)


def document_subsets(qrels: Qrels, seen_documents: Collection[str]) -> dict[str, str]:
    """Each query with a relevant document: ``held_out_documents`` or ``seen_documents``.

    A query is ``held_out_documents`` when none of its relevant documents is in
    ``seen_documents`` (relevant to a training query): only such queries measure retrieval of
    documents the model never saw called relevant.

    Example:
        >>> document_subsets({"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 0}, "q3": {"d4": 0}}, {"d1"})
        {'q1': 'seen_documents', 'q2': 'held_out_documents'}
    """
    return {
        query_id: SEEN if any(d in seen_documents for d, g in judged.items() if g > 0) else HELD_OUT
        for query_id, judged in qrels.items()
        if any(grade > 0 for grade in judged.values())
    }


def evaluate_split(
    model: str | ColBERT | Baseline,
    root: str | Path | None,
    split: str,
    k: int = 100,
    batch_size: int = 64,
    device: str | None = None,
    seen: SeenQueries | None = None,
    seen_documents: Collection[str] | None = None,
    query_ids: Collection[str] | None = None,
) -> dict[str, Any]:
    """Metrics of a checkpoint (its path), a model in memory or a BM25 baseline on a BEIR split.

    All go through the same corpus loading, query selection and metric code. A model in memory is
    evaluated on its own device and left in the train/eval mode it came in.

    Queries the model was trained on or chosen with (same normalised text) are left out and
    counted: ``seen``, or what a training checkpoint recorded. An exported folder records
    nothing: its result says the overlap is unknown.

    With ``seen_documents`` (the documents relevant to a training query), the result also holds
    the metrics of the queries none of whose relevant documents is among them
    (``held_out_documents``) and of the others (``seen_documents``), with their counts.

    ``query_ids`` restricts the evaluation to those queries of the split (another
    evaluation's ``query_ids``, to compare two models on the very same queries).

    Returns:
        ``model``, ``checkpoint``, ``root``, ``split``, ``queries``, ``excluded_queries``,
        ``documents``, ``metrics``; ``subsets`` (with ``seen_documents``); and, for
        :func:`write_evaluation` to write and drop, ``per_query`` (query id -> metrics),
        ``query_subsets``, ``rankings`` and ``query_ids`` (the queries evaluated).

    Raises:
        ConfigError: no such folder, every query of the split was seen in training or dev, or
            ``model=bm25_prior`` without ``seen_documents``.
        CheckpointError: a checkpoint file that is damaged, truncated or not a checkpoint.
        ValueError: no document of the corpus has text the model (or BM25) can use.
    """
    check_beir_root(root)
    if isinstance(model, BM25PriorConfig) and seen_documents is None:
        raise ConfigError(
            f"model=bm25_prior needs the training judgments of {root} (qrels of the split "
            "training drew from): there are none to take a prior from"
        )
    corpus = load_corpus(find_beir_file(root, "corpus"))
    all_queries = load_queries(find_beir_file(root, "queries"))
    qrels = load_qrels(qrels_path(root, split), set(all_queries), set(corpus.ids))
    checkpoint = None  # a training checkpoint's contents, read once for its queries and weights
    if isinstance(model, str) and Path(model).is_file():
        checkpoint = read_checkpoint(model, weights_only=False)
        if seen is None:
            seen = SeenQueries.of_checkpoint(checkpoint)
    baseline = isinstance(model, BM25Config | BM25PriorConfig)
    overlap_known = seen is not None or baseline
    held_out = [q for q in qrels if seen is None or all_queries[q] not in seen]
    if query_ids is not None:
        unknown = set(query_ids) - set(qrels)
        if unknown:
            raise ValueError(
                f"{len(unknown)} of the queries to evaluate are not judged in split {split!r} "
                f"of {root}, e.g. {sorted(unknown)[:3]}"
            )
        held_out = [q for q in held_out if q in set(query_ids)]
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
    if baseline:
        retriever = BM25Retriever(corpus.ids, corpus.texts, k1=model.k1, b=model.b)
        if isinstance(model, BM25PriorConfig):
            rankings = retriever.search_with_prior(queries, seen_documents, model.weight, k=k)
        else:
            rankings = retriever.search(queries, k=k)
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
    per_query = per_query_metrics(rankings, qrels)
    result: dict[str, Any] = {
        "model": _model_name(model),
        "checkpoint": model if isinstance(model, str) else None,
        "root": str(root),
        "split": split,
        "queries": len(queries),
        # queries of the split left out as seen in training or dev; None: unknown
        "excluded_queries": excluded if overlap_known else None,
        "documents": len(corpus),
        "metrics": evaluate_rankings(rankings, qrels),
    }
    query_subsets: dict[str, str] = {}
    if seen_documents is not None:
        query_subsets = document_subsets(qrels, seen_documents)
        result["subsets"] = {
            subset: {
                "queries": len(members),
                "metrics": mean_metrics({q: per_query[q] for q in members}) or None,
            }
            for subset in SUBSETS
            for members in [[q for q, s in query_subsets.items() if s == subset]]
        }
    result.update(
        per_query=per_query, query_subsets=query_subsets, rankings=rankings, query_ids=list(qrels)
    )
    return result


def _model_name(model: str | ColBERT | Baseline) -> str:
    if isinstance(model, BM25PriorConfig):
        return "bm25_prior"
    return "bm25" if isinstance(model, BM25Config) else "colbert"


def write_evaluation(
    result: dict[str, Any], per_query_file: str | Path, run_file: str | Path, tag: str
) -> dict[str, Any]:
    """Write an ``evaluate_split`` result's per-query TSV and TREC run; return the rest.

    Args:
        result: what :func:`evaluate_split` returned.
        per_query_file: where the per-query metrics go (see
            :mod:`colbert_lightning.evaluation.per_query`).
        run_file: where the TREC run file goes.
        tag: the run's name in the TREC file (one word).

    Returns:
        ``result`` without the per-query values and rankings, with ``per_query_file`` and
        ``run_file`` (file names, relative to their folder), for a JSON file.
    """
    summary = {
        key: value
        for key, value in result.items()
        if key not in ("per_query", "query_subsets", "rankings", "query_ids")
    }
    write_per_query(per_query_file, result["per_query"], result["query_subsets"] or None)
    write_trec_run(run_file, result["rankings"], tag=tag)
    summary["per_query_file"] = Path(per_query_file).name
    summary["run_file"] = Path(run_file).name
    return summary


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
    """A markdown header and a row: model, split, queries and the four metrics.

    The queries cell says how many were left out as seen in training or dev, or that the
    overlap is unknown. A result with ``subsets`` gets a row for each: the queries none of
    whose relevant documents is relevant to a training query, and the others.
    """
    header = "| model | split | queries | " + " | ".join(METRICS) + " |"
    excluded = result.get("excluded_queries")
    queries = f"{result['queries']}"
    if excluded is None:
        queries += " (overlap with training unknown)"
    elif excluded:
        queries += f" ({excluded} seen in training/dev left out)"
    rows = [_row(result["model"], result["split"], queries, result["metrics"])]
    for subset, part in (result.get("subsets") or {}).items():
        label = SUBSET_LABELS[subset]
        rows.append(
            _row(result["model"], f"{result['split']}, {label}", part["queries"], part["metrics"])
        )
    return "\n".join([header, *rows])


SUBSET_LABELS = {
    HELD_OUT: "relevant documents held out of training",
    SEEN: "a relevant document relevant in training",
}


def _row(model: str, split: str, queries: Any, metrics: dict[str, float] | None) -> str:
    cells = " | ".join("-" if metrics is None else f"{metrics[name]:.4f}" for name in METRICS)
    return f"| {model} | {split} | {queries} | {cells} |"
