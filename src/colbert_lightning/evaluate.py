"""``python -m colbert_lightning.evaluate`` (``colbert-evaluate``): metrics on a BEIR split.

Evaluates ``checkpoint=`` (a ``.ckpt`` or a model folder; exact MaxSim over the whole corpus) or
``model=bm25`` on ``split=`` of ``data.root``, and writes them to ``output=``.
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
from colbert_lightning.config.resolvers import EVALUATE_CONFIG_DIR, register_resolvers
from colbert_lightning.evaluation.split import evaluate_split, one_line_table
from colbert_lightning.retrieval.bm25 import BM25Config

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` (exact MaxSim over the whole corpus) or BM25 on a split.

    Returns:
        What is written to ``cfg.output``: the metrics and what was evaluated.
    """
    baseline = instantiate(cfg.model) if cfg.get("model") is not None else None
    if baseline is not None and not isinstance(baseline, BM25Config):
        raise ConfigError(f"model={type(baseline).__name__}: evaluate takes model=bm25 or none")
    if baseline is None and not (cfg.checkpoint and Path(cfg.checkpoint).exists()):
        raise ConfigError(
            f"checkpoint={cfg.checkpoint}: evaluating a ColBERT needs its .ckpt or model folder"
        )
    result = evaluate_split(
        baseline or cfg.checkpoint,
        cfg.data.get("root"),
        cfg.split,
        k=cfg.k,
        batch_size=cfg.batch_size,
        device=cfg.device,
    )
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s", one_line_table(result))
    log.info("written: %s", output)
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
