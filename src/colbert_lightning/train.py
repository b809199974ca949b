"""``python -m colbert_lightning.train [key=value ...]`` (``colbert-train``): train one model.

Composes ``conf/train.yaml`` with the overrides and runs
:func:`colbert_lightning.training.run.train`, which writes ``results.json`` to the run folder.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from colbert_lightning.config.resolvers import CONFIG_DIR, register_resolvers
from colbert_lightning.training.run import train


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    results = train(cfg)
    best = results["best"] or {}
    return best.get("val/ndcg@10")  # what optimising sweepers (hparams_search=optuna) maximise


def main() -> None:
    """Console entry point."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
