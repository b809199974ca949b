"""A model beside BM25 on one collection or a suite of them, with per-query files and a table.

``evaluate_collection`` evaluates a model (a checkpoint, or a BM25 baseline) on a split of one
BEIR folder and, for a ColBERT, BM25 on the very same queries. Where the collection has training
judgments (``qrels/train.tsv``), both are also reported on the queries none of whose relevant
documents is relevant to a training query, and on the others. Per-query metrics and TREC run
files go into a folder. ``evaluate_suite`` does that for every collection of a suite and adds
the mean over collections; ``suite_table`` prints the result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from colbert_lightning.config.collections import training_qrels
from colbert_lightning.evaluation.split import (
    SUBSET_LABELS,
    Baseline,
    evaluate_split,
    relevant_documents,
    write_evaluation,
)
from colbert_lightning.modeling import ColBERT
from colbert_lightning.retrieval.bm25 import BM25Config

log = logging.getLogger(__name__)

SUITE_METRICS = ("ndcg@10", "recall@100")


def evaluate_collection(
    model: str | ColBERT | Baseline,
    root: str | Path,
    split: str,
    folder: str | Path,
    *,
    bm25: BM25Config | None = None,
    k: int = 100,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """``model`` on a split of ``root`` and, with ``bm25``, BM25 on the same queries.

    Args:
        model: a checkpoint's path, a ColBERT in memory, or a BM25 baseline config.
        root: the BEIR folder.
        split: the qrels split evaluated.
        folder: where the per-query TSVs and TREC run files go: ``per_query_<split>.tsv`` and
            ``run_<split>.trec``; BM25's end in ``_bm25``.
        bm25: the BM25 to evaluate beside the model (None: none).
        k: documents ranked per query.
        batch_size: texts per encoder call.
        device: where a checkpoint is loaded; default: cuda when available.

    Returns:
        ``{"model": ..., "bm25": ... or None, "training_qrels": path or None}``, each result as
        :func:`~colbert_lightning.evaluation.split.write_evaluation` returns it.
    """
    folder = Path(folder)
    training = training_qrels(root, split)
    seen_documents = relevant_documents([training]) if training is not None else None
    result = evaluate_split(
        model, root, split, k=k, batch_size=batch_size, device=device, seen_documents=seen_documents
    )
    query_ids = result["query_ids"]
    written = {
        "model": write_evaluation(
            result,
            folder / f"per_query_{split}.tsv",
            folder / f"run_{split}.trec",
            tag=result["model"],
        ),
        "bm25": None,
        "training_qrels": None if training is None else str(training),
    }
    if bm25 is not None:
        beside = evaluate_split(
            bm25, root, split, k=k, seen_documents=seen_documents, query_ids=query_ids
        )
        written["bm25"] = write_evaluation(
            beside,
            folder / f"per_query_{split}_bm25.tsv",
            folder / f"run_{split}_bm25.trec",
            "bm25",
        )
    return written


def evaluate_suite(
    model: str | Baseline,
    collections: Mapping[str, str | Path],
    split: str,
    folder: str | Path,
    *,
    bm25: BM25Config | None = None,
    k: int = 100,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_collection` on each collection, files in ``folder/<name>/``, and the mean.

    Args:
        model: a checkpoint's path or a BM25 baseline config.
        collections: name -> BEIR folder, in the order of the table.
        split: the qrels split of every collection.
        folder: the per-collection folders of per-query TSVs and run files go in here.
        bm25: the BM25 to evaluate beside the model (None: none).
        k: documents ranked per query.
        batch_size: texts per encoder call.
        device: where a checkpoint is loaded; default: cuda when available.

    Returns:
        ``{"split", "collections": {name: evaluate_collection's result}, "mean": {"model":
        metrics, "bm25": metrics or None}}``; the mean is over collections (each counts once,
        whatever its number of queries), of the full splits.
    """
    results: dict[str, Any] = {}
    for name, root in collections.items():
        log.info("collection %s (%s), split %s", name, root, split)
        results[name] = evaluate_collection(
            model,
            root,
            split,
            Path(folder) / name,
            bm25=bm25,
            k=k,
            batch_size=batch_size,
            device=device,
        )
    mean = {
        side: (
            None
            if any(result[side] is None for result in results.values())
            else {
                metric: sum(result[side]["metrics"][metric] for result in results.values())
                / len(results)
                for metric in SUITE_METRICS
            }
        )
        for side in ("model", "bm25")
    }
    return {"split": split, "collections": results, "mean": mean}


def suite_table(suite: Mapping[str, Any]) -> str:
    """A markdown table: a row per collection (and its subsets), then the mean if several.

    Columns: queries, the model's nDCG@10 and R@100 and, when BM25 ran beside it, BM25's, the
    difference in nDCG@10 and whether the model is above or below BM25.
    """
    with_bm25 = all(result["bm25"] is not None for result in suite["collections"].values())
    first = next(iter(suite["collections"].values()))["model"]["model"]
    header = ["collection", "queries", f"{first} nDCG@10", f"{first} R@100"]
    if with_bm25:
        header += ["BM25 nDCG@10", "BM25 R@100", "nDCG@10 - BM25", "vs BM25"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, queries: Any, model: dict | None, bm25: dict | None) -> str:
        cells = [label, str(queries), *_cells(model)]
        if with_bm25:
            cells += _cells(bm25)
            if model is None or bm25 is None:
                cells += ["-", "-"]
            else:
                difference = model["ndcg@10"] - bm25["ndcg@10"]
                cells += [f"{difference:+.4f}", "above" if difference >= 0 else "**below**"]
        return "| " + " | ".join(cells) + " |"

    for name, result in suite["collections"].items():
        model, bm25 = result["model"], result["bm25"]
        lines.append(row(name, model["queries"], model["metrics"], bm25 and bm25["metrics"]))
        for subset, part in (model.get("subsets") or {}).items():
            bm25_part = bm25["subsets"][subset]["metrics"] if bm25 else None
            lines.append(
                row(f"{name}: {SUBSET_LABELS[subset]}", part["queries"], part["metrics"], bm25_part)
            )
    count = len(suite["collections"])
    if count > 1:
        mean = suite["mean"]
        lines.append(row(f"mean of {count} collections", "", mean["model"], mean["bm25"]))
    return "\n".join(lines)


def _cells(metrics: Mapping[str, float] | None) -> list[str]:
    return ["-" if metrics is None else f"{metrics[name]:.4f}" for name in SUITE_METRICS]
