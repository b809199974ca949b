"""`python -m colbert_lightning.search`: one query, or a split's queries with metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.evaluation.split import search_split
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
    result = {
        "index": str(cfg.index),
        **search_split(retriever, cfg.data.get("root"), cfg.split, k=max(cfg.k, 100)),
        "settings": {
            key: cfg[key] for key in ("nprobe", "candidates_per_token", "rerank_depth", "k")
        },
    }
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
    log.info(
        "%s: %d queries, %.1f q/s, %s",
        cfg.split,
        result["queries"],
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
