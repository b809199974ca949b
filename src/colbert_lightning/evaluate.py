"""``python -m colbert_lightning.evaluate`` (``colbert-evaluate``): metrics on a split or a suite.

Evaluates ``checkpoint=`` (a ``.ckpt`` or a model folder; exact MaxSim over the whole corpus),
``model=bm25`` or ``model=bm25_prior`` on ``split=`` of ``data.root``, or on every collection of
``suite=`` (conf/evaluate/suite/). A checkpoint gets BM25 beside it on the same queries
(``bm25_beside``). Where a collection has training judgments, the queries whose relevant
documents were never relevant in training are reported apart. Writes a JSON of the figures,
a markdown table, per-query metrics and TREC run files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from colbert_lightning.config.checks import ConfigError
from colbert_lightning.config.collections import collection_roots
from colbert_lightning.config.resolvers import EVALUATE_CONFIG_DIR, register_resolvers
from colbert_lightning.evaluation.suite import evaluate_collection, evaluate_suite, suite_table
from colbert_lightning.retrieval.bm25 import BM25Config, BM25PriorConfig

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` or a BM25 baseline on a split of ``data.root`` or a suite.

    Returns:
        What is written to the JSON output (``cfg.output``, or ``cfg.suite.output``).
    """
    baseline = instantiate(cfg.model) if cfg.get("model") is not None else None
    if baseline is not None and not isinstance(baseline, BM25Config | BM25PriorConfig):
        raise ConfigError(
            f"model={type(baseline).__name__}: evaluate takes model=bm25, model=bm25_prior or none"
        )
    if baseline is None and not (cfg.checkpoint and Path(cfg.checkpoint).exists()):
        raise ConfigError(
            f"checkpoint={cfg.checkpoint}: evaluating a ColBERT needs its .ckpt or model folder"
        )
    model = baseline or cfg.checkpoint
    bm25 = BM25Config() if baseline is None and cfg.bm25_beside else None
    options = {"bm25": bm25, "k": cfg.k, "batch_size": cfg.batch_size, "device": cfg.device}
    suite = cfg.get("suite")
    if suite is not None:
        collections = collection_roots(list(suite.collections), cfg.paths, "suite.collections")
        output = Path(suite.output)
        result = evaluate_suite(model, collections, suite.split, output.parent, **options)
        result["suite"] = suite.name
    else:
        output = Path(cfg.output)
        name = Path(cfg.data.root).name
        single = evaluate_collection(model, cfg.data.root, cfg.split, output.parent, **options)
        result = {"split": cfg.split, "collections": {name: single}, "mean": None}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    table = suite_table(result)
    output.with_suffix(".md").write_text(table + "\n")
    log.info("\n%s", table)
    log.info(
        "written: %s, %s and per-query files in %s",
        output,
        output.with_suffix(".md"),
        output.parent,
    )
    return result


@hydra.main(config_path=str(EVALUATE_CONFIG_DIR), config_name="evaluate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """Console entry point."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
