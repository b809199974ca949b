"""`python -m colbert_lightning.search`: one query, or a split's queries with metrics."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from colbert_lightning.config.checks import ConfigError, check_beir_root
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.data.beir import find_beir_file, load_qrels, load_queries, qrels_path
from colbert_lightning.evaluation.metrics import evaluate_rankings
from colbert_lightning.modeling import ColBERT, default_device
from colbert_lightning.retrieval.ivf import Retriever

log = logging.getLogger(__name__)


def search(cfg: DictConfig) -> dict[str, Any]:
    """Search ``cfg.index`` for ``cfg.query`` or for every judged query of ``cfg.split``.

    Returns:
        ``{"query", "results"}`` for one query; for a split, what is written to ``cfg.output``:
        metrics, queries per second and the rankings.
    """
    if (cfg.query is None) == (cfg.split is None):
        raise ConfigError("give one of query=TEXT or split=NAME (with data.root)")
    if not Path(cfg.index).is_dir():
        raise ConfigError(
            f"index={cfg.index}: no such folder (build one with colbert_lightning.index)"
        )
    retriever = load_retriever(cfg)
    if cfg.query is not None:
        hits = retriever.search(cfg.query, k=cfg.k)
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:9.4f}  {hit.doc_id}")
        return {"query": cfg.query, "results": [vars(hit) for hit in hits]}
    root = cfg.data.get("root")
    check_beir_root(root)
    all_queries = load_queries(find_beir_file(root, "queries"))
    qrels = load_qrels(qrels_path(root, cfg.split), set(all_queries), set(retriever.doc_ids))
    query_ids = list(qrels)
    started = time.perf_counter()
    results = retriever.search_batch(
        [all_queries[query_id] for query_id in query_ids], k=max(cfg.k, 100), show_progress=True
    )
    seconds = time.perf_counter() - started
    rankings = {
        query_id: [(hit.doc_id, hit.score) for hit in hits]
        for query_id, hits in zip(query_ids, results, strict=True)
    }
    result = {
        "index": str(cfg.index),
        "split": cfg.split,
        "queries": len(query_ids),
        "queries_per_second": len(query_ids) / seconds,
        "settings": {
            key: cfg[key] for key in ("nprobe", "candidates_per_token", "rerank_depth", "k")
        },
        "metrics": evaluate_rankings(rankings, qrels),
        "rankings": rankings,
    }
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
    log.info(
        "%s: %d queries, %.1f q/s, %s",
        cfg.split,
        len(query_ids),
        result["queries_per_second"],
        metrics,
    )
    log.info("written: %s", output)
    return result


def load_retriever(cfg: DictConfig) -> Retriever:
    """The index's :class:`Retriever`, with ``cfg.checkpoint`` (or the model it records)."""
    device = default_device(cfg.device)
    model = ColBERT.load(cfg.checkpoint).to(device).eval() if cfg.checkpoint else None
    try:
        retriever = Retriever(
            cfg.index,
            model=model,
            nprobe=cfg.nprobe,
            candidates_per_token=cfg.candidates_per_token,
            rerank_depth=cfg.rerank_depth,
            batch_size=cfg.batch_size,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    retriever.model.to(device)
    return retriever


@hydra.main(config_path=str(CONFIG_DIR), config_name="search", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    search(cfg)


def main() -> None:
    """Console entry point: ``colbert-search index=DIR query=TEXT`` or ``... split=test``."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
